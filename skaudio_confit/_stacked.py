"""Two encoders of one architecture read side by side: pretrained and tuned features.

``PairTuneTransformer(include_pretrained=True)`` keeps a copy of the pretrained
encoder and ``transform`` returns its pooled embedding beside the tuned one. Both
read the same featurized batch (the front end of a backbone has no trained
parameters: Whisper's log-mel, the wav2vec2 family's normalisation), so a clip is
read and featurized once.
"""

from __future__ import annotations

import torch
from torch import nn


class SideBySideBackbones(nn.Module):
    """Run ``first`` and ``second`` on one batch; hidden states concatenated.

    Quacks like an :class:`~skaudio_confit.backbones._base.AudioBackbone` for
    inference (``featurize``, ``forward``, ``hidden_size``...): features
    ``[:first.hidden_size]`` come from ``first``, the rest from ``second``.
    """

    def __init__(self, first, second):
        super().__init__()
        self.first = first
        self.second = second
        self.sampling_rate = second.sampling_rate
        self.hidden_size = first.hidden_size + second.hidden_size
        self.num_layers = second.num_layers
        self.min_samples = max(first.min_samples, second.min_samples)
        self.padding_invariant = first.padding_invariant and second.padding_invariant
        # A new Module starts in training mode; callers restore the mode they found,
        # which must be the encoders' (eval for a fitted model), not this default.
        self.training = second.training

    def featurize(self, waves):
        return self.second.featurize(waves)

    def encoder_frames(self, n_samples):
        return self.second.encoder_frames(n_samples)

    def forward(self, batch, layer=-1):
        first, _ = self.first(batch, layer)
        second, frame_mask = self.second(batch, layer)
        return torch.cat([first, second], dim=-1), frame_mask
