"""Speed and memory of inference and training, measured side by side in one run.

Questions:

1. ``transform`` throughput against (a) the usual transformers recipe, one clip at a
   time (``WhisperFeatureExtractor``, which pads every clip to 30 s, then the
   encoder), (b) one clip at a time through our own front end (no 30 s padding, no
   batching), and (c) the bare batched encoder forward over the very same padded
   tensors (the practical limit). Goals: >= 3x the naive loop, >= 0.9x the bare
   forward.
   Also: the bare forward with clips in random order (what length bucketing saves)
   and the transform on one torch thread (what the thread setting costs or saves).
2. A PairTune training epoch against a minimal hand-written torch loop doing the same
   forward/backward on the same batches. Goal: overhead <= 10 %.
3. Peak memory of ``transform`` at 500 vs 3,000 clips (each in a fresh process):
   flat apart from the output array.

Data: clips of the bundled FSDD (real recordings, 0.14-2.3 s, 8 kHz, resampled to
16 kHz), the bundled Whisper tiny.en encoder, CPU unless ``--device cuda``.

Usage::

    python benchmarks/speed.py [--clips 500] [--repeats 3] [--device cpu|cuda]

Writes ``benchmarks/results/speed.{md,json}``.

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
import json
import subprocess
import sys
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


def best_of(fn, repeats):
    """Smallest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def inference(args):
    import torch
    from transformers import WhisperFeatureExtractor

    from skaudio_confit import PairTuneTransformer
    from skaudio_confit._input import load_waveforms
    from skaudio_confit._pooling import length_batches, masked_mean, prepare_clip
    from skaudio_confit.backbones._base import batch_to

    clips, y, rate = fsdd_clips(args.clips)
    device = torch.device(args.device)
    model = PairTuneTransformer(sampling_rate=rate, epochs=0, device=args.device,
                                verbose=0).fit(clips[:12], y[:12])
    backbone = model.backbone_
    waves = load_waveforms(clips, sampling_rate=rate, target_rate=16000)
    n = len(clips)

    def ours():
        model.transform(clips)

    # (c) bare batched forward over the same padded tensors our transform builds.
    items = [prepare_clip(w, backbone, model._window_samples(backbone))[0] for w in waves]
    batches = [batch_to(backbone.featurize([items[i] for i in idx]), device)
               for idx in length_batches([len(w) for w in items], model.batch_size)]

    def bare():
        with torch.inference_mode():
            for batch in batches:
                hidden, mask = backbone(batch)
                masked_mean(hidden, mask).cpu()

    # (b) one clip at a time, our front end.
    def one_by_one():
        with torch.inference_mode():
            for w in items:
                hidden, mask = backbone(batch_to(backbone.featurize([w]), device))
                masked_mean(hidden, mask).cpu()

    # (a) the usual transformers recipe: extractor (pads to 30 s), encoder, mean.
    extractor = WhisperFeatureExtractor()
    naive_n = min(n, args.naive_clips)

    def naive():
        with torch.inference_mode():
            for w in waves[:naive_n]:
                feats = extractor(w, sampling_rate=16000, return_tensors="pt").input_features
                backbone.model(feats.to(device)).last_hidden_state.mean(dim=1).cpu()

    # Length bucketing, switched off: the same batch size over clips in random order.
    shuffled = np.random.default_rng(0).permutation(len(items))
    unsorted = [batch_to(backbone.featurize([items[i] for i in shuffled[k:k + model.batch_size]]),
                         device) for k in range(0, len(items), model.batch_size)]

    def bare_unsorted():
        with torch.inference_mode():
            for batch in unsorted:
                hidden, mask = backbone(batch)
                masked_mean(hidden, mask).cpu()

    # Thread settings: the same transform on one torch thread.
    def ours_one_thread():
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model.transform(clips)
        finally:
            torch.set_num_threads(previous)

    timings = {
        "skaudio-confit transform": (best_of(ours, args.repeats), n),
        f"skaudio-confit transform, 1 torch thread (default {torch.get_num_threads()})": (
            best_of(ours_one_thread, args.repeats), n),
        "bare batched forward, random order (no length bucketing)": (
            best_of(bare_unsorted, args.repeats), n),
        "bare batched forward (same tensors)": (best_of(bare, args.repeats), n),
        "one clip at a time (our front end)": (best_of(one_by_one, 1), n),
        "transformers recipe, one clip at a time (30 s padding)": (best_of(naive, 1), naive_n),
    }
    return {name: {"seconds": s, "clips": c, "clips_per_second": c / s}
            for name, (s, c) in timings.items()}


def training(args):
    import torch

    from skaudio_confit._input import load_waveforms
    from skaudio_confit._windows import pad_to_length
    from skaudio_confit._objectives import SupConObjective, encode_labels
    from skaudio_confit._pooling import masked_mean
    from skaudio_confit._sampling import class_balanced_batches
    from skaudio_confit._training import train_encoder
    from skaudio_confit.backbones import load_backbone
    from skaudio_confit.backbones._base import batch_to

    clips, y, rate = fsdd_clips(args.train_clips, seed=1)
    waves = load_waveforms(clips, sampling_rate=rate, target_rate=16000)
    _, codes = encode_labels(y)
    device = torch.device(args.device)

    def plan(rng):
        return class_balanced_batches(codes, 32, 4, rng)

    def ours():
        backbone = load_backbone()
        objective = SupConObjective(backbone.hidden_size)
        start = time.perf_counter()
        train_encoder(backbone, objective, waves, codes, batch_plan=plan, epochs=1,
                      learning_rate=5e-5, device=device, seed=0,
                      rng=np.random.default_rng(0), verbose=0)
        return time.perf_counter() - start

    def minimal():
        backbone = load_backbone().to(device)
        objective = SupConObjective(backbone.hidden_size).to(device)
        params = list(backbone.parameters()) + list(objective.parameters())
        optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=5e-5)
        torch.manual_seed(0)
        batches = plan(np.random.default_rng(0))
        start = time.perf_counter()
        backbone.train()
        objective.train()
        for idx in batches:
            batch = batch_to(backbone.featurize(
                [pad_to_length(waves[i], backbone.min_samples) for i in idx]), device)
            hidden, mask = backbone(batch)
            loss, _ = objective(masked_mean(hidden, mask), torch.as_tensor(codes[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    # Interleave the two so that drifting machine load hits both alike.
    ours_times, minimal_times = [], []
    for _ in range(args.repeats):
        ours_times.append(ours())
        minimal_times.append(minimal())
    return {"clips": len(waves), "skaudio-confit epoch seconds": min(ours_times),
            "minimal loop epoch seconds": min(minimal_times),
            "overhead": min(ours_times) / min(minimal_times) - 1}


MEMORY_CHILD = """
import json, sys, threading, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import torch
from speed import fsdd_clips
from skaudio_confit import PairTuneTransformer
if {threads}:
    torch.set_num_threads({threads})

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

clips, y, rate = fsdd_clips({n})
model = PairTuneTransformer(sampling_rate=rate, epochs=0, verbose=0).fit(clips[:12], y[:12])
model.transform(clips[:12])  # warm up: allocator pools, lazy imports
before, peak, done = rss_mb(), [0.0], threading.Event()

def sample():  # the resident set, every 2 ms, while transform runs
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
out = model.transform(clips)
done.set()
sampler.join()
print(json.dumps({{"clips": {n}, "rss_mb_before": before,
                   "peak_rss_growth_mb": max(peak[0], rss_mb()) - before,
                   "output_mb": out.nbytes / 2**20,
                   "input_mb": sum(c.nbytes for c in clips) / 2**20}}))
"""


def memory(args):
    results = []
    for n in args.memory_clips:
        code = MEMORY_CHILD.format(root=str(ROOT), bench=str(Path(__file__).parent), n=n,
                                   threads=args.threads or 0)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def report(results, args, seconds):
    inf = results["inference"]
    ours = inf["skaudio-confit transform"]["clips_per_second"]
    rows = [[name, f"{r['clips']}", f"{r['seconds']:.2f}", f"{r['clips_per_second']:.1f}",
             f"{ours / r['clips_per_second']:.2f}x"] for name, r in inf.items()]
    train = results["training"]
    mem_rows = [[f"{m['clips']}", f"{m['input_mb']:.1f}", f"{m['output_mb']:.2f}",
                 f"{m['rss_mb_before']:.0f}", f"{m['peak_rss_growth_mb']:.1f}"]
                for m in results["memory"]]
    naive = inf["transformers recipe, one clip at a time (30 s padding)"]["clips_per_second"]
    bare = inf["bare batched forward (same tensors)"]["clips_per_second"]
    lines = [
        "# Speed and memory",
        "",
        f"- Date: {results['date']}; total run time {seconds:.0f} s",
        f"- Machine: {results['machine']['platform']}; {results['machine']['cpu']} "
        f"({results['machine']['cpu_count']} logical CPUs, "
        f"{results['machine']['torch_threads']} torch threads, load average "
        f"{results['machine'].get('load_average_at_start')} at start); torch "
        f"{results['machine']['torch']} on {args.device}",
        f"- Command: `python benchmarks/speed.py --clips {args.clips} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "") + "`",
        "- Data: bundled FSDD clips (real recordings of 0.14-2.3 s, 8 kHz, resampled to "
        "16 kHz); bundled Whisper tiny.en encoder; best of the repeats.",
        "",
        "## Inference (`transform`)",
        "",
        _common.markdown_table(["method", "clips", "seconds", "clips/s",
                                "skaudio-confit speed-up"], rows),
        "",
        f"Goals: >= 3x the naive loop (measured {ours / naive:.1f}x against the "
        f"transformers recipe), >= 0.9x the bare batched forward (measured "
        f"{ours / bare:.2f}x).",
        "",
        "## Training (one PairTune epoch)",
        "",
        _common.markdown_table(
            ["clips", "skaudio-confit loop s", "minimal torch loop s", "overhead"],
            [[f"{train['clips']}", f"{train['skaudio-confit epoch seconds']:.2f}",
              f"{train['minimal loop epoch seconds']:.2f}", f"{train['overhead']:+.1%}"]]),
        "",
        "Goal: overhead <= 10 %. Same batches (seeded class-balanced sampler), same "
        "backbone, objective and optimiser; the minimal loop has no progress bar, "
        "history or seeding.",
        "",
        "## Peak memory of `transform`",
        "",
        _common.markdown_table(["clips", "input MB", "output MB", "RSS before MB",
                                "peak RSS growth MB"], mem_rows),
        "",
        "Each size runs in a fresh process, after a warm-up transform; growth is the "
        "peak resident set (sampled every 2 ms) during `transform` above the resident "
        "set just before it. The input clips are held by the caller in both cases.",
    ]
    return "\n".join(lines)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--naive-clips", type=int, default=100,
                        help="clips for the slow transformers recipe (default: 100)")
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--memory-clips", type=int, nargs="+", default=[500, 3000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every method (default: torch's)")
    parser.add_argument("--output-dir", type=Path, default=_common.RESULTS_DIR)
    parser.add_argument("--group-norm", action="store_true",
                        help="run only the group-norm wav2vec2 inference comparison")
    parser.add_argument("--gn-clips", type=int, default=64)
    parser.add_argument("--gn-size", choices=["base", "tiny"], default="base")
    parser.add_argument("--gn-batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.group_norm:
        result = {"date": _common.now(), "machine": _common.machine(args.device),
                  "args": vars(args), **group_norm_inference(args)}
        _common.write_json(args.output_dir / "speed_group_norm.json", result)
        _common.write_text(args.output_dir / "speed_group_norm.md",
                           group_norm_report(result, args))
        print((args.output_dir / "speed_group_norm.md").read_text())
        return
    start = time.perf_counter()
    results = {"date": _common.now(), "machine": _common.machine(args.device),
               "args": vars(args)}
    results["inference"] = inference(args)
    results["training"] = training(args)
    results["memory"] = memory(args)
    seconds = time.perf_counter() - start
    results["seconds"] = seconds
    _common.write_json(args.output_dir / "speed.json", results)
    _common.write_text(args.output_dir / "speed.md", report(results, args, seconds))
    print((args.output_dir / "speed.md").read_text())


if __name__ == "__main__":
    main()
