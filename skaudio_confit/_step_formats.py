"""The registry of pipeline steps the safe format knows, for saving and loading alike.

Each savable class maps to a :class:`StepFormat`: ``dump`` turns a fitted step into
its entries in ``pipeline.json`` and its files, ``load`` does the reverse and checks
everything it reads (see ``_load_checks``). :func:`save_pipeline` and
:func:`load_pipeline` both dispatch through :func:`registry`, so a step that can be
saved can be loaded. Classes are matched exactly: a subclass may hold state or
behaviour its parent's format would lose, so it is refused at save time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from . import _load_checks
from ._manifest import (checked_weights_file, file_inside, from_json, json_value,
                        read_tensors, tensor_shapes, weights_entry)


@dataclasses.dataclass(frozen=True)
class StepFormat:
    """How one class of pipeline step is saved and loaded.

    ``dump(name, step)`` returns ``(entries, files)``: the step's entries in the
    pipeline manifest and ``{path relative to the save: bytes}``. ``load(cls, spec,
    directory, width, path)`` returns ``(step, output width or None)``; ``width`` is
    the output width of the previous step (None if unknown) and ``path`` the
    manifest, named in errors.
    """

    dump: Callable
    load: Callable


def _invalid(path, problem):
    return ValueError(f"{str(path)!r} is not a valid pipeline manifest: {problem}")


# -------------------------------------------------------------- audio encoders


def _dump_encoder(name, step):
    from .persistence import _estimator_files as estimator_files

    return {"directory": name}, {f"{name}/{file}": data
                                 for file, data in estimator_files(step).items()}


def _load_encoder(cls, spec, directory, width, path):
    step = cls.load(file_inside(directory, spec["directory"], "step directory"))
    return step, step._n_features_out


# ------------------------------------------------ scikit-learn steps, all in JSON


def _sklearn_format(attributes):
    """Params and the fitted ``attributes`` (arrays and scalars) go to the manifest."""

    def dump(name, step):
        fitted = {a: json_value(getattr(step, a)) for a in attributes if hasattr(step, a)}
        return {"params": json_value(step.get_params()), "fitted": fitted}, {}

    def load(cls, spec, directory, width, path):
        kind = cls.__name__
        step = cls(**{k: from_json(v) for k, v in spec["params"].items()})
        unknown = sorted(set(spec["fitted"]) - set(attributes))
        if unknown:
            raise ValueError(
                f"{str(path)!r} names unknown fitted attributes {unknown[:5]} for {kind}."
            )
        for attr, value in spec["fitted"].items():
            setattr(step, attr, from_json(value))
        return step, _load_checks.check_sklearn_step(kind, step, width, path)

    return StepFormat(dump, load)


# ------------------------------------------------------- LinearHeadClassifier


@functools.cache
def _head_classes():
    """The classes a saved head's parameters may name, by name: nothing else loads."""
    import torch
    from skorch.dataset import Dataset
    from torch.utils.data import DataLoader

    from .heads import LinearHead

    named = {"skaudio_confit.heads.LinearHead": LinearHead,
             "torch.nn.CrossEntropyLoss": torch.nn.CrossEntropyLoss,
             "torch.utils.data.DataLoader": DataLoader, "skorch.dataset.Dataset": Dataset}
    named.update({f"torch.optim.{n}": c for n, c in vars(torch.optim).items()
                  if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
                  and c is not torch.optim.Optimizer})
    return named


# The head's parameters that hold a class, not a value.
_HEAD_CLASS_PARAMS = ("module", "criterion", "optimizer", "iterator_train", "iterator_valid",
                      "dataset")
_HEAD_FITTED = ("classes_", "n_features_in_", "feature_names_in_", "history_")


def _head_param(name, key, value):
    import torch

    if key in _HEAD_CLASS_PARAMS:
        names = {c: n for n, c in _head_classes().items()}
        if not (isinstance(value, type) and value in names):
            raise ValueError(
                f"Step {name!r} (LinearHeadClassifier): {key}={value!r} has no safe format "
                "(it saves the default classes, and torch.optim optimizers by name). Use "
                "joblib for this pipeline."
            )
        return {"__class__": names[value]}
    if isinstance(value, torch.device):
        return str(value)
    try:
        return json_value(value)
    except ValueError:
        raise ValueError(
            f"Step {name!r} (LinearHeadClassifier): {key}={value!r} has no safe format "
            "(only JSON values are saved; set it to None, or use joblib for this pipeline)."
        ) from None


def _dump_head(name, step):
    from safetensors.numpy import save as safetensors_bytes
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(step)
    params = {k: _head_param(name, k, v) for k, v in step.get_params(deep=False).items()}
    tensors = {k: np.ascontiguousarray(v.detach().cpu().numpy())
               for k, v in step.module_.state_dict().items()}
    fitted = {a: json_value(getattr(step, a)) for a in _HEAD_FITTED[:-1] if hasattr(step, a)}
    try:
        fitted["history_"] = json_value(list(step.history_))
    except ValueError:
        raise ValueError(
            f"Step {name!r} (LinearHeadClassifier): its history_ holds values that are not "
            "JSON (recorded by a callback?); use joblib for this pipeline."
        ) from None
    data, file_name = safetensors_bytes(tensors), f"{name}.safetensors"
    entries = {"params": params, "fitted": fitted,
               "weights": weights_entry(file_name, tensors, data)}
    return entries, {file_name: data}


def _head_value(key, value, path):
    if key not in _HEAD_CLASS_PARAMS:
        try:
            return from_json(value)
        except (TypeError, ValueError, KeyError, OverflowError):
            raise _invalid(path, f"LinearHeadClassifier parameter {key} cannot be "
                                 "read.") from None
    named = value.get("__class__") if isinstance(value, dict) else None
    if named not in _head_classes():
        raise _invalid(path, f"LinearHeadClassifier parameter {key} names {value!r}, "
                             "which is not a class the safe format may load.")
    return _head_classes()[named]


def _load_head(cls, spec, directory, width, path):
    import torch
    from skorch.history import History

    from ._device import resolve_device
    from .heads import _ROUTED_PREFIXES

    params, fitted, weights = spec["params"], spec["fitted"], spec["weights"]
    if not all(isinstance(v, dict) for v in (params, fitted, weights)):
        raise TypeError("params, fitted and weights of a LinearHeadClassifier must be objects")
    names = cls._get_param_names()
    unknown = sorted(k for k in params if k not in names and not k.startswith(_ROUTED_PREFIXES))
    unknown += sorted(set(fitted) - set(_HEAD_FITTED))
    if unknown:
        raise _invalid(path, f"unknown LinearHeadClassifier entries {unknown[:5]}.")
    params = {k: _head_value(k, v, path) for k, v in params.items()}
    try:
        head = cls(**params)
        values = {a: from_json(v) for a, v in fitted.items()}
    except (TypeError, ValueError, KeyError, OverflowError):
        raise _invalid(path, "a LinearHeadClassifier parameter or fitted attribute cannot "
                             "be read.") from None
    _load_checks.check_params(head, path)
    history = values.pop("history_", [])
    vars(head).update(values)
    n_classes, n_features = _load_checks.check_head_fitted(head, history, width, path)
    weights_path = checked_weights_file(directory, weights["file"], weights["sha256"])
    found = tensor_shapes(weights_path)
    # The header must describe a linear layer of these sizes before any is allocated.
    if sorted(found.values()) != sorted([(n_classes, n_features), (n_classes,)]):
        raise _invalid(path, f"the weights in {str(weights_path)!r} do not fit "
                             f"{n_features} features and {n_classes} classes.")
    device = None if head.device is None else str(resolve_device(head.device))
    try:
        with torch.random.fork_rng(devices=[]):  # initialising must not draw from the RNG
            net = head._build_net(n_features, n_classes, device).initialize()
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise _invalid(path, f"the LinearHeadClassifier cannot be built "
                             f"({type(exc).__name__}: {exc}).") from None
    expected = {k: (tuple(v.shape), torch.empty(0, dtype=v.dtype).numpy().dtype)
                for k, v in net.module_.state_dict().items()}
    if {k: v[0] for k, v in expected.items()} != found:
        raise _invalid(path, f"the tensors in {str(weights_path)!r} are not those of the "
                             "head's module.")
    tensors = read_tensors(weights_path)
    _load_checks.check_tensors(tensors, expected, weights_path)
    net.module_.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    net.history_ = History(history)
    head.net_, head.device_ = net, device
    return head, None


# ---------------------------------------------------------------- the registry


@functools.cache
def registry():
    """``{class: StepFormat}`` of every step a safe pipeline save may hold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .finetune import FineTuneClassifier
    from .heads import LinearHeadClassifier
    from .pairtune import PairTuneTransformer

    encoder = StepFormat(_dump_encoder, _load_encoder)
    return {
        PairTuneTransformer: encoder,
        FineTuneClassifier: encoder,
        LinearHeadClassifier: StepFormat(_dump_head, _load_head),
        LogisticRegression: _sklearn_format(
            ("coef_", "intercept_", "classes_", "n_iter_", "n_features_in_")),
        StandardScaler: _sklearn_format(
            ("mean_", "var_", "scale_", "n_samples_seen_", "n_features_in_")),
    }


def _supported():
    return ", ".join(cls.__name__ for cls in registry())


def format_of(name, step):
    """The kind name and format of a step to save, or a ValueError saying why not."""
    fmt = registry().get(type(step))
    if fmt is None:
        raise ValueError(
            f"Step {name!r} ({type(step).__name__}) has no safe format; supported steps "
            f"are {_supported()}. Use joblib for other pipelines."
        )
    return type(step).__name__, fmt


def format_named(kind, path):
    """The class and format a pipeline manifest's ``kind`` names."""
    for cls, fmt in registry().items():
        if cls.__name__ == kind:
            return cls, fmt
    raise ValueError(f"{str(path)!r} names an unknown step kind {kind!r}.")
