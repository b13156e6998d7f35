"""Persistence of fitted estimators: pickling support and a safe directory format.

transformers audio encoders with weight norm cannot be pickled as modules, and
pickles execute code when loaded. So fitted encoders are pickled as their config
plus a state dict of numpy arrays and rebuilt on load, and :func:`save_estimator` /
:func:`load_estimator` write a directory of safetensors weights plus a JSON manifest
that loads without unpickling anything. ``joblib.load`` / ``pickle.load`` execute
code from the file: use them on trusted files only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "skaudio_confit.json"
WEIGHTS = "model.safetensors"


def backbone_state(backbone):
    """A picklable description of a backbone: config dict, front-end flag, weights."""
    return {
        "config": backbone.config.to_dict(),
        "do_normalize": getattr(backbone, "do_normalize", True),
        "state_dict": {k: v.detach().cpu().numpy() for k, v in backbone.model.state_dict().items()},
    }


def _config_from_dict(config_dict):
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)


def backbone_from_state(state):
    """Rebuild a backbone (on the CPU, in eval mode) from :func:`backbone_state`."""
    import torch

    from .backbones import build_backbone

    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in state["state_dict"].items()}
    backbone = build_backbone(
        _config_from_dict(state["config"]), state_dict, do_normalize=state["do_normalize"]
    )
    return backbone.eval()


class EncoderPersistenceMixin:
    """Pickling and safe save/load for estimators holding a fitted ``backbone_``."""

    # Fitted attributes other than the encoder that save() writes to the manifest.
    _json_fitted_attributes = ("classes_", "history_", "n_features_in_")

    def __getstate__(self):
        state = super().__getstate__()
        if "backbone_" in state:
            state = dict(state)
            state["backbone_"] = backbone_state(state["backbone_"])
        return state

    def __setstate__(self, state):
        if isinstance(state.get("backbone_"), dict):
            state = dict(state)
            state["backbone_"] = backbone_from_state(state["backbone_"])
        super().__setstate__(state)

    def save(self, directory):
        """Write the fitted estimator to ``directory`` (safetensors + JSON, no pickle).

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing; existing files of a previous save are replaced.
        """
        save_estimator(self, directory)

    @classmethod
    def load(cls, directory):
        """Load an estimator written by :meth:`save`, validating it first.

        Never unpickles: weights come from safetensors, everything else from JSON.
        Raises ``ValueError`` if the files were altered or truncated.
        """
        return load_estimator(cls, directory)


def _json_value(value):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"Cannot save a value of type {type(value).__name__} ({value!r}) in the safe "
        "format; use an int or None for random_state, or joblib for arbitrary objects."
    )


def _from_json(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        if value["dtype"] == "object":
            out = np.empty(len(value["__ndarray__"]), dtype=object)
            out[:] = value["__ndarray__"]
            return out
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    return value


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_estimator(estimator, directory):
    """Write ``estimator`` (fitted, with ``backbone_``) as safetensors + JSON manifest."""
    from safetensors.numpy import save_file
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    check_is_fitted(estimator)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = backbone_state(estimator.backbone_)
    tensors = {k: np.ascontiguousarray(v) for k, v in state["state_dict"].items()}
    fitted = {
        name: _json_value(getattr(estimator, name))
        for name in estimator._json_fitted_attributes
        if hasattr(estimator, name)
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "estimator": type(estimator).__name__,
        "params": _json_value(estimator.get_params(deep=False)),
        "backbone_config": state["config"],
        "do_normalize": state["do_normalize"],
        "fitted": fitted,
        "weights": {
            "file": WEIGHTS,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
        },
    }
    weights_path = directory / WEIGHTS
    save_file(tensors, str(weights_path))
    manifest["weights"]["sha256"] = _sha256(weights_path)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _check_format_version(version, path):
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{str(path)!r} is not a valid manifest: format_version {version!r} is not a "
            "positive integer."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"Saved model format version {version!r} is not supported by this version of "
            f"skaudio-confit (reads up to {FORMAT_VERSION}); upgrade the package."
        )


def _file_inside(directory, name, what):
    """``directory / name`` if ``name`` is a plain file name; refuse anything that could
    point outside ``directory`` (``../x``, absolute paths, links leading elsewhere)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name
            or "\\" in name):
        raise ValueError(
            f"The manifest in {str(directory)!r} names {what} {name!r}, which is not a plain "
            "name inside that directory; refusing to read it."
        )
    path = directory / name
    if path.exists() and directory.resolve() not in path.resolve().parents:
        raise ValueError(
            f"{what.capitalize()} {str(path)!r} leads outside {str(directory)!r}; refusing "
            "to read it."
        )
    return path


def _read_manifest(path):
    """The manifest at ``path`` as a dict, or a ValueError saying why it is not one."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{str(path)!r} is not a valid manifest: expected a JSON object, got "
            f"{type(manifest).__name__}."
        )
    return manifest


def load_estimator(cls, directory):
    """Validate and load what :func:`save_estimator` wrote, without unpickling."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from .backbones import SUPPORTED_MODEL_TYPES

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"No saved model in {str(directory)!r}: {MANIFEST} is missing.")
    manifest = _read_manifest(manifest_path)
    _check_format_version(manifest.get("format_version"), manifest_path)
    if manifest.get("estimator") != cls.__name__:
        raise ValueError(
            f"{str(directory)!r} holds a {manifest.get('estimator')!r}, not a {cls.__name__}."
        )
    try:
        weights, params, fitted = manifest["weights"], manifest["params"], manifest["fitted"]
        config, do_normalize = manifest["backbone_config"], manifest["do_normalize"]
        weights_file, sha256 = weights["file"], weights["sha256"]
        expected = {k: tuple(v) for k, v in weights["tensors"].items()}
        model_type = config["model_type"]
        if not (isinstance(params, dict) and isinstance(fitted, dict)):
            raise TypeError("params and fitted must be JSON objects")
    except KeyError as exc:
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: no {exc} entry."
        ) from None
    except (TypeError, AttributeError):
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: an entry has the wrong type."
        ) from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{str(manifest_path)!r} names an unsupported backbone type {model_type!r}."
        )
    unknown = sorted(set(params) - set(cls._get_param_names()))
    unknown += sorted(set(fitted) - set(cls._json_fitted_attributes))
    if unknown:
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest for a {cls.__name__}: unknown "
            f"entries {unknown[:5]}."
        )
    weights_path = _file_inside(directory, weights_file, "weight file")
    if not weights_path.is_file():
        raise FileNotFoundError(f"Weight file {str(weights_path)!r} is missing.")
    if _sha256(weights_path) != sha256:
        raise ValueError(
            f"Weight file {str(weights_path)!r} does not match the sha256 in the manifest: "
            "it was altered or truncated."
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Could not read weights {str(weights_path)!r}: {exc}") from None
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise ValueError(
            f"The weights in {str(weights_path)!r} do not match the manifest "
            f"(missing: {sorted(set(expected) - set(found))[:5]}, "
            f"unexpected: {sorted(set(found) - set(expected))[:5]}, "
            f"shape or name differences in {len(set(expected.items()) ^ set(found.items()))})."
        )
    try:
        estimator = cls(**{k: _from_json(v) for k, v in params.items()})
        for name, value in fitted.items():
            setattr(estimator, name, _from_json(value))
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: a saved parameter or fitted "
            "attribute cannot be read."
        ) from None
    try:
        estimator.backbone_ = backbone_from_state(
            {"config": config, "do_normalize": do_normalize, "state_dict": tensors}
        )
    except (RuntimeError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"Saved weights in {str(directory)!r} do not fit the saved {model_type} backbone "
            "config: tensor names or shapes differ from what the config describes."
        ) from None
    return estimator


# Plain scikit-learn steps the safe pipeline format knows: their fitted attributes,
# all numpy arrays or scalars, go to JSON.
_SKLEARN_STEPS = {
    "LogisticRegression": (
        "sklearn.linear_model", ("coef_", "intercept_", "classes_", "n_iter_", "n_features_in_")
    ),
    "StandardScaler": (
        "sklearn.preprocessing", ("mean_", "var_", "scale_", "n_samples_seen_", "n_features_in_")
    ),
}
PIPELINE_MANIFEST = "pipeline.json"


def check_save_target(directory, *, overwrite=False):
    """Raise if saving into ``directory`` would clobber something; write nothing.

    ``directory`` may be missing, empty, or a previous save of ours (it holds
    ``pipeline.json`` or ``skaudio_confit.json``); anything else needs
    ``overwrite=True``.

    Raises
    ------
    FileExistsError
        ``directory`` is a file, or a non-empty directory that is not a previous save
        and ``overwrite`` is False.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{str(directory)!r} exists and is not a directory.")
    if (directory.is_dir() and not overwrite and any(directory.iterdir())
            and not (directory / PIPELINE_MANIFEST).is_file()
            and not (directory / MANIFEST).is_file()):
        raise FileExistsError(
            f"{str(directory)!r} is not empty and is not a saved skaudio-confit model; "
            "refusing to write into it (pass overwrite=True to do so)."
        )


def save_pipeline(pipeline, directory, *, overwrite=False):
    """Write a fitted ``Pipeline`` of skaudio-confit estimators and known scikit-learn
    steps (LogisticRegression, StandardScaler) in the safe format (no pickle).

    Each audio-encoder step is saved with its own ``save`` into a sub-directory;
    the other steps' parameters and fitted arrays go to ``pipeline.json``. A
    non-empty ``directory`` that is not a previous save is refused unless
    ``overwrite`` (see :func:`check_save_target`).
    """
    check_save_target(directory, overwrite=overwrite)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    steps = []
    for name, step in pipeline.steps:
        kind = type(step).__name__
        if isinstance(step, EncoderPersistenceMixin):
            step.save(directory / name)
            steps.append({"name": name, "kind": kind, "directory": name})
        elif kind in _SKLEARN_STEPS:
            fitted = {a: _json_value(getattr(step, a)) for a in _SKLEARN_STEPS[kind][1]
                      if hasattr(step, a)}
            steps.append({"name": name, "kind": kind,
                          "params": _json_value(step.get_params()), "fitted": fitted})
        else:
            raise ValueError(
                f"Step {name!r} ({kind}) has no safe format; supported steps are "
                f"skaudio-confit estimators and {', '.join(_SKLEARN_STEPS)}. Use joblib "
                "for other pipelines."
            )
    (directory / PIPELINE_MANIFEST).write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "steps": steps}, indent=2))


def load_pipeline(directory):
    """Load what :func:`save_pipeline` wrote, validating every part, without unpickling."""
    import importlib

    from sklearn.pipeline import Pipeline

    from . import FineTuneClassifier, PairTuneTransformer

    directory = Path(directory)
    path = directory / PIPELINE_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"No saved pipeline in {str(directory)!r}: {PIPELINE_MANIFEST} is missing.")
    manifest = _read_manifest(path)
    _check_format_version(manifest.get("format_version"), path)
    try:
        encoders = {c.__name__: c for c in (PairTuneTransformer, FineTuneClassifier)}
        steps = []
        for spec in manifest["steps"]:
            kind = spec["kind"]
            if kind in encoders:
                step = encoders[kind].load(
                    _file_inside(directory, spec["directory"], "step directory")
                )
            elif kind in _SKLEARN_STEPS:
                module = importlib.import_module(_SKLEARN_STEPS[kind][0])
                step = getattr(module, kind)(**{k: _from_json(v) for k, v in spec["params"].items()})
                unknown = sorted(set(spec["fitted"]) - set(_SKLEARN_STEPS[kind][1]))
                if unknown:
                    raise ValueError(
                        f"{str(path)!r} names unknown fitted attributes {unknown[:5]} for {kind}."
                    )
                for attr, value in spec["fitted"].items():
                    setattr(step, attr, _from_json(value))
            else:
                raise ValueError(f"{str(path)!r} names an unknown step kind {kind!r}.")
            steps.append((spec["name"], step))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid pipeline manifest: {exc}") from None
    return Pipeline(steps)
