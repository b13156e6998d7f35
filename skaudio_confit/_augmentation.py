"""Random views of training clips: waveform perturbations and log-mel masking.

Supervised contrastive learning compares clips of a class; with a handful of clips
per class, every epoch otherwise shows the very same few views. These perturbations
make each epoch's clips new views of the same sounds. They apply in training only
(never in ``transform``) and draw from the fit's own generators, so a fit stays
reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

AUGMENTATION_OPTIONS = ("waveform", "log-mel", "both")

# Waveform recipe: gain in decibels, shift in seconds, noise level as SNR in decibels.
_GAIN_DB = 6.0
_SHIFT_SECONDS = 0.1
_SNR_DB = (20.0, 40.0)
# Log-mel recipe (SpecAugment's "LB"-like policy, scaled to short clips): masks per
# axis and the widest mask, in mel bins and as a fraction of the clip's frames.
_N_MASKS = 2
_MEL_WIDTH = 8
_TIME_FRACTION = 0.1


class TrainingAugmentation:
    """What ``augmentation`` asks for, bound to one backbone.

    Parameters
    ----------
    mode : {"waveform", "log-mel", "both"}
        "waveform": random gain (±6 dB), time shift (±0.1 s, zero-filled, length
        kept) and white noise (SNR 20-40 dB) of each training clip. "log-mel":
        SpecAugment-style masking of the log-mel input (two frequency bands of up to
        8 mel bins, two time spans of up to a tenth of the clip), for front ends with
        log-mel input (Whisper). "both": the two.
    sampling_rate : int
        Rate of the waveforms (the backbone's).
    """

    def __init__(self, mode, sampling_rate):
        self.waveforms = mode in ("waveform", "both")
        self.log_mel = mode in ("log-mel", "both")
        self.sampling_rate = sampling_rate

    def waveform(self, wave, rng):
        """A perturbed copy of ``wave`` (float32, same length); ``wave`` if off."""
        if not self.waveforms or len(wave) == 0:
            return wave
        wave = np.asarray(wave, dtype=np.float32)
        gain = 10.0 ** (rng.uniform(-_GAIN_DB, _GAIN_DB) / 20.0)
        max_shift = int(_SHIFT_SECONDS * self.sampling_rate)
        shift = int(rng.integers(-max_shift, max_shift + 1))
        out = np.zeros_like(wave)
        if shift >= 0:
            out[shift:] = wave[: len(wave) - shift]
        else:
            out[:shift] = wave[-shift:]
        out *= gain
        rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
        snr_db = rng.uniform(*_SNR_DB)
        noise = rng.standard_normal(len(out)).astype(np.float32)
        out += noise * np.float32(rms / 10.0 ** (snr_db / 20.0))
        return out

    def features(self, batch, rng):
        """Mask the log-mel ``input_features`` of a featurized batch in place.

        Masked cells take the mean of the clip's real frames. ``rng`` is a numpy
        Generator; a batch without ``input_features`` is returned unchanged.
        """
        if not self.log_mel or "input_features" not in batch:
            return batch
        features, lengths = batch["input_features"], batch["lengths"]
        n_mels = features.shape[1]
        for i, n_frames in enumerate(lengths.tolist()):
            real = features[i, :, :n_frames]
            fill = float(real.mean()) if n_frames else 0.0
            for _ in range(_N_MASKS):
                width = int(rng.integers(0, _MEL_WIDTH + 1))
                start = int(rng.integers(0, n_mels - width + 1))
                real[start:start + width, :] = fill
            max_width = int(_TIME_FRACTION * n_frames)
            for _ in range(_N_MASKS):
                width = int(rng.integers(0, max_width + 1))
                start = int(rng.integers(0, n_frames - width + 1))
                real[:, start:start + width] = fill
        return batch


def make_augmentation(mode, backbone):
    """The :class:`TrainingAugmentation` of ``mode`` for ``backbone``; None if off.

    Raises ``ValueError`` when log-mel masking is asked of a backbone whose input is
    not a log-mel spectrogram (the wav2vec2 family has ``spec_augment`` instead).
    """
    if mode is None:
        return None
    if mode in ("log-mel", "both"):
        probe = backbone.featurize([np.zeros(backbone.min_samples, dtype=np.float32)])
        if not isinstance(probe.get("input_features"), torch.Tensor):
            raise ValueError(
                f"augmentation={mode!r} masks a log-mel input, but the "
                f"{backbone.config.model_type} encoder reads raw waveforms; use "
                "augmentation='waveform' (and spec_augment for its own masking)."
            )
    return TrainingAugmentation(mode, backbone.sampling_rate)
