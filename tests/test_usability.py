"""Papercuts a new user meets in the Python API: the frozen baseline without labels,
explicit sampling rates that do not apply to files, and progress lines that say which
fit they belong to."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
from conftest import make_class_sines

from skaudio_confit import FineTuneClassifier, PairTuneTransformer

pytestmark = pytest.mark.usefixtures("single_torch_thread")
FAST = {"batch_size": 6, "samples_per_class": 2, "random_state": 0, "verbose": 0}


@pytest.fixture(scope="module")
def data():
    return make_class_sines()


def test_the_frozen_encoder_fits_without_labels(tiny_whisper_encoder_dir, data):
    X, y = data
    frozen = PairTuneTransformer(tiny_whisper_encoder_dir, epochs=0, **FAST).fit(X)
    assert not hasattr(frozen, "classes_") and frozen.history_ == []
    with_labels = PairTuneTransformer(tiny_whisper_encoder_dir, epochs=0, **FAST).fit(X, y)
    np.testing.assert_array_equal(frozen.transform(X), with_labels.transform(X))
    # Refitting without labels drops the classes of an earlier labelled fit.
    with_labels.fit(X)
    assert not hasattr(with_labels, "classes_")


def test_training_still_needs_labels(tiny_whisper_encoder_dir, data):
    X, _ = data
    with pytest.raises(ValueError, match="y is required"):
        PairTuneTransformer(tiny_whisper_encoder_dir, epochs=1, **FAST).fit(X)
    with pytest.raises(ValueError, match="y is required"):
        FineTuneClassifier(tiny_whisper_encoder_dir, epochs=0, verbose=0).fit(X, None)


def test_an_explicit_sampling_rate_that_files_do_not_share_is_warned_about(
        tiny_whisper_encoder_dir, data, tmp_path):
    X, y = data
    files = []
    for i, wave in enumerate(X):
        files.append(str(tmp_path / f"{i}.wav"))
        sf.write(files[-1], wave, 16000)
    model = PairTuneTransformer(tiny_whisper_encoder_dir, epochs=0, sampling_rate=8000,
                                **FAST)
    with pytest.warns(UserWarning, match=r"sampling_rate=8000 applies to in-memory arrays "
                      r"only: 12 audio file\(s\) are at 16000 Hz"):
        model.fit(files, y)
    # Files at the given rate, or the default rate left alone: nothing to say.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairTuneTransformer(tiny_whisper_encoder_dir, epochs=0, sampling_rate=16000.0,
                            **FAST).fit(files, y)
        PairTuneTransformer(tiny_whisper_encoder_dir, epochs=0, **FAST).fit(files, y)


def test_progress_lines_name_the_fit(tiny_whisper_encoder_dir, data, capsys):
    X, y = data
    params = {**FAST, "verbose": 1}
    PairTuneTransformer(tiny_whisper_encoder_dir, epochs=1, learning_rate=3e-4,
                        **params).fit(X, y)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines()
             if "epoch 1/1: loss" in line]
    assert len(lines) == 1
    assert lines[0].startswith("PairTune(")
    assert "learning_rate=0.0003" in lines[0] and "on 12 clips" in lines[0]
