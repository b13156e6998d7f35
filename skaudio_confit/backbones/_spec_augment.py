"""SpecAugment of the wav2vec2 family, with masks drawn from a fit's own generator.

transformers draws these masks from the global ``np.random`` (so two fits with the
same seed differ, and every fit moves the user's global state) and raises when a
batch has fewer frames than one mask span. :func:`span_mask` keeps transformers'
recipe (the number of spans of each clip, probabilistic rounding, the minimum
number of spans) but draws from a ``numpy.random.Generator`` and masks short clips
less, or not at all, instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpecAugment:
    """The masking recipe of a checkpoint's config (``mask_time_*``, ``mask_feature_*``)."""

    time_prob: float = 0.0
    time_length: int = 10
    time_min_masks: int = 0
    feature_prob: float = 0.0
    feature_length: int = 10
    feature_min_masks: int = 0

    @classmethod
    def from_config(cls, config):
        return cls(
            time_prob=float(getattr(config, "mask_time_prob", 0.0) or 0.0),
            time_length=int(getattr(config, "mask_time_length", 10)),
            time_min_masks=int(getattr(config, "mask_time_min_masks", 0) or 0),
            feature_prob=float(getattr(config, "mask_feature_prob", 0.0) or 0.0),
            feature_length=int(getattr(config, "mask_feature_length", 10)),
            feature_min_masks=int(getattr(config, "mask_feature_min_masks", 0) or 0),
        )

    @property
    def masks_anything(self):
        # As in transformers, an axis is masked only when its probability is positive.
        return self.time_prob > 0 or self.feature_prob > 0

    def time_mask(self, rng, frame_lengths, n_frames):
        """Bool (batch, n_frames): frames replaced by the learned mask embedding."""
        if self.time_prob <= 0:
            return None
        return span_mask(rng, frame_lengths, n_frames, self.time_prob, self.time_length,
                         self.time_min_masks)

    def feature_mask(self, rng, batch_size, hidden_size):
        """Bool (batch, hidden_size): channels zeroed over the whole clip."""
        if self.feature_prob <= 0:
            return None
        return span_mask(rng, [hidden_size] * batch_size, hidden_size, self.feature_prob,
                         self.feature_length, self.feature_min_masks)


def span_mask(rng, lengths, width, prob, span, min_spans):
    """Random spans of ``span`` positions over the first ``lengths[i]`` of each row.

    As transformers' ``_compute_mask_indices``: a row of length ``n`` gets
    ``max(int(prob * n / span + u), min_spans)`` spans (``u`` uniform in [0, 1),
    one draw per batch) at distinct random starts; spans may overlap. Unlike it, a
    row is never masked whole: it gets at most ``(n - 1) // span`` spans, so a clip
    no longer than one span is not masked at all (transformers raises instead when
    the batch is shorter than a span).

    Returns
    -------
    mask : ndarray of bool, shape (len(lengths), width)
    """
    if span < 1:
        raise ValueError(f"A mask span must be at least 1 long, got {span}.")
    mask = np.zeros((len(lengths), width), dtype=bool)
    rounding = rng.random()
    for row, n in enumerate(int(n) for n in lengths):
        n_spans = max(int(prob * n / span + rounding), min_spans)
        n_spans = min(n_spans, (n - 1) // span)
        if n_spans <= 0:
            continue
        starts = rng.choice(n - span + 1, size=n_spans, replace=False)
        mask[row, (starts[:, None] + np.arange(span)).ravel()] = True
    return mask
