"""Tests of skaudio_confit.analysis: constructed embeddings with known answers."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from skaudio_confit.analysis import (
    anisotropy,
    dimension_contribution,
    plot_separability,
    separability_score,
)
from skaudio_confit.analysis import _validation


@pytest.fixture(scope="module", autouse=True)
def single_native_thread():
    """t-SNE's OpenMP threads spin for seconds on busy cores; one is plenty here."""
    with threadpool_limits(1):
        yield


def brute_force(X):
    """Mean over distinct pairs of cosine similarity and of u_k * v_k, by a double loop."""
    U = [np.asarray(x, dtype=float) / np.linalg.norm(x) for x in X]
    cosines, products = [], []
    for a in range(len(U)):
        for b in range(a + 1, len(U)):
            cosines.append(float(U[a] @ U[b]))
            products.append(U[a] * U[b])
    return np.mean(cosines), np.mean(products, axis=0)


def blobs(n_per_class=20, n_classes=3, n_dims=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, n_dims))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centers[y] + spread * rng.normal(size=(len(y), n_dims))
    return X, y


# ------------------------------------------------------------------------ anisotropy


def test_identical_directions_give_one():
    x = np.array([0.3, -1.2, 2.0, 0.5])
    X = np.outer([1.0, 2.0, 0.5, 7.0, 1e-3], x)  # same direction, different lengths
    assert anisotropy(X) == pytest.approx(1.0, abs=1e-12)


def test_orthonormal_sets_give_zero():
    assert anisotropy(np.eye(6)) == pytest.approx(0.0, abs=1e-12)
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    assert anisotropy(Q.T) == pytest.approx(0.0, abs=1e-12)  # rows orthonormal


def test_opposite_vectors_give_minus_one():
    u = np.array([1.0, -2.0, 0.5])
    assert anisotropy(np.stack([u, -3 * u])) == pytest.approx(-1.0, abs=1e-12)


def test_hand_computed_example():
    # Unit rows (0.6, 0.8), (0.8, 0.6), (1, 0): cosines 0.96, 0.6 and 0.8.
    X = [[3.0, 4.0], [4.0, 3.0], [1.0, 0.0]]
    assert anisotropy(X) == pytest.approx(2.36 / 3, abs=1e-12)
    result = dimension_contribution(X)
    # Dimension 0: 0.48 + 0.6 + 0.8; dimension 1: 0.48 + 0 + 0 (over 3 pairs).
    np.testing.assert_allclose(result.contributions, [1.88 / 3, 0.48 / 3], atol=1e-12)
    np.testing.assert_allclose(result.shares, [1.88 / 2.36, 0.48 / 2.36], atol=1e-12)
    assert result.anisotropy == pytest.approx(2.36 / 3)
    assert result.order.tolist() == [0, 1]
    assert result.top1 == pytest.approx(1.88 / 2.36)
    assert result.top2 == result.top3 == pytest.approx(1.0)  # only 2 dimensions
    assert (result.dims_for_50, result.dims_for_80, result.dims_for_90) == (1, 2, 2)
    assert result.n_samples == 3


def test_shares_on_a_boundary_count_the_dimension_that_reaches_it():
    # Unit rows (1, 0), (1/sqrt2, 1/sqrt2), (0, 1): both dimensions share exactly 1/2.
    result = dimension_contribution([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert result.anisotropy == pytest.approx(np.sqrt(2) / 3)
    np.testing.assert_allclose(result.shares, [0.5, 0.5])
    assert (result.dims_for_50, result.dims_for_80) == (1, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_formula_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(23, 7)) + rng.normal(size=7)  # some anisotropy
    X[3] *= 1e6  # lengths must not matter
    cos_mean, product_means = brute_force(X)
    assert anisotropy(X) == pytest.approx(cos_mean, abs=1e-12)
    result = dimension_contribution(X)
    np.testing.assert_allclose(result.contributions, product_means, atol=1e-12)
    assert result.anisotropy == pytest.approx(cos_mean, abs=1e-12)
    assert result.shares.sum() == pytest.approx(1.0)


def test_blockwise_accumulation_matches_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 6)) + 1.0
    whole = dimension_contribution(X)
    monkeypatch.setattr(_validation, "_BLOCK_ELEMENTS", 13)  # blocks of 2 rows
    blocked = dimension_contribution(X)
    np.testing.assert_allclose(blocked.contributions, whole.contributions, atol=1e-14)
    assert anisotropy(X) == pytest.approx(whole.anisotropy, abs=1e-14)
    # Validation runs blockwise too and still reports global row numbers.
    X[37] = 0.0
    with pytest.raises(ValueError, match="rows 37"):
        anisotropy(X)


def test_input_scale_and_dtype_do_not_matter():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 5)) + 0.5
    expected = anisotropy(X)
    assert anisotropy(X * 1e200) == pytest.approx(expected, abs=1e-12)  # no overflow
    assert anisotropy(X * 1e-200) == pytest.approx(expected, abs=1e-12)  # no underflow
    assert anisotropy(X.astype(np.float32)) == pytest.approx(expected, abs=1e-6)
    assert anisotropy(X.tolist()) == pytest.approx(expected, abs=1e-12)
    assert anisotropy(np.array([[1, 2], [2, 1], [3, 3]])) == pytest.approx(
        brute_force([[1, 2], [2, 1], [3, 3]])[0]
    )
    assert isinstance(anisotropy(X), float)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    X = np.random.default_rng(5).normal(size=(10, 4)) + 1.0
    assert anisotropy(torch.from_numpy(X)) == pytest.approx(anisotropy(X))


def test_subsample_is_reproducible():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 8)) + rng.normal(size=8)
    a = anisotropy(X, sample=50, random_state=0)
    assert anisotropy(X, sample=50, random_state=0) == a
    assert anisotropy(X, sample=50, random_state=np.random.RandomState(0)) == a
    assert anisotropy(X, sample=50, random_state=1) != a
    # The estimate is the exact value on 50 of the rows, close to the full value.
    assert a == pytest.approx(anisotropy(X), abs=0.1)
    result = dimension_contribution(X, sample=50, random_state=0)
    assert result.n_samples == 50 and result.anisotropy == pytest.approx(a)
    # sample >= n_samples uses all the rows.
    assert anisotropy(X, sample=400) == anisotropy(X, sample=10_000) == anisotropy(X)


def test_subsample_uses_the_drawn_rows():
    # Two rows are copies of one vector, all others are orthonormal: a sample of
    # 2 rows has anisotropy 1 if it holds both copies, else 0.
    X = np.vstack([np.eye(10), np.eye(10)[:1]])
    values = {anisotropy(X, sample=2, random_state=seed) for seed in range(200)}
    assert values == {0.0, 1.0}


# ------------------------------------------------------------ dimension contribution


def test_one_dominant_dimension():
    rng = np.random.default_rng(7)
    X = 0.1 * rng.normal(size=(300, 24))
    X[:, 0] += 10.0  # a large constant offset shared by all vectors
    result = dimension_contribution(X)
    assert result.anisotropy > 0.95
    assert result.order[0] == 0
    assert result.top1 > 0.99
    assert result.dims_for_50 == result.dims_for_80 == result.dims_for_90 == 1
    assert result.top1 <= result.top2 + 1e-12 or result.shares[result.order[1]] < 0


def test_isotropic_gaussian_spreads_contributions():
    X = np.random.default_rng(8).normal(size=(600, 32))
    result = dimension_contribution(X)
    assert abs(result.anisotropy) < 0.01
    # Unit rows have coordinates of variance 1/32, so each sum over the 600 rows is
    # about N(0, 600/32) and C_k = (sum**2 - sum of squares) / (600 * 599) is about
    # (chi2_1 - 1) / (32 * 599): no dimension stands out (chi2_1 > 21 has odds 5e-6).
    assert np.abs(result.contributions).max() < 20 / (32 * 599)
    # Compare with the dominant-dimension case: 3 orders of magnitude apart.
    Y = X.copy()
    Y[:, 5] += 30.0  # squared: 900 of about 900 + 32
    assert dimension_contribution(Y).contributions[5] > 0.9


def test_several_rogue_dimensions_are_counted():
    rng = np.random.default_rng(9)
    X = 0.05 * rng.normal(size=(200, 20))
    X[:, [2, 7, 11]] += [4.0, 3.0, 2.0]  # squared: 16, 9 and 4 parts in 29
    result = dimension_contribution(X)
    assert result.order[:3].tolist() == [2, 7, 11]
    assert result.top1 == pytest.approx(16 / 29, abs=0.01)
    assert result.top2 == pytest.approx(25 / 29, abs=0.01)
    assert result.top3 == pytest.approx(1.0, abs=0.01)
    assert (result.dims_for_50, result.dims_for_80, result.dims_for_90) == (1, 2, 3)


def test_negative_contributions_keep_their_sign():
    # Unit rows (2, 1)/sqrt5 and (2, -1)/sqrt5: cos 3/5 = 4/5 (dim 0) - 1/5 (dim 1).
    result = dimension_contribution([[2.0, 1.0], [2.0, -1.0]])
    assert result.anisotropy == pytest.approx(0.6)
    np.testing.assert_allclose(result.contributions, [0.8, -0.2])
    np.testing.assert_allclose(result.shares, [4 / 3, -1 / 3])
    assert result.shares.sum() == pytest.approx(1.0)
    assert result.order.tolist() == [0, 1]
    assert result.top1 == pytest.approx(4 / 3) and result.top2 == pytest.approx(1.0)
    assert result.dims_for_50 == result.dims_for_90 == 1


def test_no_positive_similarity_warns_and_leaves_shares_undefined():
    with pytest.warns(RuntimeWarning, match="not positive"):
        result = dimension_contribution([[1.0, 2.0], [-1.0, -2.0]])
    assert result.anisotropy == pytest.approx(-1.0)
    np.testing.assert_allclose(result.contributions, [-0.2, -0.8])
    assert np.isnan(result.shares).all() and np.isnan(result.top1)
    assert result.dims_for_50 is None and result.dims_for_90 is None


def test_positive_similarity_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dimension_contribution([[1.0, 0.0], [1.0, 1.0]])


# ------------------------------------------------------------------- separability


def test_separability_score_is_higher_for_separated_classes():
    X, y = blobs(spread=0.2)
    separated = separability_score(X, y)
    shuffled = separability_score(X, np.random.default_rng(0).permutation(y))
    assert separated > 0.5
    assert abs(shuffled) < 0.1
    assert separated > shuffled + 0.4


def test_separability_score_is_the_cosine_silhouette():
    from sklearn.metrics import silhouette_score

    X, y = blobs(spread=1.0, seed=1)
    assert separability_score(X, y) == pytest.approx(silhouette_score(X, y, metric="cosine"))
    # Cosine: the length of each row does not matter.
    scales = np.random.default_rng(2).uniform(0.1, 10, size=(len(X), 1))
    assert separability_score(X * scales, y) == pytest.approx(separability_score(X, y))
    assert separability_score(X, y.astype(str)) == pytest.approx(separability_score(X, y))


def test_separability_score_accepts_mixed_label_types():
    X, _ = blobs(n_per_class=5, n_classes=2)
    labels = np.array(["a"] * 5 + [1] * 5, dtype=object)
    assert separability_score(X, labels) == pytest.approx(
        separability_score(X, np.repeat([0, 1], 5))
    )
    # Plots sort them as the estimators do: by type name, then value.
    ax = plot_separability(X, labels, method="pca", show_score=False)
    assert legend_labels(ax) == ["1", "a"]


# --------------------------------------------------------------------------- plots


def legend_labels(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_plot_has_one_collection_and_legend_entry_per_class(tmp_path):
    X, y = blobs()
    names = np.array(["cat", "dog", "bird"])[y]
    ax = plot_separability(X, names, method="pca", title="frozen encoder")
    assert legend_labels(ax) == ["bird", "cat", "dog"]  # sorted classes
    # Each class's points are the PCA coordinates of its unit-normalised rows.
    coords = PCA(n_components=2).fit_transform(X / np.linalg.norm(X, axis=1, keepdims=True))
    assert len(ax.collections) == 3
    for collection, label in zip(ax.collections, ["bird", "cat", "dog"]):
        np.testing.assert_allclose(collection.get_offsets(), coords[names == label], atol=1e-12)
    assert ax.get_title() == "frozen encoder"
    score = separability_score(X, names)
    assert ax.get_legend().get_title().get_text() == f"silhouette (cosine) = {score:.3f}"
    path = tmp_path / "separability.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_on_a_given_axes_and_can_omit_the_score():
    from matplotlib.figure import Figure

    X, y = blobs()
    fig = Figure()
    axes = fig.subplots(1, 2)
    ax = plot_separability(X, y, method="pca", ax=axes[1], show_score=False)
    assert ax is axes[1]
    assert len(axes[1].collections) == 3 and len(axes[0].collections) == 0
    assert ax.get_legend().get_title().get_text() == ""
    assert ax.get_title() == "PCA projection"


def test_plot_tsne_is_reproducible():
    X, y = blobs(n_per_class=12)
    a = plot_separability(X, y, method="tsne", random_state=0)
    b = plot_separability(X, y, method="tsne", random_state=0)
    assert a.get_title() == "t-SNE projection"
    assert len(a.collections) == 3 and legend_labels(a) == ["0", "1", "2"]
    for ca, cb in zip(a.collections, b.collections):
        np.testing.assert_allclose(ca.get_offsets(), cb.get_offsets())


def test_plot_auto_falls_back_to_tsne_without_umap(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    X, y = blobs(n_per_class=10)
    ax = plot_separability(X, y, random_state=0)
    assert ax.get_title() == "t-SNE projection"
    with pytest.raises(ImportError, match="umap-learn"):
        plot_separability(X, y, method="umap")


@pytest.mark.slow
def test_plot_umap_when_installed():
    pytest.importorskip("umap")  # optional; compiling it takes ~20 s on a cold start
    X, y = blobs(n_per_class=15)
    ax = plot_separability(X, y, method="auto", random_state=0)
    assert ax.get_title() == "UMAP projection"
    assert len(ax.collections) == 3


def test_plot_one_column_embeddings_with_pca():
    X = np.concatenate([np.full((5, 1), 1.0), np.full((5, 1), -1.0)])
    ax = plot_separability(X, [0] * 5 + [1] * 5, method="pca", show_score=False)
    # One direction, drawn on the x axis: the two classes at opposite points.
    first, second = (np.asarray(c.get_offsets()) for c in ax.collections)
    np.testing.assert_allclose(first[:, 1], 0.0)
    np.testing.assert_allclose(second[:, 1], 0.0)
    assert np.ptp(first[:, 0]) == np.ptp(second[:, 0]) == 0.0
    assert first[0, 0] == pytest.approx(-second[0, 0]) and first[0, 0] != 0.0


# ---------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "func", [anisotropy, dimension_contribution, lambda X: separability_score(X, [0, 1, 0, 1])],
    ids=["anisotropy", "dimension_contribution", "separability_score"],
)
@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.ones(5), ValueError, "must be 2-D"),
        (np.ones((3, 2, 2)), ValueError, "must be 2-D"),
        (np.ones((1, 4)), ValueError, "at least 2 rows"),
        (np.ones((4, 0)), ValueError, "at least 1 column"),
        ([[1.0, 2.0], [3.0]], ValueError, "equal length"),
        ([[1.0, np.nan], [1.0, 2.0], [0.5, 1.0]], ValueError, "row 0 holds NaN or inf"),
        ([[1.0, 2.0], [np.inf, 2.0], [0.5, 1.0]], ValueError, "row 1 holds NaN or inf"),
        ([[1.0, 2.0], [0.0, 0.0], [0.5, 1.0], [0, 0]], ValueError,
         r"2 row\(s\) of zeros \(rows 1, 3\)"),
        ([["a", "b"], ["c", "d"]], TypeError, "real numbers"),
        (np.ones((3, 2), dtype=complex), TypeError, "real numbers"),
        ("not an array", TypeError, "2-D numeric array"),
        (None, TypeError, "2-D numeric array"),
    ],
)
def test_invalid_embeddings(func, X, error, match):
    with pytest.raises(error, match=match):
        func(X)


def test_sparse_embeddings_are_rejected():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse"):
        anisotropy(sparse.csr_matrix(np.eye(3)))


@pytest.mark.parametrize(
    "sample, error", [(1, ValueError), (0, ValueError), (-5, ValueError),
                      (2.5, TypeError), ("10", TypeError), (True, TypeError)]
)
def test_invalid_sample(sample, error):
    with pytest.raises(error, match="sample"):
        anisotropy(np.eye(4), sample=sample)
    with pytest.raises(error, match="sample"):
        dimension_contribution(np.eye(4), sample=sample)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, 0], "3 entries but embeddings has 4 rows"),
        ([[0, 1], [0, 1]], "must be 1-D"),
        ([0, 0, 0, 0], "got 1"),
        ([0, 1, 2, 3], "got 4"),
    ],
)
def test_invalid_labels(labels, match):
    X = np.eye(4) + 0.1
    with pytest.raises(ValueError, match=match):
        separability_score(X, labels)
    with pytest.raises(ValueError, match=match):
        plot_separability(X, labels, method="pca")


def test_invalid_plot_arguments():
    X, y = blobs(n_per_class=5)
    with pytest.raises(ValueError, match="method must be one of"):
        plot_separability(X, y, method="lda")
    with pytest.raises(ValueError, match="method must be one of"):
        plot_separability(X, y, method=None)
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plot_separability(X, y, method="pca", ax="left")
