"""Two encoders of one architecture read side by side: pretrained and tuned features.

``PairTuneTransformer(include_pretrained=True)`` keeps a copy of the pretrained
encoder and ``transform`` returns its pooled embedding beside the tuned one. Both
read the same featurized batch (the front end of a backbone has no trained
parameters: Whisper's log-mel, the wav2vec2 family's normalisation), so a clip is
read and featurized once.
"""

from __future__ import annotations

import numpy as np
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


class FixedBeside:
    """Embed clips as ``[fixed, trained]``, the fixed encoder's half computed once.

    During a fit, callbacks and the validation score read the features ``transform``
    will return. With PairTune's ``include_pretrained`` that is the pretrained copy's
    embedding beside the tuned one; the copy never changes, so each list of clips
    (the training clips, the validation clips) is embedded by it once per fit, and
    the copy is loaded only when something asks for embeddings.

    Parameters
    ----------
    load : callable
        ``load() -> AudioBackbone``: the fixed encoder, called at most once.
    embed : callable
        ``embed(backbone, waves) -> ndarray``: pooled embeddings of ``waves``.
    """

    def __init__(self, load, embed):
        self._load = load
        self._embed = embed
        self._backbone = None
        self._fixed = {}  # id(waves) -> (waves, embeddings); waves held so ids stay unique

    @property
    def backbone(self):
        """The fixed encoder, loaded on first use."""
        if self._backbone is None:
            self._backbone = self._load()
        return self._backbone

    def wrap(self, embed_trained):
        """``embed_trained`` with the fixed encoder's embeddings put first."""

        def embed(waves):
            key = id(waves)
            if key not in self._fixed:
                self._fixed[key] = (waves, self._embed(self.backbone, waves))
            return np.concatenate([self._fixed[key][1], embed_trained(waves)], axis=1)

        return embed
