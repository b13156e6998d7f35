"""Tests for the training-recipe parameters both estimators share.

``lr_schedule`` (warm-up then decay), ``max_steps`` (a budget of optimiser steps),
``keep_best`` (the pretrained weights compete as epoch 0) and PairTune's
``head_learning_rate``. Tiny random Whisper encoder from conftest, synthetic clips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_class_sines

from skaudio_confit import FineTuneClassifier, PairTuneTransformer
from skaudio_confit._training import _lr_scheduler

FAST = dict(epochs=2, batch_size=6, learning_rate=1e-3, random_state=0, verbose=0,
            device="cpu")
PAIRTUNE = dict(FAST, samples_per_class=2, projection_dim=16)


@pytest.fixture(scope="module")
def data():
    return make_class_sines(n_per_class=6)


def rates(schedule, total):
    """Learning rate used at each of ``total`` optimiser steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _lr_scheduler(optimizer, schedule, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return np.array(out)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_warms_up_then_decays(schedule):
    lr = rates(schedule, 50)
    assert lr[0] == pytest.approx(0.2)  # warm-up of 5 steps, the first one already learns
    assert lr[4] == pytest.approx(1.0)
    assert np.all(np.diff(lr[:5]) > 0) and np.all(np.diff(lr[5:]) < 0)
    assert 0 < lr[-1] < 0.1
    assert np.all(rates("constant", 10) == 1.0)


@pytest.mark.parametrize("cls, params", [(PairTuneTransformer, PAIRTUNE),
                                         (FineTuneClassifier, FAST)])
def test_history_counts_optimiser_steps(tiny_whisper_encoder_dir, data, cls, params):
    X, y = data
    model = cls(tiny_whisper_encoder_dir, **params).fit(X, y)
    steps = [h["steps"] for h in model.history_]
    batches = [h["batches"] for h in model.history_]
    assert steps == list(np.cumsum(batches))


@pytest.mark.parametrize("cls, params", [(PairTuneTransformer, PAIRTUNE),
                                         (FineTuneClassifier, FAST)])
def test_max_steps_stops_within_an_epoch(tiny_whisper_encoder_dir, data, cls, params):
    X, y = data
    # A constant rate: with a schedule, the cap would also reshape the rates.
    params = {**params, "epochs": 3, "lr_schedule": "constant"}
    full = cls(tiny_whisper_encoder_dir, **params).fit(X, y)
    per_epoch = full.history_[0]["batches"]
    assert per_epoch >= 3
    budget = per_epoch + 2  # one full epoch and two steps of the next
    capped = cls(tiny_whisper_encoder_dir, **params, max_steps=budget).fit(X, y)
    assert [h["epoch"] for h in capped.history_] == [1, 2]
    assert capped.history_[-1]["steps"] == budget
    assert capped.history_[-1]["batches"] == 2
    # The first epoch is the same computation as without the cap (constant rate).
    assert capped.history_[0]["loss"] == full.history_[0]["loss"]
    assert capped.history_[-1]["loss"] != full.history_[1]["loss"]


def test_defaults_are_the_tuned_recipe():
    for cls in (PairTuneTransformer, FineTuneClassifier):
        params = cls().get_params()
        assert (params["layer"], params["learning_rate"], params["lr_schedule"]) == (
            "middle", 1e-4, "cosine")
        assert params["max_steps"] is None and params["keep_best"] is False


def test_schedule_changes_training_and_is_reproducible(tiny_whisper_encoder_dir, data):
    X, y = data
    plain = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                                lr_schedule="constant").fit(X, y)
    fits = [PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                                lr_schedule="cosine").fit(X, y) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].transform(X), fits[1].transform(X))
    assert not np.allclose(plain.transform(X), fits[0].transform(X))


def test_head_learning_rate_is_the_projection_heads(tiny_whisper_encoder_dir, data):
    from skaudio_confit._objectives import SupConObjective

    groups = SupConObjective(32, 16, head_learning_rate=0.5).param_groups()
    assert len(groups) == 1 and groups[0]["lr"] == 0.5
    assert "lr" not in SupConObjective(32, 16).param_groups()[0]
    X, y = data
    a = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE).fit(X, y)
    b = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE,
                            head_learning_rate=1e-1).fit(X, y)
    assert a.history_[-1]["loss"] != b.history_[-1]["loss"]


def test_keep_best_scores_the_pretrained_encoder_as_epoch_0(tiny_whisper_encoder_dir, data):
    X, y = data
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, validation_fraction=0.5,
                                keep_best=True).fit(X, y)
    assert [h["epoch"] for h in model.history_] == [0, 1, 2]
    assert model.history_[0]["steps"] == 0 and model.history_[0]["loss"] is None
    # Accuracies on the 9 held-out clips (half of 18): multiples of 1/9.
    scores = np.array([h["valid_accuracy"] for h in model.history_])
    np.testing.assert_allclose(scores * 9, np.round(scores * 9), atol=1e-9)
    # Without a validation set there is nothing to choose by: every epoch is trained.
    plain = PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, keep_best=True).fit(X, y)
    assert [h["epoch"] for h in plain.history_] == [1, 2]


@pytest.mark.parametrize("best, expect_pretrained", [(0, True), (2, False)])
def test_keep_best_ends_at_the_best_epoch(tiny_whisper_encoder_dir, data, monkeypatch, best,
                                          expect_pretrained):
    """A scripted validation score peaking at epoch ``best`` decides the weights kept."""
    X, y = data
    calls = []

    def scripted(self, *args):
        calls.append(None)
        return 1.0 if len(calls) - 1 == best else 0.1

    monkeypatch.setattr(PairTuneTransformer, "_validation_score", scripted)
    model = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 3},
                                include_pretrained=False,  # the tuned weights alone
                                validation_fraction=0.5, keep_best=True).fit(X, y)
    assert len(calls) == 4
    pretrained = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0})
    same = np.allclose(model.transform(X), pretrained.fit(X, y).transform(X))
    assert same == expect_pretrained


@pytest.mark.parametrize("params, match", [
    ({"lr_schedule": "warmup"}, "lr_schedule"),
    ({"max_steps": 0}, "max_steps"),
    ({"keep_best": "yes"}, "keep_best"),
    ({"head_learning_rate": -1.0}, "head_learning_rate"),
])
def test_bad_recipe_parameters_raise(tiny_whisper_encoder_dir, data, params, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, **params).fit(X, y)


def test_middle_layer_is_half_the_depth(tiny_whisper_encoder_dir, data):
    """layer="middle" pools num_layers // 2, in training and in transform alike."""
    X, y = data
    middle = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0},
                                 layer="middle").fit(X, y)
    assert middle.backbone_.num_layers == 2
    one = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0},
                              layer=1).fit(X, y)
    last = PairTuneTransformer(tiny_whisper_encoder_dir, **{**PAIRTUNE, "epochs": 0},
                               layer=-1).fit(X, y)
    np.testing.assert_array_equal(middle.transform(X), one.transform(X))
    assert not np.allclose(middle.transform(X), last.transform(X))
    tuned = [PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, layer=layer).fit(X, y)
             for layer in ("middle", 1)]
    assert tuned[0].history_[-1]["loss"] == tuned[1].history_[-1]["loss"]
    with pytest.raises(ValueError, match="layer"):
        PairTuneTransformer(tiny_whisper_encoder_dir, **PAIRTUNE, layer="top").fit(X, y)
