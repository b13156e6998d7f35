"""The default thread policy: inference follows the load, training does not, and the
results are the same bits whatever the machine's load.

The load is simulated (``_threads._runnable_elsewhere`` reports other processes'
runnable threads), so that each inference runs on a chosen thread count: with torch
set to 6 threads, 3, 4 and 5 busy threads elsewhere give 3, 2 and 1 threads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import make_class_sines

from skaudio_confit import FineTuneClassifier, PairTuneTransformer, _threads
from skaudio_confit.callbacks import Callback

SETTING = 6  # torch's thread count in these tests ("torch's setting")


@pytest.fixture
def torch_setting():
    previous = torch.get_num_threads()
    torch.set_num_threads(SETTING)
    yield SETTING
    torch.set_num_threads(previous)


@pytest.fixture
def load(monkeypatch):
    """``load.threads = k`` makes the next decisions see ``SETTING - k`` busy threads
    elsewhere on ``SETTING`` cores (``load.busy``: an iterable of busy counts, one per
    sample); ``load.seen`` records torch's count at every encoder batch of inference
    and every training step."""
    import skaudio_confit._inference as inference
    import skaudio_confit._pooling as pooling
    import skaudio_confit._training as training

    class Load:
        busy = 0
        seen = {"inference": [], "training": []}
        cores = SETTING

        @property
        def threads(self):
            return self.cores - self.busy

        @threads.setter
        def threads(self, n):
            self.busy = self.cores - n

        def sample(self):
            if isinstance(self.busy, int):
                return self.busy
            return next(self.busy)

    state = Load()
    monkeypatch.setattr(_threads, "_runnable_elsewhere", state.sample)
    monkeypatch.setattr(_threads, "_usable_cores", lambda: state.cores)
    monkeypatch.setattr(_threads, "_DECIDE_SECONDS", 0.0)  # re-decide at every batch

    def recorder(key, masked_mean):
        def wrapped(*args, **kwargs):
            state.seen[key].append(torch.get_num_threads())
            return masked_mean(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(inference, "masked_mean",
                        recorder("inference", inference.masked_mean))
    monkeypatch.setattr(pooling, "masked_mean", recorder("inference", pooling.masked_mean))
    monkeypatch.setattr(training, "masked_mean", recorder("training", training.masked_mean))
    return state


def _clips(n=14, seed=0):
    """``n`` noisy sines of 0.1 to 1 s at 16 kHz (a final batch of 6 at batch_size=8)."""
    X, _ = make_class_sines(n_per_class=n, n_classes=1, seed=seed, min_len=1600,
                            max_len=16000)
    return X


@pytest.fixture(scope="module")
def wav2vec2_48_dir(tmp_path_factory):
    """The tiny wav2vec2 (group norm) at widths that are multiples of 48, like the
    real checkpoints' 384 and 768, so that 3 threads split them on vector boundaries."""
    from conftest import TINY_WAV2VEC2_KWARGS, _build
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**{**TINY_WAV2VEC2_KWARGS, "hidden_size": 48,
                               "intermediate_size": 96, "conv_dim": (48, 48)},
                            feat_extract_norm="group", do_stable_layer_norm=False)
    return _build(tmp_path_factory, "wav2vec2_48", 2, lambda: Wav2Vec2Model(config))


def _backbone(name, request):
    return None if name == "bundled" else request.getfixturevalue(name)


# ----------------------------------------------------------------------- the policy


def test_none_follows_the_load_only_in_inference(monkeypatch, torch_setting):
    monkeypatch.setattr(_threads, "_usable_cores", lambda: 8)
    # busy threads elsewhere -> threads for None in inference: a divisor of torch's
    # setting (6) at most the free cores; with a worker budget of 4, a divisor of 4.
    for busy, expected, in_worker in [(0, 6, 4), (3, 3, 4), (5, 3, 2), (6, 2, 2),
                                      (7, 1, 1), (20, 1, 1)]:
        monkeypatch.setattr(_threads, "_runnable_elsewhere", lambda busy=busy: busy)
        with _threads.ThreadPolicy(None, inference=True) as policy:
            assert policy.threads == expected
            assert policy.steady_threads == 6
        with _threads.ThreadPolicy(None) as policy:  # training: torch's setting
            assert policy.threads == 6 and policy.steady_threads is None
        with _threads.ThreadPolicy(None, budget=4, inference=True) as policy:
            assert policy.threads == in_worker and policy.steady_threads == 4
        assert torch.get_num_threads() == 6
    with _threads.ThreadPolicy("auto", inference=True) as policy:
        assert policy.steady_threads is None  # "auto" promises no equal bits
    with _threads.ThreadPolicy(2, inference=True) as policy:
        assert policy.threads == 2 and policy.steady_threads is None


def test_invariant_inference_pins_what_depends_on_the_count_and_unhooks(torch_setting):
    from torch.nn.utils import parametrizations

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(2, 4, 3)
            self.normed = parametrizations.weight_norm(torch.nn.Linear(4, 4), dim=1)

        def forward(self, x):
            seen.append(torch.get_num_threads())
            hidden = self.conv(x).transpose(1, 2)
            return self.normed(hidden)

    seen = []
    net = Net()
    net.conv.register_forward_hook(lambda *a: seen.append(("conv", torch.get_num_threads())))
    net.normed.parametrizations.weight.register_forward_hook(
        lambda *a: seen.append(("norm", torch.get_num_threads())))
    x = torch.randn(1, 2, 20)
    with _threads.invariant_inference(net, conv_threads=2):
        net(x)
    assert seen == [6, ("conv", 2), ("norm", 1)]
    assert torch.get_num_threads() == 6
    n_hooks = [len(m._forward_pre_hooks) for m in net.modules()]
    assert n_hooks == [0] * len(n_hooks)  # removed
    with pytest.raises(RuntimeError):  # hooks restore the count even when a layer fails
        with _threads.invariant_inference(net, conv_threads=2):
            net(torch.randn(1, 5, 20))
    assert torch.get_num_threads() == 6
    with _threads.batch_threads(5):
        assert torch.get_num_threads() == 1
    with _threads.batch_threads(_threads._ONE_THREAD_ROWS):
        assert torch.get_num_threads() == 6


# -------------------------------------------- inference: the same bits on any count


# torch's setting and the counts compared: the 32-wide test models split on vector
# boundaries only for powers of two.
INVARIANCE_CASES = [("bundled", 6, (1, 2, 3)), ("wav2vec2_48_dir", 6, (1, 2, 3)),
                    ("tiny_wav2vec2_group_dir", 4, (1, 2, 4))]


@pytest.mark.parametrize("name, setting, counts", INVARIANCE_CASES)
def test_transform_is_the_same_on_every_count(name, setting, counts, request,
                                              torch_setting, load):
    torch.set_num_threads(setting)
    load.cores = setting
    X = _clips()
    short = [X[0][:1600]]  # 0.1 s: a batch of a few encoder frames (5 for Whisper)
    model = PairTuneTransformer(_backbone(name, request), epochs=0, batch_size=8,
                                verbose=0).fit(X)
    results = {}
    for threads in counts:
        load.threads, load.seen["inference"] = threads, []
        results[threads] = model.transform(X), model.transform(short)
        assert max(load.seen["inference"]) == threads  # it did run on that count
    for threads in counts[1:]:
        np.testing.assert_array_equal(results[threads][0], results[1][0])
        np.testing.assert_array_equal(results[threads][1], results[1][1])
    assert torch.get_num_threads() == setting


@pytest.mark.parametrize("name, setting, counts", INVARIANCE_CASES[:2])
def test_finetune_head_is_the_same_on_every_count(name, setting, counts, request,
                                                 torch_setting, load):
    torch.set_num_threads(setting)
    load.cores = setting
    # 130 classes and a final batch of 6 clips: the head's logits on a few rows.
    rng = np.random.default_rng(0)
    X_fit = [rng.standard_normal(800).astype(np.float32) for _ in range(130)]
    clf = FineTuneClassifier(_backbone(name, request), epochs=0, batch_size=8,
                             random_state=0, verbose=0).fit(X_fit, np.arange(130))
    X = _clips()
    results = {}
    for threads in counts:
        load.threads = threads
        results[threads] = (clf.predict_proba(X), clf.decision_function(X),
                            clf.predict(X))
    assert results[1][0].shape == (len(X), 130)
    for threads in counts[1:]:
        for got, want in zip(results[threads], results[1]):
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------- fits: the same whatever the load


def _pairtune(backbone, **kwargs):
    params = dict(epochs=2, batch_size=4, validation_fraction=0.25, random_state=0,
                  verbose=0)
    return PairTuneTransformer(backbone, **{**params, **kwargs})


def test_default_fits_are_the_same_while_the_load_changes(tiny_whisper_encoder_dir, load):
    X, y = make_class_sines(n_per_class=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's setting; tiny models, so that 2 threads stay quick
    load.cores = 2
    try:
        load.busy = itertools.cycle([0, 1, 1, 0, 0, 1])
        first = _pairtune(tiny_whisper_encoder_dir).fit(X, y)
        load.busy = 0
        after_fit = first.transform(X)
        load.busy = itertools.cycle([1, 0, 0, 1])
        second = _pairtune(tiny_whisper_encoder_dir)
        fit_transform = second.fit_transform(X, y)
    finally:
        torch.set_num_threads(previous)
    assert set(load.seen["training"]) == {2}  # training steps at torch's setting only
    assert set(load.seen["inference"]) == {1, 2}  # validation and transform followed the load
    np.testing.assert_array_equal(fit_transform, after_fit)
    assert ([r["valid_accuracy"] for r in first.history_]
            == [r["valid_accuracy"] for r in second.history_])
    for a, b in zip(first.backbone_.parameters(), second.backbone_.parameters()):
        assert torch.equal(a, b)


def test_torch_setting_is_restored_after_fit_transform_and_errors(
        tiny_whisper_encoder_dir, torch_setting, load, tmp_path):
    X, y = make_class_sines(n_per_class=4)
    load.threads = 1  # inference on 1 thread, training on torch's 6
    model = _pairtune(tiny_whisper_encoder_dir, epochs=1).fit(X, y)
    assert torch.get_num_threads() == SETTING
    model.transform(X)
    assert torch.get_num_threads() == SETTING
    with pytest.raises(FileNotFoundError):
        model.transform([*X, tmp_path / "missing.wav"])
    assert torch.get_num_threads() == SETTING

    class Fails(Callback):
        def on_epoch_end(self, estimator, record, state):
            state.valid_embeddings()  # inference inside the fit, then a failure
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        _pairtune(tiny_whisper_encoder_dir, callbacks=[Fails()]).fit(X, y)
    assert torch.get_num_threads() == SETTING
    assert all(not m._forward_pre_hooks for m in model.backbone_.modules())
