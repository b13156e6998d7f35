"""Loader for the bundled Free Spoken Digit Dataset (FSDD)."""

from functools import lru_cache
from importlib.resources import files

import numpy as np
import pandas as pd
import soundfile as sf
from sklearn.utils import Bunch

_SAMPLING_RATE = 8000
_N_TEST_TAKES = 5  # official split: takes 0-4 are the test set
_TARGETS = ("digit", "speaker")

_DESCR = """\
.. _spoken_digits_dataset:

Free Spoken Digit Dataset (FSDD)
--------------------------------

**Data Set Characteristics:**

:Number of Instances: 3,000 recordings (6 speakers x 10 digits x 50 takes)
:Sampling Rate: 8 kHz, mono; samples scaled from 16-bit PCM to [-1, 1)
:Clip Length: 0.14 s to 2.28 s, variable
:Speakers: george, jackson, lucas, nicolas, theo, yweweler (all male; English
    spoken with US, Belgian French, German and Greek accents)
:Split: official FSDD split, takes 0-4 are the test set (300 clips) and takes
    5-49 the training set (2,700 clips)

Each recording is one English digit (0-9) spoken by one speaker, so the same
clips support two tasks: keyword spotting (``target="digit"``) and speaker
identification (``target="speaker"``). Recording levels differ widely between
speakers (theo is much quieter than the others), so speaker identification can
partly succeed on loudness alone.

The bundled copy is a lossless repack of the original WAV files: all samples
are bit-identical to the source recordings.

.. rubric:: Attribution and licence

Free Spoken Digit Dataset by Zohar Jackson et al.,
https://github.com/Jakobovski/free-spoken-digit-dataset,
DOI 10.5281/zenodo.1342401. The data are licensed under Creative Commons
Attribution-ShareAlike 4.0 International (CC BY-SA 4.0,
https://creativecommons.org/licenses/by-sa/4.0/); see ``FSDD_LICENSE.md``
next to the bundled data for the attribution and the changes made.
"""


@lru_cache(maxsize=1)
def _read_bundle():
    """Decode the bundled FLAC and index once per process.

    The PCM array is made read-only because it is shared between calls; the
    public loader converts it to fresh float arrays on every call.
    """
    data_dir = files(__package__) / "data"
    with data_dir.joinpath("fsdd.csv").open("r", encoding="utf-8") as f:
        index = pd.read_csv(
            f,
            dtype={
                "digit": np.int64,
                "speaker": str,
                "take": np.int64,
                "start": np.int64,
                "n_samples": np.int64,
            },
        )
    with data_dir.joinpath("fsdd.flac").open("rb") as f:
        pcm, sampling_rate = sf.read(f, dtype="int16")
    if sampling_rate != _SAMPLING_RATE:
        raise RuntimeError(
            f"Bundled FSDD data is at {sampling_rate} Hz, expected {_SAMPLING_RATE} Hz;"
            " the package data is corrupt, rebuild it with tools/bundle_fsdd.py."
        )
    pcm.flags.writeable = False
    return pcm, index


def load_spoken_digits(*, target="digit", return_X_y=False):
    """Load the Free Spoken Digit Dataset (FSDD).

    3,000 short mono recordings at 8 kHz of the digits 0-9 spoken in English
    by 6 speakers, 50 takes of each digit per speaker. The data are bundled
    with the package (a lossless repack of the original WAV files), so no
    download is needed.

    ==============   ===============================
    Clips            3,000 (2,700 train, 300 test)
    Classes          10 digits or 6 speakers
    Sampling rate    8,000 Hz
    Clip length      1,148 to 18,262 samples
    ==============   ===============================

    Read more in the ``DESCR`` field of the returned bunch.

    Parameters
    ----------
    target : {"digit", "speaker"}, default="digit"
        Which label to return as ``target``: the spoken digit (keyword
        spotting) or the speaker's name (speaker identification).

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : list of ndarray of shape (n_samples_i,), dtype float32
            One waveform per clip, variable length, with values in [-1, 1)
            (the 16-bit PCM samples divided by 32768). Clips are ordered by
            speaker, digit and take.
        target : ndarray of shape (3000,)
            The digit of each clip as int64 if ``target="digit"``, or the
            speaker's name as str if ``target="speaker"``.
        target_names : ndarray of shape (n_classes,), dtype str
            Sorted class names: ``"0"`` to ``"9"`` or the 6 speaker names.
        sampling_rate : int
            Sampling rate of the waveforms in Hz (8000).
        frame : pandas.DataFrame of shape (3000, 3)
            Columns ``digit``, ``speaker`` and ``take``, one row per clip in
            the same order as ``data``.
        split : ndarray of shape (3000,), dtype str
            ``"test"`` for takes 0-4 and ``"train"`` for takes 5-49, the
            official FSDD split.
        DESCR : str
            Description of the dataset, with attribution and licence.

    (data, target) : tuple if ``return_X_y`` is True
        The list of waveforms and the target array described above.

    Raises
    ------
    ValueError
        If ``target`` is not ``"digit"`` or ``"speaker"``.

    Notes
    -----
    The recordings are from the Free Spoken Digit Dataset by Zohar Jackson et
    al. (DOI 10.5281/zenodo.1342401), licensed under CC BY-SA 4.0. Material
    redistributed from them must credit FSDD and keep the same licence.

    The decoded audio is cached in memory after the first call; every call
    returns new arrays, so modifying them does not affect later calls.

    Examples
    --------
    >>> from skaudio_confit.datasets import load_spoken_digits
    >>> fsdd = load_spoken_digits()
    >>> len(fsdd.data), fsdd.sampling_rate
    (3000, 8000)
    >>> fsdd.data[0].dtype
    dtype('float32')
    >>> fsdd.target_names.tolist()
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
    >>> is_train = fsdd.split == "train"
    >>> int(is_train.sum()), int((~is_train).sum())
    (2700, 300)

    Speaker identification on the same clips:

    >>> import numpy as np
    >>> X, y = load_spoken_digits(target="speaker", return_X_y=True)
    >>> np.unique(y).tolist()
    ['george', 'jackson', 'lucas', 'nicolas', 'theo', 'yweweler']
    """
    if target not in _TARGETS:
        raise ValueError(
            f"target must be one of {', '.join(map(repr, _TARGETS))}; "
            f"got {target!r}."
        )

    pcm, index = _read_bundle()
    # Each clip gets its own float32 buffer: slices of one shared array would
    # keep the whole decoded dataset alive for as long as any clip is in use.
    # Division by a power of two keeps every int16 sample exact in float32.
    data = [
        np.divide(pcm[start : start + n], 32768, dtype=np.float32)
        for start, n in zip(index["start"].to_numpy(), index["n_samples"].to_numpy())
    ]
    frame = index[["digit", "speaker", "take"]].copy()

    if target == "digit":
        y = frame["digit"].to_numpy(dtype=np.int64, copy=True)
        target_names = np.array([str(d) for d in np.unique(y)])
    else:
        y = frame["speaker"].to_numpy(dtype=str)
        target_names = np.unique(y)

    if return_X_y:
        return data, y

    split = np.where(frame["take"].to_numpy() < _N_TEST_TAKES, "test", "train")
    return Bunch(
        data=data,
        target=y,
        target_names=target_names,
        sampling_rate=_SAMPLING_RATE,
        frame=frame,
        split=split,
        DESCR=_DESCR,
    )
