"""Held-out accuracy per epoch, contrastive vs cross-entropy fine-tuning: the paper's Figure 2.

Question: does PairTune reach its accuracy plateau in far fewer epochs than FineTune
(the paper: "in a third of the epochs")?

Protocol (``--task fsdd-speaker``, the default; ``--task gm128-fewshot`` runs the same
on 128-way GM program ID with one held-out soundfont): FSDD speaker identification,
few-shot (train takes 5-9, 300 clips; held
out: the official test split, takes 0-4, 300 clips), ``--epochs`` epochs (default
10) per model and seed, all with the same backbone, learning rate and seeds. Both
estimators are fitted with ``validation_data=(test clips)``, which records
``valid_accuracy`` after every epoch without affecting training (no early stopping,
the last epoch's weights are kept):

- PairTune, nearest centroid: ``history_[e]["valid_accuracy"]``, cosine nearest
  class centroid of the training clips' embeddings (the estimator's own measure).
- PairTune, LR (a linear probe per epoch): ``StandardScaler + LogisticRegression``
  refitted on the training clips' embeddings after every epoch, by the public
  ``skaudio_confit.callbacks.EpochScoring`` callback (``history_[e]["lr_probe"]``);
  it only reads the weights, so training is unchanged.
- FineTune, head: ``history_[e]["valid_accuracy"]``, accuracy of its jointly trained
  linear head, at the paper's setting (head learning rate = encoder's) and with
  ``head_learning_rate=1e-3``. The same callback also records an LR probe on
  FineTune's embeddings per epoch (dashed lines), to separate head from encoder.

Epoch 0 is the pretrained encoder (nearest centroid / LR of the frozen embeddings,
from the epoch-0 record that ``EpochScoring(score_pretrained=True)`` asks for;
FineTune's untrained head is not evaluated and is shown as chance).

Usage::

    python benchmarks/convergence.py [--seeds 0 1] [--epochs 10] [--device cpu|cuda]
        [--backbone ID] [--learning-rate 5e-5]

Writes ``benchmarks/results/convergence.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import _common  # benchmarks/, this script's own folder

# model key -> (estimator, extra parameters, label)
MODELS = {
    "pairtune": ("PairTune", {}, "PairTune"),
    "finetune": ("FineTune", {}, "FineTune (head lr = lr)"),
    "finetune_head1e-3": ("FineTune", {"head_learning_rate": 1e-3},
                          "FineTune (head lr 1e-3)"),
}
# curve key -> (model key, history field, label)
CURVES = {
    "pairtune_nc": ("pairtune", "nc", "PairTune, nearest centroid"),
    "pairtune_lr": ("pairtune", "lr", "PairTune, LR probe"),
    "finetune_head": ("finetune", "head", "FineTune (head lr = lr), own head"),
    "finetune_head1e-3_head": ("finetune_head1e-3", "head", "FineTune (head lr 1e-3), own head"),
    "finetune_lr": ("finetune", "lr", "FineTune (head lr = lr), LR probe"),
    "finetune_head1e-3_lr": ("finetune_head1e-3", "lr", "FineTune (head lr 1e-3), LR probe"),
}
PRIMARY = ("pairtune_nc", "pairtune_lr", "finetune_head", "finetune_head1e-3_head")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_arguments(parser, seeds=(0, 1), epochs=10, learning_rate=5e-5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    _common.add_task_arguments(parser, "extra parameters of every model and of the frozen "
                                       "encoder (e.g. layer=2)")
    _common.add_output_arguments(parser, "convergence")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md and .png from the existing .json")
    parser.add_argument("--findings", type=Path, default=None,
                        help="markdown file whose text becomes the Findings section")
    return parser.parse_args(argv)


def load_data(args=None):
    if args is not None and args.task != "fsdd-speaker":
        return _common.load_train_test(args.task, args.gm_fold)
    from skaudio_confit.datasets import load_spoken_digits

    bunch = load_spoken_digits(target="speaker")
    take = bunch.frame["take"].to_numpy()
    train = np.isin(take, list(_common.TRAIN_TAKES))
    test = bunch.split == "test"
    pick = lambda mask: [x for x, keep in zip(bunch.data, mask) if keep]
    return (pick(train), bunch.target[train], pick(test), bunch.target[test],
            bunch.sampling_rate)


def lr_probe_callback():
    """The per-epoch LR probe, epoch 0 (the pretrained encoder) included."""
    from skaudio_confit.callbacks import EpochScoring

    return EpochScoring(_common.linear_probe(), name="lr_probe", score_pretrained=True)


# curve field -> key of the estimators' epoch records
RECORD_KEYS = {"nc": "valid_accuracy", "head": "valid_accuracy", "lr": "lr_probe"}


def make_model(key, args, seed, rate):
    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    estimator, extra, _ = MODELS[key]
    cls = PairTuneTransformer if estimator == "PairTune" else FineTuneClassifier
    return cls(backbone=args.backbone, sampling_rate=rate, device=args.device,
               random_state=seed, verbose=0, epochs=args.epochs,
               learning_rate=args.learning_rate, callbacks=[lr_probe_callback()],
               **{**dict(args.params), **extra})


def epochs_to(curve, fraction, plateau):
    """First epoch (1-based) whose accuracy reaches ``fraction`` of ``plateau``."""
    for epoch, value in enumerate(curve, start=1):
        if value >= fraction * plateau - 1e-12:
            return epoch
    return None


def curve_stats(per_seed_curves):
    """Mean/std per epoch, plateau and epochs to 95 % / 99 % of it (of the seed mean)."""
    arr = np.array(per_seed_curves, dtype=float)  # (seeds, epochs)
    mean = arr.mean(axis=0)
    std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros_like(mean)
    plateau = float(mean[-3:].mean())  # mean of the last three epochs
    best = float(mean.max())
    per_seed_95 = [epochs_to(c, 0.95, float(np.mean(c[-3:]))) for c in arr]
    per_seed_99 = [epochs_to(c, 0.99, float(np.mean(c[-3:]))) for c in arr]
    return {
        "mean": mean.tolist(), "std": std.tolist(),
        "plateau_last3": plateau, "best": best, "best_epoch": int(mean.argmax()) + 1,
        "final": float(mean[-1]),
        "epochs_to_95": epochs_to(mean, 0.95, plateau),
        "epochs_to_99": epochs_to(mean, 0.99, plateau),
        "epochs_to_95_per_seed": per_seed_95,
        "epochs_to_99_per_seed": per_seed_99,
        # still rising: the last three epochs gain more than a point over the three before
        "still_rising": bool(len(mean) >= 6 and mean[-3:].mean() - mean[-6:-3].mean() > 0.01),
    }


def frozen_scores(first_records):
    """Epoch 0: the pretrained encoder's nearest-centroid and LR accuracy.

    From the epoch-0 records of the fits (``first_records``: model key -> record);
    nearest centroid is PairTune's measure, so it needs a PairTune run.
    """
    any_record = next(iter(first_records.values()))
    pairtune = first_records.get("pairtune")
    return {"nc": None if pairtune is None else pairtune["valid_accuracy"],
            "lr": any_record["lr_probe"]}


def plot(report, path):
    """Two panels: the whole range from epoch 0, and a zoom on the plateau region."""
    from matplotlib.figure import Figure

    styles = {
        "pairtune_nc": ("#1b9e77", "-", "o"), "pairtune_lr": ("#66a61e", "-", "s"),
        "finetune_head": ("#d95f02", "-", "^"), "finetune_head1e-3_head": ("#7570b3", "-", "v"),
        "finetune_lr": ("#d95f02", "--", None), "finetune_head1e-3_lr": ("#7570b3", "--", None),
    }
    fig = Figure(figsize=(13, 5.4), layout="constrained")
    full, zoom = fig.subplots(1, 2, width_ratios=[1, 1.15])
    chance = 1.0 / report["n_classes"]
    frozen = report["frozen"]
    zoom_low = 1.0
    for key, (model, field, label) in CURVES.items():
        stats = report["curves"].get(key)
        if stats is None:
            continue
        colour, ls, marker = styles[key]
        start = frozen[field] if field in ("nc", "lr") else chance
        y = np.array([start] + stats["mean"])
        s = np.array([0.0] + stats["std"])
        x = np.arange(len(y))
        e95, e99 = stats["epochs_to_95"], stats["epochs_to_99"]
        for ax in (full, zoom):
            ax.plot(x, y, ls, color=colour, marker=marker, ms=4,
                    lw=1.8 if ls == "-" else 1.2,
                    label=f"{label} (95 % / 99 % of plateau: epoch {e95} / {e99})")
            ax.fill_between(x, y - s, y + s, color=colour, alpha=0.15, lw=0)
        zoom_low = min(zoom_low, float(np.min(y[1:] - s[1:])))
    full.axhline(chance, color="k", lw=0.8, ls=":", label=f"chance ({chance:.2f})")
    full.set_ylim(0, 1.02)
    full.set_title("all epochs (0 = pretrained encoder; FineTune's untrained head drawn "
                   "at chance)", fontsize=9)
    zoom.set_xlim(0.8, report["epochs"] + 0.2)
    zoom.set_ylim(max(0.0, zoom_low - 0.02), 1.005)
    zoom.set_title("zoom: epochs 1 and later", fontsize=9)
    for ax in (full, zoom):
        ax.set_xlabel("epoch")
        ax.set_xticks(range(report["epochs"] + 1))
        ax.grid(alpha=0.3)
    full.set_ylabel("held-out accuracy (mean ± std over seeds)")
    zoom.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    title = ("FSDD speaker ID (300 train / 300 test clips)"
             if report.get("task", "fsdd-speaker") == "fsdd-speaker" else report["task"])
    fig.suptitle(f"{title}, "
                 f"{report['backbone']}, lr {report['learning_rate']:g}; seeds "
                 f"{report['seeds']}", fontsize=10)
    fig.savefig(path, dpi=110)


def markdown(report):
    m, d = report["machine"], report
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    bullets = [
        f"Date: {d['date']}; total run time {d['total_seconds']:.0f} s "
        f"({d['total_seconds'] / 60:.1f} min)",
        (f"Machine: {m['platform']}; {m['cpu']} ({m['cpu_count']} logical CPUs, "
         f"{m['torch_threads']} torch threads; load average {m.get('load_average_at_start')} "
         f"at start, {d.get('load_average_at_end')} at end — shared CPU); "
         f"torch {m['torch']} on {d['device']}{gpu}"),
        f"Command: `{d['command']}`",
        _common.code_line(d.get("code")),
        (("Data: FSDD speaker identification (6 speakers); train takes 5-9 (300 clips), "
          "held out: official test split, takes 0-4 (300 clips)"
          if d.get("task", "fsdd-speaker") == "fsdd-speaker" else
          f"Data: {d['task']}: GM program ID (128 classes), 4 clips per program from the "
          "two other Core-3 soundfonts (512 clips), held out: every clip of the held-out "
          "soundfont")
         + ", passed as `validation_data` (recorded per epoch only: no early stopping, "
         "no weight selection)."
         + (f" Parameters of every model (and of the frozen encoder where they apply): "
            f"{d['params']}." if d.get("params") else "")),
        (f"Backbone: {d['backbone']}; {d['epochs']} epochs, learning rate "
         f"{d['learning_rate']:g}, batch size 32, other parameters at their defaults; "
         f"seeds {d['seeds']}."),
        ("Curves: PairTune nearest centroid = its `history_[e]['valid_accuracy']`; PairTune "
         "LR probe = StandardScaler + LogisticRegression refitted on the training clips' "
         "embeddings after each epoch (the public `EpochScoring` callback, "
         "`history_[e]['lr_probe']`; training unchanged); FineTune own head = its "
         "`history_[e]['valid_accuracy']`; FineTune LR probe likewise."),
        ("Plateau = mean of the last three epochs of the seed-mean curve; 'epochs to "
         "95 %/99 %' = first epoch whose seed-mean accuracy reaches that fraction of its own "
         "plateau (per-seed values in brackets)."),
    ]
    lines = ["# Convergence: held-out accuracy per epoch (Figure 2 analogue)", ""]
    lines += [f"- {b}" for b in bullets]
    nc = d["frozen"]["nc"]
    lines += ["", "Epoch 0 (pretrained encoder): nearest centroid "
              f"{'n/a' if nc is None else f'{nc:.3f}'}, LR probe {d['frozen']['lr']:.3f}; "
              f"chance {1 / d['n_classes']:.3f}.", ""]
    header = ["Curve", "Epoch 1", "Epoch 2", "Epoch 3", "Final", "Best (epoch)",
              "Plateau", "Epochs to 95 %", "Epochs to 99 %", "Still rising"]
    rows = []
    for key, (_, _, label) in CURVES.items():
        s = d["curves"].get(key)
        if s is None:
            continue
        e = lambda i: (f"{s['mean'][i]:.3f} ± {s['std'][i]:.3f}"
                       if i < len(s["mean"]) else "n/a")
        per95 = ", ".join(str(v) for v in s["epochs_to_95_per_seed"])
        per99 = ", ".join(str(v) for v in s["epochs_to_99_per_seed"])
        rows.append([label, e(0), e(1), e(2), f"{s['final']:.3f}",
                     f"{s['best']:.3f} ({s['best_epoch']})", f"{s['plateau_last3']:.3f}",
                     f"{s['epochs_to_95']} ({per95})", f"{s['epochs_to_99']} ({per99})",
                     "yes" if s["still_rising"] else "no"])
    lines += [_common.markdown_table(header, rows, align=["l"] + ["r"] * 9), ""]
    lines += ["### Seed-mean accuracy per epoch", ""]
    header = ["Curve"] + [str(i) for i in range(0, d["epochs"] + 1)]
    rows = []
    for key, (_, field, label) in CURVES.items():
        s = d["curves"].get(key)
        if s is None:
            continue
        start = d["frozen"][field] if field in ("nc", "lr") else None
        rows.append([label, "—" if start is None else f"{start:.3f}"]
                    + [f"{v:.3f}" for v in s["mean"]])
    lines += [_common.markdown_table(header, rows), ""]
    lines += ["### Time per fit (seconds, mean over seeds; includes the per-epoch "
              "validation embeddings and probes)", ""]
    rows = [[MODELS[k][2], f"{v['fit_seconds']:.0f}", f"{v['train_seconds_per_epoch']:.1f}"]
            for k, v in d["timing"].items()]
    lines += [_common.markdown_table(["Model", "Fit s", "Training s/epoch"], rows), ""]
    claim = d.get("claim")
    if claim:
        lines += ["## Claim check: PairTune reaches its plateau in a third of the epochs "
                  "FineTune needs", "", claim, ""]
    if d.get("findings"):
        lines += ["## Findings", "", d["findings"].strip(), ""]
    lines += [f"![accuracy per epoch]({d['figure']})", ""]
    return "\n".join(lines)


def claim_text(report):
    c = report["curves"]
    parts = []
    p = c.get("pairtune_nc")
    p_lr = c.get("pairtune_lr")
    for key in ("finetune_head", "finetune_head1e-3_head"):
        f = c.get(key)
        if p is None or f is None:
            continue
        for frac in ("95", "99"):
            pe, fe = p[f"epochs_to_{frac}"], f[f"epochs_to_{frac}"]
            ple = p_lr[f"epochs_to_{frac}"] if p_lr else None
            holds = pe is not None and fe is not None and pe * 3 <= fe
            parts.append(
                f"- {frac} % of plateau: PairTune (nearest centroid) epoch {pe}"
                + (f", PairTune (LR probe) epoch {ple}" if ple is not None else "")
                + f"; {CURVES[key][2]} epoch {fe} -> "
                + ("holds" if holds else "does not hold") + " (needs PairTune x 3 <= FineTune)."
            )
    parts.append("- Note: PairTune starts from the frozen encoder's embeddings, which are "
                 "already far above chance here, while FineTune's head starts at chance; "
                 "'epochs to x % of its own plateau' therefore favours PairTune by "
                 "construction. Compare the absolute curves too.")
    return "\n".join(parts)


def run(args, argv):
    started = time.perf_counter()
    code = _common.code_state()
    _common.set_threads(args.threads)
    X_train, y_train, X_test, y_test, rate = load_data(args)
    print(f"{args.task}: {len(X_train)} training clips, {len(X_test)} held out", flush=True)
    report = {
        "benchmark": "convergence",
        "question": "Does PairTune reach its plateau in about a third of the epochs FineTune "
                    "needs?",
        "date": _common.now(),
        "command": _common.command_line("convergence.py", argv),
        "machine": _common.machine(args.device),
        "code": code,
        "device": args.device,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "backbone": args.backbone or "bundled Whisper tiny.en encoder",
        "task": args.task + (f" (held-out soundfont {args.gm_fold})"
                             if args.task != "fsdd-speaker" else ""),
        "params": dict(args.params),
        "n_classes": int(len(np.unique(y_train))),
        "models": {k: {"estimator": v[0], "params": v[1]} for k, v in MODELS.items()
                   if k in args.models},
    }
    runs = {k: [] for k in args.models}
    first_records = {}
    for seed in args.seeds:
        for key in args.models:
            model = make_model(key, args, seed, rate)
            start = time.perf_counter()
            model.fit(X_train, y_train, validation_data=(X_test, y_test))
            seconds = time.perf_counter() - start
            first_records.setdefault(key, model.history_[0])
            history = [dict(h) for h in model.history_ if h["epoch"] > 0]
            runs[key].append({"seed": seed, "fit_seconds": seconds, "history": history})
            summary = " ".join(f"{h['valid_accuracy']:.3f}" for h in history)
            print(f"seed {seed} {MODELS[key][2]:>24}: valid {summary} ({seconds:.0f} s; "
                  f"{(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
    report["frozen"] = frozen_scores(first_records)
    print(f"epoch 0 (frozen): {report['frozen']}", flush=True)
    report["runs"] = runs
    curves = {}
    for key, (model, field, _) in CURVES.items():
        if model not in runs:
            continue
        per_seed = [[h[RECORD_KEYS[field]] for h in r["history"]] for r in runs[model]]
        curves[key] = curve_stats(per_seed)
    report["curves"] = curves
    report["timing"] = {
        k: {"fit_seconds": float(np.mean([r["fit_seconds"] for r in v])),
            "train_seconds_per_epoch": float(np.mean([h["seconds"] for r in v
                                                      for h in r["history"]]))}
        for k, v in runs.items()
    }
    report["total_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = _common.load_average()
    return report


def main(argv=None):
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / f"{args.name}.json"
    if args.render_only:
        report = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        report = run(args, argv)
    if args.findings is not None:
        report["findings"] = args.findings.read_text(encoding="utf-8")
    report["figure"] = f"{args.name}.png"
    report["claim"] = claim_text(report)
    _common.write_report(report, args.output_dir, args.name, plot, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
