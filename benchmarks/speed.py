"""Speed and memory of inference and training, measured side by side in one run.

Questions (issue 13):

1. Threads: ``transform`` and a training epoch with ``n_threads`` = 1, 2, None (the
   default: training on torch's setting, inference at most that and fewer while other
   processes hold cores) and "auto" (opt-in: training follows the load too), on the
   idle machine and with one core kept busy by a CPU-burning process this script
   starts (and stops). Goal: the default within 10 % of the best setting in both
   conditions.
2. ``transform`` against (a) the bare batched forward over the very same padded
   tensors (the practical limit: no reading, resampling or front end) and (b) the
   honest naive loop, one clip at a time through the same encoder and layer at the
   clip's own length. Goals: >= 0.95x (a), >= 3x (b). For the bundled Whisper
   tiny.en encoder and a tiny wav2vec2 (random weights, the base models' conv
   pattern), on FSDD clips of mixed lengths and on uniform 5 s clips.
3. Peak memory growth of ``transform`` over file paths at 500 and 5,000 clips (the
   same 500 files, repeated and shuffled, so only the count changes), each in a fresh
   process. Goal: within 20 %.
4. Epoch time with and without the front-end cache (Whisper's log-mel; a frozen conv
   stem / feature encoder), and bf16 autocast and ``torch.compile`` on CPU (speed
   against drift of the embeddings).

Data: clips of the bundled FSDD (real recordings, 0.14-2.3 s, 8 kHz, resampled to
16 kHz). CPU.

Unlike the other benchmarks, this one imports private modules on purpose: it times
the package's internal stages against each other (the bare forward over the tensors
``transform`` builds, one epoch of the training loop with and without the front-end
cache), which no public API exposes. The other benchmarks use public API only.

Usage::

    python benchmarks/speed.py [--quick]

Writes ``benchmarks/results/speed.{md,json,png}``.

A separate, self-contained section (``--group-norm``, which runs only it) measures
inference of a group-norm wav2vec2 (the wav2vec2-base architecture, randomly
initialised: nothing is downloaded) on FSDD clips of mixed lengths: the conv stack
run per clip with the transformer batched (the adapter's way) against batching only
clips of exactly the same length (the former way, one clip at a time on real data).
Writes ``benchmarks/results/speed_group_norm.{md,json}``::

    python benchmarks/speed.py --group-norm [--gn-clips 64] [--gn-size base|tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import _common  # noqa: E402  (benchmarks/, this script's own folder)


def fsdd_clips(n, seed=0):
    """``n`` FSDD clips (mixed lengths) and their speakers, a fixed random subset."""
    from skaudio_confit.datasets import load_spoken_digits

    bunch = load_spoken_digits(target="speaker")
    idx = np.random.default_rng(seed).permutation(len(bunch.data))[:n]
    return [bunch.data[i] for i in idx], bunch.target[idx], bunch.sampling_rate


def uniform_clips(n, seconds=5.0, seed=0):
    """``n`` clips of exactly ``seconds`` s at 16 kHz: FSDD recordings laid end to end."""
    from skaudio_confit._input import load_waveforms

    clips, _, rate = fsdd_clips(min(3000, 12 * n), seed=seed)
    waves = load_waveforms(clips, sampling_rate=rate, target_rate=16000)
    stream = np.concatenate(waves)
    size = int(seconds * 16000)
    return [stream[i * size:(i + 1) * size].copy() for i in range(n)], 16000


TINY_WAV2VEC2 = {  # the base models' conv pattern (7 layers, stride 320), a small transformer
    "hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 6,
    "intermediate_size": 1536, "conv_dim": (256,) * 7, "feat_extract_norm": "group",
    "do_stable_layer_norm": False, "conv_bias": False,
}


def backbone_dirs(tmp):
    """``{name: backbone argument}``: the bundled Whisper encoder, a tiny wav2vec2."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    path = Path(tmp) / "tiny-wav2vec2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2)).save_pretrained(path)
    return {"Whisper tiny.en (bundled)": None,
            "wav2vec2 tiny (random, base conv pattern)": str(path)}


def best_of(fn, repeats):
    """Smallest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def busy_core(seconds):
    """One other process burning a CPU core (at most ``seconds``), stopped on exit."""
    code = (f"import time\nend = time.monotonic() + {seconds}\n"
            "while time.monotonic() < end:\n    pass\n")
    burner = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.3)  # let it get going
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def thread_table(args):
    """transform and a training epoch at n_threads 1, 2, None (the default) and "auto";
    idle and one core busy."""
    from skaudio_confit import PairTuneTransformer

    clips, y, rate = fsdd_clips(args.thread_clips)
    model = PairTuneTransformer(sampling_rate=rate, epochs=0, verbose=0,
                                device="cpu").fit(clips[:12], y[:12])
    model.transform(clips[:64])  # warm-up
    train_clips, train_y, _ = fsdd_clips(args.thread_train_clips, seed=2)
    import torch

    torch_setting = torch.get_num_threads()  # what None trains on
    settings = [1, 2, None, "auto"]
    rows = []
    for condition in ("idle", "one core busy"):
        burn = busy_core(1800) if condition != "idle" else contextlib.nullcontext()
        with burn:
            for task in ("transform", "fit epoch"):
                seconds = {}
                for _ in range(args.repeats):  # interleaved: drifting load hits all alike
                    for n in settings:
                        if task == "transform":
                            model.set_params(n_threads=n)
                            start = time.perf_counter()
                            model.transform(clips)
                            took = time.perf_counter() - start
                        else:
                            fit = PairTuneTransformer(sampling_rate=rate, epochs=1,
                                                      n_threads=n, random_state=0, verbose=0,
                                                      device="cpu")
                            fit.fit(train_clips, train_y)
                            took = fit.history_[-1]["seconds"]
                        seconds[str(n)] = min(seconds.get(str(n), np.inf), took)
                clips_n = len(clips) if task == "transform" else len(train_clips)
                best = min(seconds.values())
                rows.append({"condition": condition, "task": task, "clips": clips_n,
                             "seconds": seconds, "torch_threads": torch_setting,
                             "default_vs_best": seconds["None"] / best - 1,
                             "auto_vs_best": seconds["auto"] / best - 1})
                print(rows[-1], flush=True)
    model.set_params(n_threads=None)
    return rows


def transform_ratios(args, backbones):
    """transform vs the bare batched forward and the one-clip-at-a-time loop."""
    import torch

    from skaudio_confit import PairTuneTransformer
    from skaudio_confit._input import load_waveforms
    from skaudio_confit._pooling import inference_batches, masked_mean, prepare_clip
    from skaudio_confit._threads import ThreadPolicy

    fsdd, y, rate = fsdd_clips(args.clips)
    uniform, urate = uniform_clips(args.uniform_clips)
    datasets = {f"FSDD, {len(fsdd)} clips of 0.1-2.3 s (8 kHz)": (fsdd, rate),
                f"uniform 5 s, {len(uniform)} clips (16 kHz)": (uniform, urate)}
    threads = args.threads or torch.get_num_threads()
    results = []
    for name, backbone_arg in backbones.items():
        for data_name, (clips, clip_rate) in datasets.items():
            model = PairTuneTransformer(backbone=backbone_arg, sampling_rate=clip_rate,
                                        epochs=0, n_threads=threads, verbose=0,
                                        device="cpu").fit(clips[:4])
            backbone, layer = model.backbone_, model._layer_of(model.backbone_)
            waves = load_waveforms(clips, sampling_rate=clip_rate, target_rate=16000)
            window = model._window_samples(backbone)
            items = [w for wave in waves for w in prepare_clip(wave, backbone, window)]
            batches = [backbone.featurize([items[i] for i in idx])
                       for idx in inference_batches(backbone, [len(w) for w in items],
                                                    model.batch_size, "cpu")]

            def bare():
                with torch.inference_mode():
                    for batch in batches:
                        hidden, mask = backbone(batch, layer)
                        masked_mean(hidden, mask).numpy()

            def one_by_one():
                with torch.inference_mode():
                    for wave in items:
                        hidden, mask = backbone(backbone.featurize([wave]), layer)
                        masked_mean(hidden, mask).numpy()

            def ours():
                model.transform(clips)

            with ThreadPolicy(threads):
                ours()  # warm-up
                seconds = {"transform": [], "bare batched forward": [],
                           "one clip at a time": []}
                for _ in range(args.repeats):
                    seconds["transform"].append(best_of(ours, 1))
                    seconds["bare batched forward"].append(best_of(bare, 1))
                seconds["one clip at a time"].append(best_of(one_by_one, 1))
            best = {k: min(v) for k, v in seconds.items()}
            results.append({
                "backbone": name, "data": data_name, "clips": len(clips), "threads": threads,
                "seconds": best,
                "vs bare": best["bare batched forward"] / best["transform"],
                "vs one at a time": best["one clip at a time"] / best["transform"],
            })
            print(results[-1], flush=True)
    return results


MEMORY_CHILD = """
import json, sys, threading, time
sys.path.insert(0, {root!r})
import numpy as np
from skaudio_confit import PairTuneTransformer
paths = json.loads(sys.argv[1])
n = {n}
order = np.random.default_rng(1).permutation(np.arange(n) % len(paths))
X = [paths[i] for i in order]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

model = PairTuneTransformer(epochs=0, verbose=0, device="cpu").fit(paths[:12])
model.transform(paths[:64])  # warm up: allocator pools, lazy imports
before, peak, done = rss_mb(), [0.0], threading.Event()

def sample():  # the resident set, every 2 ms, while transform runs
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
out = model.transform(X)
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({{"clips": n, "rss_mb_before": before, "seconds": seconds,
                   "peak_rss_growth_mb": max(peak[0], rss_mb()) - before,
                   "output_mb": out.nbytes / 2**20}}))
"""


def memory(args, tmp):
    """Peak RSS growth of transform over file paths, each size in a fresh process."""
    clips, _, rate = fsdd_clips(args.memory_files, seed=3)
    paths = _write_wavs(clips, rate, tmp, "clip")
    return [_memory_child(n, paths) for n in args.memory_clips]


def memory_long_clips(args, tmp):
    """The same measure on 5 s clips, where a chunk of waveforms is large."""
    waves, rate = uniform_clips(args.memory_long_files, seed=4)
    return [_memory_child(args.memory_long_clips, _write_wavs(waves, rate, tmp, "long"))]


def _write_wavs(waves, rate, tmp, stem):
    """Write ``waves`` as WAV files ``tmp/{stem}NNNN.wav``; return their paths."""
    import soundfile as sf

    paths = []
    for i, wave in enumerate(waves):
        path = Path(tmp) / f"{stem}{i:04d}.wav"
        sf.write(str(path), wave, int(rate))
        paths.append(str(path))
    return paths


def _memory_child(n, paths):
    """Run ``MEMORY_CHILD`` on ``n`` clips drawn from ``paths`` in a fresh process."""
    code = MEMORY_CHILD.format(root=str(ROOT), n=n)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(paths)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def training_clips(n, seed):
    """``n`` FSDD clips at 16 kHz and their class codes, for the training loop."""
    from skaudio_confit._input import load_waveforms
    from skaudio_confit._labels import encode_labels

    clips, y, rate = fsdd_clips(n, seed=seed)
    return load_waveforms(clips, sampling_rate=rate, target_rate=16000), encode_labels(y)[1]


def epoch_times(args, backbones):
    """Seconds of the first and second epoch with and without the front-end cache."""
    from skaudio_confit._objectives import SupConObjective
    from skaudio_confit._sampling import class_balanced_batches
    from skaudio_confit._training import train_encoder
    from skaudio_confit.backbones import load_backbone

    waves, codes = training_clips(args.train_clips, seed=1)
    cases = [("Whisper tiny.en (bundled)", False), ("Whisper tiny.en (bundled)", True),
             ("wav2vec2 tiny (random, base conv pattern)", True)]
    rows = []
    for name, freeze in cases:
        seconds = {}
        for _ in range(args.repeats):
            for cache in (False, True):
                backbone = load_backbone(backbones[name])
                if freeze:
                    backbone.freeze_feature_encoder()
                layer = backbone.num_layers // 2
                history = train_encoder(
                    backbone, SupConObjective(backbone.hidden_size), waves, codes,
                    batch_plan=lambda rng: class_balanced_batches(codes, 32, 4, rng),
                    epochs=2, learning_rate=1e-4, layer=layer, seed=0,
                    rng=np.random.default_rng(0), verbose=0, n_threads=args.threads,
                    cache_front_end=cache)
                key = "cached" if cache else "plain"
                old = seconds.get(key, [np.inf, np.inf])
                seconds[key] = [min(old[0], history[0]["seconds"]),
                                min(old[1], history[1]["seconds"])]
        rows.append({"backbone": name, "freeze_feature_encoder": freeze,
                     "clips": len(waves), "seconds": seconds,
                     "saving_epoch2": 1 - seconds["cached"][1] / seconds["plain"][1]})
        print(rows[-1], flush=True)
    return rows


def precision_and_compile(args, backbones):
    """bf16 autocast and torch.compile on CPU: speed and drift of the embeddings."""
    import torch

    from skaudio_confit._objectives import SupConObjective
    from skaudio_confit._pooling import embed_waveforms
    from skaudio_confit._sampling import class_balanced_batches
    from skaudio_confit._training import train_encoder
    from skaudio_confit.backbones import load_backbone

    waves, codes = training_clips(args.precision_clips, seed=4)
    backbone = load_backbone(backbones["Whisper tiny.en (bundled)"])
    layer = backbone.num_layers // 2

    def embed():
        return embed_waveforms(backbone, waves, layer=layer, batch_size=32)

    def embed_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return embed()

    def drift(a, b):
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"max_abs": float(np.abs(a - b).max()),
                "max_rel": float(np.abs(a - b).max() / np.abs(a).max()),
                "min_cosine": float(cos.min())}

    rows = []
    reference = embed()
    base = best_of(embed, args.repeats)
    rows.append({"what": "inference fp32 (reference)", "seconds": base, "speed-up": 1.0,
                 **drift(reference, reference)})
    bf16 = embed_bf16()
    t = best_of(embed_bf16, args.repeats)
    rows.append({"what": "inference bf16 autocast", "seconds": t, "speed-up": base / t,
                 **drift(reference, bf16)})
    rows.append(compile_in_child(args))

    def epoch(autocast_bf16):
        fresh = load_backbone(backbones["Whisper tiny.en (bundled)"])
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16
               else contextlib.nullcontext())
        with ctx:
            history = train_encoder(
                fresh, SupConObjective(fresh.hidden_size), waves, codes,
                batch_plan=lambda rng: class_balanced_batches(codes, 32, 4, rng), epochs=1,
                learning_rate=1e-4, layer=layer, seed=0, rng=np.random.default_rng(0),
                verbose=0, n_threads=args.threads)
        return history[0]["seconds"], history[0]["loss"], embed_waveforms(
            fresh, waves, layer=layer, batch_size=32)

    fp32_s, fp32_loss, fp32_emb = epoch(False)
    bf_s, bf_loss, bf_emb = epoch(True)
    rows.append({"what": "training epoch fp32 (reference)", "seconds": fp32_s,
                 "speed-up": 1.0, "loss": fp32_loss, **drift(fp32_emb, fp32_emb)})
    rows.append({"what": "training epoch bf16 autocast", "seconds": bf_s,
                 "speed-up": fp32_s / bf_s, "loss": bf_loss, **drift(fp32_emb, bf_emb)})
    for row in rows:
        print(row, flush=True)
    return rows


COMPILE_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import numpy as np, torch
from speed import best_of, fsdd_clips
from skaudio_confit._input import load_waveforms
from skaudio_confit._pooling import embed_waveforms
from skaudio_confit.backbones import load_backbone
if {threads}:
    torch.set_num_threads({threads})
clips, _, rate = fsdd_clips({n}, seed=4)
waves = load_waveforms(clips, sampling_rate=rate, target_rate=16000)
backbone = load_backbone()
layer = backbone.num_layers // 2
embed = lambda: embed_waveforms(backbone, waves, layer=layer, batch_size=32)
reference = embed()
base = best_of(embed, {repeats})
backbone.forward = torch.compile(backbone.forward, dynamic=True)
start = time.perf_counter()
out = embed()  # compiles, for the first shapes
first = time.perf_counter() - start
seconds = best_of(embed, {repeats})
print(json.dumps({{"reference_seconds": base, "seconds": seconds, "first_call_seconds": first,
                   "max_abs": float(np.abs(out - reference).max()),
                   "max_rel": float(np.abs(out - reference).max() / np.abs(reference).max()),
                   "min_cosine": float(np.min(np.sum(out * reference, 1) / (
                       np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))))}}))
"""


def compile_in_child(args):
    """torch.compile of the encoder's forward, in a child process with a time limit."""
    what = "inference torch.compile (dynamic shapes)"
    code = COMPILE_CHILD.format(root=str(ROOT), bench=str(Path(__file__).parent),
                                n=args.precision_clips, repeats=args.repeats,
                                threads=args.threads or 0)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        return {"what": what, "error": f"not done within {args.compile_timeout} s "
                "(compiling on this CPU)"}
    if out.returncode != 0:
        return {"what": what, "error": out.stderr.strip().splitlines()[-1][:200]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"what": what, "speed-up": result["reference_seconds"] / result["seconds"],
            **result}


def report(results, args, seconds):
    machine = results["machine"]
    fmt = "{:.2f}".format
    thread_rows = [[r["condition"], r["task"], f"{r['clips']}",
                    *(fmt(r["seconds"][k]) for k in ("1", "2", "None", "auto")),
                    f"{r['default_vs_best']:+.0%}", f"{r['auto_vs_best']:+.0%}"]
                   for r in results["threads"]]
    ratio_rows = [[r["backbone"], r["data"], fmt(r["seconds"]["transform"]),
                   f"{r['clips'] / r['seconds']['transform']:.0f}",
                   fmt(r["seconds"]["bare batched forward"]),
                   fmt(r["seconds"]["one clip at a time"]), f"{r['vs bare']:.2f}x",
                   f"{r['vs one at a time']:.2f}x"] for r in results["transform"]]
    mem = results["memory"]
    mem_rows = [[f"{m['clips']}", f"{m['output_mb']:.1f}", f"{m['rss_mb_before']:.0f}",
                 f"{m['peak_rss_growth_mb']:.1f}", f"{m['clips'] / m['seconds']:.0f}"]
                for m in mem]
    growth = [m["peak_rss_growth_mb"] for m in mem]
    epoch_rows = [[r["backbone"], "yes" if r["freeze_feature_encoder"] else "no",
                   f"{r['clips']}", fmt(r["seconds"]["plain"][0]), fmt(r["seconds"]["plain"][1]),
                   fmt(r["seconds"]["cached"][0]), fmt(r["seconds"]["cached"][1]),
                   f"{r['saving_epoch2']:.0%}", f"{r['clips'] / r['seconds']['cached'][1]:.0f}"]
                  for r in results["epochs"]]
    prec_rows = []
    for r in results["precision"]:
        if "error" in r:
            prec_rows.append([r["what"], "failed", "", "", "", r["error"]])
            continue
        note = (f"first call {r['first_call_seconds']:.0f} s (compiling); eager fp32 "
                f"{r['reference_seconds']:.2f} s in that process"
                if "first_call_seconds" in r else
                (f"loss {r['loss']:.4f}" if "loss" in r else ""))
        prec_rows.append([r["what"], fmt(r["seconds"]), f"{r['speed-up']:.2f}x",
                          f"{r['max_rel']:.1e}", f"{r['min_cosine']:.5f}", note])
    t_rows = results["transform"]
    lines = [
        "# Speed and memory",
        "",
        f"- Date: {results['date']}; total run time {seconds / 60:.1f} min",
        f"- Machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs; torch "
        f"{machine['torch']}; load average {machine.get('load_average_at_start')} at start"
        f"{'; ' + args.note if args.note else ''})",
        f"- Command: `python benchmarks/speed.py{' --quick' if args.quick else ''}`; best of "
        f"{args.repeats} repeats, methods interleaved in one process.",
        "- Data: bundled FSDD clips (real recordings of 0.14-2.3 s, 8 kHz, resampled to "
        "16 kHz), and uniform 5 s clips cut from them laid end to end. Backbones: the "
        "bundled Whisper tiny.en encoder; a tiny wav2vec2 with random weights (the base "
        "models' 7-layer conv pattern with 256 channels, 4 transformer layers of width "
        "384; nothing is downloaded). The default `layer=\"middle\"` throughout.",
        "",
        "## Threads (`n_threads`)",
        "",
        _common.markdown_table(["machine", "task", "clips", "1 thread s", "2 threads s",
                                "None (default) s", "\"auto\" s", "default vs best",
                                "\"auto\" vs best"], thread_rows),
        "",
        "\"one core busy\": another process burning one of the cores (started by the "
        "benchmark) the whole time. None (the default): training steps on torch's "
        f"setting ({results['threads'][0]['torch_threads'] if results['threads'] else ''} "
        "threads here), fixed for the fit so that reruns are bit-identical; inference at "
        "most that and fewer while other processes' threads are runnable (re-decided "
        "every half second; its results do not depend on the count). \"auto\": the same "
        "load-following count in training too. Goal: the default within 10 % of the "
        "best setting in both conditions.",
        "",
        "## `transform` against the bare forward and the naive loop",
        "",
        _common.markdown_table(["backbone", "data", "transform s", "clips/s",
                                "bare batched forward s", "one clip at a time s",
                                "vs bare", "vs one at a time"], ratio_rows),
        "",
        f"All three on {t_rows[0]['threads'] if t_rows else ''} torch threads. *bare batched "
        "forward*: the encoder alone over the very padded tensors `transform` builds "
        "(already read, resampled and featurized; no output gathering). *one clip at a "
        "time*: the honest naive loop, each clip through the same encoder and layer at its "
        "own length (front end included, nothing read). `transform` includes reading the "
        "input, resampling (8 kHz to 16 kHz for FSDD), the front end, batching by length "
        "and pooling; a background thread does the reading, resampling and front end while "
        "the encoder runs. Goals: >= 0.95x the bare forward, >= 3x one clip at a time. "
        "(The transformers recipe that pads every clip to 30 s, 80x slower, is no "
        "baseline anyone careful uses, so it is not shown.)",
        "",
        "## Peak memory of `transform` over file paths",
        "",
        _common.markdown_table(["clips", "output MB", "RSS before MB",
                                "peak RSS growth MB", "clips/s"], mem_rows),
        "",
        f"The same {args.memory_files} WAV files (8 kHz FSDD), repeated and shuffled, so "
        "only the count changes; each size in a fresh process after a warm-up transform; "
        "growth is the peak resident set (sampled every 2 ms) above the resident set just "
        "before. Goal: within 20 % between 500 and 5,000 clips"
        + (f" (measured {growth[-1] / growth[0] - 1:+.0%})." if len(growth) > 1 else "."),
        *([""] + [f"Long clips: {m['clips']} paths of 5 s at 16 kHz ({args.memory_long_files} "
                  f"files cut from FSDD laid end to end, repeated and shuffled): peak RSS "
                  f"growth {m['peak_rss_growth_mb']:.0f} MB, {m['clips'] / m['seconds']:.0f} "
                  "clips/s. Here a chunk of 512 clips holds 164 MB of samples; clips are "
                  "read a batch at a time." for m in results.get("memory_long", [])]),
        "",
        "## Training epochs with and without the front-end cache",
        "",
        _common.markdown_table(["backbone", "frozen feature encoder", "clips",
                                "plain epoch 1 s", "plain epoch 2 s", "cached epoch 1 s",
                                "cached epoch 2 s", "saving (epoch 2)", "fit clips/s"],
                               epoch_rows),
        "",
        "One PairTune epoch (SupCon, class-balanced batches of 32, same seed). The cache "
        "holds each clip's front end after its first epoch: Whisper's log-mel always (it "
        "has no parameters), its conv stem or wav2vec2's conv feature encoder when "
        "frozen (`freeze_feature_encoder=True`). Clips longer than `max_duration` are "
        "cropped afresh each epoch and not cached.",
        "",
        "## bf16 autocast and `torch.compile` on CPU (Whisper tiny.en)",
        "",
        _common.markdown_table(["what", "seconds", "speed-up", "max relative drift",
                                "min cosine to fp32", "note"], prec_rows),
        "",
        "Drift: of the embeddings of the same clips against fp32 (for training, of the "
        "embeddings after one epoch from the same seed).",
    ]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = results["threads"]
    labels = [f"{r['task']}\n{r['condition']}" for r in rows]
    x = np.arange(len(rows))
    for k, key in enumerate(("1", "2", "None", "auto")):
        axes[0].bar(x + (k - 1.5) * 0.2, [r["seconds"][key] for r in rows], 0.2,
                    label=f"n_threads={key}")
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Threads: idle vs one core busy")
    axes[0].legend(fontsize=8)
    mem = results["memory"]
    axes[1].plot([m["clips"] for m in mem], [m["peak_rss_growth_mb"] for m in mem], "o-")
    axes[1].set_xscale("log")
    axes[1].set_ylim(bottom=0)
    axes[1].set_xlabel("clips (file paths)")
    axes[1].set_ylabel("peak RSS growth, MB")
    axes[1].set_title("transform memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def group_norm_inference(args):
    """Per-clip conv + batched transformer vs exact-length batches (one clip at a time)."""
    import torch
    from transformers import Wav2Vec2Config

    from skaudio_confit._input import load_waveforms
    from skaudio_confit._pooling import embed_waveforms
    from skaudio_confit.backbones import build_backbone

    clips, _, rate = fsdd_clips(args.gn_clips, seed=1)
    waves = load_waveforms(clips, sampling_rate=rate, target_rate=16000)
    sizes = {  # Wav2Vec2Config's defaults are the wav2vec2-base architecture
        "base": {},
        "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 128, "conv_dim": (64,) * 7},
    }
    config = Wav2Vec2Config(feat_extract_norm="group", **sizes[args.gn_size])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = build_backbone(config).eval()
    device = torch.device(args.device)
    backbone.to(device)
    assert backbone.conv_per_clip and backbone.padding_invariant

    def per_clip_conv():
        return embed_waveforms(backbone, waves, batch_size=args.gn_batch_size, device=device)

    def exact_length_only():
        backbone.conv_per_clip, backbone.padding_invariant = False, False
        try:
            return embed_waveforms(backbone, waves, batch_size=args.gn_batch_size,
                                   device=device)
        finally:
            backbone.conv_per_clip, backbone.padding_invariant = True, True

    new, old = per_clip_conv(), exact_length_only()  # warm-up, and the exactness check
    seconds = {"per-clip conv, batched transformer": best_of(per_clip_conv, args.repeats),
               "exact-length batches": best_of(exact_length_only, args.repeats)}
    lengths = np.array([len(w) for w in waves]) / 16000
    return {
        "clips": len(waves),
        "distinct lengths": int(len(np.unique([len(w) for w in waves]))),
        "seconds per clip": [float(lengths.min()), float(np.median(lengths)),
                             float(lengths.max())],
        "size": args.gn_size,
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "batch_size": args.gn_batch_size,
        "device": str(device),
        "seconds": seconds,
        "speed-up": seconds["exact-length batches"]
        / seconds["per-clip conv, batched transformer"],
        "max abs difference": float(np.abs(new - old).max()),
        "max abs embedding": float(np.abs(old).max()),
    }


def group_norm_report(result, args):
    rows = [[name, f"{t:.2f}", f"{result['clips'] / t:.1f}"]
            for name, t in result["seconds"].items()]
    lo, med, hi = result["seconds per clip"]
    return "\n".join([
        "# Group-norm wav2vec2 inference on clips of mixed lengths",
        "",
        f"Measured {result['date']} on {result['machine']['cpu']} "
        f"({result['machine']['cpu_count']} cores, torch threads "
        f"{result['machine']['torch_threads']}, load average at start "
        f"{result['machine'].get('load_average_at_start')}), device {result['device']}. "
        "Timings are the best of "
        f"{args.repeats} runs, both methods side by side in one process.",
        "",
        f"Model: wav2vec2 with a group-norm feature encoder, {result['size']} size "
        f"({result['parameters'] / 1e6:.1f} M parameters, random weights). Data: "
        f"{result['clips']} FSDD clips ({result['distinct lengths']} distinct lengths, "
        f"{lo:.2f}-{hi:.2f} s, median {med:.2f} s), batch size {result['batch_size']}.",
        "",
        _common.markdown_table(["method", "seconds", "clips/s"], rows),
        "",
        f"Speed-up: **{result['speed-up']:.2f}x**. The embeddings of the two methods "
        f"differ by at most {result['max abs difference']:.1e} (largest embedding "
        f"value {result['max abs embedding']:.2f}): float rounding, the scheme is exact.",
    ])


def recorded_args(args):
    """The run's arguments for the report: where the files went is not a result (and
    may be a machine path)."""
    return {k: v for k, v in vars(args).items() if k != "output_dir"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to check that the script runs (minutes)")
    parser.add_argument("--clips", type=int, default=500,
                        help="FSDD clips for the transform ratios (default: 500)")
    parser.add_argument("--uniform-clips", type=int, default=64,
                        help="uniform 5 s clips for the transform ratios (default: 64)")
    parser.add_argument("--thread-clips", type=int, default=300)
    parser.add_argument("--thread-train-clips", type=int, default=96)
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--precision-clips", type=int, default=192)
    parser.add_argument("--memory-files", type=int, default=500)
    parser.add_argument("--compile-timeout", type=int, default=300,
                        help="seconds allowed to the torch.compile child (default: 300)")
    parser.add_argument("--memory-clips", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--memory-long-files", type=int, default=200,
                        help="distinct 5 s files for the long-clip memory row (default: 200)")
    parser.add_argument("--memory-long-clips", type=int, default=600,
                        help="5 s clips (files repeated) in that row; 0 skips it "
                             "(default: 600)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the ratio, epoch and precision sections "
                        "(default: torch's, the physical cores)")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["threads", "transform", "memory", "epochs", "precision"])
    parser.add_argument("--note", default="", help="a remark on the machine's state")
    parser.add_argument("--output-dir", type=Path, default=_common.RESULTS_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-norm", action="store_true",
                        help="run only the group-norm wav2vec2 inference comparison")
    parser.add_argument("--gn-clips", type=int, default=64)
    parser.add_argument("--gn-size", choices=["base", "tiny"], default="base")
    parser.add_argument("--gn-batch-size", type=int, default=16)
    parser.add_argument("--repeats-gn", type=int, default=3)
    args = parser.parse_args(argv)
    if args.group_norm:
        args.repeats = args.repeats_gn
        result = {"date": _common.now(), "machine": _common.machine(args.device),
                  "args": recorded_args(args), **group_norm_inference(args)}
        _common.write_json(args.output_dir / "speed_group_norm.json", result)
        _common.write_text(args.output_dir / "speed_group_norm.md",
                           group_norm_report(result, args))
        print((args.output_dir / "speed_group_norm.md").read_text())
        return
    if args.quick:
        args.clips, args.uniform_clips, args.thread_clips = 64, 8, 64
        args.thread_train_clips, args.train_clips, args.precision_clips = 32, 48, 48
        args.memory_files, args.memory_clips, args.repeats = 64, [64, 256], 1
        args.memory_long_files, args.memory_long_clips = 8, 16
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    results = {"date": _common.now(), "machine": _common.machine("cpu"),
               "args": recorded_args(args)}
    sections = args.only or ["threads", "transform", "memory", "epochs", "precision"]
    with tempfile.TemporaryDirectory() as tmp:
        backbones = backbone_dirs(tmp)
        if "threads" in sections:
            results["threads"] = thread_table(args)
        if "transform" in sections:
            results["transform"] = transform_ratios(args, backbones)
        if "memory" in sections:
            results["memory"] = memory(args, tmp)
            if args.memory_long_clips:
                results["memory_long"] = memory_long_clips(args, tmp)
        if "epochs" in sections:
            results["epochs"] = epoch_times(args, backbones)
        if "precision" in sections:
            results["precision"] = precision_and_compile(args, backbones)
    seconds = time.perf_counter() - start
    results["seconds"] = seconds
    for key in ("threads", "transform", "memory", "epochs", "precision"):
        results.setdefault(key, [])
    _common.write_json(args.output_dir / "speed.json", results)
    _common.write_text(args.output_dir / "speed.md", report(results, args, seconds))
    if results["threads"] and results["memory"]:
        plot(results, args.output_dir / "speed.png")
    print((args.output_dir / "speed.md").read_text())


if __name__ == "__main__":
    main()
