"""Tests for the backbone adapters, their loading, and batched pooled embedding.

Every backbone is a tiny randomly initialised model saved locally by the fixtures in
``conftest.py`` and loaded through ``load_backbone(path)``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import (
    ALL_BACKBONE_FIXTURES,
    WAV2VEC2_FAMILY_FIXTURES,
    WHISPER_FIXTURES,
    sine,
)
from safetensors.torch import load_file

from skaudio_confit._windows import split_windows
from skaudio_confit._device import resolve_device
from skaudio_confit._pooling import (
    CPU_BATCH_ROWS,
    embed_waveforms,
    inference_batches,
    length_batches,
    masked_mean,
)
from skaudio_confit.backbones import (
    SUPPORTED_MODEL_TYPES,
    AudioBackbone,
    Wav2Vec2FamilyBackbone,
    WhisperEncoderBackbone,
    build_backbone,
    load_backbone,
)

SR = 16000

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# What each tiny checkpoint must report. data2vec-audio's stacked positional convs
# depend on padding; group-norm feature encoders (wav2vec2-base, HuBERT, WavLM
# defaults) run clip by clip in the adapter, so they, layer-norm wav2vec2 and Whisper
# (masked by the adapter) do not.
EXPECTED = {
    "tiny_wav2vec2_group_dir": ("wav2vec2", Wav2Vec2FamilyBackbone, True),
    "tiny_wav2vec2_layer_dir": ("wav2vec2", Wav2Vec2FamilyBackbone, True),
    "tiny_hubert_dir": ("hubert", Wav2Vec2FamilyBackbone, True),
    "tiny_wavlm_dir": ("wavlm", Wav2Vec2FamilyBackbone, True),
    "tiny_data2vec_audio_dir": ("data2vec-audio", Wav2Vec2FamilyBackbone, False),
    "tiny_whisper_encoder_dir": ("whisper", WhisperEncoderBackbone, True),
    "tiny_whisper_full_dir": ("whisper", WhisperEncoderBackbone, True),
}

all_backbones = pytest.mark.parametrize("name", ALL_BACKBONE_FIXTURES)
wav2vec2_family = pytest.mark.parametrize("name", WAV2VEC2_FAMILY_FIXTURES)
whisper_backbones = pytest.mark.parametrize("name", WHISPER_FIXTURES)


@pytest.fixture(scope="module")
def loaded(request):
    """``loaded(fixture_name)``: the backbone in that fixture's directory, loaded once.

    Tests that mutate a backbone (freezing, training mode) load their own copy.
    """
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_backbone(request.getfixturevalue(name))
        return cache[name]

    return get


def random_clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def n_frames(backbone, n_samples):
    """Number of encoder frames for a clip of ``n_samples``, from the adapter's mask."""
    _, mask = backbone(backbone.featurize([np.zeros(n_samples, np.float32)]))
    return int(mask.sum())


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@all_backbones
def test_load_backbone_reports_its_geometry(name, loaded, request):
    backbone = loaded(name)
    model_type, cls, padding_invariant = EXPECTED[name]
    assert isinstance(backbone, cls)
    assert isinstance(backbone, AudioBackbone)
    assert backbone.config.model_type == model_type
    assert backbone.sampling_rate == SR
    assert backbone.hidden_size == 32
    assert backbone.num_layers == 2
    assert backbone.padding_invariant is padding_invariant
    assert not backbone.training
    params = list(backbone.parameters())
    assert params and all(
        p.dtype == torch.float32 and p.device.type == "cpu" for p in params
    )

    # min_samples is the shortest input giving one frame: one sample less gives none.
    with torch.no_grad():
        assert n_frames(backbone, backbone.min_samples) == 1
        if cls is Wav2Vec2FamilyBackbone:
            assert backbone.min_samples == 45  # conv kernels (10, 8), strides (5, 4)
            short = torch.tensor([backbone.min_samples - 1])
            assert int(backbone.model._get_feat_extract_output_lengths(short)) == 0
        else:
            assert backbone.min_samples == 400  # one STFT window


@all_backbones
def test_loaded_weights_are_the_saved_ones(name, loaded, request):
    backbone = loaded(name)
    saved = load_file(str(request.getfixturevalue(name) / "model.safetensors"))
    if name == "tiny_whisper_full_dir":
        saved = {
            k[len("encoder.") :]: v
            for k, v in saved.items()
            if k.startswith("encoder.")
        }
    state = backbone.model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@all_backbones
def test_loaded_weights_have_aligned_storage_of_their_own(name, loaded):
    """Weights left in the file's memory map sit at any offset, where MKL rounds
    matrix products otherwise: a fitted model and its saved copy then differed (the
    save/load tests compare their outputs bit for bit)."""
    backbone = loaded(name)
    tensors = list(backbone.model.parameters()) + list(backbone.model.buffers())
    assert all(t.data_ptr() % 64 == 0 for t in tensors)


def test_full_whisper_checkpoint_loads_as_its_encoder(loaded, tiny_whisper_full_dir):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = json.loads((tiny_whisper_full_dir / "config.json").read_text())
    assert config["architectures"] == ["WhisperModel"]
    backbone = loaded("tiny_whisper_full_dir")
    assert type(backbone.model) is WhisperEncoder
    names = [n for n, _ in backbone.named_parameters()]
    assert names
    assert not [n for n in names if "decoder" in n]
    saved = load_file(str(tiny_whisper_full_dir / "model.safetensors"))
    n_encoder = sum(v.numel() for k, v in saved.items() if k.startswith("encoder."))
    assert sum(p.numel() for p in backbone.parameters()) == n_encoder
    assert n_encoder < sum(v.numel() for v in saved.values())  # a decoder was dropped


def test_missing_local_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(
        FileNotFoundError, match=r"no_such_model.*no such local directory"
    ):
        load_backbone(missing)
    with pytest.raises(FileNotFoundError, match="no such local directory"):
        load_backbone(str(missing))


def test_local_directory_without_a_checkpoint(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(
        FileNotFoundError, match=r"save_pretrained \(config.json and weights\)"
    ):
        load_backbone(tmp_path)


def test_local_directory_with_config_but_no_weights(tmp_path, tiny_wav2vec2_layer_dir):
    shutil.copy(tiny_wav2vec2_layer_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_backbone(tmp_path)


def test_unsupported_model_type(tiny_bert_dir):
    with pytest.raises(
        ValueError, match="'bert' model; supported audio encoders are"
    ) as info:
        load_backbone(tiny_bert_dir)
    for model_type in ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"):
        assert model_type in str(info.value)
    assert set(SUPPORTED_MODEL_TYPES) == {
        "wav2vec2",
        "hubert",
        "wavlm",
        "data2vec-audio",
        "whisper",
    }


@pytest.mark.parametrize("bad", [123, 1.5, ["a"], b"bytes"])
def test_load_backbone_rejects_non_path_arguments(bad):
    with pytest.raises(TypeError, match="backbone must be None"):
        load_backbone(bad)


@pytest.mark.parametrize("do_normalize", [False, True])
def test_do_normalize_is_read_from_the_feature_extractor(
    tmp_path, tiny_wav2vec2_group_dir, loaded, do_normalize
):
    from transformers import Wav2Vec2FeatureExtractor

    path = tmp_path / "model"
    shutil.copytree(tiny_wav2vec2_group_dir, path)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(path)
    backbone = load_backbone(path)
    assert backbone.do_normalize is do_normalize
    assert loaded("tiny_wav2vec2_group_dir").do_normalize is True  # default without one
    wave = np.linspace(0.5, 1.0, 100, dtype=np.float32)
    values = backbone.featurize([wave])["input_values"][0].numpy()
    if do_normalize:
        assert abs(values.mean()) < 1e-5 and values.std() == pytest.approx(
            1.0, rel=1e-3
        )
    else:
        np.testing.assert_array_equal(values, wave)


@all_backbones
def test_build_backbone_from_config_and_state_dict_reproduces_embeddings(name, loaded):
    backbone = loaded(name)
    waves = random_clips([300, 1600, 4000], seed=1)
    expected = embed_waveforms(backbone, waves)
    kwargs = {}
    if isinstance(backbone, Wav2Vec2FamilyBackbone):
        kwargs["do_normalize"] = backbone.do_normalize
    rebuilt = build_backbone(backbone.config, backbone.model.state_dict(), **kwargs)
    assert type(rebuilt) is type(backbone)
    assert rebuilt.padding_invariant == backbone.padding_invariant
    assert rebuilt.min_samples == backbone.min_samples
    np.testing.assert_array_equal(embed_waveforms(rebuilt, waves), expected)

    torch.manual_seed(123)
    random_init = build_backbone(backbone.config)
    assert not np.allclose(embed_waveforms(random_init, waves), expected, atol=1e-3)


def test_build_backbone_rejects_a_mismatched_state_dict(loaded):
    backbone = loaded("tiny_wav2vec2_group_dir")
    state = dict(backbone.model.state_dict())
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="Missing key"):
        build_backbone(backbone.config, state)


# --------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------


@all_backbones
@pytest.mark.parametrize("layer", [-1, 0, 1])
def test_embed_waveforms_shape_dtype_finite(name, layer, loaded):
    backbone = loaded(name)
    waves = random_clips([1, 100, 800, 3200, 3200, 8000], seed=2)
    emb = embed_waveforms(backbone, waves, layer=layer, batch_size=4)
    assert emb.shape == (6, 32)
    assert emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    assert np.unique(emb.round(5), axis=0).shape[0] == 6  # every clip has its own row
    # Silence is finite too (zero variance must not divide by zero).
    silent = embed_waveforms(backbone, [np.zeros(2000, np.float32)], layer=layer)
    assert np.all(np.isfinite(silent))


@all_backbones
def test_layer_indices_and_aliases(name, loaded):
    backbone = loaded(name)
    waves = random_clips([2400, 5000], seed=3)
    by_layer = {
        k: embed_waveforms(backbone, waves, layer=k) for k in (-3, -2, -1, 0, 1, 2)
    }
    np.testing.assert_array_equal(by_layer[-1], by_layer[2])
    np.testing.assert_array_equal(by_layer[-2], by_layer[1])
    np.testing.assert_array_equal(by_layer[-3], by_layer[0])
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert not np.allclose(by_layer[a], by_layer[b], atol=1e-4), (a, b)


@wav2vec2_family
def test_wav2vec2_family_embeddings_match_transformers(name, loaded):
    """Mean of transformers' own hidden states, fed by its own feature extractor."""
    from transformers import Wav2Vec2FeatureExtractor

    backbone = loaded(name)
    wave = (
        random_clips([4321], seed=4)[0] + 0.2
    )  # a DC offset, removed by normalisation
    inputs = Wav2Vec2FeatureExtractor(do_normalize=True)(
        wave, sampling_rate=SR, return_tensors="pt"
    )
    with torch.no_grad():
        out = backbone.model(inputs.input_values, output_hidden_states=True)
    assert len(out.hidden_states) == backbone.num_layers + 1
    # The last layer is the encoder's final output (after the final layer norm of
    # stable-layer-norm models, which transformers 5 leaves out of hidden_states[-1]).
    for layer in range(backbone.num_layers):
        (emb,) = embed_waveforms(backbone, [wave], layer=layer)
        np.testing.assert_allclose(emb, out.hidden_states[layer][0].mean(0), atol=1e-5)
    for layer in (-1, backbone.num_layers):
        (last,) = embed_waveforms(backbone, [wave], layer=layer)
        np.testing.assert_allclose(last, out.last_hidden_state[0].mean(0), atol=1e-5)


@whisper_backbones
def test_whisper_embeddings_of_a_30s_clip_match_transformers(name, loaded):
    """A full 30 s clip needs no padding, so the adapter must equal Whisper's own encoder."""
    from transformers import WhisperFeatureExtractor

    backbone = loaded(name)
    wave = random_clips([30 * SR], seed=5)[0]
    features = WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=SR, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        out = backbone.model(features, output_hidden_states=True)
    for layer in range(backbone.num_layers + 1):
        (emb,) = embed_waveforms(backbone, [wave], layer=layer)
        np.testing.assert_allclose(emb, out.hidden_states[layer][0].mean(0), atol=1e-4)
    (last,) = embed_waveforms(backbone, [wave])
    np.testing.assert_allclose(last, out.last_hidden_state[0].mean(0), atol=1e-4)


@all_backbones
@pytest.mark.parametrize("layer", [-1, 1])
def test_batch_invariance(name, layer, loaded):
    """A clip's embedding is the same alone and in a shuffled batch of mixed lengths."""
    backbone = loaded(name)
    lengths = [30, 700, 1200, 1200, 1201, 2001, 3200, 1200]
    waves = random_clips(lengths, seed=6)
    alone = np.stack([embed_waveforms(backbone, [w], layer=layer)[0] for w in waves])
    order = np.random.default_rng(7).permutation(len(waves))
    batched = embed_waveforms(
        backbone, [waves[i] for i in order], layer=layer, batch_size=8
    )
    np.testing.assert_allclose(batched, alone[order], rtol=0, atol=1e-5)
    other = embed_waveforms(backbone, waves, layer=layer, batch_size=3)
    np.testing.assert_allclose(other, alone, rtol=0, atol=1e-5)


def padded_batch_error(backbone, waves):
    """Largest difference between clips embedded alone and padded together in one batch."""
    waves = [np.pad(w, (0, max(0, backbone.min_samples - len(w)))) for w in waves]
    with torch.inference_mode():
        hidden, mask = backbone(backbone.featurize(waves))
        together = masked_mean(hidden, mask).numpy()
        alone = []
        for w in waves:
            hidden, mask = backbone(backbone.featurize([w]))
            alone.append(masked_mean(hidden, mask)[0].numpy())
    return np.abs(together - np.stack(alone)).max()


@all_backbones
def test_padding_invariant_flag_is_truthful(name, loaded):
    """Backbones claiming padding invariance batch mixed lengths with zero padding."""
    backbone = loaded(name)
    waves = random_clips([500, 1600, 2001, 4800], seed=8)
    error = padded_batch_error(backbone, waves)
    if backbone.padding_invariant:
        assert error < 1e-5
    else:  # else embed_waveforms must only batch equal lengths (the test above)
        assert error > 1e-4


@pytest.mark.parametrize("name", ["tiny_wav2vec2_group_dir", "tiny_hubert_dir",
                                  "tiny_wavlm_dir"])
def test_group_norm_conv_runs_per_clip_and_the_transformer_batched(name, loaded):
    """Padding a group-norm conv stack changes its output; the adapter runs it clip by
    clip, batches the rest with an attention mask, and equals each clip alone."""
    backbone = loaded(name)
    assert backbone.conv_per_clip and backbone.padding_invariant
    waves = random_clips([800, 1600, 3000, 4800], seed=9)
    with torch.inference_mode():
        # The naive way: the whole model on a zero-padded batch, no attention mask.
        values = backbone.featurize(waves)["input_values"]
        naive = backbone.model(values).last_hidden_state
    alone = np.stack([embed_waveforms(backbone, [w])[0] for w in waves])
    assert np.abs(naive[0].mean(0).numpy() - alone[0]).max() > 1e-4
    assert padded_batch_error(backbone, waves) < 1e-5
    batches = length_batches([len(w) for w in waves], 4,
                             exact_length=not backbone.padding_invariant)
    assert len(batches) == 1  # mixed lengths share one batch
    np.testing.assert_allclose(
        embed_waveforms(backbone, waves), alone, rtol=0, atol=1e-5
    )


@all_backbones
@pytest.mark.parametrize("length", [1, 2, 44, 45, 399])
def test_clips_shorter_than_min_samples(name, length, loaded):
    backbone = loaded(name)
    wave = random_clips([length], seed=length)[0]
    (emb,) = embed_waveforms(backbone, [wave])
    assert emb.shape == (32,) and np.all(np.isfinite(emb))
    if length < backbone.min_samples:  # same as padding it to min_samples by hand
        padded = np.pad(wave, (0, backbone.min_samples - length))
        np.testing.assert_allclose(
            emb, embed_waveforms(backbone, [padded])[0], atol=1e-6
        )


@all_backbones
def test_long_clips_are_the_mean_of_their_windows(name, loaded):
    backbone = loaded(name)
    window = 2000
    long_wave, short_wave = random_clips([7100, 1500], seed=10)
    emb = embed_waveforms(backbone, [long_wave, short_wave], max_samples=window)
    windows = split_windows(long_wave, window)
    assert len(windows) == 4
    per_window = np.stack([embed_waveforms(backbone, [w])[0] for w in windows])
    np.testing.assert_allclose(emb[0], per_window.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(
        emb[1], embed_waveforms(backbone, [short_wave])[0], atol=1e-5
    )
    whole = embed_waveforms(backbone, [long_wave])[0]
    assert not np.allclose(emb[0], whole, atol=1e-4)  # windowing really happened


def test_max_samples_below_min_samples_is_raised_to_it(loaded):
    backbone = loaded("tiny_whisper_encoder_dir")
    wave = random_clips([1000], seed=11)[0]
    emb = embed_waveforms(backbone, [wave], max_samples=10)
    windows = split_windows(wave, backbone.min_samples)
    expected = np.mean([embed_waveforms(backbone, [w])[0] for w in windows], axis=0)
    np.testing.assert_allclose(emb[0], expected, atol=1e-5)


def test_embed_waveforms_counts_progress_and_restores_training_mode(tiny_hubert_dir):
    backbone = load_backbone(tiny_hubert_dir)

    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    counter = Counter()
    backbone.train()
    embed_waveforms(
        backbone, random_clips([500, 5000, 900]), max_samples=2000, progress=counter
    )
    assert counter.n == 1 + 3 + 1  # windows, not clips
    assert backbone.training
    backbone.eval()
    embed_waveforms(backbone, random_clips([500]))
    assert not backbone.training


@all_backbones
@pytest.mark.parametrize("layer", [3, -4, 100, 1.0, True, "1", None])
def test_invalid_layer(name, layer, loaded):
    backbone = loaded(name)
    with pytest.raises(ValueError, match=r"layer must be an integer in \[-3, 2\]"):
        embed_waveforms(backbone, random_clips([1000]), layer=layer)


# --------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------


@all_backbones
def test_freeze_feature_encoder_freezes_only_the_conv_stack(name, request):
    backbone = load_backbone(request.getfixturevalue(name))
    is_whisper = isinstance(backbone, WhisperEncoderBackbone)
    conv_prefixes = (
        ("model.conv1.", "model.conv2.")
        if is_whisper
        else ("model.feature_extractor.",)
    )
    # Frozen from the start by transformers: Whisper's sinusoidal positional table.
    always_frozen = {"model.embed_positions.weight"} if is_whisper else set()
    before = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert before == always_frozen

    backbone.freeze_feature_encoder()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    conv = {n for n, _ in backbone.named_parameters() if n.startswith(conv_prefixes)}
    assert conv and frozen == conv | always_frozen
    assert any(
        ".layers." in n for n, p in backbone.named_parameters() if p.requires_grad
    )
    encoder = backbone.feature_encoder()
    if hasattr(encoder, "_requires_grad"):
        assert encoder._requires_grad is False

    # In training, frozen convs get no gradient and the rest of the model does.
    torch.manual_seed(0)
    backbone.train()
    batch = backbone.featurize(random_clips([3000, 3000], seed=12))
    hidden, mask = backbone(batch)
    masked_mean(hidden, mask).pow(2).sum().backward()
    for n, p in backbone.named_parameters():
        if n in conv:
            assert p.grad is None, n
    trainable_with_grad = [
        n
        for n, p in backbone.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert trainable_with_grad
    assert not set(trainable_with_grad) & frozen
    first_after_conv = "model.layers.0." if is_whisper else "model.feature_projection."
    assert any(n.startswith(first_after_conv) for n in trainable_with_grad)


# --------------------------------------------------------------------------------------
# Whisper specifics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.03, 1.0, 7.3, 30.0])
def test_whisper_log_mel_matches_the_feature_extractor(seconds, loaded):
    """Our log-mel on a clip zero-padded to 30 s equals WhisperFeatureExtractor's output.

    The extractor zero-pads every clip to 30 s *before* the spectrogram, so its 8 dB
    floor is relative to the padded spectrogram; padding ours the same way must match.
    Without padding (``padding="longest"``) it must match ``featurize`` directly.
    """
    from transformers import WhisperFeatureExtractor

    backbone = loaded("tiny_whisper_encoder_dir")
    extractor = WhisperFeatureExtractor(feature_size=80)
    n = int(seconds * SR)
    rng = np.random.default_rng(13)
    wave = (sine(440, SR, seconds, 0.3)[:n] + 0.02 * rng.standard_normal(n)).astype(
        np.float32
    )
    reference = extractor(wave, sampling_rate=SR, return_tensors="np").input_features[0]
    padded = np.pad(wave, (0, 30 * SR - n))
    ours = backbone.log_mel(torch.from_numpy(padded)).numpy()
    assert ours.shape == reference.shape == (80, 3000)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)

    if n >= backbone.min_samples:
        unpadded = extractor(
            wave, sampling_rate=SR, return_tensors="np", padding="longest"
        ).input_features[0]
        features = backbone.featurize([wave])["input_features"][0].numpy()
        assert features.shape == unpadded.shape
        np.testing.assert_allclose(features, unpadded, rtol=0, atol=1e-4)


def test_whisper_featurize_pads_and_reports_lengths(loaded):
    backbone = loaded("tiny_whisper_encoder_dir")
    waves = random_clips([1600, 800, 3200], seed=14)
    batch = backbone.featurize(waves)
    lengths = batch["lengths"].tolist()
    assert lengths == [10, 5, 20]  # one mel frame per 160 samples
    assert batch["input_features"].shape == (3, 80, 20)
    for i, wave in enumerate(waves):
        alone = backbone.featurize([wave])["input_features"][0]
        torch.testing.assert_close(batch["input_features"][i, :, : lengths[i]], alone)
        assert torch.all(batch["input_features"][i, :, lengths[i] :] == 0)


@whisper_backbones
def test_whisper_clip_longer_than_30s_is_rejected_by_forward(name, loaded):
    backbone = loaded(name)
    assert backbone.max_samples == 30 * SR
    wave = random_clips([31 * SR], seed=15)[0]
    with (
        torch.inference_mode(),
        pytest.raises(
            ValueError,
            match=r"exceeds Whisper's positional table \(1500 frames, 30 s\)",
        ),
    ):
        backbone(backbone.featurize([wave]))
    # The same clip, windowed to the table's length, embeds fine.
    emb = embed_waveforms(backbone, [wave], max_samples=backbone.max_samples)
    assert emb.shape == (1, 32) and np.all(np.isfinite(emb))
    # Exactly 30 s fits.
    with torch.inference_mode():
        hidden, mask = backbone(backbone.featurize([wave[: 30 * SR]]))
    assert hidden.shape == (1, 1500, 32) and mask.all()


def test_whisper_frame_mask_matches_conv_output_lengths(loaded):
    backbone = loaded("tiny_whisper_encoder_dir")
    lengths = [400, 560, 720, 1600, 1760]
    with torch.inference_mode():
        _, mask = backbone(backbone.featurize(random_clips(lengths, seed=16)))
    for row, n in zip(mask, lengths):
        mel_frames = (
            n // 160
        )  # torch.stft(center=True) minus Whisper's dropped last frame
        assert int(row.sum()) == (mel_frames + 1) // 2
        assert row[: int(row.sum())].all()


# --------------------------------------------------------------------------------------
# Pooling helpers
# --------------------------------------------------------------------------------------


def test_masked_mean_ignores_masked_frames():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0]]))
    empty = masked_mean(hidden, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.all(torch.isfinite(empty))


@pytest.mark.parametrize("exact_length", [False, True])
def test_length_batches_cover_every_clip_once(exact_length):
    lengths = [5, 3, 5, 9, 3, 3, 5, 1, 9, 5]
    batches = length_batches(lengths, 2, exact_length=exact_length)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 2 for b in batches)
    if exact_length:
        assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    else:
        assert len(batches) == 5
    # Sorted by length, so padding is small, and deterministic.
    assert [lengths[i] for i in flat] == sorted(lengths)
    again = length_batches(lengths, 2, exact_length=exact_length)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


@pytest.mark.parametrize("exact_length", [False, True])
def test_length_batches_cut_at_max_rows(exact_length):
    lengths = [5, 3, 5, 9, 3, 3, 5, 1, 9, 5, 40]
    frames = [2 * n for n in lengths]  # rows of a batch: clips x the longest's frames
    uncut = length_batches(lengths, 4, exact_length=exact_length)
    batches = length_batches(lengths, 4, exact_length=exact_length, frames=frames,
                             max_rows=30)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == [lengths[i] for i in np.concatenate(uncut)]
    for batch in batches:
        assert 1 <= len(batch) <= 4
        # the 40-sample clip alone passes the limit, and goes in a batch of its own
        assert len(batch) * max(frames[i] for i in batch) <= 30 or len(batch) == 1
    assert len(batches) > len(uncut)
    # every cut is needed: joining a piece with the next clip of its batch passes it
    pieces = iter(batches)
    for batch in uncut:
        done = 0
        while done < len(batch):
            piece = next(pieces)
            done += len(piece)
            if done < len(batch):
                assert (len(piece) + 1) * frames[batch[done]] > 30


def test_inference_batches_are_cut_on_cpu_only(loaded):
    backbone = loaded("tiny_whisper_encoder_dir")
    long = 16000 * 25  # 1250 encoder frames: two such clips pass CPU_BATCH_ROWS
    assert 2 * backbone.encoder_frames(long) > CPU_BATCH_ROWS
    lengths = [long] * 4 + [1600] * 4
    cpu = inference_batches(backbone, lengths, 4, "cpu")
    assert [len(b) for b in cpu] == [4, 1, 1, 1, 1]
    assert [len(b) for b in inference_batches(backbone, lengths, 4, "meta")] == [4, 4]


@pytest.mark.parametrize("name", ["tiny_wav2vec2_layer_dir", "tiny_wav2vec2_group_dir"])
def test_conv_feature_encoder_runs_clip_by_clip_on_cpu(name, loaded, monkeypatch):
    """On CPU even an unpadded batch goes through the conv stack one clip at a time
    (faster there), with the same result as the batched stack."""
    backbone = loaded(name)
    waves = random_clips([3200] * 3, seed=4)
    calls = []
    encoder = backbone.model.feature_extractor
    monkeypatch.setattr(encoder, "forward", _counting(encoder.forward, calls))
    batch = backbone.featurize(waves)
    with torch.inference_mode():
        hidden, _ = backbone(batch)
        assert [c.shape[0] for c in calls] == [1, 1, 1]
        batched_features = encoder(batch["input_values"])
        calls.clear()
        expected = backbone.model.encoder(
            backbone.model.feature_projection(batched_features.transpose(1, 2))[0]
        ).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)
    with torch.inference_mode():
        backbone(backbone.featurize(waves[:1]))
    assert [c.shape[0] for c in calls] == [1]  # one clip: the stack as it is


def _counting(forward, calls):
    def counted(values):
        calls.append(values)
        return forward(values)
    return counted


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


def test_resolve_device_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["banana", "gpu", "cuda:x", "", 1.5, object()])
def test_resolve_device_nonsense(device):
    with pytest.raises(
        ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
    ):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0])
def test_resolve_device_cuda_unavailable(device):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(device)


def test_whisper_batched_featurize_equals_each_clips_own_log_mel(tiny_whisper_encoder_dir):
    """One batched STFT gives every clip exactly its own spectrogram, zeros beyond."""
    backbone = load_backbone(tiny_whisper_encoder_dir)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32)
             for n in (400, 401, 1599, 3333, 16000)]
    waves.append(np.zeros(1000, dtype=np.float32))  # silence: clamp at its own peak
    batch = backbone.featurize(waves)
    features, lengths = batch["input_features"], batch["lengths"]
    for i, wave in enumerate(waves):
        own = backbone.log_mel(torch.from_numpy(wave))
        assert int(lengths[i]) == own.shape[1]
        np.testing.assert_allclose(features[i, :, : own.shape[1]].numpy(), own.numpy(),
                                   atol=1e-5)
        assert not features[i, :, own.shape[1]:].any()


# --------------------------------------------------------------------------------------
# Weights that do not fit their config
# --------------------------------------------------------------------------------------


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["tiny_wav2vec2_group_dir", "tiny_whisper_encoder_dir",
                                  "tiny_whisper_full_dir"])
def test_checkpoint_with_more_layers_than_its_config_is_refused(name, request, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(request.getfixturevalue(name), path)
    key = "encoder_layers" if "whisper" in name else "num_hidden_layers"
    edit_config(path, **{key: 1})
    with pytest.raises(ValueError) as info:
        load_backbone(path)
    message = str(info.value)
    assert "the weights do not fit its" in message
    assert "have no place in the encoder" in message and "layers.1." in message
    assert f"{key}=1" in message
    assert "above report" not in message


def test_checkpoint_with_another_hidden_size_is_refused(tiny_wav2vec2_layer_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_wav2vec2_layer_dir, path)
    edit_config(path, hidden_size=48)
    with pytest.raises(ValueError, match=r"have another shape than the config describes "
                                         r"\(e\.g\. .*\(32.*\) in the checkpoint, \(48"):
        load_backbone(path)


def test_heads_of_pretraining_and_ctc_checkpoints_are_dropped(tmp_path, loaded):
    """Unexpected weights of heads (quantizer, lm_head) are normal: they load."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

    config = loaded("tiny_wav2vec2_group_dir").config
    for cls in (Wav2Vec2ForPreTraining, Wav2Vec2ForCTC):
        torch.manual_seed(0)
        full = cls(config)
        full.save_pretrained(tmp_path / cls.__name__)
        backbone = load_backbone(tmp_path / cls.__name__)
        for key, value in full.wav2vec2.state_dict().items():
            torch.testing.assert_close(backbone.model.state_dict()[key], value, rtol=0, atol=0)


def test_truncated_weights_file_is_named(tiny_hubert_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_hubert_dir, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors' is damaged or truncated"):
        load_backbone(path)
