"""Persistence of fitted estimators: pickling support and a safe directory format.

transformers audio encoders with weight norm cannot be pickled as modules, and
pickles execute code when loaded. So fitted encoders are pickled as their config
plus a state dict of numpy arrays and rebuilt on load, and :func:`save_estimator` /
:func:`load_estimator` write a directory of safetensors weights plus a JSON manifest
that loads without unpickling anything. ``joblib.load`` / ``pickle.load`` execute
code from the file: use them on trusted files only.

:func:`save_pipeline` / :func:`load_pipeline` do the same for pipelines, each step
saved and loaded by its entry in one registry (``_step_formats``). Every save holds a
Hugging Face model card (``_model_card``). Saves are transactional (``_atomic_save``)
and loads check every value they read (``_manifest``, ``_load_checks``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import _atomic_save, _load_checks, _step_formats
from ._manifest import (FORMAT_VERSION, check_format_version, checked_weights_file,
                        from_json, json_bytes, json_value, read_manifest,
                        read_tensors, tensor_shapes, weights_entry)
from ._model_card import MODEL_CARD, model_card

__all__ = ["FORMAT_VERSION", "MANIFEST", "MODEL_CARD", "PIPELINE_MANIFEST", "WEIGHTS",
           "EncoderPersistenceMixin", "check_save_target", "load_estimator", "load_pipeline",
           "save_estimator", "save_pipeline"]

MANIFEST = "skaudio_confit.json"
WEIGHTS = "model.safetensors"
PIPELINE_MANIFEST = "pipeline.json"
# A directory holding one of these is a previous save, which a new save may replace.
_SAVE_MARKERS = (MANIFEST, PIPELINE_MANIFEST)
# Names a pipeline step cannot take: its files would clash with the save's own.
_RESERVED = ("", ".", "..", PIPELINE_MANIFEST, MODEL_CARD)


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


# Fitted encoders an estimator may hold; ``pretrained_backbone_`` is PairTune's
# untouched copy (``include_pretrained``), saved under PRETRAINED_PREFIX.
_BACKBONE_ATTRIBUTES = ("backbone_", "pretrained_backbone_")
PRETRAINED_PREFIX = "pretrained_backbone."
# Saves with a pretrained copy are format 2 (older readers refuse them plainly);
# every other save stays format 1, readable by every release.
_BASE_FORMAT, _PRETRAINED_FORMAT = 1, 2


class EncoderPersistenceMixin:
    """Pickling and safe save/load for estimators holding a fitted ``backbone_``."""

    # Fitted attributes other than the encoder that save() writes to the manifest.
    _json_fitted_attributes = ("classes_", "history_", "n_features_in_")

    def __getstate__(self):
        state = dict(super().__getstate__())
        for name in _BACKBONE_ATTRIBUTES:
            if name in state:
                state[name] = backbone_state(state[name])
        return state

    def __setstate__(self, state):
        state = dict(state)
        for name in _BACKBONE_ATTRIBUTES:
            if isinstance(state.get(name), dict):
                state[name] = backbone_from_state(state[name])
        super().__setstate__(state)

    def save(self, directory, *, overwrite=False, card_sections=None):
        """Write the fitted estimator to ``directory`` (safetensors + JSON, no pickle).

        Besides the weights and the manifest, the save holds a model card
        (``MODEL_CARD.md``, a Hugging Face model card) saying what was saved and how
        to load it. The save is transactional: it is written to a fresh sibling
        directory, loaded back, and only then moved into place, so a failure at any
        point leaves a previous save in ``directory`` loadable and unchanged.

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing. A previous save there is replaced.
        overwrite : bool, default=False
            Replace ``directory`` even if it is a non-empty directory that does not
            hold a previous save (everything in it is removed). Without it, such a
            directory raises ``FileExistsError``.
        card_sections : dict of str to str, optional
            Further sections of the model card, ``{heading: Markdown}`` (e.g. what
            data the model was trained on).
        """
        save_estimator(self, directory, overwrite=overwrite, card_sections=card_sections)

    @classmethod
    def load(cls, directory):
        """Load an estimator written by :meth:`save`, validating it first.

        Never unpickles: weights come from safetensors, everything else from JSON.
        Raises ``ValueError`` naming the file if the files were altered or truncated,
        or hold parameters, fitted attributes or weights that are not valid (see
        :func:`load_estimator`); ``FileNotFoundError`` if there is no save.
        """
        return load_estimator(cls, directory)


def _estimator_files(estimator):
    """``{file name: bytes}`` of a fitted estimator's save; all checks come first."""
    from safetensors.numpy import save as safetensors_bytes
    from sklearn.utils.validation import check_is_fitted

    from . import __version__

    check_is_fitted(estimator)
    state = backbone_state(estimator.backbone_)
    tensors = {k: np.ascontiguousarray(v) for k, v in state["state_dict"].items()}
    pretrained = getattr(estimator, "pretrained_backbone_", None)
    if pretrained is not None:
        tensors.update({PRETRAINED_PREFIX + k: np.ascontiguousarray(v)
                        for k, v in backbone_state(pretrained)["state_dict"].items()})
    fitted = {
        name: json_value(getattr(estimator, name))
        for name in estimator._json_fitted_attributes
        if hasattr(estimator, name)
    }
    weights = safetensors_bytes(tensors)
    manifest = {
        "format_version": _BASE_FORMAT if pretrained is None else _PRETRAINED_FORMAT,
        "package_version": __version__,
        "estimator": type(estimator).__name__,
        # Callbacks act in training only and are code, which this format does not hold.
        "params": json_value({**estimator.get_params(deep=False), "callbacks": None}),
        "backbone_config": state["config"],
        "do_normalize": state["do_normalize"],
        "fitted": fitted,
        "weights": weights_entry(WEIGHTS, tensors, weights),
    }
    if pretrained is not None:
        manifest["pretrained_weights"] = True
    return {WEIGHTS: weights, MANIFEST: json_bytes(manifest)}


def _card_file(steps, load_code, sections):
    """``{MODEL_CARD: bytes}`` of the card of a save holding ``steps``."""
    if sections is not None and not (
        isinstance(sections, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in sections.items())
    ):
        raise TypeError("card_sections must be a dict of str headings to str Markdown, "
                        f"got {sections!r}.")
    return {MODEL_CARD: str(model_card(steps, load_code, sections)).encode()}


def _dir_name(directory):
    # The card shows the directory's own name, never the machine's path to it.
    return Path(directory).name if isinstance(directory, (str, os.PathLike)) else "MODEL_DIR"


def _write_tree(directory, files):
    for relative, data in files.items():
        path = directory / relative
        if not path.parent.exists():
            _atomic_save.make_dir(path.parent)
        _atomic_save.write_file(path, data)


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


def save_estimator(estimator, directory, *, overwrite=False, card_sections=None):
    """Write ``estimator`` (fitted, with ``backbone_``) as safetensors + JSON manifest,
    with a model card (``MODEL_CARD.md``; ``card_sections`` adds to it).

    Transactional: the files go to a fresh sibling directory, are loaded back with
    :func:`load_estimator`, and only then replace ``directory`` in one rename; on any
    failure ``directory`` is left as it was. See :func:`check_save_target` for which
    directories are refused.
    """
    files = _estimator_files(estimator)
    name = type(estimator).__name__
    files.update(_card_file(
        [("model", estimator)],
        f"from skaudio_confit import {name}\n\n"
        f"model = {name}.load({_dir_name(directory)!r})", card_sections))
    _atomic_save.save_directory(
        directory, lambda staging: _write_tree(staging, files),
        lambda staging: load_estimator(type(estimator), staging),
        markers=_SAVE_MARKERS, overwrite=overwrite,
    )


def load_estimator(cls, directory):
    """Validate and load what :func:`save_estimator` wrote, without unpickling.

    Everything the manifest claims is checked before it is used: parameters against
    the estimator's constraints, fitted attributes (shapes, classes, finiteness),
    the weight file's sha256, its header against the manifest and the backbone
    config (before any tensor is allocated), tensor dtypes and finiteness.
    """
    from .backbones import SUPPORTED_MODEL_TYPES

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"No saved model in {str(directory)!r}: {MANIFEST} is missing.")
    manifest = read_manifest(manifest_path)
    check_format_version(manifest.get("format_version"), manifest_path)
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
        estimator = cls(**{k: from_json(v) for k, v in params.items()})
        for name, value in fitted.items():
            setattr(estimator, name, from_json(value))
    except (TypeError, ValueError, KeyError, OverflowError):
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: a saved parameter or fitted "
            "attribute cannot be read."
        ) from None
    _load_checks.check_params(estimator, manifest_path)

    weights_path = checked_weights_file(directory, weights_file, sha256)
    found = tensor_shapes(weights_path)
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
    has_pretrained = manifest.get("pretrained_weights", False)
    if has_pretrained is not False and (has_pretrained is not True
                                        or not getattr(cls, "_keeps_pretrained", False)):
        raise ValueError(
            f"{str(manifest_path)!r} is not a valid manifest: pretrained_weights must be "
            f"true or absent, and only for an estimator that keeps pretrained weights."
        )
    described_shapes = {k: v[0] for k, v in described.items()}
    if has_pretrained:
        described_shapes.update({PRETRAINED_PREFIX + k: v
                                 for k, v in described_shapes.items()})
    if described_shapes != found:
        raise ValueError(
            f"Saved weights in {str(directory)!r} do not fit the saved {model_type} backbone "
            "config: tensor names or shapes differ from what the config describes."
        )
    tensors = read_tensors(weights_path)
    parts = {"backbone_": {k: v for k, v in tensors.items()
                           if not k.startswith(PRETRAINED_PREFIX)}}
    if has_pretrained:
        parts["pretrained_backbone_"] = {k[len(PRETRAINED_PREFIX):]: v
                                         for k, v in tensors.items()
                                         if k.startswith(PRETRAINED_PREFIX)}
    del tensors
    backbones = {}
    for name, part in parts.items():
        _load_checks.check_tensors(part, described, weights_path)
        try:
            backbones[name] = backbone_from_state(
                {"config": backbone_config, "do_normalize": do_normalize, "state_dict": part}
            )
        except (RuntimeError, KeyError, TypeError, ValueError):
            raise ValueError(
                f"Saved weights in {str(directory)!r} do not fit the saved {model_type} "
                "backbone config: tensor names or shapes differ from what the config "
                "describes."
            ) from None
    backbone = backbones["backbone_"]
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
    for name, value in backbones.items():
        setattr(estimator, name, value)
    return estimator


# What building a transformers config or model from hostile values may raise.
_CONFIG_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError,
                  RecursionError, ImportError, RuntimeError, ZeroDivisionError)




def _step_name(name):
    """A step name that can name the step's files in the save."""
    if (not isinstance(name, str) or name in _RESERVED or Path(name).name != name
            or "\\" in name):
        raise ValueError(f"Step name {name!r} cannot name a file of the save; rename the step.")
    return name


def _pipeline_files(pipeline):
    """``{relative path: bytes}`` of a pipeline's save; every step is checked first."""
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"save_pipeline needs a scikit-learn Pipeline, got "
                        f"{type(pipeline).__name__}.")
    files, specs = {}, []
    for name, step in pipeline.steps:
        kind, fmt = _step_formats.format_of(name, step)
        entries, step_files = fmt.dump(name, step)
        if step_files:
            _step_name(name)
        clash = {p.split("/")[0] for p in step_files} & {p.split("/")[0] for p in files}
        if clash:
            raise ValueError(f"Step {name!r} would write {sorted(clash)}, which another "
                             "step writes too; rename the step.")
        files.update(step_files)
        specs.append({"name": name, "kind": kind, **entries})
    files[PIPELINE_MANIFEST] = json_bytes({"format_version": _BASE_FORMAT, "steps": specs})
    return files


def save_pipeline(pipeline, directory, *, overwrite=False, card_sections=None):
    """Write a fitted ``Pipeline`` in the safe format (no pickle), with a model card.

    The steps may be skaudio-confit estimators (``PairTuneTransformer``,
    ``FineTuneClassifier``, ``LinearHeadClassifier``) and the scikit-learn steps
    ``StandardScaler`` and ``LogisticRegression``. Each audio-encoder step is saved
    into a sub-directory named after the step, a ``LinearHeadClassifier``'s weights
    into ``STEP.safetensors``; parameters and the other fitted values go to
    ``pipeline.json``, and ``MODEL_CARD.md`` (a Hugging Face model card) says what was
    saved and how to load it. The save is transactional: every step is checked
    before anything is written, the whole pipeline goes to a fresh sibling
    directory, is loaded back with :func:`load_pipeline`, and only then replaces
    ``directory`` in one rename. A failure at any point leaves a previous save there
    loadable and unchanged.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Fitted.
    directory : str or os.PathLike
        Created if missing. A previous save (estimator or pipeline) there is replaced.
    overwrite : bool, default=False
        Replace ``directory`` even if it is a non-empty directory that is not a
        previous save (everything in it is removed); without it, ``FileExistsError``.
    card_sections : dict of str to str, optional
        Further sections of the model card, ``{heading: Markdown}`` (e.g. what data
        the model was trained on).

    Raises
    ------
    ValueError
        A step has no safe format (use joblib for such pipelines), or a step's
        parameters hold objects that cannot be saved as JSON.
    """
    files = _pipeline_files(pipeline)
    files.update(_card_file(
        pipeline.steps,
        "from skaudio_confit.persistence import load_pipeline\n\n"
        f"model = load_pipeline({_dir_name(directory)!r})", card_sections))
    _atomic_save.save_directory(
        directory, lambda staging: _write_tree(staging, files), load_pipeline,
        markers=_SAVE_MARKERS, overwrite=overwrite,
    )


def load_pipeline(directory):
    """Load what :func:`save_pipeline` wrote, validating every part, without unpickling.

    Each step is loaded by the format of its kind and checked like a saved estimator
    (see :func:`load_estimator`): parameters against the step's constraints, fitted
    arrays for shape, finiteness and agreement with the width of the previous step's
    output, weight files against their sha256 and header.
    """
    from sklearn.pipeline import Pipeline

    directory = Path(directory)
    path = directory / PIPELINE_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No saved pipeline in {str(directory)!r}: {PIPELINE_MANIFEST} is missing.")
    manifest = read_manifest(path)
    check_format_version(manifest.get("format_version"), path)
    try:
        specs = manifest["steps"]
        if not isinstance(specs, list) or not specs:
            raise TypeError("steps must be a non-empty list")
        steps, width = [], None
        for spec in specs:
            cls, fmt = _step_formats.format_named(spec["kind"], path)
            step, width = fmt.load(cls, spec, directory, width, path)
            steps.append((spec["name"], step))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid pipeline manifest: {exc}") from None
    pipeline = Pipeline(steps)
    try:
        pipeline._validate_steps()  # names and step kinds, as fit would check them
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid pipeline manifest: {exc}") from None
    return pipeline
