"""Repack the Free Spoken Digit Dataset (FSDD) into the package's bundled form.

Development tool, not part of the installed package. It reads the 3,000
``{digit}_{speaker}_{take}.wav`` recordings from a source folder and writes to
``skaudio_confit/datasets/data/``:

- ``fsdd.flac``: every clip concatenated, sorted by (speaker, digit, take),
  as one mono 8 kHz 16-bit FLAC stream (lossless);
- ``fsdd.csv``: one row per clip with ``digit, speaker, take, start,
  n_samples`` (sample offsets into ``fsdd.flac``);
- ``FSDD_LICENSE.md``: attribution, licence notice and a description of the
  repacking, as CC BY-SA 4.0 requires.

The build is deterministic (the clip order and the FLAC settings are fixed)
and refuses to write a bundle unless every clip decodes bit-identically to its
source WAV.

Usage (from the repository root)::

    python tools/bundle_fsdd.py [SOURCE] [--out OUT]

``SOURCE`` defaults to ``../shared/data/fsdd`` relative to the repository root;
it may be the dataset folder or its ``recordings`` subfolder.
"""

import argparse
import csv
import hashlib
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "fsdd"
DEFAULT_OUT = REPO_ROOT / "skaudio_confit" / "datasets" / "data"

SAMPLING_RATE = 8000
FILENAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[a-z]+)_(?P<take>[0-9]+)\.wav")
# Well under the 20 MB budget for package data; raw int16 PCM is ~21 MB.
SIZE_WARNING_BYTES = 15 * 1024**2

LICENSE_TEMPLATE = """\
# Free Spoken Digit Dataset (FSDD): attribution and licence

The files `fsdd.flac` and `fsdd.csv` in this folder are derived from the
**Free Spoken Digit Dataset** by Zohar Jackson et al.

- Upstream: https://github.com/Jakobovski/free-spoken-digit-dataset
- DOI: 10.5281/zenodo.1342401 (https://doi.org/10.5281/zenodo.1342401)
- Content: {n_clips:,} recordings of spoken digits 0-9 by {n_speakers} speakers
  ({speakers}), mono, 8 kHz, 16-bit.

## Licence

The FSDD recordings, and therefore `fsdd.flac` and `fsdd.csv`, are licensed
under the **Creative Commons Attribution-ShareAlike 4.0 International**
licence (CC BY-SA 4.0): https://creativecommons.org/licenses/by-sa/4.0/
(legal code: https://creativecommons.org/licenses/by-sa/4.0/legalcode).

If you redistribute these files or material adapted from them, you must give
appropriate credit to FSDD, link to the licence, indicate the changes made, and
distribute your contributions under the same licence. This licence applies to
the data only; the code of `skaudio-confit` is licensed separately (BSD-3-Clause).

The data are provided as-is by the licensors, without warranties of any kind;
see sections 5 and 6 of the licence for the disclaimer of warranties and
limitation of liability.

## Changes made

The recordings were repacked losslessly; no sample was altered, trimmed,
resampled, normalised or lossily re-encoded.

- The {n_clips:,} WAV files `{{digit}}_{{speaker}}_{{take}}.wav` were sorted by
  (speaker, digit, take) and their samples concatenated, without gaps, into a
  single FLAC stream `fsdd.flac` ({n_samples:,} samples at {sampling_rate} Hz,
  mono, 16-bit; written with libsndfile {libsndfile_version} at the highest
  FLAC compression level).
- `fsdd.csv` lists, one row per recording and in the same order, its `digit`,
  `speaker`, `take`, `start` (sample offset into `fsdd.flac`) and `n_samples`.
- The WAV container headers were not kept. Each clip was decoded from the FLAC
  and checked to be bit-identical to its source WAV when the bundle was built
  (`tools/bundle_fsdd.py` in the skaudio-confit repository).

The official FSDD split is unchanged: takes 0-4 form the test set and takes
5-49 the training set.
"""


def _resolve_recordings(source):
    """Return the folder holding the WAV files (``source`` or its ``recordings``)."""
    recordings = source / "recordings"
    return recordings if recordings.is_dir() else source


def _scan(recordings):
    """Parse file names and check every WAV is mono, 8 kHz, 16-bit PCM.

    Returns the clip records sorted by (speaker, digit, take). Exits with a
    report of every offending file otherwise: converting such a file would
    make the bundle differ from the source, so it needs a human decision.
    """
    records, unparsed, wrong_format = [], [], []
    for path in sorted(recordings.glob("*.wav")):
        match = FILENAME.fullmatch(path.name)
        if match is None:
            unparsed.append(path.name)
            continue
        info = sf.info(path)
        if (info.samplerate, info.channels, info.subtype) != (
            SAMPLING_RATE,
            1,
            "PCM_16",
        ):
            wrong_format.append(
                f"{path.name}: {info.samplerate} Hz, {info.channels} channel(s), "
                f"{info.subtype}"
            )
            continue
        records.append(
            {
                "digit": int(match["digit"]),
                "speaker": match["speaker"],
                "take": int(match["take"]),
                "path": path,
            }
        )
    if unparsed or wrong_format:
        for name in unparsed:
            print(f"error: unexpected file name {name}", file=sys.stderr)
        for line in wrong_format:
            print(f"error: not mono {SAMPLING_RATE} Hz PCM_16: {line}", file=sys.stderr)
        sys.exit(1)
    if not records:
        sys.exit(f"error: no WAV files found in {recordings}")
    records.sort(key=lambda r: (r["speaker"], r["digit"], r["take"]))
    return records


def _report_structure(records):
    """Print clip counts and warn if the speaker x digit x take grid has holes."""
    speakers = sorted({r["speaker"] for r in records})
    digits = sorted({r["digit"] for r in records})
    takes = sorted({r["take"] for r in records})
    print(
        f"{len(records)} clips: {len(speakers)} speakers, {len(digits)} digits, "
        f"takes {takes[0]}-{takes[-1]}"
    )
    for speaker, count in sorted(Counter(r["speaker"] for r in records).items()):
        print(f"  {speaker:<10} {count} clips")
    expected = len(speakers) * len(digits) * len(takes)
    if len(records) != expected:
        print(
            f"warning: {len(records)} clips but a full speaker x digit x take grid "
            f"has {expected}",
            file=sys.stderr,
        )


def build(source, out):
    """Build ``fsdd.flac``, ``fsdd.csv`` and ``FSDD_LICENSE.md`` in ``out``."""
    tic = time.perf_counter()
    recordings = _resolve_recordings(source)
    records = _scan(recordings)
    _report_structure(records)

    clips = [sf.read(r["path"], dtype="int16")[0] for r in records]
    lengths = np.array([len(clip) for clip in clips])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pcm = np.concatenate(clips)

    out.mkdir(parents=True, exist_ok=True)
    flac_path = out / "fsdd.flac"
    # Write beside the target and rename only after verification, so a failed
    # build never leaves a corrupt bundle in the package.
    tmp_path = out / "fsdd.flac.tmp"
    sf.write(
        tmp_path,
        pcm,
        SAMPLING_RATE,
        format="FLAC",
        subtype="PCM_16",
        compression_level=1.0,
    )

    decoded, sampling_rate = sf.read(tmp_path, dtype="int16")
    if sampling_rate != SAMPLING_RATE or decoded.shape != pcm.shape:
        tmp_path.unlink()
        sys.exit(
            f"error: FLAC decodes to {decoded.shape} at {sampling_rate} Hz, "
            f"expected {pcm.shape} at {SAMPLING_RATE} Hz"
        )
    # Compare against the WAVs as read from disk, clip by clip, so a mismatch
    # names the recording it affects.
    mismatched = [
        r["path"].name
        for r, clip, start, n in zip(records, clips, starts, lengths)
        if not np.array_equal(decoded[start : start + n], clip)
    ]
    if mismatched:
        tmp_path.unlink()
        sys.exit(f"error: {len(mismatched)} clips not lossless, e.g. {mismatched[:5]}")
    os.replace(tmp_path, flac_path)

    csv_path = out / "fsdd.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["digit", "speaker", "take", "start", "n_samples"])
        for r, start, n in zip(records, starts, lengths):
            writer.writerow([r["digit"], r["speaker"], r["take"], start, n])

    speakers = sorted({r["speaker"] for r in records})
    license_path = out / "FSDD_LICENSE.md"
    license_path.write_text(
        LICENSE_TEMPLATE.format(
            n_clips=len(records),
            n_speakers=len(speakers),
            speakers=", ".join(speakers),
            n_samples=len(pcm),
            sampling_rate=SAMPLING_RATE,
            libsndfile_version=sf.__libsndfile_version__,
        ),
        encoding="utf-8",
    )

    raw_bytes = pcm.nbytes
    flac_bytes = flac_path.stat().st_size
    sha256 = hashlib.sha256(flac_path.read_bytes()).hexdigest()
    print(f"verified: all {len(records)} clips decode bit-identically")
    print(
        f"{flac_path.name}: {flac_bytes / 1024**2:.2f} MiB "
        f"({flac_bytes / raw_bytes:.1%} of {raw_bytes / 1024**2:.2f} MiB raw PCM, "
        f"{len(pcm) / SAMPLING_RATE / 60:.1f} min of audio), sha256 {sha256}"
    )
    print(f"{csv_path.name}: {csv_path.stat().st_size / 1024:.1f} KiB")
    print(f"{license_path.name}: {license_path.stat().st_size / 1024:.1f} KiB")
    if flac_bytes > SIZE_WARNING_BYTES:
        print(
            f"warning: {flac_path.name} is larger than the expected "
            f"{SIZE_WARNING_BYTES / 1024**2:.0f} MiB",
            file=sys.stderr,
        )
    print(f"built in {time.perf_counter() - tic:.2f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        nargs="?",
        type=Path,
        default=DEFAULT_SOURCE,
        help="FSDD folder or its recordings subfolder (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"source folder {args.source} does not exist")
    build(args.source, args.out)


if __name__ == "__main__":
    main()
