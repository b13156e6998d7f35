"""The fast paths: thread policy, streamed inference, memory trimming, front-end cache.

Each fast path must give the same numbers as the plain path it replaces (up to float
rounding) and behave like it on errors; speed itself is measured in
benchmarks/speed.py, not here.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_class_sines

from skaudio_confit import FineTuneClassifier, PairTuneTransformer, _threads
from skaudio_confit._front_cache import FrontEndCache, front_end_cache
from skaudio_confit._inference import embed_stream
from skaudio_confit._input import expected_length, load_waveforms
from skaudio_confit._memory import MemoryKeeper, release_free_memory
from skaudio_confit._pooling import embed_waveforms
from skaudio_confit._training import shuffled_batches, train_encoder
from skaudio_confit.backbones import load_backbone

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --------------------------------------------------------------------------- threads


def test_auto_threads_leaves_cores_to_other_processes():
    assert _threads.auto_threads(0.0, cores=2) == 2
    assert _threads.auto_threads(0.1, cores=2) == 2  # a flicker of other work
    # Up to half a core: this process's own threads caught between the two reads of
    # the run queue (0.2-0.5 measured on an idle machine), not another process.
    assert _threads.auto_threads(0.5, cores=2) == 2
    assert _threads.auto_threads(0.6, cores=2) == 1
    assert _threads.auto_threads(1.0, cores=2) == 1
    assert _threads.auto_threads(9.0, cores=2) == 1  # never below one
    assert _threads.auto_threads(2.0, cores=8) == 6
    assert _threads.auto_threads(None, cores=4) == 4  # unknown load: all usable cores


def test_runnable_elsewhere_counts_other_processes():
    value = _threads._runnable_elsewhere()
    if value is None:
        pytest.skip("no /proc on this system")
    assert isinstance(value, int) and value >= 0


@pytest.mark.parametrize("busy, expected", [(0, 2), (1, 1), (5, 1)])
def test_auto_policy_follows_the_run_queue_and_restores(monkeypatch, busy, expected):
    monkeypatch.setattr(_threads, "_runnable_elsewhere", lambda: busy)
    monkeypatch.setattr(_threads, "_usable_cores", lambda: 2)
    before = torch.get_num_threads()
    with _threads.ThreadPolicy("auto") as policy:
        assert policy.threads == expected
    assert torch.get_num_threads() == before


def test_auto_policy_adapts_when_the_load_changes(monkeypatch):
    load = {"value": 0}
    monkeypatch.setattr(_threads, "_runnable_elsewhere", lambda: load["value"])
    monkeypatch.setattr(_threads, "_usable_cores", lambda: 2)
    monkeypatch.setattr(_threads, "_DECIDE_SECONDS", 0.0)
    with _threads.ThreadPolicy("auto") as policy:
        assert policy.threads == 2
        load["value"] = 1
        policy.update()
        assert policy.threads == 1
        load["value"] = 0
        policy.update()
        assert policy.threads == 2


def test_policy_int_none_and_worker_budget():
    before = torch.get_num_threads()
    with _threads.ThreadPolicy(3) as policy:
        assert policy.threads == 3
    with _threads.ThreadPolicy(3, budget=2) as policy:
        assert policy.threads == 2  # a worker's share caps the request
    with _threads.ThreadPolicy(None) as policy:
        assert policy.threads == before
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n_threads must be at least 1"):
        _threads.ThreadPolicy(0)


def test_policy_is_capped_by_the_loky_budget(monkeypatch):
    monkeypatch.setattr(_threads, "thread_budget", lambda: 1)
    with _threads.thread_policy(4) as policy:
        assert policy.threads == 1


def test_estimator_rejects_bad_n_threads(tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=2)
    for bad in (0, -1, "many", 1.5):
        model = PairTuneTransformer(backbone=tiny_whisper_encoder_dir, epochs=0,
                                    n_threads=bad, verbose=0)
        with pytest.raises((ValueError, TypeError), match="n_threads"):
            model.fit(X, y)


def test_fit_and_transform_restore_torch_threads(tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=2)
    torch.set_num_threads(1)
    model = FineTuneClassifier(backbone=tiny_whisper_encoder_dir, epochs=1, batch_size=4,
                               n_threads=2, random_state=0, verbose=0).fit(X, y)
    assert torch.get_num_threads() == 1
    model.predict(X)
    assert torch.get_num_threads() == 1


def test_n_threads_does_not_change_the_result(tiny_whisper_encoder_dir):
    X, y = make_class_sines(n_per_class=2)
    params = dict(backbone=tiny_whisper_encoder_dir, epochs=1, batch_size=4, random_state=0,
                  verbose=0)
    one = PairTuneTransformer(n_threads=1, **params).fit(X, y).transform(X)
    auto = PairTuneTransformer(**params).fit(X, y).transform(X)
    np.testing.assert_allclose(one, auto, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- streamed inference


@pytest.mark.parametrize("family", ["whisper", "wav2vec2_group", "data2vec"])
@pytest.mark.parametrize("chunk_size", [5, 100])
def test_stream_equals_plain_batched_embedding(family, chunk_size, tiny_whisper_encoder_dir,
                                               tiny_wav2vec2_group_dir,
                                               tiny_data2vec_audio_dir):
    path = {"whisper": tiny_whisper_encoder_dir, "wav2vec2_group": tiny_wav2vec2_group_dir,
            "data2vec": tiny_data2vec_audio_dir}[family]
    backbone = load_backbone(path)
    X, _ = make_class_sines(n_per_class=4, min_len=300, max_len=9000)
    waves = load_waveforms(X, sampling_rate=16000, target_rate=16000)
    plain = embed_waveforms(backbone, waves, layer=1, batch_size=4, max_samples=4000)
    calls = []

    def load_chunk(chunk, indices):
        calls.append(list(indices))
        return list(chunk)

    streamed = embed_stream(backbone, waves, load_chunk=load_chunk, chunk_size=chunk_size,
                            layer=1, batch_size=4, max_samples=4000,
                            device=torch.device("cpu"))
    np.testing.assert_allclose(streamed, plain, rtol=1e-5, atol=1e-6)
    # Every clip read once, at most a batch's worth at a time, in order of length
    # within each chunk.
    assert sorted(i for call in calls for i in call) == list(range(len(X)))
    assert max(len(call) for call in calls) <= 4
    lengths = [len(w) for w in waves]
    for start in range(0, len(X), chunk_size):
        read = [i for call in calls for i in call if start <= i < start + chunk_size]
        assert [lengths[i] for i in read] == sorted(lengths[i] for i in read)


def test_stream_raises_the_readers_error_and_stops_the_thread(tiny_whisper_encoder_dir,
                                                              tmp_path):
    X, y = make_class_sines(n_per_class=2)
    model = PairTuneTransformer(backbone=tiny_whisper_encoder_dir, epochs=0,
                                verbose=0).fit(X, y)
    before = model.transform(X)
    missing = tmp_path / "missing.wav"
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        model.transform([*X, missing])
    assert not any(t.name == "skaudio-confit-reader" for t in threading.enumerate())
    with pytest.raises(ValueError, match="Clip 5 contains NaN"):
        model.transform([*X[:5], np.array([np.nan, 0.0])])
    np.testing.assert_array_equal(model.transform(X), before)  # model untouched


def test_stream_progress_counts_every_clip(tiny_whisper_encoder_dir):
    class Bar:
        n = 0

        def update(self, k):
            assert k >= 0
            self.n += k

    backbone = load_backbone(tiny_whisper_encoder_dir)
    X, _ = make_class_sines(n_per_class=3, min_len=300, max_len=9000)
    bar = Bar()
    embed_stream(backbone, X, load_chunk=lambda c, i: list(c), chunk_size=4, layer=1,
                 batch_size=2, max_samples=2000, device=torch.device("cpu"), progress=bar)
    assert bar.n == len(X)  # windows are not counted twice


def test_stream_holds_python_memory_independent_of_the_clip_count(tiny_whisper_encoder_dir):
    # Files are read chunk by chunk: apart from the output (one row per clip), the
    # Python allocations alive at the peak (numpy waveforms, batches) must not grow
    # with the number of clips. load_chunk returns fresh copies, as reading files does.
    import tracemalloc

    backbone = load_backbone(tiny_whisper_encoder_dir)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal(int(n)).astype(np.float32)
            for n in rng.integers(1600, 8000, size=40)]

    def peak(n_clips):
        clips = [pool[i % len(pool)] for i in range(n_clips)]
        tracemalloc.start()
        try:
            embed_stream(backbone, clips, load_chunk=lambda c, i: [w.copy() for w in c],
                         chunk_size=40, layer=1, batch_size=8, max_samples=None,
                         device=torch.device("cpu"))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    one_chunk_samples = sum(w.nbytes for w in pool)
    small, large = peak(40), peak(400)
    output_growth = (400 - 40) * backbone.hidden_size * 4
    # One chunk of waveforms is ~0.9 MB here; keeping them all would add ~8 MB.
    assert large - small < output_growth + one_chunk_samples


def test_stream_reads_a_batch_of_samples_at_a_time_not_a_chunk(tiny_whisper_encoder_dir):
    # Clips are sorted by their expected length and read a batch's worth at a time, so
    # the waveforms alive at the peak are a batch's, however large a chunk is.
    import tracemalloc

    backbone = load_backbone(tiny_whisper_encoder_dir)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(int(n)).astype(np.float32)
             for n in rng.integers(1600, 8000, size=200)]
    tracemalloc.start()
    try:
        embed_stream(backbone, clips, load_chunk=lambda c, i: [w.copy() for w in c],
                     chunk_size=200, layer=1, batch_size=8, max_samples=None,
                     device=torch.device("cpu"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output = len(clips) * backbone.hidden_size * 8  # the float64 sums of the chunk
    assert peak - output < sum(w.nbytes for w in clips) / 4


def test_expected_length_reads_headers_and_shapes(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(str(path), np.zeros(8000, dtype=np.float32), 8000)
    assert expected_length(path, sampling_rate=16000, target_rate=16000) == 16000
    assert expected_length(str(path), sampling_rate=16000, target_rate=16000) == 16000
    stereo = np.zeros((2, 4000), dtype=np.float32)
    assert expected_length(stereo, sampling_rate=8000, target_rate=16000) == 8000
    assert expected_length([0.0] * 10, sampling_rate=16000, target_rate=16000) == 10
    # Unreadable: ordered first, reported when read.
    assert expected_length(tmp_path / "missing.wav", sampling_rate=16000,
                           target_rate=16000) == 0


def test_memory_keeper_trims_only_past_its_threshold(monkeypatch):
    from skaudio_confit import _memory

    release_free_memory()  # a no-op where glibc is absent, never an error
    rss = {"value": 100 * 2**20}
    trims = []
    monkeypatch.setattr(_memory, "_resident_bytes", lambda: rss["value"])
    monkeypatch.setattr(_memory, "release_free_memory", lambda: trims.append(rss["value"]))
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: object())
    keeper = MemoryKeeper(growth=10 * 2**20)
    keeper.check()  # the first check reads the working set
    rss["value"] += 5 * 2**20
    keeper.check()
    assert trims == []
    rss["value"] += 6 * 2**20
    keeper.check()
    assert len(trims) == 1
    # The trim hands pages back that the next batch takes again: that working set,
    # read at the check after a trim, is not growth.
    rss["value"] = 100 * 2**20  # one batch after the trim: its working set is back
    keeper.check()
    rss["value"] = 109 * 2**20
    keeper.check()
    assert len(trims) == 1
    rss["value"] = 111 * 2**20
    keeper.check()
    assert len(trims) == 2
    keeper.reset()  # after a trim by someone else, the working set is read again
    rss["value"] = 130 * 2**20
    keeper.check()
    rss["value"] = 139 * 2**20
    keeper.check()
    assert len(trims) == 2


# --------------------------------------------------------------------- front-end cache


def _train(backbone_dir, freeze, cache, max_samples=None, epochs=2):
    from skaudio_confit._objectives import CrossEntropyObjective

    backbone = load_backbone(backbone_dir)
    if freeze:
        backbone.freeze_feature_encoder()
    X, y = make_class_sines(n_per_class=3, min_len=1200, max_len=7000)
    objective = CrossEntropyObjective(backbone.hidden_size, 3)
    history = train_encoder(backbone, objective, X, y, batch_plan=shuffled_batches(len(X), 4),
                            epochs=epochs, learning_rate=1e-3, layer=1, seed=0,
                            rng=np.random.default_rng(0), max_samples=max_samples, verbose=0,
                            cache_front_end=cache)
    embeddings = embed_waveforms(backbone, X, layer=1, batch_size=4)
    return embeddings, [h["loss"] for h in history]


@pytest.mark.parametrize("family, freeze", [
    ("whisper", False), ("whisper", True), ("wav2vec2_group", True), ("wav2vec2_layer", True),
])
@pytest.mark.parametrize("max_samples", [None, 3000])
def test_cached_front_end_trains_like_the_plain_loop(family, freeze, max_samples,
                                                     tiny_whisper_encoder_dir,
                                                     tiny_wav2vec2_group_dir,
                                                     tiny_wav2vec2_layer_dir):
    path = {"whisper": tiny_whisper_encoder_dir, "wav2vec2_group": tiny_wav2vec2_group_dir,
            "wav2vec2_layer": tiny_wav2vec2_layer_dir}[family]
    plain, plain_loss = _train(path, freeze, cache=False, max_samples=max_samples)
    cached, cached_loss = _train(path, freeze, cache=True, max_samples=max_samples)
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=1e-4)
    np.testing.assert_allclose(cached, plain, rtol=1e-3, atol=1e-4)


def test_cache_computes_each_uncropped_clip_once(tiny_whisper_encoder_dir):
    backbone = load_backbone(tiny_whisper_encoder_dir)
    backbone.freeze_feature_encoder()
    waves, _ = make_class_sines(n_per_class=2)
    calls = []
    original = backbone.front_features

    def counted(wave):
        calls.append(len(wave))
        return original(wave)

    backbone.front_features = counted
    cache = FrontEndCache(backbone, waves)
    first = cache.featurize([0, 1], [waves[0], waves[1]])
    again = cache.featurize([1, 0], [waves[1], waves[0]])
    assert len(calls) == 2  # the second batch came from the cache
    torch.testing.assert_close(first["stem"][0], again["stem"][1])
    cache.featurize([0], [waves[0][:1000]])  # a crop is computed afresh
    assert len(calls) == 3 and calls[-1] == 1000
    assert set(cache._features) == {0, 1} and cache.nbytes > 0
    full = FrontEndCache(backbone, waves, max_bytes=0)
    full.featurize([2], [waves[2]])
    assert full.nbytes == 0 and not full._features  # over its cap: nothing kept


def test_cache_is_used_only_for_a_frozen_front_end(tiny_whisper_encoder_dir,
                                                   tiny_wav2vec2_group_dir,
                                                   tiny_data2vec_audio_dir):
    whisper = load_backbone(tiny_whisper_encoder_dir)
    assert front_end_cache(whisper, []) is not None  # the log-mel has no parameters
    assert front_end_cache(whisper, [], enabled=False) is None
    wav2vec2 = load_backbone(tiny_wav2vec2_group_dir)
    assert front_end_cache(wav2vec2, []) is None  # trainable conv encoder
    wav2vec2.freeze_feature_encoder()
    assert front_end_cache(wav2vec2, []) is not None
    data2vec = load_backbone(tiny_data2vec_audio_dir)
    data2vec.freeze_feature_encoder()
    assert front_end_cache(data2vec, []) is None  # padding leaks into its frames
