"""Tests for the public callbacks and the estimators' overridable training methods.

Tiny random Whisper encoder from conftest, synthetic clips; scripted scores make the
epoch at which training must stop (and the weights it must keep) known in advance.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import make_class_sines
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from skaudio_confit import FineTuneClassifier, PairTuneTransformer
from skaudio_confit.callbacks import Callback, EarlyStopping, EpochScoring, PrintLog

FAST = dict(epochs=2, batch_size=6, learning_rate=1e-3, lr_schedule="constant", layer=-1,
            random_state=0, verbose=0, device="cpu")
PAIRTUNE = dict(FAST, samples_per_class=2, projection_dim=16)


@pytest.fixture(scope="module")
def data():
    return make_class_sines(n_per_class=4, max_len=4000)


class Scripted(Callback):
    """Records ``scores[epoch]`` as ``record["scripted"]`` (epoch 0 included)."""

    def __init__(self, scores=(0.0,)):
        self.scores = scores

    def on_epoch_end(self, estimator, record, state):
        record["scripted"] = self.scores[record["epoch"]]


class Raising(Callback):
    def on_epoch_end(self, estimator, record, state):
        raise RuntimeError("tracker unreachable")


def test_early_stopping_stops_after_patience_epochs_without_improvement(
        tiny_whisper_encoder_dir, data):
    X, y = data
    scores = [None, 0.5, 0.7, 0.6, 0.7, 0.9]  # best at epoch 2, not beaten by 3 and 4
    stopper = EarlyStopping("scripted", patience=2, load_best=False)
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 5},
                                callbacks=[Scripted(scores), stopper]).fit(X, y)
    assert [r["epoch"] for r in model.history_] == [1, 2, 3, 4]
    assert [r["scripted"] for r in model.history_] == scores[1:5]
    # Falling scores improve at epoch 2 only if lower is better; 3 does not.
    falling = [None, 0.9, 0.8, 0.85, 0.7, 0.6]
    model.set_params(callbacks=[Scripted(falling), EarlyStopping(
        "scripted", patience=1, lower_is_better=True)]).fit(X, y)
    assert [r["epoch"] for r in model.history_] == [1, 2, 3]


def test_load_best_restores_the_pretrained_weights_when_epoch_0_is_best(
        tiny_whisper_encoder_dir, data):
    X, y = data
    keep = EarlyStopping("scripted", patience=None, score_pretrained=True)
    # The tuned encoder alone, to compare its weights with the pretrained ones.
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, include_pretrained=False,
                                callbacks=[Scripted([1.0, 0.1, 0.2]), keep]).fit(X, y)
    assert [r["epoch"] for r in model.history_] == [0, 1, 2]
    assert model.history_[0]["loss"] is None and model.history_[0]["steps"] == 0
    pretrained = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0})
    np.testing.assert_array_equal(model.transform(X), pretrained.fit(X, y).transform(X))
    # With the last epoch best, the tuned weights are kept.
    model.set_params(callbacks=[Scripted([1.0, 0.1, 2.0]), keep]).fit(X, y)
    assert not np.allclose(model.transform(X), pretrained.transform(X))


def test_n_iter_no_change_and_keep_best_are_an_early_stopping(tiny_whisper_encoder_dir, data):
    X, y = data
    params = {**FAST, "epochs": 3, "validation_fraction": 0.5}
    old = FineTuneClassifier(tiny_whisper_encoder_dir, **params, n_iter_no_change=1,
                             keep_best=True).fit(X, y)
    new = FineTuneClassifier(tiny_whisper_encoder_dir, **params, callbacks=[EarlyStopping(
        patience=1, score_pretrained=True)]).fit(X, y)
    assert [r["epoch"] for r in old.history_] == [r["epoch"] for r in new.history_]
    assert old.history_[0]["epoch"] == 0
    assert ([r["valid_accuracy"] for r in old.history_]
            == [r["valid_accuracy"] for r in new.history_])
    np.testing.assert_array_equal(old.coef_, new.coef_)


def test_epoch_scoring_records_a_probe_score_per_epoch(tiny_whisper_encoder_dir, data):
    X, y = data
    X_val, y_val = make_class_sines(n_per_class=3, seed=5)
    probe = LogisticRegression(max_iter=500)
    # With the default include_pretrained, the probe reads [pretrained, tuned], as
    # transform returns them.
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                                callbacks=[EpochScoring(probe, name="lr", score_pretrained=True)])
    model.fit(X, y, validation_data=(X_val, y_val))
    assert [r["epoch"] for r in model.history_] == [0, 1, 2]
    # The last record is the probe fitted on the final embeddings of the training clips.
    codes = np.searchsorted(model.classes_, y)
    expected = clone(probe).fit(model.transform(X), codes).score(
        model.transform(X_val), np.searchsorted(model.classes_, y_val))
    assert model.history_[-1]["lr"] == pytest.approx(expected)
    assert not hasattr(probe, "coef_")  # the user's probe was cloned, not fitted
    with pytest.raises(ValueError, match="EpochScoring scores validation clips"):
        model.fit(X, y)


class Grab(Callback):
    """Keeps every epoch's training and validation embeddings (epoch 0 included)."""

    score_pretrained = True

    def __init__(self, sink):
        self.sink = sink

    def on_epoch_end(self, estimator, record, state):
        self.sink.append((state.train_embeddings(), state.valid_embeddings()))


def test_per_epoch_embeddings_carry_the_pretrained_half_computed_once(
        tiny_whisper_encoder_dir, data, monkeypatch):
    X, y = data
    X_val, y_val = make_class_sines(n_per_class=3, seed=5)
    loads = []
    load = PairTuneTransformer._pretrained_backbone
    monkeypatch.setattr(PairTuneTransformer, "_pretrained_backbone",
                        lambda self: loads.append(1) or load(self))
    seen = []
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, callbacks=[Grab(seen)])
    model.fit(X, y, validation_data=(X_val, y_val))
    # One load to train, one for the pretrained half (the copy kept after the fit).
    assert len(loads) == 2
    frozen = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0}).fit(X, y)
    width = frozen.transform(X[:1]).shape[1]
    assert [train.shape for train, _ in seen] == [(len(X), 2 * width)] * 3
    # Epoch 0: both halves are the pretrained encoder's; the first half never changes.
    np.testing.assert_allclose(seen[0][0][:, :width], frozen.transform(X), atol=1e-6)
    np.testing.assert_allclose(seen[0][0][:, width:], frozen.transform(X), atol=1e-6)
    for train, valid in seen[1:]:
        np.testing.assert_array_equal(train[:, :width], seen[0][0][:, :width])
        np.testing.assert_array_equal(valid[:, :width], seen[0][1][:, :width])
    # The last epoch's are what transform returns.
    np.testing.assert_allclose(seen[-1][0], model.transform(X), atol=1e-6)
    np.testing.assert_allclose(seen[-1][1], model.transform(X_val), atol=1e-6)
    assert not np.allclose(seen[-1][0][:, width:], seen[0][0][:, width:])
    # Without per-epoch embeddings, the copy is still loaded once, after training.
    loads.clear()
    model.set_params(callbacks=None).fit(X, y)
    assert len(loads) == 2 and hasattr(model, "pretrained_backbone_")


def test_fit_leaves_the_users_callbacks_unchanged(tiny_whisper_encoder_dir, data):
    X, y = data
    stopper = EarlyStopping(patience=1)
    scorer = EpochScoring(LogisticRegression(max_iter=200))
    before = [dict(vars(stopper)), dict(vars(scorer))]
    model = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST, validation_fraction=0.5,
                               callbacks=[scorer, stopper])
    first = [r["probe_score"] for r in model.fit(X, y).history_]
    assert [dict(vars(stopper)), dict(vars(scorer))] == before
    assert model.callbacks[1] is stopper
    # No state carried over: a second fit with the same objects gives the same history.
    assert [r["probe_score"] for r in model.fit(X, y).history_] == first


def test_print_log_writes_one_line_per_epoch_to_the_sink(tiny_whisper_encoder_dir, data):
    X, y = data
    lines = []
    FineTuneClassifier(tiny_whisper_encoder_dir, **FAST, callbacks=[
        PrintLog(lines.append, keys=["loss", "train_accuracy"])]).fit(X, y)
    assert len(lines) == 2
    assert lines[1].startswith("FineTuneClassifier epoch 2: loss ")
    assert "train_accuracy" in lines[1]


def test_callbacks_survive_clone_pickle_and_save(tiny_whisper_encoder_dir, data, tmp_path):
    X, y = data
    callbacks = [PrintLog(keys=["loss"]), EarlyStopping(patience=3)]
    model = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST, callbacks=callbacks)
    copy = clone(model)
    assert copy.callbacks[1] is not callbacks[1]
    assert copy.callbacks[1].get_params() == callbacks[1].get_params()
    model.set_params(callbacks=[PrintLog(print, keys=["loss"])]).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    assert again.callbacks[0].get_params() == model.callbacks[0].get_params()
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    # The safe format holds no code: a loaded model has no callbacks, the same weights.
    model.save(tmp_path / "model")
    loaded = FineTuneClassifier.load(tmp_path / "model")
    assert loaded.callbacks is None
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_a_failing_callback_names_itself_and_leaves_the_fitted_model(
        tiny_whisper_encoder_dir, data):
    X, y = data
    model = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST).fit(X, y)
    before = model.predict_proba(X)
    with pytest.raises(RuntimeError, match="tracker unreachable") as info:
        model.set_params(callbacks=[Raising()]).fit(X, y)
    assert "callback Raising in on_epoch_end" in "".join(info.value.__notes__)
    np.testing.assert_array_equal(model.predict_proba(X), before)
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a str"):
        model.set_params(callbacks=["stop early"]).fit(X, y)
    with pytest.raises(ValueError, match="monitors 'nowhere'"):
        model.set_params(callbacks=[EarlyStopping("nowhere")]).fit(X, y)
    with pytest.raises(ValueError, match="EarlyStopping scores validation clips"):
        model.set_params(callbacks=[EarlyStopping()]).fit(X, y)
    with pytest.raises(ValueError, match="patience"):
        model.set_params(callbacks=[EarlyStopping("loss", patience=0)]).fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), before)


def test_subclasses_override_the_training_methods(tiny_whisper_encoder_dir, data):
    """``_validation_score`` gets the training state; ``_batch_plan`` decides the batches."""
    X, y = data

    class Custom(FineTuneClassifier):
        def _validation_score(self, state):
            return float(len(state.history) + len(state.valid_codes))

        def _batch_plan(self, codes):
            return lambda rng: [np.arange(len(codes))]  # one batch of every clip

    model = Custom(tiny_whisper_encoder_dir, **FAST, validation_fraction=0.5).fit(X, y)
    n_valid = len(y) // 2
    assert [r["valid_accuracy"] for r in model.history_] == [n_valid, n_valid + 1]
    assert [r["batches"] for r in model.history_] == [1, 1]
