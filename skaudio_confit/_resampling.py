"""Resampling clips to the backbone's rate, exactly by the ratio of the two rates."""

from __future__ import annotations

import numpy as np

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# torchaudio's sinc kernel holds about (new / g) x (old / g) values, g the rates'
# greatest common divisor: 8001 Hz -> 16000 Hz would need 0.5 GB and half a minute.
# Beyond this many values, scipy's polyphase filter (about 20 x max(new, old) / g taps)
# resamples by the same exact ratio instead.
_MAX_KERNEL = 1 << 22
_MAX_POLYPHASE = 1 << 20
# Rates further apart than this are refused (e.g. sampling_rate=0.5 or 1e9 by mistake).
_MAX_RATE_RATIO = 1000


def _resampler(rate, target_rate, name):
    """A function resampling a float32 waveform from ``rate`` to ``target_rate``."""
    import math

    import torch
    import torchaudio

    if max(rate / target_rate, target_rate / rate) > _MAX_RATE_RATIO:
        raise ValueError(
            f"{name} cannot be resampled from {rate:g} Hz to {target_rate:g} Hz: the rates "
            f"are more than {_MAX_RATE_RATIO} times apart. Check sampling_rate (the rate "
            "of in-memory clips, in Hz) or the file's header."
        )
    # Integer rates; float rates like 22050.0 are exact, others are rounded to 1 Hz.
    orig, new = max(1, int(round(rate))), max(1, int(round(target_rate)))
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    if orig * new <= _MAX_KERNEL:
        kernel = torchaudio.transforms.Resample(orig, new)

        def run(wave):
            with torch.inference_mode():
                return kernel(torch.from_numpy(wave)).numpy()

        return run
    if max(orig, new) > _MAX_POLYPHASE:
        raise ValueError(
            f"{name} cannot be resampled from {rate:g} Hz to {target_rate:g} Hz: the rates "
            "have no large common divisor, so the resampling filter would be too large. "
            "Resample the audio to a standard rate (e.g. 16000 or 44100 Hz) first."
        )
    from scipy.signal import resample_poly

    return lambda wave: resample_poly(wave, new, orig).astype(np.float32)


def resample_clips(clips, target_rate):
    """Resample ``(wave, rate, name)`` clips to ``target_rate``, one filter per rate."""
    resamplers = {}
    out = []
    for wave, rate, name in clips:
        if rate == target_rate:
            out.append(wave)
            continue
        if rate not in resamplers:
            resamplers[rate] = _resampler(rate, target_rate, name)
        res = resamplers[rate](wave)
        if not np.all(np.isfinite(res)):
            # Samples near the float32 limit overflow in the filter's sums. The filter
            # is linear: run it on the clip scaled to unit peak, then scale back.
            peak = float(np.max(np.abs(wave)))
            res = resamplers[rate]((wave / peak).astype(np.float32)).astype(np.float64) * peak
            if np.max(np.abs(res)) > _FLOAT32_MAX:
                raise ValueError(
                    f"{name} overflows float32 when resampled from {rate:g} Hz to "
                    f"{target_rate:g} Hz (peak |sample| {peak:.3g}); audio samples are "
                    "expected in [-1, 1]: scale it down."
                )
        if res.size == 0:  # a clip of a few samples can round down to nothing
            res = np.zeros(1, dtype=np.float32)
        out.append(np.ascontiguousarray(res, dtype=np.float32))
    return out


__all__ = ["resample_clips"]
