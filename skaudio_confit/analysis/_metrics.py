"""Cosine geometry of embeddings: anisotropy, dimension contribution, separability."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._validation import _check_embeddings, _check_labels, _check_sample, _row_blocks

__all__ = ["anisotropy", "dimension_contribution", "separability_score"]


def _unit_rows(block):
    """Rows of ``block`` as float64 unit vectors (no row may be zero).

    Each row is first divided by its largest absolute value, so squaring cannot
    overflow or underflow whatever the scale of the input.
    """
    block = np.asarray(block, dtype=np.float64)
    block = block / np.abs(block).max(axis=1, keepdims=True)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def _pair_mean_products(array, sample, random_state):
    """Mean over distinct pairs (i != j) of u_i * v_i for each dimension.

    With U the unit-normalised rows, sum_{a != b} U[a, k] U[b, k]
    = (sum_a U[a, k])**2 - sum_a U[a, k]**2, so one pass over the rows gives the
    exact all-pairs mean in O(n_samples * n_dims) time and O(n_dims) extra memory.
    Returns the per-dimension means and the number of rows used.
    """
    n_samples, n_dims = array.shape
    rows = None
    if sample is not None and sample < n_samples:
        rng = check_random_state(random_state)
        rows = np.sort(rng.choice(n_samples, size=sample, replace=False))
        n_samples = sample
    sums = np.zeros(n_dims)
    squares = np.zeros(n_dims)
    for start, stop in _row_blocks(n_samples, n_dims):
        block = array[start:stop] if rows is None else array[rows[start:stop]]
        unit = _unit_rows(block)
        sums += unit.sum(axis=0)
        squares += np.einsum("ij,ij->j", unit, unit)
    return (sums * sums - squares) / (n_samples * (n_samples - 1)), n_samples


def anisotropy(embeddings, *, sample=None, random_state=None):
    """Mean cosine similarity of distinct pairs of embeddings.

    Anisotropy measures how much embeddings point the same way: 1 when they all
    point in one direction, about 0 for directions spread evenly (e.g. an isotropic
    Gaussian) and for an orthonormal set, and at least ``-1 / (n_samples - 1)``
    (-1 only for two opposite vectors). Pretrained encoders tend to give values far
    above 0: any two clips look alike.

    The mean is exact over all ``n_samples * (n_samples - 1) / 2`` distinct pairs
    (self-pairs excluded), computed in one pass over the rows from the sum of the
    unit-normalised embeddings, so it needs neither time nor memory quadratic in
    ``n_samples``.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
        Finite real numbers, at least 2 rows, no row of zeros. The length of each
        row is ignored.
    sample : int or None, default=None
        Use only this many rows, drawn at random without replacement (all rows if
        ``sample >= n_samples``). None: all rows.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of ``sample`` rows; unused without ``sample``.

    Returns
    -------
    anisotropy : float
        Mean pairwise cosine similarity, in [-1, 1].

    Raises
    ------
    TypeError
        If ``embeddings`` is not numeric, is sparse, or ``sample`` is not an int.
    ValueError
        If ``embeddings`` is not 2-D, has fewer than 2 rows, holds NaN, infinity or
        a row of zeros, or ``sample < 2``.

    See Also
    --------
    dimension_contribution : How much each dimension adds to this mean.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudio_confit.analysis import anisotropy
    >>> anisotropy([[1.0, 0.0], [2.0, 0.0], [5.0, 0.0]])  # one direction
    1.0
    >>> anisotropy(np.eye(3))  # orthonormal
    0.0
    >>> round(anisotropy([[3.0, 4.0], [4.0, 3.0]]), 6)  # cos = 24 / 25
    0.96
    >>> X = np.random.default_rng(0).normal(size=(1000, 64))
    >>> abs(anisotropy(X)) < 0.01  # isotropic Gaussian
    True
    """
    array = _check_embeddings(embeddings)
    sample = _check_sample(sample)
    contributions, _ = _pair_mean_products(array, sample, random_state)
    return float(np.clip(contributions.sum(), -1.0, 1.0))


def dimension_contribution(embeddings, *, sample=None, random_state=None):
    """Each dimension's share of the mean pairwise cosine similarity.

    For unit vectors u and v, ``cos(u, v) = sum_i u_i v_i``, so the anisotropy
    (the mean cosine over distinct pairs) is the sum over dimensions of
    ``C_i = mean over pairs of u_i v_i``. Following Timkey & van Schijndel (2021),
    dimension i's share of the similarity is ``C_i / anisotropy``; when a few
    dimensions hold most of it, they are "rogue dimensions" that dominate cosine
    similarity whatever the clips are. Everything is exact over all distinct
    pairs, computed in one pass over the rows with no memory quadratic in
    ``n_samples``.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
        Finite real numbers, at least 2 rows, no row of zeros. The length of each
        row is ignored.
    sample : int or None, default=None
        Use only this many rows, drawn at random without replacement (all rows if
        ``sample >= n_samples``). None: all rows.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of ``sample`` rows; unused without ``sample``.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        anisotropy : float
            Mean pairwise cosine similarity, the sum of ``contributions``.
        contributions : ndarray of shape (n_dims,)
            ``C_i``, the mean over pairs of ``u_i v_i``, in units of cosine
            similarity. They sum to ``anisotropy``.
        shares : ndarray of shape (n_dims,)
            ``contributions / anisotropy``: the fraction of the similarity due to
            each dimension. They sum to 1.
        order : ndarray of shape (n_dims,)
            Dimension indices sorted by share, largest first.
        top1, top2, top3 : float
            Sum of the 1, 2 and 3 largest shares.
        dims_for_50, dims_for_80, dims_for_90 : int
            How many dimensions, largest share first, it takes for their shares to
            add up to 50 %, 80 % and 90 % of the similarity.
        n_samples : int
            Number of rows used (``sample`` or all).

    Raises
    ------
    TypeError
        If ``embeddings`` is not numeric, is sparse, or ``sample`` is not an int.
    ValueError
        If ``embeddings`` is not 2-D, has fewer than 2 rows, holds NaN, infinity or
        a row of zeros, or ``sample < 2``.

    Warns
    -----
    RuntimeWarning
        If the anisotropy is not positive: there is no similarity to share out,
        so ``shares``, ``top1``, ``top2`` and ``top3`` are NaN and the
        ``dims_for_*`` counts are None (``contributions`` are still valid).

    See Also
    --------
    anisotropy : The mean pairwise cosine similarity alone.

    Notes
    -----
    **Negative contributions.** A dimension whose values tend to take opposite
    signs across embeddings has ``C_i < 0``: it makes embeddings *less* similar.
    Shares keep their sign (as in Timkey & van Schijndel), so they always sum to 1,
    the positive shares sum to 1 or more, and the negative ones pull the total
    back. Dimensions are ranked by signed share, so those with negative shares come
    last; ``topk`` is the signed sum of the k largest shares (it can exceed 1 when
    some shares are negative), and since the positive shares alone reach 1, each
    ``dims_for_*`` count is reached before any negative dimension is counted.

    When the anisotropy is close to 0 (nearly isotropic embeddings) the shares are
    ratios of small numbers and can lie far outside [0, 1]; read
    ``contributions`` instead, which stay small.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudio_confit.analysis import dimension_contribution
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 8))
    >>> X[:, 0] += 20.0  # one "rogue" dimension shared by every embedding
    >>> result = dimension_contribution(X)
    >>> round(result.anisotropy, 2), int(result.order[0]), round(result.top1, 2)
    (0.98, 0, 1.0)
    >>> result.dims_for_50, result.dims_for_90
    (1, 1)
    >>> bool(np.isclose(result.contributions.sum(), result.anisotropy))
    True
    """
    array = _check_embeddings(embeddings)
    sample = _check_sample(sample)
    contributions, n_used = _pair_mean_products(array, sample, random_state)
    total = float(contributions.sum())
    n_dims = contributions.shape[0]
    result = Bunch(
        anisotropy=float(np.clip(total, -1.0, 1.0)),
        contributions=contributions,
        n_samples=n_used,
    )
    if not total > 0:
        warnings.warn(
            f"The mean pairwise cosine similarity is {total:.3g}, not positive: there "
            "is no similarity for dimensions to account for, so shares, top1-3 are NaN "
            "and dims_for_* are None. Read `contributions` instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        result.update(
            shares=np.full(n_dims, np.nan),
            order=np.argsort(-contributions, kind="stable"),
            top1=np.nan, top2=np.nan, top3=np.nan,
            dims_for_50=None, dims_for_80=None, dims_for_90=None,
        )
        return result

    shares = contributions / total
    order = np.argsort(-shares, kind="stable")
    cumulative = np.cumsum(shares[order])
    # Positive shares alone sum to >= 1, so every target below 1 is reached; the
    # tolerance absorbs rounding in the sums (e.g. two shares of exactly 0.5).
    def dims_for(fraction):
        return int(np.argmax(cumulative >= fraction - 1e-12)) + 1

    result.update(
        shares=shares,
        order=order,
        top1=float(cumulative[0]),
        top2=float(cumulative[min(2, n_dims) - 1]),
        top3=float(cumulative[min(3, n_dims) - 1]),
        dims_for_50=dims_for(0.5),
        dims_for_80=dims_for(0.8),
        dims_for_90=dims_for(0.9),
    )
    return result


def separability_score(embeddings, labels, *, sample_size=None, random_state=None):
    """How well classes separate: the silhouette score under the cosine distance.

    For each embedding, ``(b - a) / max(a, b)`` where ``a`` is its mean cosine
    distance to the rest of its class and ``b`` the mean distance to the nearest
    other class, averaged over embeddings (:func:`sklearn.metrics.silhouette_score`
    with ``metric="cosine"``). 1: tight, far-apart classes; about 0: overlapping
    classes; negative: embeddings closer to another class than to their own.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
        Finite real numbers, at least 2 rows, no row of zeros.
    labels : array-like of shape (n_samples,)
        Class of each row; between 2 and ``n_samples - 1`` distinct classes.
    sample_size : int or None, default=None
        Score a random subset of this many rows (the cost is quadratic in the
        number of rows). None: all rows.
    random_state : int, RandomState instance or None, default=None
        Seeds the subset drawn with ``sample_size``.

    Returns
    -------
    score : float
        Mean silhouette coefficient, in [-1, 1].

    Raises
    ------
    TypeError
        If ``embeddings`` is not numeric or is sparse.
    ValueError
        For invalid ``embeddings`` (see :func:`anisotropy`), labels of the wrong
        shape or length, or fewer than 2 or more than ``n_samples - 1`` classes.

    Examples
    --------
    >>> from skaudio_confit.analysis import separability_score
    >>> X = [[1.0, 0.1], [1.0, 0.0], [0.1, 1.0], [0.0, 1.0]]
    >>> round(separability_score(X, ["a", "a", "b", "b"]), 3)
    0.994
    >>> separability_score(X, ["a", "b", "a", "b"]) < 0
    True
    """
    from sklearn.metrics import silhouette_score

    array = _check_embeddings(embeddings)
    _, codes = _check_labels(labels, array.shape[0])
    return float(
        silhouette_score(
            np.asarray(array, dtype=np.float64), codes, metric="cosine",
            sample_size=sample_size, random_state=random_state,
        )
    )
