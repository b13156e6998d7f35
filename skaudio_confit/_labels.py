"""Class labels: checking ``y`` and encoding it as integer codes, once for the package."""

from __future__ import annotations

import numbers
import warnings

import numpy as np


def check_targets(n_clips, y):
    """Validate ``y`` against the number of clips; return it as a 1-D numpy array.

    Built on scikit-learn's ``column_or_1d`` (column vectors are raveled with its
    ``DataConversionWarning``; complex labels refused) and ``type_of_target``
    (continuous labels refused), with messages that say what a clip label must be.
    Labels of mixed types (object arrays of strings and numbers) are accepted.
    """
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise ValueError(
            "y is required: this estimator requires y to be passed, but the target y is "
            "None. Pass one label per clip."
        )
    raw = y  # before numpy turns [1, True] into [1, 1]
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise ValueError(f"y must be 1-D (one label per clip), got shape {y.shape}.")
    if y.dtype.kind == "c":
        raise ValueError("y has complex labels: Complex data not supported.")
    y = column_or_1d(y, warn=True)
    # A plain count, not check_consistent_length: its message names no clips or labels.
    if len(y) != n_clips:
        raise ValueError(
            f"X and y have inconsistent lengths: {n_clips} clips but {len(y)} labels."
        )
    if y.dtype == object:
        _check_object_labels(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinite labels.")
        if type_of_target(y) == "continuous":
            # scikit-learn's wording, so that callers recognise the error.
            raise ValueError(
                "Unknown label type: continuous. y must hold class labels (integers or "
                "strings), not continuous values."
            )
    _warn_if_bools_mix_with_numbers(raw)
    return y


def _check_object_labels(y):
    """Refuse NaN, unhashable and complex entries of an object array of labels.

    ``type_of_target`` cannot judge these arrays: it sorts the labels, which fails for
    the mixed types (strings and numbers) that this package accepts.
    """
    for i, label in enumerate(y.tolist()):
        if isinstance(label, float) and not np.isfinite(label):
            raise ValueError("y contains NaN or infinite labels.")
        try:
            hash(label)
        except TypeError:
            raise TypeError(
                f"y must hold class labels (strings, numbers, ...), got a "
                f"{type(label).__name__} at position {i}."
            ) from None
        if isinstance(label, complex):
            raise ValueError("y has complex labels: Complex data not supported.")


def _warn_if_bools_mix_with_numbers(labels):
    """Warn when labels mix bools and numbers: True == 1, so such classes merge."""
    if isinstance(labels, np.ndarray):
        if labels.dtype != object or labels.ndim != 1:
            return
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        return
    is_bool = [isinstance(v, (bool, np.bool_)) for v in labels]
    is_number = [isinstance(v, numbers.Number) and not b for v, b in zip(labels, is_bool)]
    if any(is_bool) and any(is_number):
        warnings.warn(
            "y mixes booleans with numbers: True equals 1 and False equals 0, so they "
            "are taken as the same classes (e.g. labels [1, True, 0, False] make 2 "
            "classes). Use one type of label if they are meant to differ.",
            UserWarning, stacklevel=3,
        )


def encode_labels(y, classes=None, *, name="the input"):
    """Return ``(classes, codes)``: the classes and each label's integer code.

    Parameters
    ----------
    y : array-like of shape (n_labels,) or (n_labels, 1)
        Labels: numbers, strings or, unlike ``np.unique``, objects of mixed types
        (sorted by type name, then value).
    classes : array-like or None, default=None
        Known classes (e.g. a fitted ``classes_``): codes index into them, and a label
        that is not among them raises ``ValueError``. None: the sorted unique labels.
    name : str, default="the input"
        What ``y`` is, for that error message.

    Returns
    -------
    classes : ndarray
    codes : ndarray of int64, shape (n_labels,)
    """
    y = np.asarray(y).ravel()
    if classes is None:
        try:
            classes = np.unique(y)
        except TypeError:  # mixed types cannot be compared
            uniq = sorted(set(y.tolist()), key=lambda v: (type(v).__name__, v))
            classes = np.empty(len(uniq), dtype=object)
            classes[:] = uniq
    lookup = {label: code for code, label in enumerate(np.asarray(classes).tolist())}
    unknown = sorted({str(v) for v in y.tolist() if v not in lookup})
    if unknown:
        raise ValueError(f"{name} has labels not seen in y: {', '.join(unknown[:5])}.")
    codes = np.fromiter((lookup[v] for v in y.tolist()), dtype=np.int64, count=len(y))
    return np.asarray(classes), codes
