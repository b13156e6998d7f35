"""Persistence of fitted estimators: pickling support and a safe directory format.

transformers audio encoders with weight norm cannot be pickled as modules, and
pickles execute code when loaded. So fitted encoders are pickled as their config
plus a state dict of numpy arrays and rebuilt on load, and :func:`save_estimator` /
:func:`load_estimator` write a directory of safetensors weights plus a JSON manifest
that loads without unpickling anything. ``joblib.load`` / ``pickle.load`` execute
code from the file: use them on trusted files only.

Saves are transactional (``_atomic_save``) and loads check every value they read
(``_load_checks``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from . import _atomic_save, _load_checks

FORMAT_VERSION = 1
MANIFEST = "skaudio_confit.json"
WEIGHTS = "model.safetensors"
PIPELINE_MANIFEST = "pipeline.json"
# A directory holding one of these is a previous save, which a new save may replace.
_SAVE_MARKERS = (MANIFEST, PIPELINE_MANIFEST)


def backbone_state(backbone):
    """A picklable description of a backbone: config dict, front-end flag, weights."""
    return {
        "config": backbone.config.to_dict(),
        "do_normalize": getattr(backbone, "do_normalize", True),
        "state_dict": {k: v.detach().cpu().numpy() for k, v in backbone.model.state_dict().items()},
    }


def _config_from_dict(config_dict):
    from transformers import CONFIG_MAPPING

    # The attention kernel is the package's choice, not the file's: a saved
    # "flash_attention_2" would need a package and a GPU and changes no result.
    config_dict = {k: v for k, v in config_dict.items()
                   if k not in ("_attn_implementation", "attn_implementation")}
    return CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)


def backbone_from_state(state):
    """Rebuild a backbone (on the CPU, in eval mode) from :func:`backbone_state`.

    ``state["config"]`` is a config dict, or an already built transformers config.
    """
    import torch

    from .backbones import build_backbone

    config = state["config"]
    if isinstance(config, dict):
        config = _config_from_dict(config)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in state["state_dict"].items()}
    backbone = build_backbone(config, state_dict, do_normalize=state["do_normalize"])
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

    def save(self, directory, *, overwrite=False):
        """Write the fitted estimator to ``directory`` (safetensors + JSON, no pickle).

        The save is transactional: it is written to a fresh sibling directory, loaded
        back, and only then moved into place, so a failure at any point leaves a
        previous save in ``directory`` loadable and unchanged.

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing. A previous save there is replaced.
        overwrite : bool, default=False
            Replace ``directory`` even if it is a non-empty directory that does not
            hold a previous save (everything in it is removed). Without it, such a
            directory raises ``FileExistsError``.
        """
        save_estimator(self, directory, overwrite=overwrite)

    @classmethod
    def load(cls, directory):
        """Load an estimator written by :meth:`save`, validating it first.

        Never unpickles: weights come from safetensors, everything else from JSON.
        Raises ``ValueError`` naming the file if the files were altered or truncated,
        or hold parameters, fitted attributes or weights that are not valid (see
        :func:`load_estimator`); ``FileNotFoundError`` if there is no save.
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


def _estimator_files(estimator):
    """``{file name: bytes}`` of a fitted estimator's save; all checks come first."""
    from safetensors.numpy import save as safetensors_bytes
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    check_is_fitted(estimator)
    state = backbone_state(estimator.backbone_)
    tensors = {k: np.ascontiguousarray(v) for k, v in state["state_dict"].items()}
    fitted = {
        name: _json_value(getattr(estimator, name))
        for name in estimator._json_fitted_attributes
        if hasattr(estimator, name)
    }
    weights = safetensors_bytes(tensors)
    manifest = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "estimator": type(estimator).__name__,
        # Callbacks act in training only and are code, which this format does not hold.
        "params": _json_value({**estimator.get_params(deep=False), "callbacks": None}),
        "backbone_config": state["config"],
        "do_normalize": state["do_normalize"],
        "fitted": fitted,
        "weights": {
            "file": WEIGHTS,
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "sha256": hashlib.sha256(weights).hexdigest(),
        },
    }
    return {WEIGHTS: weights, MANIFEST: _json_bytes(manifest)}


def _json_bytes(manifest):
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _write_files(directory, files):
    for name, data in files.items():
        _atomic_save.write_file(directory / name, data)


def check_save_target(directory, *, overwrite=False):
    """Check that :func:`save_pipeline` or ``save`` may write to ``directory``.

    Writes nothing, so a command can check its output before any long work.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the save would go.
    overwrite : bool, default=False
        Whether a non-empty directory that is not a previous save may be replaced.

    Raises
    ------
    FileExistsError
        ``directory`` is a file, or a non-empty directory holding neither
        ``skaudio_confit.json`` nor ``pipeline.json`` (a previous save, which a new
        save replaces) and ``overwrite`` is False.
    ValueError
        ``directory`` is a symbolic link (saves never write through links).
    PermissionError
        The directory could not be created or replaced.
    """
    _atomic_save.check_target(directory, _SAVE_MARKERS, overwrite=overwrite)


def save_estimator(estimator, directory, *, overwrite=False):
    """Write ``estimator`` (fitted, with ``backbone_``) as safetensors + JSON manifest.

    Transactional: the files go to a fresh sibling directory, are loaded back with
    :func:`load_estimator`, and only then replace ``directory`` in one rename; on any
    failure ``directory`` is left as it was. See :func:`check_save_target` for which
    directories are refused.
    """
    files = _estimator_files(estimator)
    _atomic_save.save_directory(
        directory, lambda staging: _write_files(staging, files),
        lambda staging: load_estimator(type(estimator), staging),
        markers=_SAVE_MARKERS, overwrite=overwrite,
    )


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
    except RecursionError:
        raise ValueError(f"{str(path)!r} is not a valid manifest: it is nested too "
                         "deeply.") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{str(path)!r} is not a valid manifest: expected a JSON object, got "
            f"{type(manifest).__name__}."
        )
    return manifest


def load_estimator(cls, directory):
    """Validate and load what :func:`save_estimator` wrote, without unpickling.

    Everything the manifest claims is checked before it is used: parameters against
    the estimator's constraints, fitted attributes (shapes, classes, finiteness),
    the weight file's sha256, its header against the manifest and the backbone
    config (before any tensor is allocated), tensor dtypes and finiteness.
    """
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
        if not (isinstance(params, dict) and isinstance(fitted, dict)
                and isinstance(config, dict) and isinstance(do_normalize, bool)):
            raise TypeError("params, fitted and backbone_config must be JSON objects")
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
    try:
        estimator = cls(**{k: _from_json(v) for k, v in params.items()})
        for name, value in fitted.items():
            setattr(estimator, name, _from_json(value))
    except (TypeError, ValueError, KeyError, OverflowError):
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: a saved parameter or fitted "
            "attribute cannot be read."
        ) from None
    _load_checks.check_params(estimator, manifest_path)

    weights_path = _file_inside(directory, weights_file, "weight file")
    if not weights_path.is_file():
        raise FileNotFoundError(f"Weight file {str(weights_path)!r} is missing.")
    if _sha256(weights_path) != sha256:
        raise ValueError(
            f"Weight file {str(weights_path)!r} does not match the sha256 in the manifest: "
            "it was altered or truncated."
        )
    found = _tensor_shapes(weights_path)
    if expected != found:
        raise ValueError(
            f"The weights in {str(weights_path)!r} do not match the manifest "
            f"(missing: {sorted(set(expected) - set(found))[:5]}, "
            f"unexpected: {sorted(set(found) - set(expected))[:5]}, "
            f"shape or name differences in {len(set(expected.items()) ^ set(found.items()))})."
        )
    # Sizes implied by the config are checked against the header before allocating.
    _load_checks.check_config_size(config, len(found), manifest_path)
    try:
        backbone_config = _config_from_dict(config)
        described = _load_checks.expected_tensors(backbone_config)
    except _CONFIG_ERRORS as exc:
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: the backbone config cannot "
            f"be built ({type(exc).__name__}: {exc})."
        ) from None
    if {k: v[0] for k, v in described.items()} != found:
        raise ValueError(
            f"Saved weights in {str(directory)!r} do not fit the saved {model_type} backbone "
            "config: tensor names or shapes differ from what the config describes."
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Could not read weights {str(weights_path)!r}: {exc}") from None
    _load_checks.check_tensors(tensors, described, weights_path)
    try:
        backbone = backbone_from_state(
            {"config": backbone_config, "do_normalize": do_normalize, "state_dict": tensors}
        )
    except (RuntimeError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"Saved weights in {str(directory)!r} do not fit the saved {model_type} backbone "
            "config: tensor names or shapes differ from what the config describes."
        ) from None
    # A transformer fitted frozen without labels (epochs=0, y=None) has no classes_ and
    # an empty history; any trained model must have its classes.
    history = getattr(estimator, "history_", None)
    frozen = cls._frozen_fit_without_labels and isinstance(history, list) and not history
    optional = ("classes_",) if frozen else ()
    _load_checks.check_encoder_fitted(estimator, cls._json_fitted_attributes,
                                      backbone.hidden_size, manifest_path, optional)
    try:
        estimator._check_backbone(backbone)
    except ValueError as exc:
        raise ValueError(f"{str(manifest_path)!r} is not a valid manifest: {exc}") from None
    estimator.backbone_ = backbone
    return estimator


# What building a transformers config or model from hostile values may raise.
_CONFIG_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError,
                  RecursionError, ImportError, RuntimeError, ZeroDivisionError)


def _tensor_shapes(path):
    """Tensor names and shapes from a safetensors header, without reading the data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Could not read weights {str(path)!r}: {exc}") from None


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


def _pipeline_files(pipeline):
    """``{relative path: bytes}`` of a pipeline's save; every step is checked first."""
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"save_pipeline needs a scikit-learn Pipeline, got "
                        f"{type(pipeline).__name__}.")
    files, steps = {}, []
    for name, step in pipeline.steps:
        kind = type(step).__name__
        if isinstance(step, EncoderPersistenceMixin):
            if (not isinstance(name, str) or name in ("", ".", "..", PIPELINE_MANIFEST)
                    or Path(name).name != name or "\\" in name):
                raise ValueError(
                    f"Step name {name!r} cannot name a sub-directory of the save; rename "
                    "the step."
                )
            for file_name, data in _estimator_files(step).items():
                files[f"{name}/{file_name}"] = data
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
    files[PIPELINE_MANIFEST] = json.dumps(
        {"format_version": FORMAT_VERSION, "steps": steps}, indent=2).encode()
    return files


def _write_tree(directory, files):
    for relative, data in files.items():
        path = directory / relative
        if not path.parent.exists():
            _atomic_save.make_dir(path.parent)
        _atomic_save.write_file(path, data)


def save_pipeline(pipeline, directory, *, overwrite=False):
    """Write a fitted ``Pipeline`` of skaudio-confit estimators and known scikit-learn
    steps (LogisticRegression, StandardScaler) in the safe format (no pickle).

    Each audio-encoder step is saved into a sub-directory named after the step; the
    other steps' parameters and fitted arrays go to ``pipeline.json``. The save is
    transactional: every step is checked before anything is written, the whole
    pipeline goes to a fresh sibling directory, is loaded back with
    :func:`load_pipeline`, and only then replaces ``directory`` in one rename. A
    failure at any point leaves a previous save there loadable and unchanged.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Fitted.
    directory : str or os.PathLike
        Created if missing. A previous save (estimator or pipeline) there is replaced.
    overwrite : bool, default=False
        Replace ``directory`` even if it is a non-empty directory that is not a
        previous save (everything in it is removed); without it, ``FileExistsError``.
    """
    files = _pipeline_files(pipeline)
    _atomic_save.save_directory(
        directory, lambda staging: _write_tree(staging, files), load_pipeline,
        markers=_SAVE_MARKERS, overwrite=overwrite,
    )


def load_pipeline(directory):
    """Load what :func:`save_pipeline` wrote, validating every part, without unpickling.

    Besides each encoder step's checks (see :func:`load_estimator`), the scikit-learn
    steps' parameters are validated and their fitted arrays checked for shape,
    finiteness and agreement with the width of the previous step's output.
    """
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
        specs = manifest["steps"]
        if not isinstance(specs, list) or not specs:
            raise TypeError("steps must be a non-empty list")
        steps, width = [], None
        for spec in specs:
            kind = spec["kind"]
            if kind in encoders:
                step = encoders[kind].load(
                    _file_inside(directory, spec["directory"], "step directory")
                )
                width = step.backbone_.hidden_size
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
                width = _load_checks.check_sklearn_step(kind, step, width, path)
            else:
                raise ValueError(f"{str(path)!r} names an unknown step kind {kind!r}.")
            steps.append((spec["name"], step))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid pipeline manifest: {exc}") from None
    pipeline = Pipeline(steps)
    try:
        pipeline._validate_steps()  # names and step kinds, as fit would check them
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid pipeline manifest: {exc}") from None
    return pipeline
