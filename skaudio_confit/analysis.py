"""Geometry of embedding spaces: anisotropy, dimension contribution, separability.

The tools behind the paper's analysis (section 3.4) of why contrastive fine-tuning
helps: pooled embeddings of pretrained audio encoders are *anisotropic* (they
occupy a narrow cone, so any two clips look alike under cosine similarity), a
handful of "rogue" dimensions account for most of that similarity, and classes
are poorly separated. The functions take any 2-D array of embeddings, e.g. the
output of :meth:`PairTuneTransformer.transform
<skaudio_confit.PairTuneTransformer.transform>` or :meth:`FineTuneClassifier.transform
<skaudio_confit.FineTuneClassifier.transform>`:

- :func:`anisotropy`: mean cosine similarity of distinct pairs of embeddings;
- :func:`dimension_contribution`: each dimension's share of that similarity
  (Timkey & van Schijndel, 2021);
- :func:`separability_score`: silhouette score under the cosine distance;
- :func:`plot_separability`: a 2-D projection (UMAP, t-SNE or PCA) coloured by
  class, annotated with the separability score.

All of them measure cosine geometry, so they ignore the length of each embedding;
rows of zeros have no direction and are rejected.

References
----------
W. Timkey and M. van Schijndel (2021). "All Bark and No Bite: Rogue Dimensions in
Transformer Language Models Obscure Representational Quality". EMNLP 2021.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
from sklearn.utils import Bunch, check_random_state

__all__ = [
    "anisotropy",
    "dimension_contribution",
    "plot_separability",
    "separability_score",
]

# Rows are normalised and summed block by block, each block holding about this many
# values (8 MiB of float64), so memory stays flat however many rows there are.
_BLOCK_ELEMENTS = 1 << 20

_PROJECTION_METHODS = ("auto", "umap", "tsne", "pca")
_METHOD_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}


# --------------------------------------------------------------------------- checks


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
    try:
        classes, codes = np.unique(labels, return_inverse=True)
    except TypeError:  # labels that do not sort, e.g. a mix of str and int
        index = {}
        codes = np.array([index.setdefault(v, len(index)) for v in labels.tolist()])
        classes = np.array(list(index), dtype=object)  # in order of appearance
    if not 2 <= len(classes) <= n_samples - 1:
        raise ValueError(
            f"labels must have between 2 and n_samples - 1 = {n_samples - 1} distinct "
            f"classes for a separability score; got {len(classes)}."
        )
    return classes, codes.reshape(-1)


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


# ---------------------------------------------------------------------- computation


def _row_blocks(n_rows, n_dims):
    step = max(1, _BLOCK_ELEMENTS // max(1, n_dims))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


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


# ------------------------------------------------------------------------ public API


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


def _project(unit, method, random_state):
    """2-D coordinates of unit-normalised rows, and the method actually used."""
    n_samples = unit.shape[0]
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError as exc:
            if method == "umap":
                raise ImportError(
                    "method='umap' needs the umap-learn package (pip install "
                    "umap-learn); method='tsne' or 'pca' need nothing extra."
                ) from exc
            method = "tsne"
        else:
            method = "umap"
    if method == "umap":
        reducer = umap.UMAP(
            n_components=2, metric="cosine", n_neighbors=max(2, min(15, n_samples - 1)),
            init="spectral" if n_samples > 3 else "random", random_state=random_state,
        )
        with warnings.catch_warnings():
            # "n_jobs value 1 overridden to 1 by setting random_state", spectral
            # initialisation fallbacks on tiny inputs, and similar chatter.
            warnings.simplefilter("ignore", UserWarning)
            return reducer.fit_transform(unit), method
    if method == "tsne":
        from sklearn.manifold import TSNE

        # On unit vectors the squared Euclidean distance that t-SNE uses is
        # 2 * (1 - cos), proportional to the cosine distance, so this is t-SNE
        # under the cosine distance, with sklearn's fast default neighbour search.
        tsne = TSNE(
            n_components=2, perplexity=min(30.0, max(1.0, (n_samples - 1) / 3)),
            init="pca", random_state=random_state,
        )
        return tsne.fit_transform(unit), method
    from sklearn.decomposition import PCA

    return PCA(n_components=min(2, *unit.shape)).fit_transform(unit), "pca"


def _class_colors(n_classes):
    from matplotlib import colormaps

    if n_classes <= 10:
        return [colormaps["tab10"](i) for i in range(n_classes)]
    if n_classes <= 20:
        return [colormaps["tab20"](i) for i in range(n_classes)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n_classes)]


def plot_separability(
    embeddings,
    labels,
    *,
    method="auto",
    ax=None,
    random_state=None,
    title=None,
    show_score=True,
):
    """Scatter a 2-D projection of embeddings, one colour per class.

    The rows are unit-normalised first, so the picture shows the cosine geometry
    that :func:`separability_score` measures, and projected to 2-D by UMAP (cosine
    metric), t-SNE or PCA. Each class is one scatter collection with its own
    legend entry. Nothing is shown: save the figure with
    ``ax.figure.savefig(path)``. Without ``ax`` a new, standalone
    :class:`matplotlib.figure.Figure` is made (not through ``pyplot``), so this
    works with any backend, including headless ones, and leaves no figure open.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_dims)
        Finite real numbers, at least 2 rows, no row of zeros.
    labels : array-like of shape (n_samples,)
        Class of each row; between 2 and ``n_samples - 1`` distinct classes.
        Legend entries follow the sorted class labels.
    method : {"auto", "umap", "tsne", "pca"}, default="auto"
        Projection. "auto" uses UMAP if the optional ``umap-learn`` package can be
        imported, else scikit-learn's t-SNE. "umap" raises ImportError without
        ``umap-learn``. "pca" is linear, deterministic and fast, but shows only the
        two directions of largest variance.
    ax : matplotlib Axes or None, default=None
        Where to draw; None makes a new 5 x 5 inch figure.
    random_state : int, RandomState instance or None, default=None
        Seeds UMAP and t-SNE, for a reproducible picture.
    title : str or None, default=None
        Axes title; None: the name of the projection.
    show_score : bool, default=True
        Give the :func:`separability_score` (silhouette, cosine) of the
        embeddings, not of the projection, as the title of the legend.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes drawn on.

    Raises
    ------
    TypeError
        If ``embeddings`` is not numeric, or ``ax`` is not a matplotlib Axes.
    ValueError
        For invalid ``embeddings`` or ``labels`` (see :func:`separability_score`)
        or an unknown ``method``.
    ImportError
        If ``method="umap"`` and ``umap-learn`` is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudio_confit.analysis import plot_separability
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(3, 16))
    >>> y = np.repeat(["a", "b", "c"], 20)
    >>> X = centers[np.repeat([0, 1, 2], 20)] + 0.3 * rng.normal(size=(60, 16))
    >>> ax = plot_separability(X, y, method="pca")
    >>> len(ax.collections), [t.get_text() for t in ax.get_legend().get_texts()]
    (3, ['a', 'b', 'c'])
    >>> ax.figure.savefig("separability.png")  # doctest: +SKIP
    """
    if not isinstance(method, str) or method not in _PROJECTION_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, _PROJECTION_METHODS))}; "
            f"got {method!r}."
        )
    array = _check_embeddings(embeddings)
    classes, codes = _check_labels(labels, array.shape[0])
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}.")
    unit = _unit_rows(array)
    coords, used = _project(unit, method, random_state)
    if coords.shape[1] < 2:  # PCA of one-column embeddings
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])

    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(5, 5), layout="constrained").add_subplot()
    size = float(np.clip(4000 / array.shape[0], 6, 40))
    for k, (label, color) in enumerate(zip(classes, _class_colors(len(classes)))):
        points = coords[codes == k]
        ax.scatter(points[:, 0], points[:, 1], s=size, color=color, alpha=0.8,
                   edgecolors="none", label=str(label))
    name = _METHOD_NAMES[used]
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} projection" if title is None else title)
    # The score heads the legend, which "best" placement keeps clear of the points.
    score_line = (f"silhouette (cosine) = {separability_score(array, codes):.3f}"
                  if show_score else None)
    ax.legend(title=score_line, title_fontsize="small", fontsize="small",
              markerscale=max(1.0, 30 / size) ** 0.5, ncols=2 if len(classes) > 12 else 1,
              loc="best", framealpha=0.8)
    return ax
