"""2-D pictures of embeddings: a projection coloured by class."""

from __future__ import annotations

import warnings

import numpy as np

from ._metrics import _unit_rows, separability_score
from ._validation import _check_embeddings, _check_labels

__all__ = ["plot_separability"]

_PROJECTION_METHODS = ("auto", "umap", "tsne", "pca")
_METHOD_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}


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
