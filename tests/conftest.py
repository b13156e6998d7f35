"""Shared fixtures: tiny randomly initialised backbones and an audio-file writer.

Every model here is built from scratch (never downloaded), saved with
``save_pretrained`` into a session-wide temporary directory, and loaded back by the
tests through ``load_backbone(path)`` -- the same code path users take for hub ids.
They are seeded, so each test session sees the same weights, and small enough that
loading and running all of them takes well under a second each on a CPU.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# Keyword arguments shared by every tiny wav2vec2-family config: hidden 32, 2 layers,
# 2 heads and a two-layer conv stack with a receptive field of 45 samples and a
# stride of 20 samples (800 frames per second at 16 kHz).
TINY_WAV2VEC2_KWARGS = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16, 16),
    "conv_stride": (5, 4),
    "conv_kernel": (10, 8),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "vocab_size": 8,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_WHISPER_KWARGS = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_layers": 2,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 64,
    # A tiny vocabulary with token ids inside it, so that transformers does not warn
    # about special tokens outside the vocabulary.
    "vocab_size": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
    "begin_suppress_tokens": None,
    "suppress_tokens": None,
}

# Fixture names of the wav2vec2-family directories, for parametrised tests.
WAV2VEC2_FAMILY_FIXTURES = (
    "tiny_wav2vec2_group_dir",
    "tiny_wav2vec2_layer_dir",
    "tiny_hubert_dir",
    "tiny_wavlm_dir",
    "tiny_data2vec_audio_dir",
)
WHISPER_FIXTURES = ("tiny_whisper_encoder_dir", "tiny_whisper_full_dir")
ALL_BACKBONE_FIXTURES = WAV2VEC2_FAMILY_FIXTURES + WHISPER_FIXTURES


def _build(tmp_path_factory, name, seed, make_model):
    """Build a model under ``torch.manual_seed(seed)``, save it, return its directory."""
    torch.manual_seed(seed)
    model = make_model()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's torch work on one thread, then restore the previous count.

    Tiny models gain nothing from intra-op threads, and when other processes compete
    for the cores, spinning torch threads can make a test run 10-20x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_whisper_encoder_dir(tmp_path_factory):
    """A bare ``WhisperEncoder`` checkpoint (architectures == ["WhisperEncoder"])."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return _build(
        tmp_path_factory,
        "whisper_encoder",
        0,
        lambda: WhisperEncoder(WhisperConfig(**TINY_WHISPER_KWARGS)),
    )


@pytest.fixture(scope="session")
def tiny_whisper_full_dir(tmp_path_factory):
    """A full encoder-decoder ``WhisperModel`` checkpoint."""
    from transformers import WhisperConfig, WhisperModel

    return _build(
        tmp_path_factory,
        "whisper_full",
        1,
        lambda: WhisperModel(WhisperConfig(**TINY_WHISPER_KWARGS)),
    )


@pytest.fixture(scope="session")
def tiny_wav2vec2_group_dir(tmp_path_factory):
    """wav2vec2 with a group-norm feature encoder, like facebook/wav2vec2-base."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        **TINY_WAV2VEC2_KWARGS, feat_extract_norm="group", do_stable_layer_norm=False
    )
    return _build(tmp_path_factory, "wav2vec2_group", 2, lambda: Wav2Vec2Model(config))


@pytest.fixture(scope="session")
def tiny_wav2vec2_layer_dir(tmp_path_factory):
    """wav2vec2 with layer norm and stable layer norm, like wav2vec2-large-lv60."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        **TINY_WAV2VEC2_KWARGS, feat_extract_norm="layer", do_stable_layer_norm=True
    )
    return _build(tmp_path_factory, "wav2vec2_layer", 3, lambda: Wav2Vec2Model(config))


@pytest.fixture(scope="session")
def tiny_hubert_dir(tmp_path_factory):
    """HuBERT with the default (group-norm) feature encoder, like hubert-base-ls960."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**TINY_WAV2VEC2_KWARGS)
    return _build(tmp_path_factory, "hubert", 4, lambda: HubertModel(config))


@pytest.fixture(scope="session")
def tiny_wavlm_dir(tmp_path_factory):
    """WavLM with the default (group-norm) feature encoder, like wavlm-base-plus."""
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(**TINY_WAV2VEC2_KWARGS)
    return _build(tmp_path_factory, "wavlm", 5, lambda: WavLMModel(config))


@pytest.fixture(scope="session")
def tiny_data2vec_audio_dir(tmp_path_factory):
    """data2vec-audio: layer-norm conv stack and a multi-layer positional conv.

    For data2vec-audio ``num_conv_pos_embeddings`` is the number of positional conv
    layers (5 in facebook/data2vec-audio-base); two keep it tiny but still multi-layer.
    """
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    kwargs = {
        **TINY_WAV2VEC2_KWARGS,
        "num_conv_pos_embeddings": 2,
        "conv_pos_kernel_size": 5,
    }
    config = Data2VecAudioConfig(**kwargs)
    return _build(
        tmp_path_factory, "data2vec_audio", 6, lambda: Data2VecAudioModel(config)
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A (non-audio) BERT config saved locally, for the unsupported-type error."""
    from transformers import BertConfig

    path = tmp_path_factory.mktemp("bert")
    BertConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        vocab_size=10,
        pad_token_id=0,
    ).save_pretrained(path)
    return path


@pytest.fixture
def make_audio_file(tmp_path):
    """Factory writing an audio file with soundfile; the format follows the extension.

    ``make_audio_file("a.flac", data, rate, subtype=None)`` writes ``data`` (samples,
    or samples x channels as soundfile expects) and returns the file's ``Path``.
    """

    def make(name, data, rate, subtype=None):
        import soundfile as sf

        path = Path(tmp_path) / name
        sf.write(str(path), np.asarray(data), int(rate), subtype=subtype)
        return path

    return make


def sine(freq, rate, duration, amplitude=0.5):
    """A float32 sine of ``freq`` Hz, ``duration`` seconds long at ``rate`` Hz."""
    t = np.arange(round(rate * duration)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wave, rate):
    """Frequency, in Hz, of the highest peak of ``wave``'s magnitude spectrum."""
    wave = np.asarray(wave, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1.0 / rate)[int(np.argmax(spectrum))]


def make_class_sines(n_per_class=4, n_classes=3, seed=0, rate=16000, min_len=2400, max_len=6400):
    """Noisy sines whose frequency depends on the class, of varied lengths.

    Returns ``(X, y)``: a list of float32 clips and integer labels.
    """
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(n_classes):
        for _ in range(n_per_class):
            n = int(rng.integers(min_len, max_len))
            t = np.arange(n) / rate
            wave = 0.5 * np.sin(2 * np.pi * (300 + 700 * c) * t + rng.uniform(0, 2 * np.pi))
            X.append((wave + 0.05 * rng.standard_normal(n)).astype(np.float32))
            y.append(c)
    return X, np.array(y)


@functools.lru_cache(maxsize=None)
def tiny_whisper_checkpoint():
    """A tiny Whisper encoder saved once per session, for use at collection time.

    ``parametrize_with_checks`` builds its estimators while tests are collected, before
    fixtures exist, so it needs a plain function; the directory is removed at exit.
    """
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    path = tempfile.mkdtemp(prefix="skaudio_confit_checks_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        WhisperEncoder(WhisperConfig(**TINY_WHISPER_KWARGS)).save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------
# Tiny models whose configs behave like the real base checkpoints
# --------------------------------------------------------------------------------------

# Scaled-down size, shared by every family: hidden 32, 2 layers, and the base models'
# conv pattern (a wide first kernel with stride 5, then kernels 3 and 2 with stride 2)
# cut from 7 layers to 3: receptive field 30 samples, stride 20 samples (the real
# ones: 400 and 320), so a 10-frame mask span covers about 200 samples.
REALISTIC_SIZE = {
    **TINY_WAV2VEC2_KWARGS,
    "conv_dim": (16, 16, 16),
    "conv_kernel": (10, 3, 2),
    "conv_stride": (5, 2, 2),
}
REALISTIC_RECEPTIVE_FIELD = 30

# The behaviour-relevant fields of the real base checkpoints. The hub configs cannot
# be downloaded here; the values are those of transformers' config classes, whose
# defaults its documentation says reproduce these checkpoints (Wav2Vec2Config:
# facebook/wav2vec2-base-960h, same architecture and recipe as wav2vec2-base;
# HubertConfig: facebook/hubert-base-ls960; WavLMConfig: microsoft/wavlm-base;
# Data2VecAudioConfig: facebook/data2vec-audio-base-960h), written out here so that a
# change of a library default cannot silently change what is tested. The "large"
# wav2vec2 row follows the stable-layer-norm architecture of wav2vec2-large-lv60
# (layer-norm conv stack with conv biases, pre-norm transformer), as described in
# transformers' Wav2Vec2Config docstring.
SPEC_AUGMENT_OF_BASE_CHECKPOINTS = {
    "apply_spec_augment": True,
    "mask_time_prob": 0.05,
    "mask_time_length": 10,
    "mask_time_min_masks": 2,
    "mask_feature_prob": 0.0,
    "mask_feature_length": 10,
    "mask_feature_min_masks": 0,
    "layerdrop": 0.1,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
}
REALISTIC_CONFIGS = {
    "wav2vec2_base": ("Wav2Vec2", {"feat_extract_norm": "group",
                                   "do_stable_layer_norm": False, "conv_bias": False}),
    "wav2vec2_large_lv60": ("Wav2Vec2", {"feat_extract_norm": "layer",
                                         "do_stable_layer_norm": True, "conv_bias": True}),
    "hubert_base": ("Hubert", {"feat_extract_norm": "group", "do_stable_layer_norm": False,
                               "conv_bias": False, "feat_proj_layer_norm": True}),
    "wavlm_base": ("WavLM", {"feat_extract_norm": "group", "do_stable_layer_norm": False,
                             "conv_bias": False, "num_buckets": 320,
                             "max_bucket_distance": 800}),
    # data2vec-audio's conv stack is always layer-norm; 5 positional conv layers of
    # kernel 19 in the real model, 2 of kernel 5 here.
    "data2vec_audio_base": ("Data2VecAudio", {"conv_bias": False,
                                              "num_conv_pos_embeddings": 2,
                                              "conv_pos_kernel_size": 5}),
}


def realistic_config(family):
    """The tiny config of ``family`` (a key of ``REALISTIC_CONFIGS``)."""
    import transformers

    prefix, fields = REALISTIC_CONFIGS[family]
    config_class = getattr(transformers, f"{prefix}Config")
    return config_class(**{**REALISTIC_SIZE, **SPEC_AUGMENT_OF_BASE_CHECKPOINTS, **fields})


@functools.lru_cache(maxsize=None)
def realistic_checkpoint(family):
    """A tiny random ``family`` model saved with ``save_pretrained``, once per session.

    A plain function (not a fixture) so that ``parametrize_with_checks`` can use it
    at collection time; the directory is removed at exit.
    """
    import transformers

    prefix, _ = REALISTIC_CONFIGS[family]
    path = tempfile.mkdtemp(prefix=f"skaudio_confit_{family}_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(sorted(REALISTIC_CONFIGS).index(family))
        getattr(transformers, f"{prefix}Model")(realistic_config(family)).save_pretrained(path)
    return path
