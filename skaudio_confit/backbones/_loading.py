"""Loading backbones by hub id, local directory, or the bundled default."""

from __future__ import annotations

import contextlib
import os
from importlib import resources
from pathlib import Path

import torch

from ._wav2vec2 import Wav2Vec2FamilyBackbone
from ._whisper import WhisperEncoderBackbone

WAV2VEC2_FAMILY = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
SUPPORTED_MODEL_TYPES = (*WAV2VEC2_FAMILY, "whisper")


def bundled_backbone_path():
    """Directory of the bundled Whisper tiny.en encoder (fp16 safetensors + config)."""
    return Path(str(resources.files("skaudio_confit.backbones") / "whisper_tiny_en"))


def _resolve(name_or_path):
    if name_or_path is None:
        return str(bundled_backbone_path())
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "backbone must be None (the bundled Whisper tiny.en encoder), a hub model id "
            f"or a local directory, got {type(name_or_path).__name__}."
        )
    return os.fspath(name_or_path)


def _load_error(source, exc):
    local = Path(source)
    if local.is_absolute() or source.startswith(".") or local.exists():
        if not local.exists():
            return FileNotFoundError(
                f"Could not load backbone from {source!r}: no such local directory."
            )
        return FileNotFoundError(
            f"Could not load backbone from {source!r}: {exc}. A local backbone must be a "
            "directory written by transformers' save_pretrained (config.json and weights)."
        )
    return OSError(
        f"Could not load backbone {source!r}: it is not a local directory and could not "
        f"be fetched from the Hugging Face hub ({type(exc).__name__}: {exc}). On a machine "
        "without network access, download it beforehand (e.g. `hf download "
        f"{source}` or `save_pretrained` to a directory) and pass that directory, or set "
        "HF_HUB_OFFLINE=1 to use the local cache."
    )


def load_config(name_or_path=None):
    """Return ``(source, config)`` for a backbone reference, with clear errors."""
    from transformers import AutoConfig

    source = _resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Backbone {source!r} is a {config.model_type!r} model; supported audio "
            f"encoders are {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    return source, config


def build_backbone(config, state_dict=None, do_normalize=True):
    """Build a backbone from a config, with weights from ``state_dict`` if given.

    Without ``state_dict`` the weights are randomly initialised; persistence uses this
    to rebuild a fitted encoder without unpickling transformers modules.
    """
    from transformers import AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if config.model_type == "whisper":
        model = WhisperEncoder(config)
    else:
        model = AutoModel.from_config(config)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return _wrap(model, do_normalize)


def _wrap(model, do_normalize):
    model = model.float()
    model.config.use_cache = False
    if model.config.model_type == "whisper":
        return WhisperEncoderBackbone(model)
    return Wav2Vec2FamilyBackbone(model, do_normalize=do_normalize)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' own progress bars and load reports while loading."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _do_normalize(source):
    """Read ``do_normalize`` from the checkpoint's feature extractor, default True."""
    from transformers import AutoFeatureExtractor

    try:
        return bool(getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", True))
    except (OSError, ValueError):
        return True


def load_backbone(name_or_path=None):
    """Load a pretrained audio encoder and wrap it in its adapter.

    Parameters
    ----------
    name_or_path : str, os.PathLike or None
        A hub model id (e.g. ``"facebook/wav2vec2-base"``), a local directory written
        by ``save_pretrained``, or None for the bundled Whisper tiny.en encoder, which
        loads offline through the same code path.

    Returns
    -------
    backbone : AudioBackbone
        In float32, in eval mode, on the CPU.
    """
    from transformers import AutoModel, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    source, config = load_config(name_or_path)
    try:
        with _quiet_transformers():
            if config.model_type == "whisper":
                if "WhisperEncoder" in (config.architectures or []):
                    model, info = WhisperEncoder.from_pretrained(
                        source, dtype=torch.float32, output_loading_info=True
                    )
                else:  # a full Whisper checkpoint: keep the encoder, drop the decoder
                    full, info = WhisperModel.from_pretrained(
                        source, dtype=torch.float32, output_loading_info=True
                    )
                    model = full.get_encoder()
                do_normalize = True
            else:
                model, info = AutoModel.from_pretrained(
                    source, dtype=torch.float32, output_loading_info=True
                )
                do_normalize = _do_normalize(source)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    if info.get("missing_keys"):
        # A checkpoint whose weights do not fit the architecture would silently
        # leave random weights: refuse it.
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"Backbone {source!r}: {len(missing)} weights of the {config.model_type} "
            f"encoder are missing from the checkpoint (e.g. {missing[:3]})."
        )
    backbone = _wrap(model, do_normalize)
    return backbone.eval()
