"""The paper's ESC-50 protocol for any backbone and device: five official folds.

Question: on ESC-50 (2,000 five-second environmental sounds, 50 classes), does a
linear classifier on PairTune's contrastively tuned embeddings ("PairTune + LR")
match or beat end-to-end cross-entropy fine-tuning ("FineTune") and a linear
classifier on the frozen pretrained encoder ("Frozen + LR")?

Protocol: the official 5-fold cross-validation (train on four folds, test on the
fifth, for each fold); the score is the mean accuracy over the folds, per seed.
Every fit starts from the pretrained backbone. Hyperparameters are the estimators'
defaults, which follow the paper's recipe (when written: AdamW at 5e-5, no weight decay,
batch 32 with 4 clips per class, SupCon temperature 0.1, a 256-wide projection,
multi-similarity mining with margin 0.1; FineTune trains its head at the encoder's
learning rate); ``--epochs``, ``--learning-rate`` and ``--batch-size`` override
them. "LR" is ``StandardScaler + LogisticRegression(max_iter=2000)`` on the
embeddings of the training folds.

It needs the data (``fetch_esc50`` downloads it, about 600 MB) and, for the paper's
backbones, a GPU::

    python benchmarks/esc50.py --root ~/scikit_learn_data/ESC-50-master \\
        --backbone facebook/wav2vec2-base --device cuda [--seeds 0 1 2]
        [--folds 1 2 3 4 5] [--methods frozen finetune pairtune]

Writes ``benchmarks/results/esc50.{md,json}`` (``--name`` changes the stem). See
docs/backbones.md for the expected time and memory.
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

METHODS = {"frozen": "Frozen + LR", "finetune": "FineTune", "pairtune": "PairTune + LR"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True,
                        help="the ESC-50-master folder (audio/ and meta/esc50.csv)")
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        choices=[1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: the estimators' default")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    _common.add_output_arguments(parser, "esc50")
    return parser.parse_args(argv)


def make_model(method, args, seed, rate):
    """``method``'s estimator; epochs, learning rate and batch size where given."""
    given = {name: getattr(args, name) for name in ("epochs", "learning_rate", "batch_size")
             if getattr(args, name) is not None}
    return _common.make_estimator(method, args, seed, rate, **given)


def peak_gpu_memory_reset(device):
    import torch

    if torch.cuda.is_available() and str(device) != "cpu":
        torch.cuda.reset_peak_memory_stats()
        return True
    return False


def run_fold(method, data, fold, args, seed):
    """Accuracy of ``method`` trained on the other folds, tested on ``fold``."""
    import torch

    train, test = np.flatnonzero(data.fold != fold), np.flatnonzero(data.fold == fold)
    X_train, X_test = [data.data[i] for i in train], [data.data[i] for i in test]
    y_train, y_test = data.target[train], data.target[test]
    on_gpu = peak_gpu_memory_reset(args.device)
    start = time.perf_counter()
    model = make_model(method, args, seed, data.sampling_rate).fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    if method == "finetune":
        predicted = model.predict(X_test)
    else:
        predicted = _common.linear_probe().fit(model.transform(X_train), y_train).predict(
            model.transform(X_test))
    record = {
        "method": method, "seed": seed, "fold": fold,
        "accuracy": float(np.mean(predicted == y_test)),
        "train clips": len(train), "test clips": len(test),
        "fit seconds": fit_seconds, "seconds": time.perf_counter() - start,
        "final loss": model.history_[-1]["loss"] if model.history_ else None,
    }
    if on_gpu:
        record["peak GPU memory GB"] = torch.cuda.max_memory_allocated() / 2**30
    return record


def summarise(records, args):
    summary = {}
    for method in args.methods:
        per_seed = []
        for seed in args.seeds:
            accs = [r["accuracy"] for r in records if r["method"] == method
                    and r["seed"] == seed]
            per_seed.append(float(np.mean(accs)))
        rows = [r for r in records if r["method"] == method]
        summary[method] = {
            "mean accuracy over folds, per seed": per_seed,
            "mean": float(np.mean(per_seed)),
            "std over seeds": float(np.std(per_seed)),
            "mean fit seconds per fold": float(np.mean([r["fit seconds"] for r in rows])),
        }
        if rows and "peak GPU memory GB" in rows[0]:
            summary[method]["peak GPU memory GB"] = max(r["peak GPU memory GB"] for r in rows)
    return summary


def markdown(report):
    args = report["args"]
    rows = []
    for method, s in report["summary"].items():
        rows.append([METHODS[method], f"{s['mean']:.3f} ± {s['std over seeds']:.3f}",
                     " ".join(f"{a:.3f}" for a in s["mean accuracy over folds, per seed"]),
                     f"{s['mean fit seconds per fold']:.0f}",
                     f"{s.get('peak GPU memory GB', float('nan')):.1f}"])
    machine = report["machine"]
    return "\n".join([
        "# ESC-50, official folds",
        "",
        f"Measured {report['date']}: backbone {args['backbone'] or 'bundled Whisper tiny.en'}, "
        f"device {args['device']} ({machine.get('gpu', machine['cpu'])}), folds "
        f"{args['folds']}, seeds {args['seeds']}, {report['clips']} clips at "
        f"{report['sampling_rate']} Hz; estimator defaults unless set (epochs "
        f"{args['epochs']}, learning rate {args['learning_rate']}, batch size "
        f"{args['batch_size']}). Total {report['seconds'] / 60:.1f} min.",
        "",
        _common.markdown_table(
            ["method", "accuracy (mean ± std over seeds)", "per seed", "fit s per fold",
             "peak GPU GB"], rows),
        "",
        "Accuracy of a seed is the mean over the test folds. Per-fold records are in "
        "the JSON.",
    ])


def main(argv=None):
    from skaudio_confit.datasets import load_esc50

    args = parse_args(argv)
    _common.set_threads(args.threads)
    start = time.perf_counter()
    # Taken before the run: the machine record holds the load average at the start.
    header = {"date": _common.now(), "command": _common.command_line("esc50.py", argv),
              "machine": _common.machine(args.device), "code": _common.code_state()}
    data = load_esc50(args.root)
    records = []
    for seed in args.seeds:
        for method in args.methods:
            for fold in args.folds:
                record = run_fold(method, data, fold, args, seed)
                records.append(record)
                print(f"seed {seed} {METHODS[method]} fold {fold}: accuracy "
                      f"{record['accuracy']:.3f} ({record['seconds']:.0f} s)", flush=True)
    report = {
        **header, "args": vars(args), "clips": len(data.data),
        "sampling_rate": data.sampling_rate, "records": records,
        "summary": summarise(records, args), "seconds": time.perf_counter() - start,
        "load_average_at_end": _common.load_average(),
    }
    _common.write_json(args.output_dir / f"{args.name}.json", report)
    _common.write_text(args.output_dir / f"{args.name}.md", markdown(report))
    print((args.output_dir / f"{args.name}.md").read_text())
    return report


if __name__ == "__main__":
    main()
