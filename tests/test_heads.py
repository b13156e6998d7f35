"""LinearHeadClassifier: the stage-2 linear head as a scikit-learn-compatible skorch net."""

from __future__ import annotations

import inspect
import pickle

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import softmax
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier

from skaudio_confit.heads import LinearHead, LinearHeadClassifier

# Few epochs at a higher learning rate: the blobs below are separable, so this is
# plenty and keeps each fit around a tenth of a second on one CPU thread.
FAST = {"lr": 1e-2, "max_epochs": 20}
LABELS = np.array(["dog", "cat", "owl"])  # deliberately not in sorted order


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matrices: intra-op threads only add synchronisation, which on a shared,
    # busy machine makes each optimiser step 20x slower.
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=120, n_features=8, centers=3, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def fitted(blobs):
    """A head fitted on string labels; tests must not modify it."""
    X, y = blobs
    return LinearHeadClassifier(**FAST, random_state=0).fit(X, LABELS[y])


# ----------------------------------------------------------------- defaults


def test_defaults_are_the_papers_head():
    head = LinearHeadClassifier()
    params = head.get_params(deep=False)
    assert params["module"] is LinearHead
    assert params["criterion"] is torch.nn.CrossEntropyLoss
    assert params["optimizer"] is torch.optim.Adam
    assert params["lr"] == 1e-3
    assert params["max_epochs"] == 100
    assert params["batch_size"] == 32
    assert params["train_split"] is None
    assert params["iterator_train__shuffle"] is True
    assert params["verbose"] == 0
    assert params["device"] == "auto"
    assert params["random_state"] is None
    # Exactly the signature's parameters: no skorch bookkeeping.
    assert set(params) == set(inspect.signature(LinearHeadClassifier).parameters) - {"kwargs"}
    # scikit-learn's repr: only what differs from the defaults.
    assert repr(head) == "LinearHeadClassifier()"
    assert repr(LinearHeadClassifier(lr=1e-2)) == "LinearHeadClassifier(lr=0.01)"
    # Only parameters are set in __init__ (no skorch state on the instance).
    assert not [name for name in vars(head) if name.endswith("_")]


# ------------------------------------------------------------------ fitting


def test_fits_separable_blobs(blobs):
    X, y = blobs
    head = LinearHeadClassifier(**FAST, random_state=0).fit(X, y)
    assert head.score(X, y) >= 0.95
    # Input dimension and number of classes come from the data.
    assert isinstance(head.module_, LinearHead)
    assert head.module_.linear.in_features == 8
    assert head.module_.linear.out_features == 3
    assert head.n_features_in_ == 8
    assert_array_equal(head.classes_, [0, 1, 2])
    losses = head.history_[:, "train_loss"]
    assert len(losses) == 20 and losses[-1] < losses[0]
    # The user's parameters are untouched by fit.
    assert "module__in_features" not in head.get_params()


def test_predict_proba_is_the_softmax_of_the_linear_layer(fitted, blobs):
    X, _ = blobs
    proba = fitted.predict_proba(X)
    assert proba.dtype == np.float64
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # The same numbers from the head's weights, in numpy.
    weight = fitted.module_.linear.weight.detach().double().numpy()
    bias = fitted.module_.linear.bias.detach().double().numpy()
    logits = X.astype(np.float32).astype(np.float64) @ weight.T + bias
    assert_allclose(proba, softmax(logits, axis=1), rtol=1e-4, atol=1e-7)
    pred = fitted.predict(X)
    assert_array_equal(pred, fitted.classes_[proba.argmax(axis=1)])


def test_net_is_a_plain_skorch_net_on_class_codes(fitted, blobs):
    X, _ = blobs
    assert type(fitted.net_) is NeuralNetClassifier
    assert fitted.module_ is fitted.net_.module_
    assert fitted.history_ is fitted.net_.history_
    # skorch trains on the codes 0..n_classes-1, so its own predict returns codes.
    assert_array_equal(fitted.net_.classes_, [0, 1, 2])
    codes = fitted.net_.predict(X.astype(np.float32))
    assert_array_equal(fitted.classes_[codes], fitted.predict(X))


def test_binary_problem(blobs):
    X, y = blobs
    keep = y < 2
    head = LinearHeadClassifier(**FAST, random_state=0).fit(X[keep], y[keep])
    assert head.predict_proba(X[keep]).shape == (keep.sum(), 2)
    assert head.score(X[keep], y[keep]) >= 0.95


def test_string_labels_round_trip(fitted, blobs):
    X, y = blobs
    assert_array_equal(fitted.classes_, ["cat", "dog", "owl"])
    pred = fitted.predict(X)
    assert pred.dtype.kind == "U"
    assert set(pred) <= {"cat", "dog", "owl"}
    assert np.mean(pred == LABELS[y]) >= 0.95


@pytest.mark.parametrize(
    "labels", [np.array([3, 7, 10]), np.array(["a", "b", "c"], dtype=object)]
)
def test_other_label_types_round_trip(blobs, labels):
    X, y = blobs
    head = LinearHeadClassifier(**FAST, random_state=0).fit(X, list(labels[y]))
    assert_array_equal(head.classes_, labels)
    assert np.mean(head.predict(X) == labels[y]) >= 0.95


def test_float32_and_float64_inputs_give_the_same_head(blobs):
    X, y = blobs
    head64 = LinearHeadClassifier(**FAST, random_state=0).fit(X, y)
    head32 = LinearHeadClassifier(**FAST, random_state=0).fit(X.astype(np.float32), y)
    assert_array_equal(head64.predict_proba(X), head32.predict_proba(X))
    assert_array_equal(head64.predict_proba(X), head64.predict_proba(X.astype(np.float32)))
    assert head64.module_.linear.weight.dtype == torch.float32


def test_partial_fit_and_warm_start(blobs):
    X, y = blobs
    labels = LABELS[y]
    # partial_fit: all classes declared up front, though the first batch lacks one.
    head = LinearHeadClassifier(**FAST, random_state=0)
    first = labels != "owl"
    head.partial_fit(X[first], labels[first], classes=LABELS)
    assert_array_equal(head.classes_, ["cat", "dog", "owl"])
    assert head.predict_proba(X).shape == (120, 3)
    head.partial_fit(X, labels)
    assert len(head.history_) == 40
    proba = head.predict_proba(X)
    with pytest.raises(ValueError, match=r"not in classes_: \['emu'\]"):
        head.partial_fit(X, np.where(labels == "owl", "emu", labels))
    with pytest.raises(ValueError, match="expecting 8 features"):
        head.partial_fit(X[:, :5], labels)
    # A refused call leaves the fitted head as it was.
    assert len(head.history_) == 40
    assert_array_equal(head.predict_proba(X), proba)

    # warm_start: a second fit continues training instead of starting anew.
    warm = LinearHeadClassifier(**FAST, random_state=0, warm_start=True).fit(X, y)
    weight = warm.module_.linear.weight.detach().clone()
    warm.fit(X, y)
    assert len(warm.history_) == 40
    assert not torch.equal(weight, warm.module_.linear.weight)


def test_classes_parameter_fixes_the_output_columns(blobs):
    X, y = blobs
    keep = y < 2
    head = LinearHeadClassifier(**FAST, classes=[2, 1, 0], random_state=0)
    head.fit(X[keep], y[keep])
    assert_array_equal(head.classes_, [0, 1, 2])
    assert head.predict_proba(X).shape == (120, 3)


class _TwoLayers(torch.nn.Module):
    def __init__(self, in_features, n_classes, hidden=4):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, n_classes),
        )

    def forward(self, X):
        return self.net(X)


def test_custom_module_gets_dimensions_and_module_params(blobs):
    X, y = blobs
    head = LinearHeadClassifier(_TwoLayers, module__hidden=5, **FAST, random_state=0)
    head.fit(X, y)
    assert head.module_.net[0].in_features == 8
    assert head.module_.net[0].out_features == 5
    assert head.module_.net[2].out_features == 3


def test_validation_split_scores_string_labels(blobs):
    from skorch.dataset import ValidSplit

    X, y = blobs
    split = ValidSplit(4, stratified=True)
    head = LinearHeadClassifier(**FAST, train_split=split, random_state=0)
    head.fit(X, LABELS[y])
    assert len(head.history_[:, "valid_loss"]) == 20
    # Scored on the encoded targets skorch sees, so string labels work.
    assert head.history_[-1, "valid_acc"] >= 0.9


def test_prefixed_parameters_reach_the_net(blobs):
    X, y = blobs
    head = LinearHeadClassifier(**FAST, optimizer__weight_decay=0.5, random_state=0)
    head.set_params(optimizer__betas=(0.8, 0.9), iterator_train__shuffle=False)
    assert head.get_params()["optimizer__betas"] == (0.8, 0.9)
    head.fit(X, y)
    group = head.net_.optimizer_.param_groups[0]
    assert group["weight_decay"] == 0.5
    assert group["betas"] == (0.8, 0.9)
    assert head.net_.iterator_train__shuffle is False
    # Without shuffling, the seed only sets the initial weights; with it, also
    # the batches: the two heads differ.
    shuffled = LinearHeadClassifier(**FAST, optimizer__weight_decay=0.5,
                                    optimizer__betas=(0.8, 0.9), random_state=0).fit(X, y)
    assert not np.array_equal(head.predict_proba(X), shuffled.predict_proba(X))


def test_unexpected_keyword_is_kept_then_refused_at_fit(blobs):
    X, y = blobs
    head = LinearHeadClassifier(optimiser__weight_decay=0.1)  # misspelt prefix
    assert clone(head).get_params()["optimiser__weight_decay"] == 0.1
    with pytest.raises(TypeError, match=r"\['optimiser__weight_decay'\]"):
        head.fit(X, y)
    assert not hasattr(head, "net_")


# -------------------------------------------------------------- reproducibility


def test_random_state_makes_fits_reproducible(blobs):
    X, y = blobs
    rng_state = torch.random.get_rng_state()
    a = LinearHeadClassifier(**FAST, random_state=0).fit(X, y).predict_proba(X)
    b = LinearHeadClassifier(**FAST, random_state=0).fit(X, y).predict_proba(X)
    c = LinearHeadClassifier(**FAST, random_state=1).fit(X, y).predict_proba(X)
    assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Seeding happens in a fork of the RNG, and predicting forks it too: the global
    # torch state is untouched.
    assert torch.equal(rng_state, torch.random.get_rng_state())
    # A fresh RandomState(0) draws the same seed as the int 0.
    d = LinearHeadClassifier(**FAST, random_state=np.random.RandomState(0)).fit(X, y)
    assert_array_equal(d.predict_proba(X), a)


def test_random_state_none_uses_the_global_torch_rng(blobs):
    X, y = blobs
    torch.manual_seed(123)
    a = LinearHeadClassifier(**FAST).fit(X, y).predict_proba(X)
    torch.manual_seed(123)
    b = LinearHeadClassifier(**FAST).fit(X, y).predict_proba(X)
    assert_array_equal(a, b)


# ---------------------------------------------------------- scikit-learn API


def test_grid_search_over_lr_and_batch_size(blobs):
    X, y = blobs
    pipe = Pipeline(
        [("scale", StandardScaler()), ("clf", LinearHeadClassifier(max_epochs=10, random_state=0))]
    )
    grid = {"clf__lr": [1e-3, 1e-2], "clf__batch_size": [16, 32]}
    search = GridSearchCV(pipe, grid, cv=2).fit(X, LABELS[y])
    assert search.best_score_ >= 0.9
    # Settings reached the head: the scores of two settings that differ in both
    # parameters are those of their pipelines scored alone.
    results = search.cv_results_
    for i in (0, len(results["params"]) - 1):
        alone = cross_val_score(clone(pipe).set_params(**results["params"][i]), X, LABELS[y], cv=2)
        assert results["mean_test_score"][i] == pytest.approx(alone.mean(), abs=1e-12)
    best = search.best_estimator_.named_steps["clf"]
    assert (best.net_.lr, best.net_.batch_size) == (
        search.best_params_["clf__lr"], search.best_params_["clf__batch_size"])
    assert_array_equal(search.predict(X), search.best_estimator_.predict(X))


def test_clone_of_fitted_head_is_unfitted_with_same_params(fitted):
    head = fitted
    params = head.get_params(deep=False)
    twin = clone(head)
    assert twin is not head
    with pytest.raises(NotFittedError):
        check_is_fitted(twin)
    assert not hasattr(twin, "classes_")
    assert not hasattr(twin, "module_")
    twin_params = twin.get_params(deep=False)
    assert twin_params.keys() == params.keys()
    for key, value in params.items():
        assert twin_params[key] is value, key
    # "auto" is kept verbatim (resolved only in device_ of the fitted head).
    assert twin_params["device"] == "auto" and params["device"] == "auto"
    assert head.device_ == str(head.module_.linear.weight.device)

    # Prefixed skorch parameters survive cloning too.
    tuned = clone(LinearHeadClassifier(optimizer__weight_decay=1e-4, batch_size=16))
    assert tuned.get_params()["optimizer__weight_decay"] == 1e-4
    assert tuned.batch_size == 16


def test_joblib_round_trip(fitted, blobs, tmp_path):
    X, _ = blobs
    path = tmp_path / "head.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert_array_equal(loaded.classes_, fitted.classes_)
    assert loaded.get_params(deep=False)["device"] == "auto"
    assert loaded.device_ == fitted.device_
    # An unfitted head round-trips too and can then be fitted.
    joblib.dump(LinearHeadClassifier(**FAST), tmp_path / "unfitted.joblib")
    unfitted = joblib.load(tmp_path / "unfitted.joblib")
    with pytest.raises(NotFittedError):
        unfitted.predict(X)


def test_unpickled_head_trains_on_exactly_like_the_original(blobs):
    X, y = blobs
    head = LinearHeadClassifier(**FAST, random_state=0).fit(X, y)
    loaded = pickle.loads(pickle.dumps(head))
    # Same weights and the same optimizer moments, on the same device.
    head.partial_fit(X, y)
    loaded.partial_fit(X, y)
    assert len(loaded.history_) == 40
    assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))


def test_not_fitted_error_before_fit(blobs):
    X, y = blobs
    head = LinearHeadClassifier(**FAST)
    for method in (head.predict, head.predict_proba):
        with pytest.raises(NotFittedError, match="is not fitted yet") as info:
            method(X)
        assert type(info.value) is NotFittedError  # scikit-learn's, not skorch's
    with pytest.raises(NotFittedError):
        check_is_fitted(head)
    assert not hasattr(head, "classes_")
    head.fit(X, y)
    check_is_fitted(head)


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad, match", [(np.nan, "Input X contains NaN"), (np.inf, "infinity")])
def test_rejects_nan_and_inf(fitted, blobs, bad, match):
    X, y = blobs
    X_bad = X.copy()
    X_bad[3, 2] = bad
    with pytest.raises(ValueError, match=match):
        LinearHeadClassifier(**FAST).fit(X_bad, y)
    with pytest.raises(ValueError, match=match):
        fitted.predict_proba(X_bad)
    with pytest.raises(ValueError, match=match):
        fitted.predict(X_bad)


def test_rejects_wrong_shapes(fitted, blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        LinearHeadClassifier(**FAST).fit(X[:, 0], y)
    with pytest.raises(ValueError, match="Found array with dim 3"):
        LinearHeadClassifier(**FAST).fit(X[:, :, None], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LinearHeadClassifier(**FAST).fit(X, y[:-1])
    with pytest.raises(
        ValueError, match="X has 5 features, but LinearHeadClassifier is expecting 8"
    ):
        fitted.predict(X[:, :5])


def test_refused_fit_leaves_a_fitted_head_as_it_was(fitted, blobs):
    X, _ = blobs
    head = clone(fitted).set_params(max_epochs=2).fit(X, LABELS[blobs[1]])
    proba = head.predict_proba(X)
    # validate_data records the 5 features before the labels are refused.
    with pytest.raises(ValueError, match="at least 2 classes"):
        head.fit(X[:, :5], np.zeros(len(X)))
    assert head.n_features_in_ == 8
    assert_array_equal(head.predict_proba(X), proba)


def test_rejects_bad_targets(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearHeadClassifier(**FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        LinearHeadClassifier(**FAST).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="requires y"):
        LinearHeadClassifier(**FAST).fit(X, None)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lr": 0.0}, "'lr' parameter of LinearHeadClassifier"),
        ({"batch_size": 0}, "'batch_size' parameter"),
        ({"max_epochs": -1}, "'max_epochs' parameter"),
        ({"random_state": "zero"}, "'random_state' parameter"),
        ({"device": "tpu"}, "device must be 'auto'"),
    ],
)
def test_rejects_bad_parameters_at_fit(blobs, params, match):
    X, y = blobs
    head = LinearHeadClassifier(**params)  # never raises in __init__
    with pytest.raises(ValueError, match=match):
        head.fit(X, y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="CUDA is not available"):
        LinearHeadClassifier(**FAST, device="cuda").fit(X, y)
    head = LinearHeadClassifier(**FAST).fit(X, y)
    assert head.device_ == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_device_uses_cuda(blobs, tmp_path):
    X, y = blobs
    head = LinearHeadClassifier(**FAST, random_state=0).fit(X, y)
    assert head.device_ == "cuda"
    assert head.module_.linear.weight.is_cuda
    assert head.get_params()["device"] == "auto"
    proba = head.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (120, 3)
    joblib.dump(head, tmp_path / "head.joblib")
    assert_array_equal(joblib.load(tmp_path / "head.joblib").predict_proba(X), proba)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_passes_sklearn_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(
        LinearHeadClassifier(lr=1e-2, max_epochs=30, random_state=0), on_fail=None
    )
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert not failed


def test_warm_start_fit_and_partial_fit_use_parameters_set_after_fit():
    """set_params on a fitted head reaches the net a warm start goes on with: more
    epochs are run, the new learning rate is in the optimizer, and the optimizer's
    moments are kept (it is not rebuilt)."""
    X, y = make_blobs(n_samples=60, n_features=8, centers=3, random_state=0)
    head = LinearHeadClassifier(max_epochs=2, warm_start=True, random_state=0).fit(X, y)
    moments = {k: v["exp_avg"].clone() for k, v in head.net_.optimizer_.state.items()}
    head.set_params(max_epochs=3, lr=0.5)
    head.fit(X, y)
    assert len(head.history_) == 5
    assert head.net_.optimizer_.param_groups[0]["lr"] == 0.5
    assert set(head.net_.optimizer_.state) == set(moments)
    head.set_params(max_epochs=1)
    head.partial_fit(X, y)
    assert len(head.history_) == 6
