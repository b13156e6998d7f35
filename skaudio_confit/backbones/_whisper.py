"""Adapter for Whisper's encoder, without the 30-second padding."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._base import AudioBackbone

_N_FFT = 400
_HOP = 160


class WhisperEncoderBackbone(AudioBackbone):
    """Whisper's audio encoder on clips of their own length.

    Whisper pads every input to 30 s; here the log-mel spectrogram of each clip is
    computed on its own, the positional table is cut to the clip's frame count and
    padded frames of a batch are masked (zeroed between the convolutions, excluded
    from attention), so a clip's embedding does not depend on what it is batched with.
    The front end matches ``WhisperFeatureExtractor`` (log10 mel power, clamped
    8 dB below the clip's peak, scaled by ``(x + 4) / 4``).
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
        mel = self._mel_power(wave)
        if not torch.isfinite(mel).all():
            mel = self._mel_power(wave.double())
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).to(wave.dtype)

    def _mel_power(self, wave):
        window = self.window.to(wave.device, wave.dtype)
        stft = torch.stft(wave, _N_FFT, _HOP, window=window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        return self.mel_filters.to(wave.device, wave.dtype) @ power

    def featurize(self, waves):
        with torch.no_grad():
            mels = [self.log_mel(torch.from_numpy(np.asarray(w, dtype=np.float32))) for w in waves]
        lengths = [m.shape[1] for m in mels]
        features = torch.zeros(len(mels), mels[0].shape[0], max(lengths))
        for i, m in enumerate(mels):
            features[i, :, : m.shape[1]] = m
        return {"input_features": features, "lengths": torch.tensor(lengths)}

    def forward(self, batch, layer=-1):
        index = self.check_layer(layer)
        enc = self.model
        features, lengths = batch["input_features"], batch["lengths"]
        features = features.to(enc.conv1.weight.dtype)
        padded = bool((lengths != features.shape[-1]).any())

        def time_mask(n_frames, frame_lengths):
            return torch.arange(n_frames, device=features.device)[None, :] < frame_lengths[:, None]

        hidden = nn.functional.gelu(enc.conv1(features))
        if padded:  # padded frames must look like conv2's own zero padding
            hidden = hidden * time_mask(hidden.shape[-1], lengths)[:, None, :]
        hidden = nn.functional.gelu(enc.conv2(hidden))
        frame_lengths = (lengths + 1) // 2
        frame_mask = time_mask(hidden.shape[-1], frame_lengths)
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
