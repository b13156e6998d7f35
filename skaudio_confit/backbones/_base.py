"""The interface every backbone adapter implements."""

from __future__ import annotations

import torch
from torch import nn


class AudioBackbone(nn.Module):
    """A transformers audio encoder behind one small interface.

    Subclasses wrap one family of encoders and provide the front end
    (:meth:`featurize`), the forward pass returning the hidden states of a chosen
    layer with a mask of real frames (:meth:`forward`), and a uniform way to freeze
    the convolutional feature encoder (:meth:`freeze_feature_encoder`).

    Attributes
    ----------
    model : transformers.PreTrainedModel
        The wrapped encoder. Its parameters are exactly the backbone's parameters.
    sampling_rate : int
        Rate, in Hz, of the waveforms the front end expects.
    hidden_size : int
        Width of the hidden states.
    num_layers : int
        Number of transformer layers; valid ``layer`` values are ``-num_layers - 1``
        to ``num_layers`` (0 is the input of the first layer, ``num_layers`` or -1
        the encoder's final output).
    min_samples : int
        Shortest waveform, in samples, that yields at least one frame; shorter clips
        are zero-padded to it.
    padding_invariant : bool
        Whether a clip's output is unchanged when it is zero-padded inside a batch.
        When False, clips are only batched with clips of exactly the same length.
    spec_augment : SpecAugment or None
        The masking applied in training (see :meth:`set_spec_augment`); None masks
        nothing.
    mask_rng : numpy.random.Generator or None
        Where training draws its masks from; set by the training loop for one fit.
        Without it nothing is masked, so masks never come from global state.
    """

    sampling_rate: int
    hidden_size: int
    num_layers: int
    min_samples: int
    padding_invariant: bool
    spec_augment = None
    mask_rng = None

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def check_layer(self, layer):
        """Return ``layer`` as a non-negative index, or raise ``ValueError``."""
        n = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n - 1 <= layer <= n:
            raise ValueError(
                f"layer must be an integer in [{-n - 1}, {n}] for this backbone "
                f"({n} transformer layers), got {layer!r}."
            )
        return layer % (n + 1)

    def set_spec_augment(self, mode):
        """Choose the masking applied in training: ``"auto"``, True or False.

        ``"auto"`` follows the checkpoint's config, True asks for its masks even where
        the config switches them off, False masks nothing. This adapter has no
        SpecAugment (Whisper's encoder is trained without it): True is an error.
        """
        if _is_true(mode):
            raise ValueError(
                f"spec_augment=True, but the {self.config.model_type} encoder has no "
                "SpecAugment in this package; use 'auto' or False."
            )
        self.spec_augment = None

    def featurize(self, waves):
        """Turn a list of float32 waveforms (at ``sampling_rate``) into a padded batch.

        Returns a dict of CPU tensors, among them ``lengths`` (real input length
        of each clip in the padded time axis).
        """
        raise NotImplementedError

    def forward(self, batch, layer=-1):
        """Return ``(hidden_states, frame_mask)`` for the batch from :meth:`featurize`.

        ``hidden_states`` has shape (batch, frames, hidden_size); ``frame_mask`` is a
        bool tensor (batch, frames), True on frames computed from real audio.
        """
        raise NotImplementedError

    def encoder_frames(self, n_samples):
        """Frames the transformer layers see for a (padded) clip of ``n_samples`` samples."""
        raise NotImplementedError

    def front_end_frozen(self):
        """Whether :meth:`front_features` stays fixed while training (may be cached).

        True when the front end has no trainable parameter: the fit then computes it
        once per clip (:mod:`skaudio_confit._front_cache`) instead of every epoch.
        """
        return False

    def front_features(self, wave):
        """The front end's output for one uncropped clip, as ``(tensor, length)``.

        The tensor (channels, frames) is on the CPU; ``length`` is what
        :meth:`collate_front` needs to rebuild the batch's masks. Only meaningful
        when :meth:`front_end_frozen`.
        """
        raise NotImplementedError

    def collate_front(self, items):
        """A batch for :meth:`forward` from :meth:`front_features` items.

        The same forward as on ``featurize`` of the clips, up to float rounding.
        """
        raise NotImplementedError

    def feature_encoder(self) -> nn.Module:
        """The convolutional front of the encoder, frozen by :meth:`freeze_feature_encoder`."""
        raise NotImplementedError

    def freeze_feature_encoder(self):
        """Stop gradient updates of the convolutional feature encoder (every family alike)."""
        module = self.feature_encoder()
        for param in module.parameters():
            param.requires_grad_(False)
        # transformers' conv feature encoders skip their own gradient bookkeeping
        # (and gradient checkpointing) when this flag is off.
        if hasattr(module, "_requires_grad"):
            module._requires_grad = False


def _is_true(mode):
    return not isinstance(mode, str) and bool(mode)


def batch_to(batch, device):
    """Move every tensor of a featurized batch to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pad_stack(tensors):
    """Zero-pad (channels, frames) tensors to the longest and stack them."""
    n_frames = max(t.shape[-1] for t in tensors)
    return torch.stack([nn.functional.pad(t, (0, n_frames - t.shape[-1])) for t in tensors])
