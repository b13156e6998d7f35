"""Cropping, padding and windowing of waveforms (training crops, inference windows)."""

from __future__ import annotations

import numpy as np


def pad_to_length(wave, n_samples):
    """Zero-pad ``wave`` at the end to at least ``n_samples``."""
    if len(wave) >= n_samples:
        return wave
    return np.pad(wave, (0, n_samples - len(wave)))


def random_crop(wave, n_samples, rng):
    """Return a random ``n_samples``-long segment of ``wave`` (or ``wave`` if shorter)."""
    if len(wave) <= n_samples:
        return wave
    start = int(rng.integers(0, len(wave) - n_samples + 1))
    return wave[start : start + n_samples]


def split_windows(wave, n_samples):
    """Split ``wave`` into equal windows of ``n_samples`` covering it from end to end.

    Window starts are spread evenly so that every window is full length and the last
    one ends at the clip's end (neighbouring windows overlap a little when the length
    is not a multiple of ``n_samples``), so no window is mostly padding.
    """
    if len(wave) <= n_samples:
        return [wave]
    n_windows = int(np.ceil(len(wave) / n_samples))
    starts = np.linspace(0, len(wave) - n_samples, n_windows).round().astype(int)
    return [wave[s : s + n_samples] for s in starts]


def max_samples(max_duration, rate):
    """``max_duration`` seconds as a sample count at ``rate`` (``None`` stays ``None``)."""
    if max_duration is None:
        return None
    return max(1, int(round(max_duration * rate)))


__all__ = ["max_samples", "pad_to_length", "random_crop", "split_windows"]
