"""Adapter for the wav2vec2 family: wav2vec2, HuBERT, WavLM, data2vec-audio."""

from __future__ import annotations

import numpy as np
import torch

from ._base import AudioBackbone


class Wav2Vec2FamilyBackbone(AudioBackbone):
    """Encoders that read raw waveforms through a convolutional feature encoder.

    The front end normalises each clip to zero mean and unit variance over its own
    samples (as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does) unless the
    checkpoint's feature extractor says otherwise, then zero-pads the batch.
    """

    def __init__(self, model, do_normalize=True):
        super().__init__(model)
        config = model.config
        self.do_normalize = bool(do_normalize)
        self.sampling_rate = 16000
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        # Group norm in the first conv layer normalises over the padded time axis,
        # so padding changes a clip's output; layer norm is per frame.
        self.padding_invariant = getattr(config, "feat_extract_norm", "layer") == "layer"
        # data2vec-audio stacks several positional convs and only zeroes padded frames
        # before the first, so later ones read padding into the clip's last frames.
        if config.model_type == "data2vec-audio" and config.num_conv_pos_embeddings > 1:
            self.padding_invariant = False
        self.min_samples = self._receptive_field()

    def _receptive_field(self):
        """Shortest input that gives one output frame of the conv feature encoder."""
        n = 1
        for k, s in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            n = (n - 1) * s + k
        return int(n)

    def feature_encoder(self):
        return self.model.feature_extractor

    def featurize(self, waves):
        lengths = [len(w) for w in waves]
        values = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        for i, w in enumerate(waves):
            if self.do_normalize:
                w = _zero_mean_unit_var(w)
            values[i, : len(w)] = w
        return {"input_values": torch.from_numpy(values), "lengths": torch.tensor(lengths)}

    def forward(self, batch, layer=-1):
        index = self.check_layer(layer)
        values, lengths = batch["input_values"], batch["lengths"]
        attention_mask = None
        if self.padding_invariant:
            attention_mask = (
                torch.arange(values.shape[1], device=values.device)[None, :] < lengths[:, None]
            ).long()
        want_all = index != self.num_layers
        out = self.model(
            values, attention_mask=attention_mask, output_hidden_states=want_all, return_dict=True
        )
        hidden = out.hidden_states[index] if want_all else out.last_hidden_state
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths)
        frame_mask = (
            torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frame_lengths[:, None]
        )
        return hidden, frame_mask


def _zero_mean_unit_var(wave):
    """``(w - mean) / sqrt(var + 1e-7)`` as the feature extractor computes it, in float64
    for clips loud enough (peaks beyond about 1e19) to overflow the float32 variance."""
    with np.errstate(over="ignore", invalid="ignore"):
        var = wave.var()
    if not np.isfinite(var):
        wave = wave.astype(np.float64)
        var = wave.var()
    return ((wave - wave.mean()) / np.sqrt(var + 1e-7)).astype(np.float32)
