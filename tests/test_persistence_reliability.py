"""Reliability of saving and loading: transactional saves, validated loads, clear errors.

One section per defect of issue 12 (see docs/reliability.md, "Safe persistence").
Crashes are simulated by raising at each write of a save with the clean-up disabled,
as if the process had been killed there; a full disk by a writer raising ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_sines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from skaudio_confit import FineTuneClassifier, PairTuneTransformer, persistence
from skaudio_confit import _atomic_save, _manifest
from skaudio_confit._labels import check_targets
from skaudio_confit.backbones import load_backbone
from skaudio_confit.heads import LinearHeadClassifier
from skaudio_confit.persistence import (
    MANIFEST,
    MODEL_CARD,
    PIPELINE_MANIFEST,
    WEIGHTS,
    check_save_target,
    load_pipeline,
    save_pipeline,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FAST_PAIRTUNE = dict(epochs=1, batch_size=4, samples_per_class=2, projection_dim=8,
                     learning_rate=1e-3, random_state=0, verbose=0, device="cpu")
FAST_FINETUNE = dict(epochs=1, batch_size=4, learning_rate=1e-3, random_state=0, verbose=0,
                     device="cpu")
# Fragments of torch/numpy/Python internals that no error message may show.
LEAKS = ("Tensor", "torch", "ufunc", "broadcast", "range() arg", "Traceback",
         "has no attribute", "index out of", "SafetensorError", "maximum recursion")


def assert_clean(exc, *fragments):
    message = str(exc)
    assert not [leak for leak in LEAKS if leak in message], message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.fixture(scope="module")
def sines():
    return make_class_sines(n_per_class=2, min_len=1600, max_len=2400)


@pytest.fixture(scope="module")
def pairtunes(tiny_whisper_encoder_dir, sines):
    """Two different fitted PairTune models (an "old" and a "new" one)."""
    X, y = sines
    old = PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(X, y)
    new = PairTuneTransformer(tiny_whisper_encoder_dir,
                              **{**FAST_PAIRTUNE, "random_state": 1}).fit(X, y)
    return old, new


@pytest.fixture(scope="module")
def finetune(tiny_whisper_encoder_dir, sines):
    return FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(*sines)


def pipeline_of(encoder, sines, head=None):
    X, y = sines
    head = head or LogisticRegression(max_iter=200)
    return Pipeline([("pairtune", encoder), ("clf", head.fit(encoder.transform(X), y))])


def tree(directory):
    """Every file under ``directory`` (links included, not followed) with its bytes."""
    out = {}
    for path in sorted(Path(directory).rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def siblings(directory):
    return sorted(p.name for p in Path(directory).parent.iterdir())


class SimulatedCrash(BaseException):
    """Stands for the process being killed: not an Exception, so nothing handles it."""


def crash_at(monkeypatch, call, hard=True):
    """Make the ``call``-th file or directory creation of the next save crash.

    ``hard``: also disable the clean-up of the staging directory, as after a kill.
    Returns the list of creations seen, to count them.
    """
    seen = []
    real_write, real_mkdir = _atomic_save.write_file, _atomic_save.make_dir

    def counted(real):
        def wrapper(path, *args):
            seen.append(Path(path).name)
            if len(seen) == call:
                raise SimulatedCrash(path)
            return real(path, *args)
        return wrapper

    monkeypatch.setattr(_atomic_save, "write_file", counted(real_write))
    monkeypatch.setattr(_atomic_save, "make_dir", counted(real_mkdir))
    if hard:
        monkeypatch.setattr(_atomic_save, "_discard", lambda path: None)
    return seen


# --------------------------------------------------------------------------------------
# 1 and 7: a failed or interrupted save leaves the previous one loadable and unchanged
# --------------------------------------------------------------------------------------


def test_a_pipeline_save_refused_midway_keeps_the_old_pipeline(pairtunes, sines, tmp_path):
    old, new = pairtunes
    X, y = sines
    target = tmp_path / "pipe"
    save_pipeline(pipeline_of(old, sines), target)
    before = tree(target)
    bad = Pipeline([("pairtune", new), ("clf", SVC().fit(new.transform(X), y))])
    with pytest.raises(ValueError, match="no safe format"):
        save_pipeline(bad, target)
    assert tree(target) == before
    assert siblings(target) == ["pipe"]
    loaded = load_pipeline(target)
    np.testing.assert_array_equal(loaded[0].transform(X), old.transform(X))


def _count_creations(save, monkeypatch):
    seen = crash_at(monkeypatch, call=10**9, hard=False)
    save()
    monkeypatch.undo()
    return len(seen)


@pytest.mark.parametrize("kind", ["estimator", "pipeline"])
def test_a_crash_at_every_step_of_a_save_keeps_the_old_model(kind, pairtunes, sines,
                                                             tmp_path, monkeypatch):
    """Crash at each file/directory creation, in the load-back check and in the swap:
    the previous save must stay byte for byte and load with the same output."""
    old, new = pairtunes
    X, _ = sines
    target = tmp_path / "model"
    if kind == "estimator":
        old.save(target)

        def save():
            new.save(target)

        def load():
            return PairTuneTransformer.load(target).transform(X)
    else:
        save_pipeline(pipeline_of(old, sines), target)
        new_pipe = pipeline_of(new, sines)

        def save():
            save_pipeline(new_pipe, target)

        def load():
            return load_pipeline(target)[0].transform(X)

    before, expected = tree(target), load()
    n_creations = _count_creations(lambda: save_pipeline(pipeline_of(old, sines),
                                                         tmp_path / "count")
                                   if kind == "pipeline" else old.save(tmp_path / "count"),
                                   monkeypatch)
    # The staging directory, then each file (and the encoder step's sub-directory),
    # the model card included.
    assert n_creations == (4 if kind == "estimator" else 6)
    for call in range(1, n_creations + 1):
        crash_at(monkeypatch, call)
        with pytest.raises(SimulatedCrash):
            save()
        monkeypatch.undo()
        assert tree(target) == before, call
        np.testing.assert_array_equal(load(), expected)
    for stage in ("validate", "swap"):
        monkeypatch.setattr(_atomic_save, "_discard", lambda path: None)
        if stage == "validate":
            monkeypatch.setattr(persistence, "load_estimator", _crash)
        else:
            monkeypatch.setattr(_atomic_save, "swap_into_place", _crash)
        with pytest.raises(SimulatedCrash):
            save()
        monkeypatch.undo()
        assert tree(target) == before, stage
        np.testing.assert_array_equal(load(), expected)
    # Crashes leave only hidden staging directories next to the target, and the next
    # save goes through.
    assert all(name.startswith(".model.saving-") for name in siblings(target)
               if name not in ("model", "count"))
    save()
    np.testing.assert_array_equal(load(), new.transform(X))


def _crash(*args, **kwargs):
    raise SimulatedCrash


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_save_replaces_a_previous_one_whole(exchange, pairtunes, sines, tmp_path,
                                              monkeypatch):
    """Files of the old save that the new one lacks go too (no mixed directories)."""
    old, new = pairtunes
    X, _ = sines
    if not exchange:
        monkeypatch.setattr(_atomic_save, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    save_pipeline(pipeline_of(old, sines), target)
    new.save(target)
    assert sorted(p.name for p in target.iterdir()) == sorted([MANIFEST, MODEL_CARD, WEIGHTS])
    np.testing.assert_array_equal(PairTuneTransformer.load(target).transform(X),
                                  new.transform(X))
    assert siblings(target) == ["model"]


def test_a_full_disk_fails_cleanly_and_keeps_the_old_model(pairtunes, sines, tmp_path,
                                                           monkeypatch):
    old, new = pairtunes
    target = tmp_path / "model"
    old.save(target)
    before = tree(target)
    real = _atomic_save.write_file

    def full_disk(path, data):
        if Path(path).name == WEIGHTS:
            real(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(_atomic_save, "write_file", full_disk)
    with pytest.raises(OSError) as info:
        new.save(target)
    assert info.value.errno == errno.ENOSPC
    assert_clean(info.value, "Could not save to", str(target), "No space left on device")
    assert tree(target) == before
    assert siblings(target) == ["model"]  # the staging directory was removed


# --------------------------------------------------------------------------------------
# 2: never clobber a directory that is not a previous save
# --------------------------------------------------------------------------------------


def test_save_refuses_the_pretrained_backbone_directory(tiny_whisper_encoder_dir, sines,
                                                        tmp_path):
    X, y = sines
    bb = tmp_path / "backbone"
    shutil.copytree(tiny_whisper_encoder_dir, bb)
    before = tree(bb)
    model = PairTuneTransformer(bb, **FAST_PAIRTUNE).fit(X, y)
    for save in (lambda **kw: model.save(bb, **kw),
                 lambda **kw: save_pipeline(pipeline_of(model, sines), bb, **kw),
                 lambda **kw: check_save_target(bb, **kw)):
        with pytest.raises(FileExistsError) as info:
            save()
        assert_clean(info.value, str(bb), "overwrite=True")
    assert tree(bb) == before
    # Later fits still start from the pretrained weights.
    refit = PairTuneTransformer(bb, **FAST_PAIRTUNE).fit(X, y)
    np.testing.assert_array_equal(refit.transform(X), model.transform(X))
    # Asked to, it replaces the directory (and everything in it).
    check_save_target(bb, overwrite=True)
    assert tree(bb) == before  # the check writes nothing
    model.save(bb, overwrite=True)
    assert sorted(p.name for p in bb.iterdir()) == sorted([MANIFEST, MODEL_CARD, WEIGHTS])


def test_check_save_target(pairtunes, sines, tmp_path):
    old, _ = pairtunes
    check_save_target(tmp_path / "new" / "deeper")  # missing: fine, nothing created
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    check_save_target(tmp_path / "empty")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        check_save_target(tmp_path / "a_file", overwrite=True)
    with pytest.raises(FileExistsError, match="not a directory"):
        check_save_target(tmp_path / "a_file" / "below")
    old.save(tmp_path / "est")
    save_pipeline(pipeline_of(old, sines), tmp_path / "pipe")
    (tmp_path / "pipe" / "MODEL_CARD.md").write_text("a card written next to the save")
    for previous in ("est", "pipe"):  # previous saves of ours are replaced
        check_save_target(tmp_path / previous)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "MODEL_CARD.md").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        old.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "MODEL_CARD.md").read_text() == "mine"


# --------------------------------------------------------------------------------------
# 3: parameters are validated where they are used
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5])
def test_bad_batch_size_after_fit_is_refused_not_garbage(batch_size, pairtunes, finetune,
                                                         sines):
    X, _ = sines
    model = pairtunes[0]
    for est, method in ((model, "transform"), (finetune, "predict_proba"),
                        (finetune, "predict")):
        est.set_params(batch_size=batch_size)
        try:
            with pytest.raises(ValueError) as info:
                getattr(est, method)(X)
        finally:
            est.set_params(batch_size=4)
        assert_clean(info.value, "batch_size")
    finetune.set_params(layer=99)
    try:
        with pytest.raises(ValueError, match="layer must be an integer"):
            finetune.predict(X)
    finally:
        finetune.set_params(layer=-1)


# --------------------------------------------------------------------------------------
# 4: saves never write through symbolic links
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("link", [MANIFEST, WEIGHTS, PIPELINE_MANIFEST, "pairtune",
                                  "target"])
def test_save_never_writes_through_links(link, pairtunes, sines, tmp_path):
    old, new = pairtunes
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    target = tmp_path / "model"
    is_pipeline = link in (PIPELINE_MANIFEST, "pairtune")
    if link == "target":
        target.symlink_to(outside, target_is_directory=True)
    elif is_pipeline:
        save_pipeline(pipeline_of(old, sines), target)
        victim = target / link
        shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
        victim.symlink_to(outside / "precious.txt" if link == PIPELINE_MANIFEST else outside)
    else:
        old.save(target)
        (target / link).unlink()
        (target / link).symlink_to(outside / "precious.txt")
    before = tree(outside)

    def save(**kw):
        if is_pipeline:
            save_pipeline(pipeline_of(new, sines), target, **kw)
        else:
            new.save(target, **kw)

    if link == "target":
        with pytest.raises(ValueError, match="symbolic link"):
            save(overwrite=True)
    else:
        if link in (MANIFEST, PIPELINE_MANIFEST):  # no longer a save of ours
            with pytest.raises(FileExistsError):
                save()
        save(overwrite=True)
        assert not any(p.is_symlink() for p in target.rglob("*"))
    assert tree(outside) == before


# --------------------------------------------------------------------------------------
# 5 and 6: load validates parameters, fitted state and weights, before allocating
# --------------------------------------------------------------------------------------


def edit_manifest(path, edit):
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rewrite_weights(directory, change):
    """Replace the weights by ``change(tensors)`` and update the manifest to match,
    as a careful tamperer would (so that only the new checks can catch it)."""
    tensors = change(load_file(str(directory / WEIGHTS)))
    save_file(tensors, str(directory / WEIGHTS))

    def update(m):
        m["weights"]["sha256"] = _manifest.sha256_of_file(directory / WEIGHTS)
        m["weights"]["tensors"] = {k: list(v.shape) for k, v in tensors.items()}

    edit_manifest(directory / MANIFEST, update)


def _first(tensors):
    return next(iter(sorted(tensors)))


def _with_nan(tensors):
    key = _first(tensors)
    tensors[key] = tensors[key].copy()
    tensors[key].flat[0] = np.nan
    return tensors


def _as_float16(tensors):
    return {k: v.astype(np.float16) for k, v in tensors.items()}


def _set(section, **values):
    return lambda m: m[section].update(values)


def _ndarray(values, dtype="float32"):
    return {"__ndarray__": values, "dtype": dtype}


ESTIMATOR_TAMPERING = {
    "max_duration-negative": ("pairtune", _set("params", max_duration=-1), "max_duration"),
    "batch_size-negative": ("pairtune", _set("params", batch_size=-1), "batch_size"),
    "mining-unknown": ("pairtune", _set("params", mining="bogus"), "mining"),
    "layer-out-of-range": ("pairtune", _set("params", layer=99), "layer must be"),
    "max_duration-too-long": ("pairtune", _set("params", max_duration=1e4), "max_duration"),
    "classes-one": ("pairtune", _set("fitted", classes_=_ndarray([0], "int64")), "classes_"),
    "classes-repeated": ("pairtune", _set("fitted", classes_=_ndarray([0, 0, 1], "int64")),
                         "repeated"),
    "classes-missing": ("pairtune", lambda m: m["fitted"].pop("classes_"), "missing"),
    "history-not-a-list": ("pairtune", _set("fitted", history_=5), "history_"),
    "history-an-array": ("pairtune", _set("fitted", history_=_ndarray([1.0, 2.0])), "history_"),
    "n_features_in-negative": ("pairtune", _set("fitted", n_features_in_=-3),
                               "n_features_in_"),
    "do_normalize-string": ("pairtune", lambda m: m.update(do_normalize="yes"),
                            "wrong type"),
    "coef-missing": ("finetune", lambda m: m["fitted"].pop("coef_"), "missing"),
    "coef-wrong-shape": ("finetune", _set("fitted", coef_=_ndarray([[0.0] * 32] * 2)),
                         "coef_ has shape"),
    "coef-nan": ("finetune", lambda m: m["fitted"]["coef_"]["__ndarray__"][0].__setitem__(
        0, float("nan")), "NaN"),
    "coef-strings": ("finetune", _set("fitted", coef_=_ndarray([["a"] * 32] * 3, "<U1")),
                     "numbers"),
    "intercept-short": ("finetune", _set("fitted", intercept_=_ndarray([0.0])),
                        "intercept_ has shape"),
    "classes-short": ("finetune", _set("fitted", classes_=_ndarray([0, 1], "int64")),
                      "coef_ has shape"),
}


@pytest.mark.parametrize("case", sorted(ESTIMATOR_TAMPERING))
def test_load_validates_params_and_fitted_state(case, pairtunes, finetune, tmp_path):
    estimator, edit, fragment = ESTIMATOR_TAMPERING[case]
    model = pairtunes[0] if estimator == "pairtune" else finetune
    model.save(tmp_path / "m")
    edit_manifest(tmp_path / "m" / MANIFEST, edit)
    with pytest.raises(ValueError) as info:
        type(model).load(tmp_path / "m")
    assert_clean(info.value, fragment)


@pytest.mark.parametrize("change, fragment", [(_with_nan, "NaN or infinite"),
                                              (_as_float16, "float16")],
                         ids=["nan-weight", "float16-weights"])
def test_load_validates_weight_values_and_dtypes(change, fragment, pairtunes, tmp_path):
    pairtunes[0].save(tmp_path / "m")
    rewrite_weights(tmp_path / "m", change)
    with pytest.raises(ValueError) as info:
        PairTuneTransformer.load(tmp_path / "m")
    assert_clean(info.value, fragment, WEIGHTS)


HOSTILE_VALUES = [-1, 0, 1, 2, 3, 2.5, -0.5, 1e308, -1e308, float("nan"), float("inf"),
                  10**30, True, False, None, "", "x", "cpu", [], [1, 2], {}, {"a": 1},
                  _ndarray([1.0, 2.0]), _ndarray([0, 1], "int64"),
                  _ndarray([[float("nan")] * 32] * 3)]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_load_of_hostile_manifest_values(data, pairtunes, finetune, sines,
                                                  tmp_path_factory):
    """Any parameter or fitted value replaced by a hostile one: load refuses it with a
    clean ValueError, or the model loads and transform/predict_proba give finite output
    (or refuse cleanly)."""
    X, _ = sines
    model = data.draw(st.sampled_from([pairtunes[0], finetune]))
    directory = tmp_path_factory.mktemp("hostile") / "m"
    model.save(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    section = data.draw(st.sampled_from(["params", "fitted"]))
    key = data.draw(st.sampled_from(sorted(manifest[section])))
    manifest[section][key] = data.draw(st.sampled_from(HOSTILE_VALUES))
    (directory / MANIFEST).write_text(json.dumps(manifest))
    try:
        loaded = type(model).load(directory)
    except ValueError as exc:
        assert_clean(exc, str(directory))
        return
    for method in ("transform", "predict_proba"):
        if not hasattr(loaded, method):
            continue
        try:
            out = getattr(loaded, method)(X)
        except ValueError as exc:  # a value only the device or input can refuse
            assert_clean(exc)
            continue
        assert out.shape[0] == len(X) and np.all(np.isfinite(out))


def test_load_checks_config_sizes_against_the_header_before_allocating(pairtunes, tmp_path,
                                                                       monkeypatch):
    """A config implying a 2 GB position table (or a billion layers) is refused from
    the weight file's header: no tensor is read and no model is built."""
    pairtunes[0].save(tmp_path / "m")

    def no_allocation(*args, **kwargs):
        raise AssertionError("weights were read or a model was built")

    monkeypatch.setattr(persistence, "backbone_from_state", no_allocation)
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "load_file", no_allocation)
    for key, value, fragment in (("max_source_positions", 5_000_000, "do not fit"),
                                 ("encoder_layers", 10**9, "encoder_layers")):
        shutil.copytree(tmp_path / "m", tmp_path / key)
        edit_manifest(tmp_path / key / MANIFEST, _set("backbone_config", **{key: value}))
        with pytest.raises(ValueError) as info:
            PairTuneTransformer.load(tmp_path / key)
        assert_clean(info.value, fragment)


def test_load_pipeline_validates_its_scikit_learn_steps(pairtunes, sines, tmp_path):
    old, _ = pairtunes
    X, y = sines
    pipe = Pipeline([("pairtune", old), ("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=200))]).fit(X, y)
    save_pipeline(pipe, tmp_path / "ok")
    np.testing.assert_array_equal(load_pipeline(tmp_path / "ok").predict_proba(X),
                                  pipe.predict_proba(X))

    def step(name):
        return lambda m: next(s for s in m["steps"] if s["name"] == name)

    cases = {
        "coef-wrong-width": (lambda m: step("clf")(m)["fitted"]["coef_"].update(
            __ndarray__=[[0.0] * 5] * 3), "coef_ has shape"),
        "coef-missing": (lambda m: step("clf")(m)["fitted"].pop("coef_"), "missing"),
        "coef-nan": (lambda m: step("clf")(m)["fitted"]["coef_"]["__ndarray__"][0]
                     .__setitem__(0, float("nan")), "NaN"),
        "classes-short": (lambda m: step("clf")(m)["fitted"]["classes_"].update(
            __ndarray__=[0]), "classes_"),
        "C-negative": (lambda m: step("clf")(m)["params"].update(C=-1.0), "'C' parameter"),
        "scaler-width": (lambda m: step("scale")(m)["fitted"]["mean_"].update(
            __ndarray__=[0.0] * 3), "mean_ has shape"),
        "scaler-zero-scale": (lambda m: step("scale")(m)["fitted"]["scale_"].update(
            __ndarray__=[0.0] * 64), "scale_ must be positive"),
        "steps-empty": (lambda m: m.update(steps=[]), "not a valid pipeline manifest"),
        "name-with-dunder": (lambda m: step("clf")(m).update(name="a__b"),
                             "not a valid pipeline manifest"),
    }
    for case, (edit, fragment) in cases.items():
        shutil.copytree(tmp_path / "ok", tmp_path / case)
        edit_manifest(tmp_path / case / PIPELINE_MANIFEST, edit)
        with pytest.raises(ValueError) as info:
            load_pipeline(tmp_path / case)
        assert_clean(info.value, fragment)


def test_load_pipeline_validates_a_linear_head(pairtunes, sines, tmp_path):
    old, _ = pairtunes
    X, y = sines
    head = LinearHeadClassifier(lr=1e-2, max_epochs=3, random_state=0)
    pipe = Pipeline([("pairtune", old), ("scale", StandardScaler()), ("clf", head)]).fit(X, y)
    save_pipeline(pipe, tmp_path / "ok")
    np.testing.assert_array_equal(load_pipeline(tmp_path / "ok").predict_proba(X),
                                  pipe.predict_proba(X))
    weights = "clf.safetensors"

    def clf(m):
        return m["steps"][-1]

    def nan_weights(directory):
        tensors = load_file(str(directory / weights))
        tensors["linear.bias"][0] = np.nan
        save_file(tensors, str(directory / weights))
        return lambda m: clf(m)["weights"].update(
            sha256=_manifest.sha256_of_file(directory / weights))

    cases = {
        "classes-one": (lambda m: clf(m)["fitted"]["classes_"].update(__ndarray__=[0]),
                        "classes_ must be a 1-D array of at least 2"),
        "width": (lambda m: clf(m)["fitted"].update(n_features_in_=31),
                  # PairTune's [pretrained, tuned]: twice the encoder's 32 features
                  "n_features_in_ is 31, but it receives 64 features"),
        "history": (lambda m: clf(m)["fitted"].update(history_=5),
                    "history_ must be a list"),
        "optimizer-import": (lambda m: clf(m)["params"].update(
            optimizer={"__class__": "os.system"}), "not a class the safe format may load"),
        "optimizer-string": (lambda m: clf(m)["params"].update(optimizer="Adam"),
                             "not a class the safe format may load"),
        "unknown-param": (lambda m: clf(m)["params"].update(evil=1),
                          "unknown LinearHeadClassifier entries ['evil']"),
        "unknown-fitted": (lambda m: clf(m)["fitted"].update(net_=1),
                           "unknown LinearHeadClassifier entries ['net_']"),
        "lr-negative": (lambda m: clf(m)["params"].update(lr=-1.0), "'lr' parameter"),
        "module-param": (lambda m: clf(m)["params"].update(module__bogus=1),
                         "cannot be built"),
        "sha": (lambda m: clf(m)["weights"].update(sha256="0" * 64), "altered or truncated"),
        "outside": (lambda m: clf(m)["weights"].update(file="../clf.safetensors"),
                    "plain name inside that directory"),
        "no-weights": (lambda m: clf(m).pop("weights"), "not a valid pipeline manifest"),
        "nan-weights": (nan_weights, "NaN or infinite"),
    }
    for case, (edit, fragment) in cases.items():
        shutil.copytree(tmp_path / "ok", tmp_path / case)
        if case == "nan-weights":
            edit = edit(tmp_path / case)
        edit_manifest(tmp_path / case / PIPELINE_MANIFEST, edit)
        with pytest.raises(ValueError) as info:
            load_pipeline(tmp_path / case)
        assert_clean(info.value, fragment)


def test_a_head_claiming_huge_sizes_is_refused_before_allocating(sines, tmp_path,
                                                                monkeypatch):
    X = np.random.default_rng(0).normal(size=(12, 4))
    y = np.arange(12) % 3
    save_pipeline(Pipeline([("clf", LinearHeadClassifier(max_epochs=1).fit(X, y))]),
                  tmp_path / "p")
    edit_manifest(tmp_path / "p" / PIPELINE_MANIFEST,
                  lambda m: m["steps"][0]["fitted"].update(n_features_in_=10**12))
    monkeypatch.setattr(LinearHeadClassifier, "_build_net", None)  # must not be reached
    with pytest.raises(ValueError) as info:
        load_pipeline(tmp_path / "p")
    assert_clean(info.value, "do not fit 1000000000000 features and 3 classes")


# --------------------------------------------------------------------------------------
# 8: error contract of loading
# --------------------------------------------------------------------------------------


def test_corrupt_weights_with_a_matching_sha256_are_a_value_error(pairtunes, tmp_path):
    pairtunes[0].save(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(64))
    edit_manifest(tmp_path / "m" / MANIFEST,
                  lambda m: m["weights"].update(sha256=_manifest.sha256_of_file(weights)))
    with pytest.raises(ValueError) as info:
        PairTuneTransformer.load(tmp_path / "m")
    assert_clean(info.value, "Could not read weights", WEIGHTS)


def test_a_deeply_nested_manifest_is_a_value_error(pairtunes, tmp_path):
    pairtunes[0].save(tmp_path / "m")
    (tmp_path / "m" / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        PairTuneTransformer.load(tmp_path / "m")
    save_pipeline(Pipeline([("pairtune", pairtunes[0])]), tmp_path / "p")
    (tmp_path / "p" / PIPELINE_MANIFEST).write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_pipeline(tmp_path / "p")


def test_an_attention_implementation_in_a_saved_config_is_ignored(pairtunes, sines,
                                                                  tmp_path):
    X, _ = sines
    pairtunes[0].save(tmp_path / "m")
    edit_manifest(tmp_path / "m" / MANIFEST,
                  _set("backbone_config", _attn_implementation="flash_attention_2"))
    np.testing.assert_array_equal(PairTuneTransformer.load(tmp_path / "m").transform(X),
                                  pairtunes[0].transform(X))


def test_backbone_loading_errors_are_clear(tiny_whisper_encoder_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_whisper_encoder_dir, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_backbone(corrupt)
    assert_clean(info.value, str(corrupt), "damaged or truncated")

    flash = tmp_path / "flash"
    shutil.copytree(tiny_whisper_encoder_dir, flash)
    config = json.loads((flash / "config.json").read_text())
    config["_attn_implementation"] = "flash_attention_2"
    (flash / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_backbone(flash)
    assert_clean(info.value, str(flash), "_attn_implementation")

    for bad_id in ("not a valid//repo id", "org/../x"):
        with pytest.raises(ValueError) as info:
            load_backbone(bad_id)
        assert_clean(info.value, "not a valid hub model id")
        assert "network" not in str(info.value) and "hf download" not in str(info.value)


# --------------------------------------------------------------------------------------
# 9: file modes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_files_have_ordinary_modes(mask, pairtunes, sines, tmp_path):
    previous = os.umask(mask)
    try:
        save_pipeline(pipeline_of(pairtunes[0], sines), tmp_path / "pipe")
    finally:
        os.umask(previous)
    paths = [tmp_path / "pipe", *(tmp_path / "pipe").rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {
        name: (0o777 if (tmp_path / name).is_dir() else 0o666) & ~mask for name in modes
    }
    # pipe/, pipeline.json, MODEL_CARD.md, pipe/pairtune/ and its two files
    assert len(modes) == 6


# --------------------------------------------------------------------------------------
# 10: warnings for silent pitfalls
# --------------------------------------------------------------------------------------


def test_one_clip_per_class_warns_for_pairtune_only(tiny_whisper_encoder_dir, sines):
    X, y = sines
    X3, y3 = [X[0], X[2], X[4]], y[[0, 2, 4]]
    assert len(set(y3.tolist())) == 3
    with pytest.warns(UserWarning, match="single training clip") as record:
        PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(X3, y3)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairTuneTransformer(tiny_whisper_encoder_dir, **FAST_PAIRTUNE).fit(X, y)
        FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(X3, y3)
        PairTuneTransformer(tiny_whisper_encoder_dir,
                            **{**FAST_PAIRTUNE, "epochs": 0}).fit(X3, y3)


@pytest.mark.parametrize("labels", [[1, True, 0, False], [0, 1, True],
                                    np.array([1.0, False], dtype=object), (True, 2)])
def test_bools_mixed_with_numbers_warn(labels):
    with pytest.warns(UserWarning, match="mixes booleans with numbers"):
        check_targets(len(labels), labels)


@pytest.mark.parametrize("labels", [[1, 0, 1], [True, False], np.array([True, False]),
                                    ["a", True], np.array([1, 0])])
def test_labels_of_one_kind_do_not_warn(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_targets(len(labels), labels)


def test_fit_warns_when_bool_and_int_labels_merge(tiny_whisper_encoder_dir, sines):
    X, _ = sines
    y = [1, True, 0, False, 1, 0]
    with pytest.warns(UserWarning, match="mixes booleans with numbers"):
        model = FineTuneClassifier(tiny_whisper_encoder_dir, **FAST_FINETUNE).fit(X, y)
    assert len(model.classes_) == 2
