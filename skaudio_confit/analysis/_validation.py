"""Input checks shared by the analysis functions: embeddings, labels, sample sizes."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from .._labels import encode_labels

# Rows are checked, normalised and summed block by block, each block holding about
# this many values (8 MiB of float64), so memory stays flat however many rows there are.
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(n_rows, n_dims):
    step = max(1, _BLOCK_ELEMENTS // max(1, n_dims))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _check_embeddings(embeddings, name="embeddings"):
    """Validate a 2-D finite numeric array with >= 2 rows and no zero rows.

    Returns the array (its own dtype, converted blockwise to float64 by the callers).
    """
    if embeddings is None or isinstance(embeddings, (str, bytes)):
        raise TypeError(
            f"{name} must be a 2-D numeric array of shape (n_samples, n_dims); "
            f"got {type(embeddings).__name__}."
        )
    if hasattr(embeddings, "tocsr") or hasattr(embeddings, "todense"):
        raise TypeError(
            f"{name} is a sparse matrix; pass a dense array (e.g. {name}.toarray())."
        )
    if hasattr(embeddings, "detach"):  # a torch tensor, possibly on a GPU
        embeddings = embeddings.detach().cpu().numpy()
    try:
        array = np.asarray(embeddings)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise ValueError(
            f"{name} must be a 2-D numeric array of shape (n_samples, n_dims) with "
            f"rows of equal length: {exc}"
        ) from exc
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must hold real numbers: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D, shape (n_samples, n_dims); got shape {array.shape}."
            + (" Reshape a single embedding with array.reshape(1, -1), and add more"
               " rows: pairs are needed." if array.ndim == 1 else "")
        )
    n_samples, n_dims = array.shape
    if n_samples < 2:
        raise ValueError(
            f"{name} needs at least 2 rows (pairs of embeddings); got {n_samples}."
        )
    if n_dims < 1:
        raise ValueError(f"{name} needs at least 1 column; got shape {array.shape}.")

    zero_rows = []
    for start, stop in _row_blocks(n_samples, n_dims):
        block = array[start:stop]
        if array.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
                raise ValueError(
                    f"{name} must be finite; row {row} holds NaN or infinity."
                )
        zero_rows.extend((start + np.flatnonzero(~block.any(axis=1))).tolist())
    if zero_rows:
        shown = ", ".join(map(str, zero_rows[:10])) + (", ..." if len(zero_rows) > 10 else "")
        raise ValueError(
            f"{name} has {len(zero_rows)} row(s) of zeros (rows {shown}); a zero vector "
            "has no direction, so its cosine similarity is undefined. Remove those rows."
        )
    return array


def _check_labels(labels, n_samples):
    """1-D labels, one per row, with 2 <= n_classes <= n_samples - 1."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D; got shape {labels.shape}.")
    if labels.shape[0] != n_samples:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but embeddings has {n_samples} rows."
        )
    # The estimators' encoder: sorted classes, mixed types (str and int) included.
    classes, codes = encode_labels(labels)
    if not 2 <= len(classes) <= n_samples - 1:
        raise ValueError(
            f"labels must have between 2 and n_samples - 1 = {n_samples - 1} distinct "
            f"classes for a separability score; got {len(classes)}."
        )
    return classes, codes


def _check_sample(sample):
    if sample is None:
        return None
    if isinstance(sample, bool) or not isinstance(sample, Integral):
        raise TypeError(
            f"sample must be an int (a number of rows) or None; got {sample!r}."
        )
    if sample < 2:
        raise ValueError(f"sample must be at least 2 (pairs of rows); got {sample}.")
    return int(sample)
