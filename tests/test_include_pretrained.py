"""Tests for ``PairTuneTransformer(include_pretrained=True)`` (the default): the pretrained
encoder's embedding beside the tuned one, kept through pickling, safe saves and
pipelines. Tiny random encoders from conftest, synthetic clips."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import make_class_sines
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skaudio_confit import PairTuneTransformer
from skaudio_confit.persistence import MANIFEST, load_pipeline, save_pipeline

PAIRTUNE = dict(epochs=2, batch_size=6, samples_per_class=2, projection_dim=16,
                learning_rate=1e-3, random_state=0, verbose=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    return make_class_sines(n_per_class=4)


@pytest.fixture(scope="module", params=["whisper", "wav2vec2"])
def backbone_dir(request, tiny_whisper_encoder_dir, tiny_wav2vec2_group_dir):
    return tiny_whisper_encoder_dir if request.param == "whisper" else tiny_wav2vec2_group_dir


@pytest.fixture(scope="module")
def fitted(backbone_dir, data):
    X, y = data
    return PairTuneTransformer(backbone_dir, **PAIRTUNE).fit(X, y)  # the default: True


def test_pretrained_features_come_first_then_the_tuned_ones(backbone_dir, data, fitted):
    X, y = data
    tuned_only = PairTuneTransformer(backbone_dir, include_pretrained=False,
                                     **PAIRTUNE).fit(X, y)
    frozen = PairTuneTransformer(backbone_dir, epochs=0, verbose=0, device="cpu").fit(X)
    both = fitted.transform(X)
    width = frozen.backbone_.hidden_size
    assert both.shape == (len(X), 2 * width) and both.dtype == np.float32
    np.testing.assert_allclose(both[:, :width], frozen.transform(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[:, width:], tuned_only.transform(X), rtol=1e-5, atol=1e-6)
    # The two halves differ: training changed the tuned encoder, not the kept copy.
    assert not np.allclose(both[:, :width], both[:, width:], atol=1e-4)
    assert len(fitted.get_feature_names_out()) == 2 * width


def test_frozen_encoder_keeps_no_copy(backbone_dir, data):
    X, _ = data
    frozen = PairTuneTransformer(backbone_dir, epochs=0, include_pretrained=True, verbose=0,
                                 device="cpu").fit(X)
    assert not hasattr(frozen, "pretrained_backbone_")
    assert frozen.transform(X[:2]).shape[1] == frozen.backbone_.hidden_size


def test_refit_without_the_option_drops_the_copy(backbone_dir, data, fitted):
    X, y = data
    model = clone(fitted).fit(X, y)
    assert hasattr(model, "pretrained_backbone_")
    model.set_params(include_pretrained=False).fit(X, y)
    assert not hasattr(model, "pretrained_backbone_")
    assert model.transform(X[:2]).shape[1] == model.backbone_.hidden_size


def test_pickle_and_safe_save_keep_both_encoders(fitted, data, tmp_path):
    X, _ = data
    expected = fitted.transform(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).transform(X), expected)
    fitted.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["format_version"] == 2 and manifest["pretrained_weights"] is True
    loaded = PairTuneTransformer.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.transform(X), expected)


def test_pipeline_round_trip_with_a_classifier_on_both_views(fitted, data, tmp_path):
    X, y = data
    pipe = make_pipeline(fitted, LogisticRegression(max_iter=500))
    pipe.steps[1][1].fit(fitted.transform(X), y)
    save_pipeline(pipe, tmp_path / "p")
    loaded = load_pipeline(tmp_path / "p")
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_a_save_whose_copy_is_missing_or_claimed_wrongly_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    path = tmp_path / "m" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["pretrained_weights"] = "yes"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="pretrained_weights"):
        PairTuneTransformer.load(tmp_path / "m")
    del manifest["pretrained_weights"]  # the file still holds the copy's tensors
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not fit"):
        PairTuneTransformer.load(tmp_path / "m")
