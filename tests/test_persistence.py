"""The saved-file format: save/load round trips, manifests, model cards, the step
registry and the committed format-1 fixture.

How saves fail (crashes, full disks, links, tampered files) is tested in
``test_persistence_reliability.py``.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from conftest import make_class_sines
from huggingface_hub import ModelCard
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from skorch.callbacks import EpochScoring

from skaudio_confit import FineTuneClassifier, PairTuneTransformer
from skaudio_confit.heads import LinearHead, LinearHeadClassifier
from skaudio_confit.persistence import (
    FORMAT_VERSION,
    MANIFEST,
    MODEL_CARD,
    PIPELINE_MANIFEST,
    WEIGHTS,
    load_pipeline,
    save_pipeline,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "pairtune_format1"
FAST_PAIRTUNE = dict(epochs=1, batch_size=6, samples_per_class=2, projection_dim=8,
                     learning_rate=1e-3, random_state=0, verbose=0, device="cpu")
FAST_FINETUNE = dict(epochs=1, batch_size=4, learning_rate=1e-3, random_state=0, verbose=0,
                     device="cpu")
FAST_HEAD = dict(lr=1e-2, max_epochs=5, random_state=0)
LABELS = np.array(["dog", "cat", "owl"])  # deliberately not sorted


@pytest.fixture(scope="module")
def sines():
    X, y = make_class_sines(n_per_class=3, min_len=1600, max_len=2400)
    return X, LABELS[y]


@pytest.fixture(scope="module")
def pairtune(tiny_whisper_encoder_dir, sines):
    return PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(*sines)


@pytest.fixture(scope="module")
def finetune(tiny_whisper_encoder_dir, sines):
    return FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(*sines)


@pytest.fixture(scope="module")
def head_pipeline(pairtune, sines):
    """The user guide's pipeline: PairTune embeddings, scaled, into the linear head."""
    X, y = sines
    head = LinearHeadClassifier(**FAST_HEAD, optimizer=torch.optim.AdamW,
                                optimizer__weight_decay=1e-3)
    pipe = Pipeline([("pairtune", pairtune), ("scale", StandardScaler()), ("clf", head)])
    return pipe.fit(X, y)


def read_json(path):
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------------------
# Estimators: save / load round trips
# --------------------------------------------------------------------------------------


def test_save_load_round_trip(pairtune, sines, tmp_path):
    X, _ = sines
    pairtune.save(tmp_path / "model")
    loaded = PairTuneTransformer.load(tmp_path / "model")
    assert type(loaded) is PairTuneTransformer
    assert_array_equal(loaded.transform(X), pairtune.transform(X))
    assert loaded.get_params() == {**pairtune.get_params(), "backbone": str(pairtune.backbone)}
    assert loaded.classes_.dtype == pairtune.classes_.dtype
    assert_array_equal(loaded.classes_, pairtune.classes_)
    assert loaded.history_ == pairtune.history_
    assert not hasattr(loaded, "n_features_in_")
    # Saving again over the same directory replaces the files.
    loaded.save(tmp_path / "model")
    assert_array_equal(PairTuneTransformer.load(tmp_path / "model").transform(X),
                       pairtune.transform(X))


def test_save_load_keeps_mixed_labels_and_n_features_in(tiny_whisper_encoder_dir, sines,
                                                        tmp_path):
    X, y = sines
    mixed = np.empty(3, dtype=object)
    mixed[:] = [2.5, 7, "x"]
    X2d = np.stack([x[:1600] for x in X])
    est = PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(
        X2d, mixed[np.searchsorted(np.unique(y), y)])
    est.save(tmp_path)
    loaded = PairTuneTransformer.load(tmp_path)
    assert loaded.classes_.dtype == object and loaded.classes_.tolist() == [2.5, 7, "x"]
    assert [type(c) for c in loaded.classes_] == [float, int, str]
    assert loaded.n_features_in_ == 1600
    assert_array_equal(loaded.transform(X2d), est.transform(X2d))


@pytest.mark.parametrize("how", ["pickle", "joblib", "save"])
def test_finetune_round_trips(finetune, sines, tmp_path, how):
    X, _ = sines
    if how == "pickle":
        again = pickle.loads(pickle.dumps(finetune))
    elif how == "joblib":
        joblib.dump(finetune, tmp_path / "m.joblib")
        again = joblib.load(tmp_path / "m.joblib")
    else:
        finetune.save(tmp_path / "model")
        again = FineTuneClassifier.load(tmp_path / "model")
    assert_array_equal(again.predict_proba(X), finetune.predict_proba(X))
    assert_array_equal(again.classes_, finetune.classes_)
    assert_array_equal(again.coef_, finetune.coef_)


def test_a_frozen_encoder_fitted_without_labels_saves_and_loads(tiny_whisper_encoder_dir,
                                                                sines, tmp_path):
    X, _ = sines
    frozen = PairTuneTransformer(tiny_whisper_encoder_dir, **{**FAST_PAIRTUNE, "epochs": 0})
    frozen.fit(X)
    frozen.save(tmp_path / "frozen")
    loaded = PairTuneTransformer.load(tmp_path / "frozen")
    assert not hasattr(loaded, "classes_")
    assert_array_equal(loaded.transform(X), frozen.transform(X))


def test_save_writes_no_pickle_and_load_never_unpickles(pairtune, sines, tmp_path,
                                                        monkeypatch):
    X, _ = sines
    pairtune.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, MODEL_CARD, WEIGHTS])
    assert read_json(tmp_path / MANIFEST)["estimator"] == "PairTuneTransformer"
    assert not (tmp_path / WEIGHTS).read_bytes().startswith(b"\x80")  # not a pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert_array_equal(PairTuneTransformer.load(tmp_path).transform(X), pairtune.transform(X))


def test_load_refuses_tampered_and_truncated_weights(pairtune, tmp_path):
    pairtune.save(tmp_path / "ok")
    original = (tmp_path / "ok" / WEIGHTS).read_bytes()
    for name, content in [
        ("flipped", original[:-100] + bytes([original[-100] ^ 0x01]) + original[-99:]),
        ("flipped_header", original[:20] + bytes([original[20] ^ 0x20]) + original[21:]),
        ("truncated", original[: len(original) // 2]),
        ("empty", b""),
    ]:
        shutil.copytree(tmp_path / "ok", tmp_path / name)
        (tmp_path / name / WEIGHTS).write_bytes(content)
        with pytest.raises(ValueError, match="altered or truncated"):
            PairTuneTransformer.load(tmp_path / name)
    PairTuneTransformer.load(tmp_path / "ok")  # the untouched copy still loads


def test_load_refuses_a_manifest_for_another_estimator(pairtune, tmp_path):
    pairtune.save(tmp_path)
    manifest = read_json(tmp_path / MANIFEST)
    manifest["estimator"] = "SomethingElse"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="SomethingElse"):
        PairTuneTransformer.load(tmp_path)


# --------------------------------------------------------------------------------------
# The committed format-1 fixture: saves of one version load in the next
# --------------------------------------------------------------------------------------


def test_a_model_saved_in_format_1_loads_and_gives_the_same_output():
    """tests/fixtures/pairtune_format1 was written once by tests/fixtures/make_fixtures.py
    (see there); it must load with every later version of the package."""
    manifest = read_json(FORMAT1 / MANIFEST)
    assert manifest["format_version"] == 1
    model = PairTuneTransformer.load(FORMAT1)
    Z = model.transform(np.load(FORMAT1 / "input.npy"))
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z, np.load(FORMAT1 / "expected.npy"), rtol=0, atol=1e-6)
    assert model.classes_.tolist() == [0, 1]
    assert [r["epoch"] for r in model.history_] == [1, 2]


def test_format_1_fixture_with_a_newer_version_is_refused(tmp_path):
    shutil.copytree(FORMAT1, tmp_path / "m")
    manifest = read_json(tmp_path / "m" / MANIFEST)
    manifest["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1} is not "
                                         r"supported .*upgrade the package"):
        PairTuneTransformer.load(tmp_path / "m")


def test_a_new_save_writes_the_format_1_manifest_entries(pairtune, sines, tmp_path):
    """Readers of format 1 find every entry they read, with the same meaning."""
    tuned_only = clone(pairtune).set_params(include_pretrained=False).fit(*sines)
    tuned_only.save(tmp_path / "tuned")
    pairtune.save(tmp_path / "both")  # the default keeps the pretrained copy
    old = read_json(FORMAT1 / MANIFEST)
    for name, version in (("tuned", 1), ("both", 2)):
        new = read_json(tmp_path / name / MANIFEST)
        # Without a pretrained copy a save stays format 1, so older releases read it;
        # with one it is format 2, which they refuse with "upgrade the package".
        assert new["format_version"] == version and old["format_version"] == 1
        assert set(old) <= set(new)
        assert set(old["weights"]) <= set(new["weights"])


# --------------------------------------------------------------------------------------
# Pipelines, the LinearHeadClassifier included
# --------------------------------------------------------------------------------------


def test_a_pipeline_ending_in_the_linear_head_round_trips(head_pipeline, sines, tmp_path,
                                                          monkeypatch):
    X, _ = sines
    save_pipeline(head_pipeline, tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == sorted(
        [PIPELINE_MANIFEST, MODEL_CARD, "pairtune", "clf.safetensors"])
    monkeypatch.setattr(pickle, "loads", None)  # loading must not unpickle
    monkeypatch.setattr(torch, "load", None)
    loaded = load_pipeline(tmp_path / "pipe")
    assert [name for name, _ in loaded.steps] == ["pairtune", "scale", "clf"]
    assert_array_equal(loaded.predict_proba(X), head_pipeline.predict_proba(X))
    assert_array_equal(loaded.predict(X), head_pipeline.predict(X))
    head, original = loaded[-1], head_pipeline[-1]
    assert type(head) is LinearHeadClassifier
    assert head.get_params() == original.get_params()
    assert head.get_params()["optimizer"] is torch.optim.AdamW
    assert_array_equal(head.classes_, original.classes_)
    assert head.classes_.dtype == original.classes_.dtype
    assert head.n_features_in_ == original.n_features_in_ == 64  # [pretrained, tuned]
    assert head.history_[:, "train_loss"] == original.history_[:, "train_loss"]
    assert head.device_ == original.device_
    # The loaded head trains on like any fitted head (a fresh optimizer state).
    Z = loaded[:-1].transform(X)
    head.set_params(warm_start=True).fit(Z, sines[1])
    assert len(head.history_) == 2 * len(original.history_)
    assert head.history_[-1, "train_loss"] < original.history_[-1, "train_loss"]


def test_the_head_alone_with_string_labels_and_feature_names(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(30, 4)), columns=["a", "b", "c", "d"])
    y = np.array(["x", "y", "z"])[np.arange(30) % 3]
    pipe = Pipeline([("clf", LinearHeadClassifier(**FAST_HEAD))]).fit(X, y)
    save_pipeline(pipe, tmp_path / "p")
    loaded = load_pipeline(tmp_path / "p")
    assert_array_equal(loaded[-1].feature_names_in_, ["a", "b", "c", "d"])
    assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(X.rename(columns={"a": "e"}))


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"callbacks": [EpochScoring("accuracy")]}, "callbacks="),
        ({"module": type("MyHead", (LinearHead,), {})}, "module="),
        ({"criterion": torch.nn.NLLLoss, "predict_nonlinearity": None}, "criterion="),
    ],
    ids=["callback-objects", "other-module", "other-criterion"],
)
def test_a_head_with_unsavable_parameters_is_refused_before_writing(pairtune, sines, params,
                                                                    fragment, tmp_path):
    X, y = sines
    head = LinearHeadClassifier(**FAST_HEAD, **params).fit(pairtune.transform(X), y)
    with pytest.raises(ValueError, match=rf"Step 'clf' \(LinearHeadClassifier\): {fragment}"):
        save_pipeline(Pipeline([("pairtune", pairtune), ("clf", head)]), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_steps_are_matched_by_class_exactly(pairtune, sines, tmp_path):
    """One registry serves save and load: what saves, loads; a subclass (which may hold
    state its parent's format would lose) is refused at save, not at load."""

    class MyScaler(StandardScaler):
        pass

    X, y = sines
    Z = pairtune.transform(X)
    for step in (MyScaler().fit(Z), SVC().fit(Z, y)):
        pipe = Pipeline([("pairtune", pairtune), ("x", step)])
        with pytest.raises(ValueError, match=r"has no safe format; supported steps are "
                                             r"PairTuneTransformer, FineTuneClassifier, "
                                             r"LinearHeadClassifier"):
            save_pipeline(pipe, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_pipeline_manifest_keeps_the_format_1_layout(pairtune, sines, tmp_path):
    """An encoder + scikit-learn pipeline is written as before (format 1), so older
    versions of the package still read it; the head only adds a step kind."""
    X, y = sines
    clf = LogisticRegression(max_iter=200).fit(pairtune.transform(X), y)
    save_pipeline(Pipeline([("pairtune", pairtune), ("clf", clf)]), tmp_path / "p")
    manifest = read_json(tmp_path / "p" / PIPELINE_MANIFEST)
    assert manifest["format_version"] == 1
    encoder, logistic = manifest["steps"]
    assert encoder == {"name": "pairtune", "kind": "PairTuneTransformer",
                       "directory": "pairtune"}
    assert set(logistic) == {"name", "kind", "params", "fitted"}
    assert logistic["params"]["max_iter"] == 200
    assert set(logistic["fitted"]) == {"coef_", "intercept_", "classes_", "n_iter_",
                                       "n_features_in_"}


# --------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------


def test_save_writes_a_hugging_face_model_card(pairtune, tmp_path):
    pairtune.save(tmp_path / "model", card_sections={"Training data": "- 9 test tones"})
    card = ModelCard.load(tmp_path / "model" / MODEL_CARD)
    assert card.data.library_name == "skaudio-confit"
    assert card.data.pipeline_tag == "feature-extraction"
    assert "PairTuneTransformer" in card.data.tags
    assert "PairTuneTransformer.load('model')" in card.text
    assert "3: `cat`, `dog`, `owl`" in card.text
    assert "whisper encoder" in card.text and "hidden size 32" in card.text
    assert "## Training data\n\n- 9 test tones" in card.text
    assert '"projection_dim": 8' in card.text


def test_save_pipeline_writes_the_card_of_the_whole_pipeline(head_pipeline, tmp_path):
    save_pipeline(head_pipeline, tmp_path / "pipe")
    card = ModelCard.load(tmp_path / "pipe" / MODEL_CARD)
    assert card.data.pipeline_tag == "audio-classification"
    assert set(card.data.tags) >= {"PairTuneTransformer", "StandardScaler",
                                   "LinearHeadClassifier"}
    assert "PairTuneTransformer + StandardScaler + LinearHeadClassifier" in card.text
    assert "load_pipeline('pipe')" in card.text
    assert "| `clf` | LinearHeadClassifier | 64 input features; 3 classes |" in card.text
    assert '"optimizer": "torch.optim.adamw.AdamW"' in card.text
    assert '"module": "skaudio_confit.heads.LinearHead"' in card.text


@pytest.mark.parametrize("sections", [["not", "a dict"], {"heading": 3}, {1: "text"}])
def test_bad_card_sections_are_refused_before_writing(pairtune, sections, tmp_path):
    with pytest.raises(TypeError, match="card_sections must be a dict"):
        pairtune.save(tmp_path / "model", card_sections=sections)
    assert not (tmp_path / "model").exists()
