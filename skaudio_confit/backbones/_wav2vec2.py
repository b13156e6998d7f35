"""Adapter for the wav2vec2 family: wav2vec2, HuBERT, WavLM, data2vec-audio."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch import nn

from ._base import AudioBackbone, _is_true, pad_stack
from ._spec_augment import SpecAugment


class Wav2Vec2FamilyBackbone(AudioBackbone):
    """Encoders that read raw waveforms through a convolutional feature encoder.

    The front end normalises each clip to zero mean and unit variance over its own
    samples (as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does) unless the
    checkpoint's feature extractor says otherwise, then zero-pads the batch.

    A group-norm feature encoder (wav2vec2-base, HuBERT, WavLM) normalises over the
    whole time axis, padding included, so it runs on each clip alone (it is cheap);
    the padded conv features then go through the transformer as one batch with an
    attention mask, which is exact. SpecAugment masks, when on, are drawn from
    :attr:`mask_rng` (:mod:`._spec_augment`), never from the global ``np.random``.
    """

    def __init__(self, model, do_normalize=True):
        super().__init__(model)
        config = model.config
        self.do_normalize = bool(do_normalize)
        self.sampling_rate = 16000
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        # Group norm in the first conv layer normalises over the padded time axis, so
        # the conv stack runs clip by clip; layer norm is per frame.
        self.conv_per_clip = getattr(config, "feat_extract_norm", "layer") == "group"
        self.padding_invariant = True
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

    def set_spec_augment(self, mode):
        """Choose the masking applied in training: ``"auto"``, True or False.

        ``"auto"`` applies the checkpoint's SpecAugment (``mask_time_*`` and
        ``mask_feature_*`` of its config) when its ``apply_spec_augment`` is on, as
        transformers does in training; True applies it even when that flag is off;
        False masks nothing.
        """
        recipe = SpecAugment.from_config(self.config)
        if isinstance(mode, str):
            on = bool(getattr(self.config, "apply_spec_augment", True))
        else:
            on = _is_true(mode)
            if on and not recipe.masks_anything:
                raise ValueError(
                    f"spec_augment=True, but this {self.config.model_type} checkpoint's "
                    "config masks nothing (mask_time_prob and mask_feature_prob are 0)."
                )
        self.spec_augment = recipe if on and recipe.masks_anything else None

    def featurize(self, waves):
        lengths = [len(w) for w in waves]
        values = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        for i, w in enumerate(waves):
            if self.do_normalize:
                w = _zero_mean_unit_var(w)
            values[i, : len(w)] = w
        return {"input_values": torch.from_numpy(values), "lengths": torch.tensor(lengths)}

    def encoder_frames(self, n_samples):
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(int(n_samples))))

    def front_end_frozen(self):
        # The conv feature encoder, once frozen, is a fixed function of the clip. Its
        # zero-padded per-clip output equals the batched forward only where padded
        # frames are masked (not data2vec-audio's stacked positional convs).
        if not (self.padding_invariant or self.conv_per_clip):
            return False
        return not any(p.requires_grad for p in self.feature_encoder().parameters())

    def front_features(self, wave):
        """The frozen conv feature encoder's output (channels, frames) for one clip."""
        values = self.featurize([wave])["input_values"]
        encoder = self.model.feature_extractor
        with torch.no_grad():
            features = encoder(values.to(next(encoder.parameters()).device))
        return features[0].cpu(), len(wave)

    def collate_front(self, items):
        lengths = torch.tensor([n for _, n in items])
        # forward reads only the shape of input_values (for the padding masks): the
        # conv features stand in for the feature encoder, so no samples are needed.
        return {"input_values": torch.empty(len(items), int(lengths.max())),
                "lengths": lengths, "conv_features": pad_stack([t for t, _ in items])}

    def forward(self, batch, layer=-1):
        index = self.check_layer(layer)
        values, lengths = batch["input_values"], batch["lengths"]
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths)
        padded = bool((lengths != values.shape[1]).any())
        attention_mask = None
        if padded and (self.padding_invariant or self.conv_per_clip):
            attention_mask = (
                torch.arange(values.shape[1], device=values.device)[None, :] < lengths[:, None]
            ).long()
        conv = contextlib.nullcontext()
        if "conv_features" in batch:  # computed once per clip by a frozen encoder
            conv = _replaced(self.model, "feature_extractor",
                             _GivenFeatures(batch["conv_features"]))
        elif self._conv_clip_by_clip(values, padded):
            conv = _replaced(self.model, "feature_extractor",
                             _GivenFeatures(self._conv_per_clip(values, lengths)))
        with conv, self._seeded_masking(frame_lengths), self._recorded_states() as state, \
                warnings.catch_warnings():
            # WavLM passes a bool padding mask with its float position bias to torch's
            # attention, which warns (once per process) that mixing them is deprecated.
            warnings.filterwarnings("ignore", "Support for mismatched key_padding_mask",
                                    UserWarning)
            out = self.model(values, attention_mask=attention_mask, return_dict=True)
            # The last layer's state is the encoder's output (after the final layer norm
            # of stable-layer-norm models).
            hidden = out.last_hidden_state if index == self.num_layers else state(index)
        frame_mask = (
            torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frame_lengths[:, None]
        )
        return hidden, frame_mask

    @contextlib.contextmanager
    def _recorded_states(self):
        """Record the state between transformer layers; yields ``state(k)``, the hidden
        state after the first ``k`` layers.

        transformers 5 fills ``hidden_states`` by hooks on the layers, so a layer that
        LayerDrop skips in training leaves no entry and every later index shifts (or
        runs past the end). These hooks know which layer ran: a skipped layer passes
        the state on unchanged.
        """
        inputs, outputs = {}, {}

        def before(module, args):
            inputs.setdefault("first", args[0])

        def after(i):
            def hook(module, args, output):
                outputs[i] = output[0] if isinstance(output, tuple) else output
            return hook

        encoder = self.model.encoder
        handles = [layer.register_forward_hook(after(i))
                   for i, layer in enumerate(encoder.layers)]
        # The encoder's dropout is its last step before the first layer in every family,
        # so its output is the state before any layer even when LayerDrop skips them all;
        # without one, the input of the first layer that runs is that state.
        if isinstance(getattr(encoder, "dropout", None), nn.Module):
            handles.append(encoder.dropout.register_forward_hook(
                lambda module, args, output: inputs.setdefault("first", output)))
        else:
            handles += [layer.register_forward_pre_hook(before) for layer in encoder.layers]

        def state(k):
            ran = [i for i in outputs if i < k]
            return outputs[max(ran)] if ran else inputs["first"]

        try:
            yield state
        finally:
            for handle in handles:
                handle.remove()

    def _conv_clip_by_clip(self, values, padded):
        """Whether the conv feature encoder runs on each clip alone.

        A padded batch through a group-norm encoder must (exactness). On CPU every
        batch does: the stack's first activations (hundreds of channels at a fifth of
        the sample rate) overflow the caches when batched, so clip by clip is faster,
        forward and backward (5 s clips, tiny model: 49 against 83-91 ms per clip in
        batches of 4-32); it is exact, as each clip's frames never see another's
        samples. On a GPU a batch keeps the device busy.
        """
        if len(values) < 2:
            return False
        return (padded and self.conv_per_clip) or values.device.type == "cpu"

    def _conv_per_clip(self, values, lengths):
        """Conv features (batch, channels, frames) of each clip alone, zero-padded."""
        encoder = self.model.feature_extractor
        features = [encoder(values[i : i + 1, : int(n)]) for i, n in enumerate(lengths)]
        n_frames = max(f.shape[-1] for f in features)
        return torch.cat(
            [nn.functional.pad(f, (0, n_frames - f.shape[-1])) for f in features]
        )

    @contextlib.contextmanager
    def _seeded_masking(self, frame_lengths):
        """Swap transformers' SpecAugment (global ``np.random``) for ours in this forward."""
        model = self.model

        def mask_hidden_states(hidden_states, mask_time_indices=None, attention_mask=None):
            if not (self.training and self.spec_augment is not None
                    and self.mask_rng is not None):
                return hidden_states
            return self._apply_spec_augment(hidden_states, frame_lengths.tolist())

        model._mask_hidden_states = mask_hidden_states
        try:
            yield
        finally:
            del model._mask_hidden_states

    def _apply_spec_augment(self, hidden_states, frame_lengths):
        batch_size, n_frames, width = hidden_states.shape
        device = hidden_states.device
        time = self.spec_augment.time_mask(self.mask_rng, frame_lengths, n_frames)
        if time is not None and time.any():
            embed = self.model.masked_spec_embed.to(hidden_states.dtype)
            time = torch.from_numpy(time).to(device)[..., None]
            hidden_states = torch.where(time, embed, hidden_states)
        feature = self.spec_augment.feature_mask(self.mask_rng, batch_size, width)
        if feature is not None and feature.any():
            hidden_states = hidden_states.masked_fill(
                torch.from_numpy(feature).to(device)[:, None, :], 0.0
            )
        return hidden_states


class _GivenFeatures(nn.Module):
    """Stands in for the conv feature encoder, returning features computed beforehand."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, input_values):
        return self.features


@contextlib.contextmanager
def _replaced(module, name, replacement):
    """Swap the submodule ``name`` of ``module`` for ``replacement`` for a while."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def _zero_mean_unit_var(wave):
    """``(w - mean) / sqrt(var + 1e-7)`` as the feature extractor computes it, in float64
    for clips loud enough (peaks beyond about 1e19) to overflow the float32 variance."""
    with np.errstate(over="ignore", invalid="ignore"):
        var = wave.var()
    if not np.isfinite(var):
        wave = wave.astype(np.float64)
        var = wave.var()
    return ((wave - wave.mean()) / np.sqrt(var + 1e-7)).astype(np.float32)
