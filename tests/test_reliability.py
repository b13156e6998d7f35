"""Reliability: hostile input, failed fits, safe persistence, determinism, offline use.

What is guaranteed, and how these tests check it, is written up in
docs/reliability.md. The property tests count the cases they try; run with
``SKAUDIO_CONFIT_RELIABILITY_COUNTS=counts.json`` to have the counts written there
(the numbers quoted in the docs come from such a run).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_class_sines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import DataConversionWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict, cross_val_score
from sklearn.pipeline import Pipeline

from skaudio_confit import FineTuneClassifier, PairTuneTransformer
from skaudio_confit._input import load_waveforms
from skaudio_confit._labels import check_targets
from skaudio_confit.persistence import (
    FORMAT_VERSION,
    MANIFEST,
    PIPELINE_MANIFEST,
    WEIGHTS,
    load_pipeline,
    save_pipeline,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SR = 16000
REPO_ROOT = Path(__file__).resolve().parents[1]
F32_MAX = float(np.finfo(np.float32).max)

FAST_PAIRTUNE = dict(epochs=1, batch_size=4, samples_per_class=2, projection_dim=8,
                     learning_rate=1e-3, random_state=0, verbose=0, device="cpu")
FAST_FINETUNE = dict(epochs=1, batch_size=4, learning_rate=1e-3, random_state=0, verbose=0,
                     device="cpu")

# Cases tried per property or table, for docs/reliability.md.
COUNTS = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    out = os.environ.get("SKAUDIO_CONFIT_RELIABILITY_COUNTS")
    if out:
        Path(out).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=2) + "\n")


# Fragments of numpy/torch/Python internals that an error message must not show: the
# message has to name the problem in the user's terms.
LEAKS = (
    "Tensor", "torch", "ufunc", "broadcast", "ScalarType", "stack expects", "Traceback",
    "has no attribute", "unhashable type", "not supported between instances",
    "out of bounds", "operands could not", "encountered in", "could not convert",
    "can't convert", "object is not", "index out of range",
    "numpy.", "_core", "sinc", "kernel", "conv1d", "expected scalar type",
)


def assert_clean_error(exc, *fragments):
    """``exc`` is a ValueError/TypeError (or file error) naming the problem, no internals."""
    assert isinstance(exc, (ValueError, TypeError, OSError)), repr(exc)
    message = str(exc)
    assert message, repr(exc)
    leaked = [leak for leak in LEAKS if leak in message]
    assert not leaked, f"{leaked} in {message!r}"
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def outcome(fn, allowed=()):
    """``("ok", value)`` or ``("error", exc)``; fails on any warning (except those whose
    message contains one of the ``allowed`` fragments) or other exception."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn()
        except (ValueError, TypeError, OSError) as exc:
            result = ("error", exc)
        else:
            result = ("ok", value)
    caught = [w for w in caught if not issubclass(w.category, DataConversionWarning)
              and not any(fragment in str(w.message) for fragment in allowed)]
    assert not caught, [str(w.message) for w in caught]
    return result


# --------------------------------------------------------------------------------------
# Hostile clips: a generator and an oracle
# --------------------------------------------------------------------------------------

FLOAT_DTYPES = ["float16", "float32", "float64", "longdouble"]
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
OTHER_DTYPES = ["bool", "complex64", "complex128", "object-numbers", "object-mixed", "str",
                "bytes", "datetime64[ms]"]
LAYOUTS = ["1d", "channels-first", "channels-last", "3d", "0d", "list"]
CONTENTS = ["noise", "silence", "nan", "inf", "huge", "float-max", "tiny"]
RATES = [16000, 8000, 22050, 44100, 48000, 8001, 11025.0]


@st.composite
def clip_specs(draw, max_len=3000):
    length = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 400]), st.integers(0, max_len)))
    if draw(st.integers(0, 3)):  # 3 in 4: a numeric clip, often valid
        dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES))
        layout = draw(st.sampled_from(["1d", "channels-first", "channels-last", "list"]))
        content = draw(st.sampled_from(["noise", "silence", "huge", "float-max", "tiny"]))
    else:  # anything
        dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES + OTHER_DTYPES))
        layout = draw(st.sampled_from(LAYOUTS))
        content = draw(st.sampled_from(CONTENTS))
    channels = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    return length, dtype, layout, channels, content, seed


def make_clip(length, dtype, layout, channels, content, seed):
    """A clip (array, list or 0-d array) as described by a spec from ``clip_specs``."""
    rng = np.random.default_rng(seed)
    shape = {"1d": (length,), "list": (length,), "0d": (),
             "channels-first": (channels, length), "channels-last": (length, channels),
             "3d": (2, channels, length)}[layout]
    values = np.array(rng.uniform(-1, 1, shape), ndmin=len(shape))
    if content == "silence":
        values[...] = 0.0
    elif content == "huge":
        values *= 1e30
    elif content == "tiny":
        values *= 1e-40
    elif content in ("nan", "inf") and values.size:
        values.flat[rng.integers(values.size)] = np.nan if content == "nan" else -np.inf
    with np.errstate(all="ignore"):
        if dtype in FLOAT_DTYPES:
            if content == "float-max" and values.size:
                values = values / max(np.max(np.abs(values)), 1e-300) * np.finfo(dtype).max
            clip = values.astype(dtype)
        elif dtype in INT_DTYPES:
            info = np.iinfo(dtype)
            clip = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
        elif dtype == "bool":
            clip = values > 0
        elif dtype.startswith("complex"):
            clip = (values + 1j * values).astype(dtype)
        elif dtype == "object-numbers":
            clip = np.empty(shape, dtype=object)
            clip.flat[:] = [int(v * 100) if i % 2 and np.isfinite(v) else float(v)
                            for i, v in enumerate(values.flat)]
        elif dtype == "object-mixed":
            clip = values.astype(object)
            if clip.size:
                clip.flat[rng.integers(clip.size)] = "0.5"
        elif dtype == "str":
            clip = values.astype(str)
        elif dtype == "bytes":
            clip = values.astype(bytes)
        else:
            clip = (values * 1e6).astype(dtype)
    if layout == "0d":
        return np.asarray(clip)  # a 0-d array, not a numpy scalar (which is a number)
    return clip.tolist() if layout == "list" else clip


def expected_error(clip, index):
    """The error a clip must raise, as ``(exception type, fragment)``, or None if valid.

    The rules of the input layer (docs/reliability.md), stated independently of its code.
    """
    name = f"Clip {index}"
    arr = np.asarray(clip)
    if arr.dtype == object:
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in arr.flat):
            return TypeError, name
        arr = arr.astype(np.float64)
    if arr.dtype.kind == "c":
        return ValueError, "complex"
    if arr.dtype.kind not in "iuf":
        return TypeError, "non-numeric"
    if arr.size == 0:
        return ValueError, "empty"
    if arr.ndim not in (1, 2):
        return ValueError, "must be 1-D"
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            return ValueError, "NaN or infinite"
        if float(np.max(np.abs(arr))) > F32_MAX:
            return ValueError, "beyond the float32 range"
    if arr.ndim == 2 and min(arr.shape) > 16:
        return ValueError, "cannot tell channels from samples"
    return None


def mono_length(clip):
    shape = np.shape(clip)
    if len(shape) == 1:
        return shape[0]
    n0, n1 = shape
    return n1 if n0 <= 16 and n0 <= n1 else n0


def may_overflow_when_resampled(clip, rate):
    """Peaks near float32's limit may overflow when resampled (the filter overshoots)."""
    arr = np.asarray(clip)
    if rate == SR or arr.dtype.kind not in "fO":
        return False
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(arr.astype(np.float64)))) > 1e37


def check_hostile_clips(clips, rate, run, label):
    """Run ``run(clips)`` and check it against the oracle; return its output if valid."""
    kind, value = outcome(lambda: run(clips))
    COUNTS[f"{label}: {'worked' if kind == 'ok' else 'refused'}"] += 1
    expected = next(
        (e for e in (expected_error(c, i) for i, c in enumerate(clips)) if e), None
    )
    if expected is not None:
        assert kind == "error", f"expected {expected}, got output"
        assert isinstance(value, expected[0]), (value, expected)
        assert_clean_error(value, expected[1])
        if expected[1] != "complex" and "Clip" not in str(value):
            raise AssertionError(f"message does not name the clip: {value}")
        return None
    if kind == "error" and any(may_overflow_when_resampled(c, rate) for c in clips):
        assert_clean_error(value, "overflows float32")
        return None
    assert kind == "ok", f"valid input raised {value!r}"
    return value


# --------------------------------------------------------------------------------------
# Property: the input layer
# --------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(clip_specs(), min_size=1, max_size=4), rate=st.sampled_from(RATES),
       container=st.sampled_from([list, tuple]))
def test_property_load_waveforms_on_hostile_clips(specs, rate, container):
    COUNTS["load_waveforms: hostile clip lists"] += 1
    clips = [make_clip(*spec) for spec in specs]
    waves = check_hostile_clips(
        clips, rate,
        lambda c: load_waveforms(container(c), sampling_rate=rate, target_rate=SR),
        "load_waveforms: hostile clip lists",
    )
    if waves is None:
        return
    assert len(waves) == len(clips)
    for wave, clip in zip(waves, clips):
        assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) >= 1
        assert np.all(np.isfinite(wave))
        if rate == SR:
            assert len(wave) == mono_length(clip)
        else:
            assert abs(len(wave) - mono_length(clip) * SR / rate) <= 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.one_of(
        st.tuples(st.integers(0, 4), st.integers(0, 600)),
        st.tuples(st.integers(1, 4), st.integers(1, 600)),
        st.tuples(st.integers(0, 3), st.integers(0, 20), st.integers(0, 600)),
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 600)),
        st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
        st.just(()),
    ),
    dtype=st.sampled_from(FLOAT_DTYPES + INT_DTYPES + ["bool", "complex128", "str", "object"]),
    content=st.sampled_from(CONTENTS),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_load_waveforms_on_hostile_arrays(shape, dtype, content, seed):
    """X as one 0-D to 4-D array of any dtype (a 2-D array is clips x samples)."""
    COUNTS["load_waveforms: hostile X arrays"] += 1
    rng = np.random.default_rng(seed)
    values = np.array(rng.uniform(-1, 1, shape), ndmin=len(shape))
    values *= {"huge": 1e30, "tiny": 1e-40}.get(content, 1.0)
    if content in ("nan", "inf") and values.size:
        values.flat[rng.integers(values.size)] = np.nan if content == "nan" else np.inf
    with np.errstate(all="ignore"):
        if dtype in INT_DTYPES:
            X = (values * 100).astype(dtype)
        elif dtype == "object":
            X = values.astype(object)
        else:
            X = values.astype(dtype)
    kind, value = outcome(lambda: load_waveforms(X, sampling_rate=SR, target_rate=SR))
    COUNTS[f"load_waveforms X arrays: {'worked' if kind == 'ok' else 'refused'}"] += 1
    ndim, size = len(shape), int(np.prod(shape)) if shape else 1
    if ndim in (0, 1, 4) or (ndim >= 2 and shape[0] == 0) or (ndim >= 2 and size == 0) \
            or dtype in ("bool", "complex128", "str"):
        assert kind == "error", (shape, dtype)
        assert_clean_error(value)
        return
    clips = list(X.astype(np.float64) if dtype == "object" else X)
    expected = next((e for e in (expected_error(c, i) for i, c in enumerate(clips)) if e), None)
    if expected is not None:
        assert kind == "error" and isinstance(value, expected[0]), (value, expected)
        assert_clean_error(value, expected[1])
        return
    assert kind == "ok", value
    assert len(value) == shape[0]
    assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in value)


LABEL_KINDS = ["int", "str", "float-integral", "float-fraction", "float-nan", "float-inf",
               "bool", "object-mixed", "object-nan", "object-none", "object-unhashable",
               "complex", "bytes", "datetime", "column", "matrix", "scalar", "wrong-length",
               "none", "pandas"]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(LABEL_KINDS), n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_property_check_targets(kind, n, seed):
    COUNTS["check_targets: hostile label vectors"] += 1
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, n)
    labels = {
        "int": codes, "str": codes.astype(str), "float-integral": codes.astype(float),
        "float-fraction": codes + 0.5, "bool": codes > 0, "complex": codes + 1j,
        "bytes": codes.astype(bytes), "datetime": codes.astype("datetime64[D]"),
        "column": codes.reshape(-1, 1), "matrix": np.stack([codes, codes], axis=1),
        "scalar": np.int64(3), "wrong-length": np.append(codes, 1), "none": None,
    }
    if kind in ("float-nan", "float-inf"):
        y = codes.astype(float)
        y[rng.integers(n)] = np.nan if kind == "float-nan" else np.inf
    elif kind.startswith("object"):
        y = np.array([["a", 1, 2.5][c] for c in codes], dtype=object)
        special = {"object-nan": float("nan"), "object-none": None,
                   "object-unhashable": {"a": 1}}.get(kind)
        if kind != "object-mixed":
            y[rng.integers(n)] = special
    elif kind == "pandas":
        import pandas as pd

        y = pd.Series(codes.astype(str), index=rng.permutation(n) + 100)
    else:
        y = labels[kind]
    result, value = outcome(lambda: check_targets(n, y))
    COUNTS[f"check_targets: {'worked' if result == 'ok' else 'refused'}"] += 1
    invalid = {
        "float-fraction": (ValueError, "continuous"), "float-nan": (ValueError, "NaN"),
        "float-inf": (ValueError, "infinite"), "object-nan": (ValueError, "NaN"),
        "object-unhashable": (TypeError, "dict"), "complex": (ValueError, "complex"),
        "matrix": (ValueError, "1-D"), "scalar": (ValueError, "1-D"),
        "wrong-length": (ValueError, "inconsistent lengths"), "none": (ValueError, "required"),
    }
    if kind in invalid:
        assert result == "error", (kind, value)
        assert isinstance(value, invalid[kind][0])
        assert_clean_error(value, invalid[kind][1])
        return
    assert result == "ok", (kind, value)
    assert isinstance(value, np.ndarray) and value.shape == (n,)


# --------------------------------------------------------------------------------------
# Property: the estimators
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sines():
    return make_class_sines(n_per_class=2, min_len=1600, max_len=3200)


@pytest.fixture(scope="module")
def fitted_pairtune(tiny_whisper_encoder_dir, sines):
    return PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(*sines)


@pytest.fixture(scope="module")
def fitted_finetune(tiny_whisper_encoder_dir, sines):
    return FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(*sines)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=st.lists(clip_specs(max_len=2000), min_size=1, max_size=3),
       rate=st.sampled_from(RATES))
def test_property_transform_and_predict_on_hostile_clips(fitted_pairtune, fitted_finetune,
                                                         specs, rate):
    COUNTS["transform/predict: hostile clip lists"] += 1
    clips = [make_clip(*spec) for spec in specs]
    for est in (fitted_pairtune, fitted_finetune):
        est.set_params(sampling_rate=rate)
    try:
        Z = check_hostile_clips(clips, rate, fitted_pairtune.transform,
                                "PairTune.transform: hostile clip lists")
        if Z is not None:
            # [pretrained, tuned] (include_pretrained): twice the encoder's 32.
            assert Z.shape == (len(clips), 64) and Z.dtype == np.float32
            assert np.all(np.isfinite(Z))
        proba = check_hostile_clips(clips, rate, fitted_finetune.predict_proba,
                                    "FineTune.predict_proba: hostile clip lists")
        if proba is not None:
            assert proba.shape == (len(clips), 3) and np.all(np.isfinite(proba))
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
            assert set(fitted_finetune.predict(clips)) <= set(fitted_finetune.classes_)
            scores = fitted_finetune.decision_function(clips)
            assert scores.shape == (len(clips), 3) and np.all(np.isfinite(scores))
    finally:
        for est in (fitted_pairtune, fitted_finetune):
            est.set_params(sampling_rate=SR)


@st.composite
def labelled_hostile_sets(draw):
    """2-5 clips (a few hostile), labels with one class, or a class with one clip."""
    n = draw(st.integers(2, 5))
    specs = draw(st.lists(clip_specs(max_len=2000), min_size=n, max_size=n))
    # Mostly valid clips (6 in 7), so that fits get past the input checks often enough.
    valid = draw(st.lists(st.integers(0, 6).map(bool), min_size=n, max_size=n))
    clips = []
    for spec, ok in zip(specs, valid):
        if ok:
            length = max(spec[0], 1)
            spec = (length, draw(st.sampled_from(["float32", "int16", "float64", "uint8"])),
                    draw(st.sampled_from(["1d", "channels-first", "channels-last"])),
                    spec[3], draw(st.sampled_from(["noise", "silence", "huge", "tiny"])),
                    spec[5])
        clips.append(make_clip(*spec))
    labelling = draw(st.sampled_from(["two-classes", "one-class", "singleton-class",
                                      "strings"]))
    if labelling == "one-class":
        y = np.zeros(n, dtype=int)
    elif labelling == "singleton-class":
        y = np.array([0] * (n - 1) + [1])
    else:
        y = np.arange(n) % 2
        if labelling == "strings":
            y = np.array(["dog", "cat"])[y]
    return clips, y


@pytest.mark.parametrize("estimator", ["pairtune", "finetune"])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=labelled_hostile_sets())
def test_property_fit_on_hostile_clips_and_labels(tiny_whisper_encoder_dir, estimator, data):
    COUNTS["fit: hostile clips and labels"] += 1
    clips, y = data
    if estimator == "pairtune":
        est = PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE)
    else:
        est = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE)
    input_error = next((e for e in (expected_error(c, i) for i, c in enumerate(clips)) if e),
                       None)
    # PairTune warns when every class has one clip (tests/test_persistence_reliability.py).
    kind, value = outcome(lambda: est.fit(clips, y), allowed=("single training clip",))
    COUNTS[f"fit ({estimator}): {'worked' if kind == 'ok' else 'refused'}"] += 1
    if input_error is not None:
        assert kind == "error" and isinstance(value, input_error[0]), (value, input_error)
        assert_clean_error(value, input_error[1])
        return
    if len(set(y.tolist())) < 2:
        assert kind == "error"
        assert_clean_error(value, "at least 2 classes")
        return
    assert kind == "ok", value
    Z = est.transform(clips)
    width = 64 if estimator == "pairtune" else 32  # PairTune: [pretrained, tuned]
    assert Z.shape == (len(clips), width) and Z.dtype == np.float32 and np.all(np.isfinite(Z))
    if estimator == "finetune":
        assert set(est.predict(clips)) <= set(y.tolist())


def test_score_with_labels_never_seen_counts_them_wrong(fitted_finetune, sines):
    """Decision: score() works with unseen labels; a clip whose label was never seen can
    only be predicted wrong. Labels of another type (strings for integer classes) are
    refused by scikit-learn's accuracy_score with a clear ValueError."""
    X, y = sines
    clf = fitted_finetune
    assert clf.score(X, y + 100) == 0.0
    partly = y.copy()
    partly[:2] = 99
    assert clf.score(X, partly) == pytest.approx(np.mean(clf.predict(X) == partly))
    with pytest.raises(ValueError, match="Mix of label input types"):
        clf.score(X, y.astype(str))


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _wav_bytes(samples=1600, rate=SR):
    import io

    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(np.arange(samples) / 7)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _encoded(fmt, samples=1600, **kwargs):
    import io

    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(np.arange(samples) / 7)).astype(np.float32), SR,
             format=fmt, **kwargs)
    return buf.getvalue()


def _with_u32(data, offset, value):
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


def _aifc_unknown_compression():
    """An AIFF-C header whose compression type ('ZZZZ') no decoder knows."""
    comm = struct.pack(">hIh", 1, 100, 16) + b"\x40\x0c\xfa\x00\x00\x00\x00\x00\x00\x00"
    comm += b"ZZZZ" + b"\x00\x00"
    body = b"AIFC" + b"FVER" + struct.pack(">I", 4) + struct.pack(">I", 0xA2805140)
    body += b"COMM" + struct.pack(">I", len(comm)) + comm
    body += b"SSND" + struct.pack(">III", 208, 0, 0) + bytes(200)
    return b"FORM" + struct.pack(">I", len(body)) + body


# (file name, content, None if it must load, else a fragment of the error)
FILE_CASES = {
    "truncated-wav": ("cut.wav", lambda: _wav_bytes()[:1800], "is truncated"),
    "header-only-wav": ("header.wav", lambda: _wav_bytes()[:44], "is truncated"),
    "odd-byte-truncated-wav": ("odd.wav", lambda: _wav_bytes()[:1001], "is truncated"),
    "streaming-wav-size-placeholder": (
        "stream.wav", lambda: _with_u32(_wav_bytes(), 40, 0xFFFFFFFF), None),
    "wav-zero-channels": ("nochan.wav", lambda: _wav_bytes()[:22] + b"\0\0" + _wav_bytes()[24:],
                          "Could not read audio file"),
    "wav-rate-1-hz": ("slow.wav", lambda: _with_u32(_wav_bytes(), 24, 1),
                      "more than 1000 times apart"),
    "wav-odd-rate-8001-hz": ("odd_rate.wav", lambda: _with_u32(_wav_bytes(), 24, 8001), None),
    "flac-named-wav": ("flac_inside.wav", lambda: _encoded("FLAC"), None),
    "wav-named-mp3": ("wav_inside.mp3", lambda: _wav_bytes(), None),
    "ogg-named-flac": ("ogg_inside.flac", lambda: _encoded("OGG", subtype="VORBIS"), None),
    "aiff": ("plain.aiff", lambda: _encoded("AIFF"), None),
    "truncated-flac": ("cut.flac", lambda: _encoded("FLAC", samples=16000)[:1500],
                       "Could not read audio file"),
    "aifc-unknown-compression": ("weird.aifc", _aifc_unknown_compression,
                                 "Could not read audio file"),
    "mp3-like-garbage": ("fake.mp3", lambda: b"\xff\xfb\x90\x64" + bytes(400),
                         "Could not read audio file"),
    "png-named-wav": ("image.wav", lambda: b"\x89PNG\r\n\x1a\n" + bytes(200),
                      "Could not read audio file"),
    "riff-without-data-chunk": ("nodata.wav", lambda: _wav_bytes()[:36],
                                "Could not read audio file"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_cases(case, tmp_path):
    COUNTS["files: parametrised cases (this module)"] += 1
    name, content, error = FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content())
    kind, value = outcome(lambda: load_waveforms([path], sampling_rate=SR, target_rate=SR))
    if error is None:
        assert kind == "ok", value
        assert value[0].dtype == np.float32 and len(value[0]) > 0
        assert np.all(np.isfinite(value[0]))
    else:
        assert kind == "error" and isinstance(value, ValueError), value
        assert_clean_error(value, error, name)


def test_an_empty_string_is_not_taken_for_the_current_directory():
    # Missing files, directories, zero-byte and garbage files: see test_audio.py.
    COUNTS["files: parametrised cases (this module)"] += 1
    kind, value = outcome(lambda: load_waveforms(["", np.zeros(10)], sampling_rate=SR,
                                                 target_rate=SR))
    assert kind == "error" and isinstance(value, ValueError)
    assert_clean_error(value, "empty string")


def test_a_bad_file_in_fit_names_the_file(tiny_whisper_encoder_dir, sines, tmp_path):
    X, y = sines
    bad = tmp_path / "broken_take.wav"
    bad.write_bytes(_wav_bytes()[:1800])
    with pytest.raises(ValueError, match=r"broken_take\.wav.* is truncated"):
        PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit([*X[:-1], bad], y)


# --------------------------------------------------------------------------------------
# Failed and interrupted fits
# --------------------------------------------------------------------------------------


def snapshot(est):
    """Everything observable about a fitted estimator, to compare bit for bit."""
    encoders = ("backbone_", "pretrained_backbone_")  # compared by their weights
    state = {k: copy.deepcopy(v) for k, v in vars(est).items() if k not in encoders}
    weights = {f"{name}.{k}": v.detach().cpu().numpy().copy()
               for name in encoders if hasattr(est, name)
               for k, v in getattr(est, name).model.state_dict().items()}
    return state, weights, est.get_params()


def assert_same_snapshot(a, b):
    (state_a, weights_a, params_a), (state_b, weights_b, params_b) = a, b
    assert params_a == params_b
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(state_b[key], value)
        else:
            assert state_b[key] == value, key
    assert weights_a.keys() == weights_b.keys()
    for key, value in weights_a.items():
        np.testing.assert_array_equal(weights_b[key], value)


def interrupt_at_second_optimizer_step(monkeypatch):
    """Make the 2nd optimiser step of the next fit raise KeyboardInterrupt (Ctrl-C)."""
    original = torch.optim.AdamW.step
    calls = []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return calls


@pytest.mark.parametrize("estimator", ["pairtune", "finetune"])
def test_failed_or_interrupted_fit_leaves_the_fitted_estimator_and_no_files(
    estimator, fitted_pairtune, fitted_finetune, sines, tmp_path, monkeypatch
):
    X, y = sines
    est = copy.deepcopy(fitted_pairtune if estimator == "pairtune" else fitted_finetune)
    est.set_params(epochs=2)  # several batches, so the 2nd optimiser step is mid-training
    # Watch a private temporary directory and working directory: other processes may
    # write to the system ones while this test runs.
    tmp_dir, work_dir = tmp_path / "tmp", tmp_path / "cwd"
    tmp_dir.mkdir()
    work_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_dir))
    monkeypatch.chdir(work_dir)
    before = snapshot(est)
    Z = est.transform(X)
    out = est.predict_proba(X) if estimator == "finetune" else None
    torch_rng = torch.get_rng_state()

    bad_file = tmp_path / "cut.wav"
    bad_file.write_bytes(_wav_bytes()[:1800])
    nan_clip = X[0].copy()
    nan_clip[5] = np.nan
    for bad_fit in (
        lambda: est.fit([nan_clip, *X[1:]], y),
        lambda: est.fit([*X[:-1], bad_file], y),
        lambda: est.fit(X, np.zeros(len(y))),
        lambda: est.fit(X, [{"a": 1}] * len(y)),
    ):
        with pytest.raises((ValueError, TypeError)):
            bad_fit()
    calls = interrupt_at_second_optimizer_step(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    assert len(calls) == 2  # it was interrupted in the middle of training
    monkeypatch.undo()  # also restores the optimiser's step, tempdir and cwd

    assert_same_snapshot(before, snapshot(est))
    np.testing.assert_array_equal(est.transform(X), Z)
    if estimator == "finetune":
        np.testing.assert_array_equal(est.predict_proba(X), out)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert not est.backbone_.training
    assert list(tmp_dir.iterdir()) == []
    assert list(work_dir.iterdir()) == []
    # And the estimator still fits normally afterwards.
    est.set_params(epochs=1).fit(X, y)


# --------------------------------------------------------------------------------------
# Safe persistence
# --------------------------------------------------------------------------------------


@pytest.fixture
def saved(fitted_pairtune, tmp_path):
    fitted_pairtune.save(tmp_path / "model")
    return tmp_path / "model"


def edit_manifest(directory, edit):
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def load_error(directory):
    kind, value = outcome(lambda: PairTuneTransformer.load(directory))
    assert kind == "error", "a tampered model loaded"
    assert_clean_error(value)
    return value


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/hostname",
                                  "sub/../model.safetensors", "..", "", ".", None, 5,
                                  "..\\model.safetensors"])
def test_load_refuses_a_weight_file_outside_the_directory(saved, name):
    COUNTS["load: tampered manifests"] += 1
    shutil.copy(saved / WEIGHTS, saved.parent / "outside.safetensors")
    edit_manifest(saved, lambda m: m["weights"].update(file=name))
    error = load_error(saved)
    assert isinstance(error, ValueError)
    assert "plain name inside that directory" in str(error) or "not a valid manifest" in str(error)


def test_load_refuses_a_weight_file_linked_to_outside(saved):
    COUNTS["load: tampered manifests"] += 1
    outside = saved.parent / "elsewhere.safetensors"
    shutil.move(saved / WEIGHTS, outside)
    (saved / WEIGHTS).symlink_to(outside)
    error = load_error(saved)
    assert "leads outside" in str(error)


@pytest.mark.parametrize(
    "version, fragment",
    [(FORMAT_VERSION + 1, "upgrade the package"), (10**30, "upgrade the package"),
     (-1, "not a positive integer"), (0, "not a positive integer"),
     ("1", "not a positive integer"), (1.0, "not a positive integer"),
     (True, "not a positive integer"), (None, "not a positive integer")],
)
def test_load_refuses_unknown_format_versions(saved, version, fragment):
    COUNTS["load: tampered manifests"] += 1
    edit_manifest(saved, lambda m: m.update(format_version=version))
    error = load_error(saved)
    assert isinstance(error, ValueError) and fragment in str(error)
    if version == FORMAT_VERSION + 1:
        assert f"format version {FORMAT_VERSION + 1}" in str(error)
        assert f"reads up to {FORMAT_VERSION}" in str(error)


def _extra_tensor(m):
    m["weights"]["tensors"]["extra.weight"] = [2, 2]


def _missing_tensor(m):
    m["weights"]["tensors"].pop(next(iter(m["weights"]["tensors"])))


def _reshaped_tensor(m):
    key = next(iter(m["weights"]["tensors"]))
    m["weights"]["tensors"][key] = [1] + m["weights"]["tensors"][key]


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (_extra_tensor, "do not match the manifest"),
        (_missing_tensor, "do not match the manifest"),
        (_reshaped_tensor, "do not match the manifest"),
        (lambda m: m.pop("weights"), "not a valid manifest"),
        (lambda m: m.update(weights=[]), "not a valid manifest"),
        (lambda m: m["weights"].pop("sha256"), "not a valid manifest"),
        (lambda m: m.update(params=["epochs", 3]), "not a valid manifest"),
        (lambda m: m["params"].update(evil=1), "unknown entries"),
        (lambda m: m["fitted"].update(transform="not a method"), "unknown entries"),
        (lambda m: m["fitted"].update(__class__="PairTuneTransformer"), "unknown entries"),
        (lambda m: m["fitted"].update(classes_={"__ndarray__": [1], "dtype": "no-such"}),
         "cannot be read"),
        (lambda m: m["backbone_config"].update(model_type="bert"), "unsupported backbone"),
        (lambda m: m["backbone_config"].update(d_model=8), "do not fit"),
    ],
    ids=["extra-tensor", "missing-tensor", "reshaped-tensor", "no-weights", "weights-list",
         "no-sha256", "params-list", "unknown-param", "fitted-method-name", "fitted-class",
         "fitted-bad-dtype", "bert-config", "config-shape"],
)
def test_load_refuses_inconsistent_manifests(saved, edit, fragment):
    COUNTS["load: tampered manifests"] += 1
    edit_manifest(saved, edit)
    error = load_error(saved)
    assert isinstance(error, ValueError) and fragment in str(error), error


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"{not json", b"\xff\xfe\x00",
                                     b"[]", b"42", b"null"],
                         ids=["empty", "pickle", "broken-json", "not-utf8", "list", "number",
                              "null"])
def test_load_refuses_a_manifest_that_is_not_a_json_object(saved, content):
    COUNTS["load: tampered manifests"] += 1
    (saved / MANIFEST).write_bytes(content)
    error = load_error(saved)
    assert isinstance(error, ValueError) and "not a valid manifest" in str(error)


def test_load_pipeline_refuses_a_step_directory_outside(fitted_pairtune, sines, tmp_path):
    COUNTS["load: tampered manifests"] += 1
    X, y = sines
    clf = LogisticRegression(max_iter=200).fit(fitted_pairtune.transform(X), y)
    pipe = Pipeline([("pairtune", fitted_pairtune), ("clf", clf)])
    save_pipeline(pipe, tmp_path / "pipe")
    shutil.copytree(tmp_path / "pipe" / "pairtune", tmp_path / "elsewhere")
    path = tmp_path / "pipe" / PIPELINE_MANIFEST
    manifest = json.loads(path.read_text())
    manifest["steps"][0]["directory"] = "../elsewhere"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain name inside that directory"):
        load_pipeline(tmp_path / "pipe")
    manifest["steps"][0]["directory"] = "pairtune"
    manifest["steps"][1]["fitted"]["predict"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown fitted attributes"):
        load_pipeline(tmp_path / "pipe")


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------


def test_finetune_same_random_state_is_bit_identical(tiny_whisper_encoder_dir, sines,
                                                     fitted_finetune):
    X, y = sines
    again = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(X, y)
    np.testing.assert_array_equal(again.transform(X), fitted_finetune.transform(X))
    np.testing.assert_array_equal(again.predict_proba(X), fitted_finetune.predict_proba(X))
    np.testing.assert_array_equal(again.coef_, fitted_finetune.coef_)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in again.history_]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"}
                     for r in fitted_finetune.history_]
    other = FineTuneClassifier(tiny_whisper_encoder_dir,
                               **{**FAST_FINETUNE, "random_state": 1}).fit(X, y)
    assert not np.array_equal(other.transform(X), again.transform(X))


def test_cross_validation_is_identical_with_one_or_two_workers(tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=3, seed=4, min_len=1600, max_len=3200)
    pipe = Pipeline([
        ("pairtune", PairTuneTransformer(tiny_whisper_encoder_dir,
                                         **{**FAST_PAIRTUNE, "batch_size": 6})),
        ("clf", LogisticRegression(max_iter=500)),
    ])
    serial = cross_val_score(pipe, X, y, cv=3, n_jobs=1)
    parallel = cross_val_score(pipe, X, y, cv=3, n_jobs=2)
    np.testing.assert_array_equal(serial, parallel)
    proba_serial = cross_val_predict(pipe, X, y, cv=3, n_jobs=1, method="predict_proba")
    proba_parallel = cross_val_predict(pipe, X, y, cv=3, n_jobs=2, method="predict_proba")
    np.testing.assert_array_equal(proba_serial, proba_parallel)


# --------------------------------------------------------------------------------------
# Offline behaviour (each in a fresh interpreter)
# --------------------------------------------------------------------------------------

NETWORK_GUARD = """
import socket

_connect = socket.socket.connect
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _refuse(*args, **kwargs):
    raise OSError("network access attempted")


def _loopback_only(self, address, *args):
    host = address[0] if isinstance(address, tuple) else address
    if host not in _LOOPBACK:
        _refuse()
    return _connect(self, address, *args)


if MODE == "none":
    socket.socket.connect = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
else:  # "loopback": a dead local endpoint may be tried, nothing else
    socket.socket.connect = _loopback_only
"""

FIT_SCRIPT = """
import json, sys, time
import numpy as np
from skaudio_confit import PairTuneTransformer

X = [np.sin(np.arange(2000) * f).astype(np.float32) for f in (0.1, 0.11, 0.3, 0.31)]
y = [0, 0, 1, 1]
start = time.perf_counter()
try:
    PairTuneTransformer(sys.argv[1], epochs=1, batch_size=4, samples_per_class=2,
                        verbose=0, device="cpu").fit(X, y)
    result = {"ok": True}
except Exception as exc:
    result = {"ok": False, "types": [c.__name__ for c in type(exc).__mro__],
              "message": str(exc)}
result["seconds"] = time.perf_counter() - start
print("RESULT " + json.dumps(result))
"""


def run_isolated(script, mode, env_updates, args=(), timeout=240):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    code = f"MODE = {mode!r}\n" + NETWORK_GUARD + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_fails_fast_with_instructions(result, repo_id):
    COUNTS["offline: uncached hub id scenarios"] += 1
    assert not result["ok"]
    assert "OSError" in result["types"]
    message = result["message"]
    assert repo_id in message
    assert f"hf download {repo_id}" in message and "snapshot_download" in message
    assert "pass that directory" in message
    assert "Retrying" not in message
    # A few 2 s timeouts (about 12 s idle, 16 s with both cores busy), not the
    # minutes of a retry loop.
    assert result["seconds"] < 40, result


def test_uncached_hub_id_with_an_unreachable_hub_fails_fast(tmp_path):
    result = run_isolated(FIT_SCRIPT, "loopback", {
        "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
    }, args=["someorg/not-cached-model"])
    assert_fails_fast_with_instructions(result, "someorg/not-cached-model")


def test_uncached_hub_id_with_a_silent_hub_times_out_fast(tmp_path):
    """A hub that accepts the connection and never answers (a hanging proxy)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        result = run_isolated(FIT_SCRIPT, "loopback", {
            "HF_HOME": str(tmp_path / "hf"),
            "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
            "HF_HUB_ETAG_TIMEOUT": "2",
        }, args=["someorg/not-cached-model"])
    assert_fails_fast_with_instructions(result, "someorg/not-cached-model")


def test_uncached_hub_id_with_hf_hub_offline(tmp_path):
    result = run_isolated(FIT_SCRIPT, "none", {
        "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
    }, args=["someorg/not-cached-model"])
    assert_fails_fast_with_instructions(result, "someorg/not-cached-model")
    assert "HF_HUB_OFFLINE" in result["message"]


def test_cached_hub_id_loads_without_the_network(tiny_whisper_encoder_dir, tmp_path):
    """A model in the Hugging Face cache is used from there, without asking the hub."""
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny-whisper"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_whisper_encoder_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_isolated(FIT_SCRIPT, "none", {"HF_HOME": str(tmp_path / "hf")},
                          args=["someorg/tiny-whisper"])
    COUNTS["offline: cached hub id, network refused"] += 1
    assert result["ok"], result


BUNDLED_SCRIPT = """
import json, time
import numpy as np
from skaudio_confit import PairTuneTransformer
from skaudio_confit.datasets import load_spoken_digits

fsdd = load_spoken_digits(target="speaker")
speakers = np.unique(fsdd.target)[:3]
idx = np.concatenate([np.flatnonzero(fsdd.target == s)[:2] for s in speakers])
X, y = [fsdd.data[i] for i in idx], fsdd.target[idx]
start = time.perf_counter()
model = PairTuneTransformer(sampling_rate=8000, epochs=1, batch_size=6, samples_per_class=2,
                            random_state=0, verbose=0, device="cpu").fit(X, y)
Z = model.transform(X)
print("RESULT " + json.dumps({"ok": True, "shape": list(Z.shape),
                              "finite": bool(np.isfinite(Z).all()),
                              "seconds": time.perf_counter() - start}))
"""


def test_bundled_backbone_never_touches_the_network(tmp_path):
    # HF_HUB_OFFLINE unset and every socket call refused: the bundled encoder and the
    # bundled data set must not need them.
    result = run_isolated(BUNDLED_SCRIPT, "none", {"HF_HOME": str(tmp_path / "hf")})
    COUNTS["offline: bundled default, network refused"] += 1
    assert result["ok"] and result["finite"], result
    assert result["shape"] == [6, 2 * 384]  # [pretrained, tuned], the default
