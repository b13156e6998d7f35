"""Checks of what a saved model claims, made while loading it, before it is used.

A manifest is data from outside: every parameter, fitted attribute and weight
tensor is checked here (values, shapes, dtypes, finiteness, consistency with the
backbone config), so that a tampered or damaged save fails at load with a
``ValueError`` naming the file and the problem, never later inside numpy or torch.
Sizes that the config implies are compared with the weight file's header before
anything is allocated.
"""

from __future__ import annotations

import numbers

import numpy as np

# Config entries that multiply the number of modules built: bounded by the number of
# tensors in the weight file before a model is even built on the meta device.
_LAYER_COUNTS = ("num_hidden_layers", "encoder_layers")
_LAYER_LISTS = ("conv_dim", "conv_kernel", "conv_stride")


def _invalid(path, problem):
    return ValueError(f"{str(path)!r} is not a valid saved model: {problem}")


def check_params(estimator, path):
    """Validate the loaded parameters against the estimator's own constraints."""
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        raise _invalid(path, exc) from None


def check_config_size(config, n_tensors, path):
    """Refuse configs that ask for more layers than the weight file holds tensors."""
    for key in _LAYER_COUNTS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= n_tensors):
            raise _invalid(path, f"backbone config {key}={value!r} does not fit the "
                                 f"{n_tensors} tensors of the weight file.")
    for key in _LAYER_LISTS:
        value = config.get(key)
        if value is not None and (not isinstance(value, list) or len(value) > n_tensors):
            raise _invalid(path, f"backbone config {key} does not fit the {n_tensors} "
                                 "tensors of the weight file.")


def expected_tensors(config):
    """``{name: (shape, numpy dtype)}`` of the state dict that ``config`` describes.

    The model is built on torch's meta device with weight initialisation off, so a
    config implying huge tensors costs nothing here.
    """
    import torch
    from transformers import AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from transformers.modeling_utils import no_init_weights

    with torch.device("meta"), no_init_weights():
        if config.model_type == "whisper":
            model = WhisperEncoder(config)
        else:
            model = AutoModel.from_config(config)
    model = model.float()
    return {
        name: (tuple(t.shape), torch.empty(0, dtype=t.dtype).numpy().dtype)
        for name, t in model.state_dict().items()
    }


def check_tensors(tensors, expected, path):
    """Weights must have the config's dtypes and hold only finite numbers."""
    for name, array in tensors.items():
        dtype = expected[name][1]
        if array.dtype != dtype:
            raise ValueError(
                f"Weight file {str(path)!r}: tensor {name!r} is {array.dtype}, the saved "
                f"backbone config expects {dtype}."
            )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(
                f"Weight file {str(path)!r}: tensor {name!r} holds NaN or infinite values."
            )


def _classes(value, path, what="classes_"):
    if not isinstance(value, np.ndarray) or value.ndim != 1 or len(value) < 2:
        raise _invalid(path, f"{what} must be a 1-D array of at least 2 class labels.")
    labels = value.tolist()
    if any(isinstance(v, float) and not np.isfinite(v) for v in labels):
        raise _invalid(path, f"{what} holds NaN or infinite labels.")
    try:
        unique = len(set(labels)) == len(labels)
    except TypeError:
        raise _invalid(path, f"{what} holds labels that are not hashable.") from None
    if not unique:
        raise _invalid(path, f"{what} holds repeated labels.")
    return len(labels)


def _float_array(value, shape, path, what):
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise _invalid(path, f"{what} must be an array of numbers.")
    if value.shape != shape:
        raise _invalid(path, f"{what} has shape {value.shape}, expected {shape}.")
    if not np.all(np.isfinite(value)):
        raise _invalid(path, f"{what} holds NaN or infinite values.")


def _count(value, path, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _invalid(path, f"{what} must be a positive integer, got {value!r}.")


def _history(value, path):
    if not isinstance(value, list) or not all(
        isinstance(r, dict) and all(isinstance(k, str) for k in r) for r in value
    ):
        raise _invalid(path, "history_ must be a list of per-epoch records.")


# Fitted attributes saved by an encoder estimator that may be absent.
OPTIONAL_ENCODER_ATTRIBUTES = ("n_features_in_",)


def check_encoder_fitted(estimator, names, hidden_size, path, optional=()):
    """Validate the fitted attributes ``names`` that :func:`load_estimator` set.

    ``optional`` names attributes that may be absent besides
    ``OPTIONAL_ENCODER_ATTRIBUTES`` (e.g. ``classes_`` of a frozen fit without labels).
    """
    optional = OPTIONAL_ENCODER_ATTRIBUTES + tuple(optional)
    required = [a for a in names if a not in optional]
    missing = [a for a in required if not hasattr(estimator, a)]
    if missing:
        raise _invalid(path, f"fitted attributes {missing} are missing.")
    n_classes = (_classes(estimator.classes_, path)
                 if "classes_" in names and hasattr(estimator, "classes_") else None)
    if "history_" in names:
        _history(estimator.history_, path)
    if hasattr(estimator, "n_features_in_"):
        _count(estimator.n_features_in_, path, "n_features_in_")
    if "coef_" in names:
        _float_array(estimator.coef_, (n_classes, hidden_size), path, "coef_")
        estimator.coef_ = estimator.coef_.astype(np.float32)
    if "intercept_" in names:
        _float_array(estimator.intercept_, (n_classes,), path, "intercept_")
        estimator.intercept_ = estimator.intercept_.astype(np.float32)


def check_head_fitted(head, history, n_features, path):
    """Validate a loaded ``LinearHeadClassifier``'s fitted attributes and history.

    ``n_features`` is the width of what the previous step outputs (None if unknown).
    Returns the number of classes and of input features.
    """
    what = "LinearHeadClassifier."
    for name in ("classes_", "n_features_in_"):
        if not hasattr(head, name):
            raise _invalid(path, f"{what}{name} is missing.")
    n_classes = _classes(head.classes_, path, f"{what}classes_")
    _count(head.n_features_in_, path, f"{what}n_features_in_")
    if n_features is not None and head.n_features_in_ != n_features:
        raise _invalid(path, f"{what}n_features_in_ is {head.n_features_in_}, but it "
                             f"receives {n_features} features.")
    names = getattr(head, "feature_names_in_", None)
    if names is not None and not (isinstance(names, np.ndarray) and names.shape
                                  == (head.n_features_in_,)
                                  and all(isinstance(n, str) for n in names.tolist())):
        raise _invalid(path, f"{what}feature_names_in_ must be {head.n_features_in_} "
                             "column names.")
    _history(history, path)
    return n_classes, int(head.n_features_in_)


def check_sklearn_step(kind, step, n_features, path):
    """Validate a scikit-learn step of a saved pipeline; return its output width.

    ``n_features`` is the width of what the previous step outputs (None if unknown).
    """
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        step._validate_params()
    except InvalidParameterError as exc:
        raise _invalid(path, f"step {kind}: {exc}") from None
    what = f"{kind}."
    if kind == "LogisticRegression":
        for name in ("coef_", "intercept_", "classes_"):
            if not hasattr(step, name):
                raise _invalid(path, f"{what}{name} is missing.")
        n_classes = _classes(step.classes_, path, f"{what}classes_")
        rows = 1 if n_classes == 2 else n_classes
        coef = step.coef_
        if not isinstance(coef, np.ndarray) or coef.ndim != 2:
            raise _invalid(path, f"{what}coef_ must be a 2-D array.")
        width = coef.shape[1] if n_features is None else n_features
        _float_array(coef, (rows, width), path, f"{what}coef_")
        _float_array(step.intercept_, (rows,), path, f"{what}intercept_")
        output = None
    elif kind == "StandardScaler":
        width = n_features
        for name in ("mean_", "var_", "scale_"):
            value = getattr(step, name, None)
            if value is None:
                continue
            if width is None and isinstance(value, np.ndarray) and value.ndim == 1:
                width = len(value)
            _float_array(value, (width,), path, f"{what}{name}")
        if getattr(step, "scale_", None) is not None and np.any(step.scale_ <= 0):
            raise _invalid(path, f"{what}scale_ must be positive.")
        if not hasattr(step, "n_samples_seen_"):
            raise _invalid(path, f"{what}n_samples_seen_ is missing.")
        output = width
    else:  # pragma: no cover - the caller only passes known kinds
        raise _invalid(path, f"unknown step kind {kind!r}.")
    if hasattr(step, "n_features_in_"):
        _count(step.n_features_in_, path, f"{what}n_features_in_")
        if width is not None and step.n_features_in_ != width:
            raise _invalid(path, f"{what}n_features_in_ is {step.n_features_in_}, but it "
                                 f"receives {width} features.")
    return output
