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


def _is_local(source):
    local = Path(source)
    return local.is_absolute() or source.startswith(".") or local.exists()


def _load_error(source, exc):
    from huggingface_hub.errors import HFValidationError

    local = Path(source)
    if isinstance(exc, HFValidationError):
        # No network can help: the name is neither a directory nor a possible hub id.
        return ValueError(
            f"Could not load backbone {source!r}: it is not an existing local directory "
            f"and not a valid hub model id ({exc})"
        )
    if _is_local(source):
        if not local.exists():
            return FileNotFoundError(
                f"Could not load backbone from {source!r}: no such local directory."
            )
        return FileNotFoundError(
            f"Could not load backbone from {source!r}: {exc}. A local backbone must be a "
            "directory written by transformers' save_pretrained (config.json and weights)."
        )
    return OSError(
        f"Could not load backbone {source!r}: it is not a local directory, not (fully) in "
        f"the local Hugging Face cache, and could not be fetched from the hub "
        f"({type(exc).__name__}: {exc}). On a machine without network access, download "
        f"it beforehand on one with access (`hf download {source}`, or "
        f"`huggingface_hub.snapshot_download({source!r})` into the same HF_HOME cache), "
        "or save it with `save_pretrained` and pass that directory."
    )


class HubUnavailableError(OSError):
    """A hub id that is neither cached nor downloadable now (the message says what to do)."""


def _offline():
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:  # pragma: no cover - older huggingface_hub
        from huggingface_hub.constants import HF_HUB_OFFLINE

        return bool(HF_HUB_OFFLINE)
    return is_offline_mode()


def _check_hub_reachable(source):
    """One metadata request, without retries and with a short timeout, before going
    online: transformers would retry a failing connection for about half a minute.

    Raises the clear OSError of :func:`_load_error` when offline or unreachable;
    returns when the hub answered (even "no such repository": transformers reports
    that itself).
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    if _offline():
        raise HubUnavailableError(str(_load_error(source, OSError("HF_HUB_OFFLINE is set"))))
    try:
        get_hf_file_metadata(
            hf_hub_url(source, "config.json"), timeout=min(constants.HF_HUB_ETAG_TIMEOUT, 10)
        )
    except HfHubHTTPError:
        return  # the hub answered (404, 401, ...): transformers reports it
    except Exception as exc:  # no connection, DNS failure, timeout, proxy error
        raise HubUnavailableError(str(_load_error(source, exc))) from None


def _from_pretrained(loader, source, **kwargs):
    """``loader(source, **kwargs)``; for a hub id, from the local cache if it is there.

    A cached hub model is used as cached, without network access; only when it is
    missing from the cache is the hub asked (once, failing fast when unreachable).
    """
    if _is_local(source):
        return loader(source, **kwargs)
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(source)  # a ValueError that names the problem, before any request
    _check_hub_reachable(source)
    return loader(source, **kwargs)


def load_config(name_or_path=None):
    """Return ``(source, config)`` for a backbone reference, with clear errors."""
    from transformers import AutoConfig

    source = _resolve(name_or_path)
    try:
        config = _from_pretrained(AutoConfig.from_pretrained, source)
    except HubUnavailableError:
        raise
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


def _own_storage(model):
    """Give every parameter and buffer of ``model`` storage of its own.

    ``from_pretrained`` may leave tensors in the weights file's memory map, at any
    offset; MKL's matrix products round differently on data not aligned as torch's
    allocator aligns it (measured: 1e-7 on a linear layer), so a fitted model and the
    same weights saved and loaded gave other bits. Copies also free the file's pages.
    """
    with torch.no_grad():
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = param.data.clone(memory_format=torch.contiguous_format)
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.clone(memory_format=torch.contiguous_format)


def _weight_files(source):
    """The weight files of a local checkpoint directory."""
    local = Path(source)
    return sorted(f for pattern in ("*.safetensors", "*.bin") for f in local.glob(pattern))


def _check_loading_info(source, config, model, info):
    """Refuse weights that do not fit the config (``output_loading_info`` of loading).

    Missing weights, weights of another shape, and extra weights that belong to the
    encoder itself (more layers than the config has) would each leave a model other
    than the one saved. Extra weights of heads (a pre-training quantizer, a CTC
    ``lm_head``, Whisper's decoder) are expected and dropped.
    """
    problems = []
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        problems.append(f"{len(missing)} weights of the encoder are missing from the "
                        f"checkpoint (e.g. {missing[:3]})")
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        name, saved, expected = mismatched[0]
        problems.append(
            f"{len(mismatched)} weights have another shape than the config describes "
            f"(e.g. {name}: {tuple(saved)} in the checkpoint, {tuple(expected)} for a "
            f"hidden_size of {getattr(config, 'hidden_size', getattr(config, 'd_model', '?'))})"
        )
    own = {name for name, _ in model.named_children()}
    own |= {name for name, _ in model.named_parameters(recurse=False)}
    extra = sorted(k for k in info.get("unexpected_keys") or [] if k.split(".")[0] in own)
    if extra:
        problems.append(
            f"{len(extra)} weights of the checkpoint have no place in the encoder its "
            f"config describes (e.g. {extra[:3]}; more layers than "
            f"{_layer_count(config)}?)"
        )
    if problems:
        raise ValueError(
            f"Backbone {source!r}: the weights do not fit its {config.model_type} config: "
            + "; ".join(problems) + ". Does config.json belong to these weights?"
        )


def _layer_count(config):
    key = "encoder_layers" if config.model_type == "whisper" else "num_hidden_layers"
    return f"{key}={getattr(config, key, '?')}"


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
        extractor = _from_pretrained(AutoFeatureExtractor.from_pretrained, source)
        return bool(getattr(extractor, "do_normalize", True))
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
    from safetensors import SafetensorError
    from transformers import AutoModel, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    source, config = load_config(name_or_path)
    # Mismatched shapes are reported below, by name; without this transformers raises
    # a bare "look at the above report!" after a report that we keep quiet.
    kwargs = {"dtype": torch.float32, "output_loading_info": True,
              "ignore_mismatched_sizes": True}
    try:
        with _quiet_transformers():
            if config.model_type == "whisper":
                if "WhisperEncoder" in (config.architectures or []):
                    model, info = _from_pretrained(WhisperEncoder.from_pretrained, source,
                                                   **kwargs)
                    checked = model
                else:  # a full Whisper checkpoint: keep the encoder, drop the decoder
                    checked, info = _from_pretrained(WhisperModel.from_pretrained, source,
                                                     **kwargs)
                    model = checked.get_encoder()
                do_normalize = True
            else:
                model, info = _from_pretrained(AutoModel.from_pretrained, source, **kwargs)
                checked = model
                do_normalize = _do_normalize(source)
    except HubUnavailableError:
        raise
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    except ImportError as exc:  # e.g. config.json asking for flash_attention_2
        raise ValueError(
            f"Could not load backbone {source!r}: its config asks for a component that "
            f"cannot be used here ({exc}). If config.json sets `_attn_implementation`, "
            "remove that entry."
        ) from None
    except Exception as exc:  # SafetensorError, torch.load: an unreadable weights file
        if not _is_local(source) and not isinstance(exc, SafetensorError):
            raise
        files = (", ".join(repr(str(f)) for f in _weight_files(source))
                 if _is_local(source) else "") or "its weights file"
        raise ValueError(
            f"Could not read the weights of backbone {source!r}: {files} is damaged or "
            f"truncated ({exc})."
        ) from None
    _check_loading_info(source, config, checked, info)
    _own_storage(model)  # build_backbone's load_state_dict copies into fresh tensors
    backbone = _wrap(model, do_normalize)
    return backbone.eval()
