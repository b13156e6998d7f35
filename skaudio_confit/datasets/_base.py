"""Helpers shared by the dataset loaders: the data home and reading clips from files."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .._input import check_sampling_rate, load_waveforms
from .._io import read_audio_file

DATA_HOME_ENV = "SKAUDIO_CONFIT_DATA"
_DEFAULT_DATA_HOME = Path("~") / "skaudio_confit_data"


def get_data_home(data_home=None):
    """Return the folder where downloaded datasets are kept.

    Like :func:`sklearn.datasets.get_data_home`, with this package's own
    default: the ``SKAUDIO_CONFIT_DATA`` environment variable if set, else
    ``~/skaudio_confit_data``. The folder is not created here; downloaders
    create it when they first write to it.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to use. ``None`` picks the default described above. A
        leading ``~`` is expanded.

    Returns
    -------
    data_home : pathlib.Path
        The absolute path of the data home.

    Examples
    --------
    >>> from skaudio_confit.datasets import get_data_home
    >>> str(get_data_home("/tmp/my_data"))
    '/tmp/my_data'
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or _DEFAULT_DATA_HOME
    return Path(os.path.expanduser(os.fspath(data_home))).absolute()


def _as_number(rate):
    """A rate as an int when it is a whole number of Hz (44100.0 -> 44100)."""
    rate = float(rate)
    return int(rate) if rate.is_integer() else rate


def _most_common_rate(rates):
    """The most frequent rate; ties go to the highest rate, so no bandwidth is lost."""
    counts = Counter(rates)
    return max(counts, key=lambda rate: (counts[rate], rate))


def read_clips(paths, sampling_rate=None):
    """Read audio files as mono float32 waveforms at one common rate.

    Parameters
    ----------
    paths : sequence of path
        The files, read with :func:`skaudio_confit._audio.read_audio_file`
        (multi-channel files are averaged to mono).
    sampling_rate : float, default=None
        The rate to return the clips at. ``None`` takes the most common rate
        among the files (the highest of the most common ones on a tie).

    Returns
    -------
    data : list of ndarray of shape (n_samples_i,), dtype float32
        One waveform per file, in the order of ``paths``. Clips already at the
        target rate are returned as read; the others are resampled with
        torchaudio (imported only then).
    sampling_rate : int or float
        The common rate in Hz, an int when it is a whole number.
    """
    waves, rates = [], []
    for path in paths:
        wave, rate = read_audio_file(path)
        waves.append(wave)
        rates.append(rate)
    if sampling_rate is None:
        target_rate = _most_common_rate(rates)
    else:
        target_rate = check_sampling_rate(sampling_rate)
    for rate in sorted(set(rates) - {target_rate}):
        indices = [i for i, r in enumerate(rates) if r == rate]
        resampled = load_waveforms(
            [waves[i] for i in indices], sampling_rate=rate, target_rate=target_rate
        )
        for i, wave in zip(indices, resampled, strict=True):
            waves[i] = wave
    return waves, _as_number(target_rate)
