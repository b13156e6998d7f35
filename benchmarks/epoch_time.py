"""Time per training epoch and per embedded clip, for choosing epochs and run time.

Fits PairTune and FineTune with the bundled Whisper tiny.en encoder (or --backbone) for
a few epochs on two kinds of data, FSDD few-shot speakers (300 clips of 0.2-2.3 s) and
the drum one-shots (463 clips of at most 2 s), and records the seconds of each epoch
(``history_``) and of embedding every clip. Writes ``epoch_time.md`` and
``epoch_time.json`` to benchmarks/results/.

    python benchmarks/epoch_time.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import _common  # noqa: E402  (benchmarks/, this script's own folder)


def _datasets(drums_root):
    from skaudio_confit.datasets import load_audio_folder, load_spoken_digits

    fsdd = load_spoken_digits(target="speaker")
    train, _ = _common.fsdd_fewshot_indices(fsdd)
    yield "FSDD speakers, few-shot", [fsdd.data[i] for i in train], fsdd.target[train], \
        fsdd.sampling_rate
    if drums_root.is_dir():
        drums = load_audio_folder(drums_root)
        yield "drum one-shots", drums.data, drums.target, drums.sampling_rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--drums-root", type=Path, default=_common.DRUMS_ROOT)
    parser.add_argument("--output-dir", type=Path, default=_common.RESULTS_DIR)
    args = parser.parse_args(argv)
    _common.set_threads(args.threads)

    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    result = {"benchmark": "epoch_time", "date": _common.now(),
              "command": _common.command_line("epoch_time.py", argv),
              "machine": _common.machine(args.device), "code": _common.code_state(),
              "backbone": args.backbone or "bundled Whisper tiny.en encoder",
              "device": args.device, "epochs": args.epochs, "runs": []}
    for name, X, y, rate in _datasets(args.drums_root):
        audio_seconds = sum(len(x) for x in X) / rate
        for model in (PairTuneTransformer, FineTuneClassifier):
            estimator = model(args.backbone, sampling_rate=rate, epochs=args.epochs,
                              device=args.device, random_state=0, verbose=0)
            start = time.perf_counter()
            estimator.fit(X, y)
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            estimator.transform(X)
            embed_seconds = time.perf_counter() - start
            run = {"data": name, "clips": len(X), "audio_seconds": round(audio_seconds, 1),
                   "estimator": model.__name__,
                   "epoch_seconds": [round(h["seconds"], 2) for h in estimator.history_],
                   "fit_seconds": round(fit_seconds, 2),
                   "embed_seconds": round(embed_seconds, 2)}
            result["runs"].append(run)
            print(run, flush=True)
            # Written after every run, so an interrupted benchmark leaves what it measured.
            write_results(result, args.output_dir)


def write_results(result, output_dir):
    """Write ``epoch_time.json`` and ``epoch_time.md`` from ``result``."""
    result["load_average_at_end"] = _common.load_average()
    rows = [[run["data"], str(run["clips"]), f"{run['audio_seconds'] / 60:.1f}",
             run["estimator"], " / ".join(f"{s:.0f}" for s in run["epoch_seconds"]),
             f"{1000 * np.median(run['epoch_seconds']) / run['audio_seconds']:.0f}",
             f"{run['fit_seconds']:.0f}", f"{run['embed_seconds']:.0f}"]
            for run in result["runs"]]
    table = _common.markdown_table(
        ["data", "clips", "audio min", "estimator", "s per epoch (1 / 2 / ...)",
         "ms per epoch per s of audio", "fit s", "embed all s"], rows)
    machine = result["machine"]
    text = "\n".join([
        "# Time per epoch", "",
        f"- Date: {result['date']}; command: `{result['command']}`",
        f"- Machine: {machine['cpu']} ({machine['cpu_count']} cores, torch threads "
        f"{machine['torch_threads']}), device {result['device']}; load average at start "
        f"{machine.get('load_average_at_start')}, at end {result['load_average_at_end']}",
        f"- Backbone: {result['backbone']}; {result['epochs']} epochs, default parameters "
        "otherwise, random_state=0",
        *([f"- Note: {result['note']}"] if result.get("note") else []),
        "", table, "",
        "Fit time includes loading the encoder and the input. An epoch's time grows with "
        "the total audio length (clips are cropped to max_duration) and, for PairTune, "
        "with the number of class-balanced batches. On a machine shared with other jobs "
        "the times are inflated several fold; rerun on an idle machine for planning.", "",
    ])
    _common.write_json(Path(output_dir) / "epoch_time.json", result)
    _common.write_text(Path(output_dir) / "epoch_time.md", text)


if __name__ == "__main__":
    main()
