"""Label checks (what remains of the former audio layer).

Input coercion now lives in :mod:`._input`, file reading in :mod:`._io`, resampling
in :mod:`._resampling` and cropping/windowing in :mod:`._windows`.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_targets(n_clips, y):
    """Validate ``y`` against the number of clips; return it as a 1-D numpy array."""
    if y is None:
        raise ValueError(
            "y is required: this estimator requires y to be passed, but the target y is "
            "None. Pass one label per clip."
        )
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    raw = y  # before numpy turns [1, True] into [1, 1]
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change "
            "the shape of y to (n_samples,), for example using ravel().",
            DataConversionWarning, stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per clip), got shape {y.shape}.")
    if len(y) != n_clips:
        raise ValueError(
            f"X and y have inconsistent lengths: {n_clips} clips but {len(y)} labels."
        )
    if y.dtype.kind == "c":
        raise ValueError("y has complex labels: Complex data not supported.")
    if y.dtype == object:
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
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinite labels.")
        if not np.all(y == np.round(y)):
            # scikit-learn's wording, so that callers recognise the error.
            raise ValueError(
                "Unknown label type: continuous. y must hold class labels (integers or "
                "strings), not continuous values."
            )
    _warn_if_bools_mix_with_numbers(raw)
    return y


def _warn_if_bools_mix_with_numbers(labels):
    """Warn when labels mix bools and numbers: True == 1, so such classes merge."""
    import warnings

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

__all__ = ["check_targets"]
