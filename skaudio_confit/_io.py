"""Reading audio files: one file in, mono float32 samples and their rate out."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

# libsndfile's log line for a WAV data chunk whose declared size differs from the bytes
# present, e.g. "data : 32000 (should be 15978)".
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers that stream a WAV (to a pipe) put a placeholder this large or larger as the
# data size; such files are read to their end, not reported as truncated.
_WAV_STREAMING_SIZE = 0x7FFFF000


def read_audio_file(path):
    """Read one audio file as mono float32; return ``(waveform, sampling_rate)``.

    The format is recognised from the file's content, not its extension. A WAV
    whose header declares more audio data than the file holds (cut short by an
    interrupted copy or download) is refused rather than silently read in part.
    """
    import soundfile as sf

    if os.fspath(path) in ("", b""):
        raise ValueError("Got an empty string as an audio file path.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Audio file not found: {str(path)!r}.")
    if path.is_dir():
        raise ValueError(f"Expected an audio file, got a directory: {str(path)!r}.")
    try:
        with sf.SoundFile(str(path)) as f:
            declared = _WAV_DATA_SIZE.search(f.extra_info or "")
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"Could not read audio file {str(path)!r}: {exc}") from None
    if declared is not None:
        size, present = int(declared[1]), int(declared[2])
        if present < size < _WAV_STREAMING_SIZE:
            raise ValueError(
                f"Audio file {str(path)!r} is truncated: its header declares {size} bytes "
                f"of audio data but only {present} are present (an interrupted copy or "
                "download?)."
            )
    if data.shape[0] == 0:
        raise ValueError(f"Audio file {str(path)!r} holds no samples.")
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise ValueError(f"Audio file {str(path)!r} contains NaN or infinite samples.")
    return np.ascontiguousarray(mono, dtype=np.float32), float(rate)


__all__ = ["read_audio_file"]
