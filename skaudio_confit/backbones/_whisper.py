"""Adapter for Whisper's encoder, without the 30-second padding."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._base import AudioBackbone, pad_stack

_N_FFT = 400
_HOP = 160


class WhisperEncoderBackbone(AudioBackbone):
    """Whisper's audio encoder on clips of their own length.

    Whisper pads every input to 30 s; here the log-mel spectrogram of each clip is
    computed on its own, the positional table is cut to the clip's frame count and
    padded frames of a batch are masked (zeroed between the convolutions, excluded
    from attention), so a clip's embedding does not depend on what it is batched with.
    The front end matches ``WhisperFeatureExtractor`` (log10 mel power, clamped
    80 dB (8 in log10 power) below the clip's peak, scaled by ``(x + 4) / 4``).
    """

    padding_invariant = True

    def __init__(self, model):
        super().__init__(model)
        config = model.config
        self.sampling_rate = 16000
        self.hidden_size = int(config.d_model)
        self.num_layers = int(config.encoder_layers)
        self.min_samples = _N_FFT
        self.max_frames = int(config.max_source_positions)
        # Whisper's positional table is fixed (sinusoids). WhisperEncoder freezes it in
        # __init__, but from_pretrained in transformers 5 makes it trainable again.
        model.embed_positions.requires_grad_(False)
        import torchaudio

        filters = torchaudio.functional.melscale_fbanks(
            n_freqs=_N_FFT // 2 + 1,
            f_min=0.0,
            f_max=8000.0,
            n_mels=int(config.num_mel_bins),
            sample_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        # Buffers, not parameters: they travel with .to(device) but are never trained
        # nor saved in the encoder's state dict.
        self.register_buffer("mel_filters", filters.T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(_N_FFT), persistent=False)

    @property
    def max_samples(self):
        """Longest clip the positional table covers (30 s for OpenAI's checkpoints)."""
        return self.max_frames * 2 * _HOP

    def feature_encoder(self):
        # The convolutional stem; the positional table is frozen by transformers itself.
        return nn.ModuleList([self.model.conv1, self.model.conv2])

    def log_mel(self, wave):
        """Log-mel spectrogram (n_mels, n_frames) of one waveform, as Whisper computes it.

        Clips loud enough for the float32 power spectrum to overflow (peaks beyond
        about 1e17) are computed in float64, so their spectrogram stays finite.
        """
        mel = self._mel_power(wave)[..., :-1]  # Whisper drops the last STFT frame
        if not torch.isfinite(mel).all():
            mel = self._mel_power(wave.double())[..., :-1]
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).to(wave.dtype)

    def _mel_power(self, wave, center=True):
        window = self.window.to(wave.device, wave.dtype)
        stft = torch.stft(wave, _N_FFT, _HOP, window=window, center=center,
                          return_complex=True)
        return self.mel_filters.to(wave.device, wave.dtype) @ (stft.abs() ** 2)

    def featurize(self, waves):
        """Log-mel features of a batch, each clip's frames exactly its own ``log_mel``.

        One batched STFT instead of one per clip: each clip is reflect-padded by
        itself (what ``torch.stft(center=True)`` does) before the batch is zero-padded,
        so no frame of a clip sees another clip's padding; the clamp below each
        clip's own peak is taken over its real frames only.
        """
        pad = _N_FFT // 2
        lengths = torch.tensor([len(w) // _HOP for w in waves])
        padded = [np.pad(np.asarray(w, dtype=np.float32), pad, mode="reflect") for w in waves]
        batch = np.zeros((len(padded), max(len(p) for p in padded)), dtype=np.float32)
        for i, p in enumerate(padded):
            batch[i, : len(p)] = p
        n_frames = int(lengths.max())
        with torch.no_grad():
            x = torch.from_numpy(batch)
            mel = self._mel_power(x, center=False)[..., :n_frames]
            if not torch.isfinite(mel).all():
                mel = self._mel_power(x.double(), center=False)[..., :n_frames]
            log_spec = torch.clamp(mel, min=1e-10).log10()
            real = (torch.arange(n_frames)[None, :] < lengths[:, None])[:, None, :]
            peak = log_spec.masked_fill(~real, -torch.inf).amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - 8.0)
            features = ((log_spec + 4.0) / 4.0).float() * real
        return {"input_features": features, "lengths": lengths}

    def encoder_frames(self, n_samples):
        # One log-mel frame per hop, halved by conv2's stride (as in forward).
        return (int(n_samples) // _HOP + 1) // 2

    def _stem_frozen(self):
        return not any(p.requires_grad for p in self.feature_encoder().parameters())

    def front_end_frozen(self):
        # The log-mel has no parameters: always fixed; the conv stem when frozen too.
        return True

    def front_features(self, wave):
        """Log-mel (n_mels, frames) of one clip, or with a frozen conv stem its output
        (d_model, frames / 2); returned with the clip's log-mel frame count."""
        batch = self.featurize([wave])
        features, length = batch["input_features"], batch["lengths"]
        if not self._stem_frozen():
            return features[0], int(length[0])
        weight = self.model.conv1.weight
        with torch.no_grad():
            stem = self._stem(features.to(weight.device), length.to(weight.device))
        return stem[0].float().cpu(), int(length[0])

    def collate_front(self, items):
        key = "stem" if self._stem_frozen() else "input_features"
        return {key: pad_stack([t for t, _ in items]),
                "lengths": torch.tensor([n for _, n in items])}

    def _stem(self, features, lengths):
        """The conv stem (conv1, conv2 with GELUs) on log-mel features, padding masked."""
        enc = self.model
        features = features.to(enc.conv1.weight.dtype)
        hidden = nn.functional.gelu(enc.conv1(features))
        if bool((lengths != features.shape[-1]).any()):
            # Padded frames must look like conv2's own zero padding.
            hidden = hidden * _time_mask(hidden.shape[-1], lengths)[:, None, :]
        return nn.functional.gelu(enc.conv2(hidden))

    def forward(self, batch, layer=-1):
        index = self.check_layer(layer)
        enc = self.model
        lengths = batch["lengths"]
        if "stem" in batch:  # the frozen stem's output, computed once per clip
            hidden = batch["stem"].to(enc.conv1.weight.dtype)
            padded = bool(((lengths + 1) // 2 != hidden.shape[-1]).any())
        else:
            features = batch["input_features"]
            padded = bool((lengths != features.shape[-1]).any())
            hidden = self._stem(features, lengths)
        frame_lengths = (lengths + 1) // 2
        frame_mask = _time_mask(hidden.shape[-1], frame_lengths)
        n_frames = hidden.shape[-1]
        if n_frames > self.max_frames:
            raise ValueError(
                f"A clip of {n_frames} encoder frames exceeds Whisper's positional table "
                f"({self.max_frames} frames, {self.max_samples / self.sampling_rate:.0f} s); "
                "set max_duration to at most that."
            )
        hidden = hidden.permute(0, 2, 1) + enc.embed_positions.weight[:n_frames]
        hidden = nn.functional.dropout(hidden, p=enc.dropout, training=self.training)
        attention_mask = None
        if padded:
            attention_mask = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
            attention_mask.masked_fill_(~frame_mask, torch.finfo(hidden.dtype).min)
            attention_mask = attention_mask[:, None, None, :]
        for encoder_layer in enc.layers[: min(index, self.num_layers)]:
            if self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop:
                continue
            hidden = encoder_layer(hidden, attention_mask)
        if index == self.num_layers:
            hidden = enc.layer_norm(hidden)
        return hidden, frame_mask


def _time_mask(n_frames, frame_lengths):
    """(batch, n_frames) bool, True on the first ``frame_lengths`` frames of each row."""
    return torch.arange(n_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]
