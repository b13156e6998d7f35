"""Downstream accuracy of contrastive vs cross-entropy fine-tuning: the paper's Table 2.

Question: with the same backbone, epoch budget, learning rate and splits, does a
linear classifier on PairTune's contrastively tuned embeddings ("PairTune + LR")
classify held-out clips at least as well as end-to-end cross-entropy fine-tuning
(FineTune, with its own linear head) and as a linear classifier on the frozen
pretrained encoder ("Frozen + LR")?

Tasks (all on data available offline):

- ``fsdd-speaker-fewshot``: FSDD speaker identification (6 speakers); train on
  takes 5-9 (300 clips, 5 per speaker and digit), test on the official test
  split, takes 0-4 (300 clips).
- ``fsdd-digit-unseen-speaker``: FSDD digit recognition (10 digits); train on
  takes 5-9 of five speakers (250 clips), test on all 50 takes of the sixth
  (500 clips), rotating the held-out speaker. A seed's score is the mean
  accuracy over the rotations; per-speaker accuracies are in the JSON.
- ``gm128-fewshot`` / ``gm16-fewshot``: GM program (128 classes) / family (16)
  of the gm_instruments notes (``../shared/data/gm_instruments`` beside the checkout), Core-3 protocol:
  train on two of fluidr3, timgm6mb, opl3 (one per independent sample lineage),
  test on every clip of the third (767-768), 3 folds, accuracy averaged over them;
  few-shot = 4 clips per program (2 notes from each training soundfont, drawn once
  per fold with a fixed seed: 512 clips). ``gm128-all``: every clip of the two
  training soundfonts (~1,535).
- ``fsdd60-fewshot``: FSDD speaker x digit (60 classes), takes 5-9 (5 per class,
  300 clips) against the official test takes 0-4 (300 clips): unseen takes.
- ``drums-leave-kits-out``: drum instrument (6 classes) of the Hydrogen drum
  one-shots in ``../shared/data/drums``; ``GroupKFold(4)`` by kit, out-of-fold
  predictions pooled over the folds, then balanced accuracy, macro-F1 and
  accuracy, as the data set's README suggests. Every clip is peak-normalised
  (``--no-peak-normalise`` to keep levels), so that the recorded velocity
  (loudness) is not a cue for the instrument.

Methods: Frozen + LR (``PairTuneTransformer(epochs=0)``), FineTune
(``FineTuneClassifier``'s own head) and PairTune + LR (``PairTuneTransformer``).
"LR" is ``StandardScaler + LogisticRegression(max_iter=2000)`` (C=1) fitted on the
model's embeddings of the training clips. Two diagnostics are computed on the
same fits at no extra training cost: FineTune + LR (a fresh linear classifier on
FineTune's embeddings, separating encoder quality from head quality) and, for
every LR method, C chosen by an inner cross-validation on the training clips
only (grid ``--c-grid``; inner folds grouped by speaker or kit where the task
holds speakers or kits out).

Usage::

    python benchmarks/accuracy.py [--seeds 0 1 2] [--epochs 3] [--tasks ...]
        [--device cpu|cuda] [--backbone ID] [--learning-rate 5e-5]
        [--rotations SPEAKER ...] [--pairtune KEY=VALUE ...] [--finetune KEY=VALUE ...]
    python benchmarks/accuracy.py --render-only [--findings FILE]   # md/png from the JSON
    python benchmarks/accuracy.py --merge RUN.json ... --name NAME  # runs split by seed/fold

``--cache-dir DIR`` keeps the frozen encoder's embeddings between runs (seed-free).
Each fit's optimiser steps are recorded (``steps``), so that methods can be
compared per update as well as per epoch; ``--pairtune max_steps=N`` caps them.

Writes ``benchmarks/results/accuracy.{md,json,png}``.
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
# key_value and load_task are also read from this module by convergence.py.
from _common import (GM_CORE3, SPEAKERS, code_line, fmt, key_value,  # noqa: F401
                     linear_probe, mean_std, summarise)

TASKS = ("fsdd-speaker-fewshot", "fsdd-digit-unseen-speaker", "drums-leave-kits-out",
         "gm128-fewshot", "gm16-fewshot", "gm128-all", "fsdd60-fewshot")
# The original three-task run; the many-class tasks are asked for by name.
DEFAULT_TASKS = ("fsdd-speaker-fewshot", "fsdd-digit-unseen-speaker", "drums-leave-kits-out")
METHODS = ("Frozen + LR", "FineTune", "PairTune + LR")  # the paper's comparison
# "PairTune tuned half + LR": with include_pretrained, the tuned encoder's features
# alone (the columns after the pretrained ones), so both readings come from one fit.
DIAGNOSTICS = ("FineTune + LR", "PairTune tuned half + LR", "Frozen + LR (CV C)",
               "FineTune + LR (CV C)", "PairTune + LR (CV C)")
ALL_METHODS = METHODS + DIAGNOSTICS
METHOD_KEYS = {"frozen": "Frozen", "finetune": "FineTune", "pairtune": "PairTune"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_arguments(
        parser, seeds=(0, 1, 2), epochs=3, learning_rate=None,
        learning_rate_help="of FineTune and PairTune (default: the package default)")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_KEYS),
                        choices=list(METHOD_KEYS),
                        help="models to fit (default: all three)")
    parser.add_argument("--rotations", nargs="+", default=list(SPEAKERS), choices=SPEAKERS,
                        help="held-out speakers of fsdd-digit-unseen-speaker (default: all 6)")
    parser.add_argument("--drums-root", type=Path, default=_common.DRUMS_ROOT)
    parser.add_argument("--gm-root", type=Path, default=_common.GM_ROOT)
    parser.add_argument("--gm-folds", nargs="+", default=list(GM_CORE3), choices=GM_CORE3,
                        help="held-out soundfonts of the gm tasks (default: all 3 of Core-3)")
    parser.add_argument("--folds", type=int, default=4, help="GroupKFold splits on drums")
    parser.add_argument("--no-peak-normalise", dest="peak_normalise", action="store_false",
                        help="keep the drums' recorded levels (default: peak-normalise)")
    parser.add_argument("--c-grid", type=float, nargs="*", default=[0.01, 0.1, 1.0, 10.0],
                        help="C values of the inner-CV diagnostic ('CV C'); none given: "
                             "no such diagnostic (saves CPU on many-class tasks)")
    parser.add_argument("--pairtune", type=key_value, nargs="+", default=[],
                        metavar="KEY=VALUE", help="extra PairTuneTransformer parameters")
    parser.add_argument("--finetune", type=key_value, nargs="+", default=[],
                        metavar="KEY=VALUE", help="extra FineTuneClassifier parameters")
    parser.add_argument("--frozen", type=key_value, nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="extra parameters of the frozen encoder (e.g. layer=2)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="folder caching the frozen embeddings between runs (keyed by "
                             "clips, backbone, parameters and package sources)")
    parser.add_argument("--max-splits", type=int, default=None,
                        help="debug/timing: only the first N splits of each task "
                             "(drums metrics then cover only those folds)")
    _common.add_output_arguments(parser, "accuracy")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md and .png from the existing .json")
    parser.add_argument("--variants", type=Path, nargs="+", default=None,
                        help="JSON results of exploratory runs of this script (e.g. other "
                             "--pairtune settings) whose summaries are copied into this "
                             "report's 'Variants' table")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="JSON results of runs of this script that split one "
                             "benchmark by seed and held-out fold (run in parallel); "
                             "merged into one report (no training)")
    parser.add_argument("--findings", type=Path, default=None,
                        help="markdown file whose text becomes the Findings section "
                             "(stored in the JSON)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- tasks and data


def load_task(name, args):
    """One task's clips, labels and splits (see ``_common.load_task``), with the data
    folders, rotations and folds taken from this script's arguments ``args``."""
    return _common.load_task(
        name, rotations=args.rotations, drums_root=args.drums_root,
        peak_normalised=args.peak_normalise, folds=args.folds, gm_root=args.gm_root,
        gm_folds=args.gm_folds, max_splits=args.max_splits)


# ------------------------------------------------------------------- models


def make_model(kind, args, seed, rate):
    """The frozen encoder, FineTune or PairTune with this run's settings."""
    if kind == "frozen":
        return _common.make_estimator(kind, args, seed, rate, **dict(args.frozen))
    params = {"epochs": args.epochs}
    if args.learning_rate is not None:
        params["learning_rate"] = args.learning_rate
    # --pairtune / --finetune KEY=VALUE override the shared settings.
    return _common.make_estimator(kind, args, seed, rate,
                                  **{**params, **dict(getattr(args, kind))})


def probe_predictions(E_train, y_train, E_test, c_grid, inner_groups):
    """Predictions of the linear probe at C=1 and with C chosen by inner CV."""
    from sklearn.model_selection import (GridSearchCV, LeaveOneGroupOut, GroupKFold,
                                         StratifiedKFold)

    fixed = linear_probe().fit(E_train, y_train).predict(E_test)
    if not c_grid:
        return fixed, None, None
    if inner_groups is None:
        cv, groups = StratifiedKFold(n_splits=3, shuffle=True, random_state=0), None
    else:
        groups = inner_groups
        n_groups = len(np.unique(groups))
        cv = LeaveOneGroupOut() if n_groups <= 5 else GroupKFold(n_splits=3)
    search = GridSearchCV(linear_probe(), {"logisticregression__C": list(c_grid)}, cv=cv,
                          scoring="balanced_accuracy", n_jobs=1, error_score=np.nan)
    import warnings

    with warnings.catch_warnings():  # folds of grouped CV may lack a class
        warnings.simplefilter("ignore")
        search.fit(E_train, y_train, groups=groups)
    best_c = float(search.best_params_["logisticregression__C"])
    return fixed, search.predict(E_test), best_c


def run_split(kind, task, split, args, seed, frozen_embeddings=None):
    """Fit one model on one split; predictions of each method it yields, and timings."""
    _, train_idx, test_idx = split
    X, y = task["X"], task["y"]
    pick = lambda idx: [X[i] for i in idx]
    y_train = y[train_idx]
    inner = None if task["inner_groups"] is None else task["inner_groups"][train_idx]
    out, info = {}, {}
    if kind == "frozen":
        E_train, E_test = frozen_embeddings[train_idx], frozen_embeddings[test_idx]
    else:
        model = make_model(kind, args, seed, task["rate"])
        start = time.perf_counter()
        model.fit(pick(train_idx), y_train)
        info["fit_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        E_train, E_test = model.transform(pick(train_idx)), model.transform(pick(test_idx))
        info["embed_seconds"] = time.perf_counter() - start
        info["final_loss"] = model.history_[-1]["loss"] if model.history_ else None
        # Optimiser steps taken, so that methods can be compared per update too.
        info["steps"] = model.history_[-1].get("steps") if model.history_ else 0
        scores = [(h["valid_accuracy"], -h["epoch"]) for h in model.history_
                  if h.get("valid_accuracy") is not None]
        if scores:
            info["valid_accuracy"] = [h.get("valid_accuracy") for h in model.history_]
            info["best_epoch"] = -max(scores)[1]
        if kind == "finetune":  # its own head (embeds the test clips again)
            out["FineTune"] = model.predict(pick(test_idx))
            info["final_train_accuracy"] = model.history_[-1].get("train_accuracy")
        if getattr(model, "pretrained_backbone_", None) is not None:
            tuned = slice(model.pretrained_backbone_.hidden_size, None)
            out["PairTune tuned half + LR"] = _common.linear_probe().fit(
                E_train[:, tuned], y_train).predict(E_test[:, tuned])
    start = time.perf_counter()
    fixed, tuned, best_c = probe_predictions(E_train, y_train, E_test, args.c_grid, inner)
    info["probe_seconds"] = time.perf_counter() - start
    label = METHOD_KEYS[kind]
    out[f"{label} + LR"] = fixed
    if tuned is not None:
        out[f"{label} + LR (CV C)"] = tuned
        info[f"{label} + LR (CV C) best C"] = best_c
    return out, info


def used_clips(task):
    return np.unique(np.concatenate([np.concatenate([tr, te]) for _, tr, te in task["splits"]]))


def frozen_cache_path(task, args):
    """Cache file of a task's frozen embeddings (None without ``--cache-dir``).

    Named by a digest of the clips, backbone, frozen parameters and rate; the
    digest of the package's sources is part of it, so a change to the code that
    embeds (wherever it lives as modules are split) recomputes them.
    """
    if args.cache_dir is None:
        return None
    import hashlib

    used = used_clips(task)
    # Every parameter of the frozen model, defaults included (a default may change).
    params = make_model("frozen", args, 0, task["rate"]).get_params()
    params = sorted((k, v) for k, v in params.items() if k not in ("random_state", "verbose"))
    digest = hashlib.sha256(repr((params, task["rate"], used.tolist())).encode())
    digest.update(_common.code_state(ROOT)["package_sha256"].encode())
    for i in used:
        digest.update(np.ascontiguousarray(task["X"][i]).tobytes())
    return args.cache_dir / f"frozen-{digest.hexdigest()[:20]}.npy"


def frozen_embeddings_of(task, args):
    """The pretrained encoder's embeddings of every clip used by the task (seed-free).

    With ``--cache-dir`` they are read from, or written to, a file named by a digest
    of the clips, the backbone, the frozen parameters and the package sources.
    """
    used = used_clips(task)
    cache = frozen_cache_path(task, args)
    if cache is not None and cache.is_file():
        return np.load(cache), 0.0, len(used)
    model = make_model("frozen", args, 0, task["rate"])
    classes = np.unique(task["y"][used])
    first = [int(np.flatnonzero(task["y"][used] == c)[0]) for c in classes[:2]]
    model.fit([task["X"][used[i]] for i in first], task["y"][used[first]])  # loads only
    start = time.perf_counter()
    E_used = model.transform([task["X"][i] for i in used])
    seconds = time.perf_counter() - start
    E = np.zeros((len(task["X"]), E_used.shape[1]), dtype=np.float32)
    E[used] = E_used
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, E)
    return E, seconds, len(used)


# ----------------------------------------------------------------- scoring


def score_task(name, y, predictions, splits):
    """Per-seed metrics of one method from its test predictions on every split.

    ``predictions``: split name -> predicted labels of that split's test clips.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    if name in ("fsdd-speaker-fewshot", "fsdd60-fewshot"):
        (split, _, test_idx), = splits
        return {"accuracy": accuracy_score(y[test_idx], predictions[split])}
    if not name.startswith("drums"):  # the mean over held-out speakers or soundfonts
        per = {s: accuracy_score(y[te], predictions[s]) for s, _, te in splits}
        key = "per_speaker" if name == "fsdd-digit-unseen-speaker" else "per_fold"
        return {"accuracy": float(np.mean(list(per.values()))), key: per}
    true = np.concatenate([y[te] for _, _, te in splits])
    pred = np.concatenate([predictions[s] for s, _, _ in splits])
    labels = np.unique(y)
    from sklearn.metrics import confusion_matrix

    return {
        "balanced_accuracy": balanced_accuracy_score(true, pred),
        "macro_f1": f1_score(true, pred, average="macro", labels=labels, zero_division=0),
        "accuracy": accuracy_score(true, pred),
        "confusion_labels": labels.tolist(),
        "confusion": confusion_matrix(true, pred, labels=labels).tolist(),
    }


def primary_metric(task):
    return "balanced_accuracy" if task.startswith("drums") else "accuracy"


def task_metrics(task):
    if task.startswith("drums"):
        return ("balanced_accuracy", "macro_f1", "accuracy")
    return ("accuracy",)



# ------------------------------------------------------------------ reporting


def goal_check(report):
    """Per task: does PairTune + LR match or beat FineTune and Frozen + LR (means)?"""
    rows = []
    for task, res in report["results"].items():
        metric = primary_metric(task)
        get = lambda m: res.get(m, {}).get("summary", {}).get(metric)
        p, f, z = get("PairTune + LR"), get("FineTune"), get("Frozen + LR")
        if p is None:
            continue
        rows.append({
            "task": task, "metric": metric, "pairtune": p["mean"],
            "vs_finetune": None if f is None else p["mean"] - f["mean"],
            "vs_frozen": None if z is None else p["mean"] - z["mean"],
            "met": all(x is None or p["mean"] >= x["mean"] for x in (f, z)),
        })
    return rows


def variant_summary(path):
    """The settings and per-task summaries of another run of this script."""
    other = json.loads(Path(path).read_text(encoding="utf-8"))
    results = {}
    for task, res in other["results"].items():
        metric = primary_metric(task)
        results[task] = {m: {"metric": metric, **r["summary"][metric],
                             "per_seed": [x[metric] for x in r["per_seed"]]}
                         for m, r in res.items() if "(CV C)" not in m}
    return {"name": Path(path).stem, "command": other["command"], "date": other["date"],
            "epochs": other["epochs"], "learning_rate": other["learning_rate"],
            "pairtune_params": other["pairtune_params"],
            "finetune_params": other["finetune_params"], "seeds": other["seeds"],
            "total_seconds": other["total_seconds"], "results": results,
            # Runs from before the recipe defaults existed used the paper's recipe.
            "package_defaults": other.get("package_defaults",
                                          {"layer": -1, "learning_rate": 5e-5,
                                           "lr_schedule": "constant"}),
            "splits": sorted({f["split"] for f in other.get("fits", [])})}


def variants_markdown(report):
    """Table: the main run's rows and each variant's, primary metric per task."""
    tasks = [t for t in TASKS if t in report["results"]
             or any(t in v["results"] for v in report["variants"])]
    header = ["Run", "Method", "Epochs", "lr", "Other"] + tasks
    rows = []

    def cells(results, method):
        out = []
        for t in tasks:
            r = results.get(t, {}).get(method)
            if r is None:
                out.append("")
                continue
            seeds = ", ".join(f"{v:.3f}" for v in r["per_seed"])
            out.append(f"{r['mean']:.3f} ± {r['std']:.3f} ({seeds})")
        return out

    main = {t: {m: {**res[m]["summary"][primary_metric(t)],
                    "per_seed": [x[primary_metric(t)] for x in res[m]["per_seed"]]}
                for m in METHODS + ("FineTune + LR",) if m in res}
            for t, res in report["results"].items()}
    for m in METHODS + ("FineTune + LR",):
        frozen = m.startswith("Frozen")
        rows.append(["main (above)", m, "0" if frozen else str(report["epochs"]),
                     "—" if frozen else f"{report['learning_rate']:g}", "defaults"]
                    + cells(main, m))
    for v in report["variants"]:
        methods = sorted({m for r in v["results"].values() for m in r},
                         key=lambda m: ALL_METHODS.index(m))
        other = {**v["pairtune_params"], **v["finetune_params"]}
        base = v.get("package_defaults", {})
        base = (f"layer={base.get('layer')}, {base.get('lr_schedule')}"
                if base else "defaults")
        for m in methods:
            rows.append([v["name"], m, str(v["epochs"]), f"{v['learning_rate']:g}",
                         ", ".join(f"{k}={val}" for k, val in other.items()) or base]
                        + cells(v["results"], m))
    lines = [_common.markdown_table(header, rows, align=["l"] * 5 + ["r"] * len(tasks)), "",
             "Cells: primary metric (accuracy; balanced accuracy on drums), mean ± std over "
             "seeds (per-seed values). Commands of the variant runs:", ""]
    lines += [f"- {v['name']}: `{v['command']}` ({v['total_seconds'] / 60:.0f} min"
              + (f"; held-out {', '.join(v['splits'])} only" if v.get("splits") else "")
              + f"; other parameters: {v.get('package_defaults')})"
              for v in report["variants"]]
    return "\n".join(lines)


def plot(report, path):
    tasks = list(report["results"])
    methods = [m for m in METHODS + ("FineTune + LR",)
               if any(m in report["results"][t] for t in tasks)]
    colours = {"Frozen + LR": "#9e9e9e", "FineTune": "#d95f02", "PairTune + LR": "#1b9e77",
               "FineTune + LR": "#f4a582"}
    fig = _common.new_figure(3.3 * len(tasks) + 2.5, 4.8)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    lows = []
    for j, m in enumerate(methods):
        means, stds = [], []
        for t in tasks:
            s = report["results"][t].get(m, {}).get("summary", {}).get(primary_metric(t))
            means.append(np.nan if s is None else s["mean"])
            stds.append(0.0 if s is None else s["std"])
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        hatch = "//" if m == "FineTune + LR" else None
        bars = ax.bar(x, means, width, yerr=stds, capsize=3, color=colours[m],
                      label=m + (" (diagnostic)" if m == "FineTune + LR" else ""),
                      hatch=hatch, edgecolor="white" if hatch is None else "#7f3b08")
        for b, v, e in zip(bars, means, stds):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + e + 0.006, f"{v:.3f}", ha="center",
                        va="bottom", fontsize=7.5, rotation=90)
        lows += [v - s for v, s in zip(means, stds) if np.isfinite(v)]
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels([f"{t}\n({primary_metric(t).replace('_', ' ')})" for t in tasks])
    ax.set_ylim(max(0.0, min(lows) - 0.08), 1.07)
    ax.set_ylabel("test score (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"Held-out accuracy, {report['backbone']}, {report['epochs']} epochs, "
                 f"lr {report['learning_rate']:g}, seeds {report['seeds']}", fontsize=9)
    _common.save_figure(fig, path)



def markdown(report):
    m, d = report["machine"], report
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    load_end = report.get("load_average_at_end")
    bullets = [
        f"Date: {d['date']}; total run time {d['total_seconds']:.0f} s "
        f"({d['total_seconds'] / 60:.1f} min)",
        (f"Machine: {m['platform']}; {m['cpu']} ({m['cpu_count']} logical CPUs, "
         f"{m['torch_threads']} torch threads; load average {m.get('load_average_at_start')} "
         f"at start, {load_end} at end — the CPU was shared, so times are "
         f"upper bounds); torch {m['torch']} on {d['device']}{gpu}"),
        f"Command: `{d['command']}`",
        code_line(d.get("code")),
        (f"Backbone: {d['backbone']}. FineTune and PairTune: {d['epochs']} epochs, "
         f"learning rate {d['learning_rate']:g}, other parameters at their defaults"
         + (f" except PairTune {d['pairtune_params']}" if d["pairtune_params"] else "")
         + (f" and FineTune {d['finetune_params']}" if d["finetune_params"] else "")
         + f"; seeds {d['seeds']}. Frozen: `PairTuneTransformer(epochs=0)`"
         + (f" with {d['frozen_params']}" if d.get("frozen_params") else "")
         + ", seed-free (its spread is 0)."
         + (f" Package defaults at this commit: {d['package_defaults']}."
            if d.get("package_defaults") else "")),
        ("LR = `StandardScaler + LogisticRegression(max_iter=2000)`, C=1, fitted on the "
         "model's embeddings of the training clips. FineTune is scored by its own "
         "jointly trained linear head."),
    ]
    if d.get("max_splits"):
        bullets.append(f"**Partial run**: only the first {d['max_splits']} split(s) per task.")
    lines = ["# Downstream accuracy: contrastive vs cross-entropy fine-tuning "
             "(Table 2 analogue)", ""]
    lines += [f"- {b}" for b in bullets]
    lines += ["", "## Tasks", ""]
    for task, res in d["results"].items():
        desc = d["tasks"][task]
        extra = ""
        if "rotations" in desc:
            held = "soundfonts" if task.startswith("gm") else "speakers"
            extra = (f"; held-out {held} {', '.join(desc['rotations'])} (mean over them "
                     "per seed)")
        if "peak_normalised" in desc:
            extra = (f"; clips {'peak-normalised' if desc['peak_normalised'] else 'at recorded level'}"
                     "; balanced accuracy, macro-F1 and accuracy of the out-of-fold "
                     "predictions pooled over the folds")
        lines.append(f"- `{task}`: {desc['data']}, {desc['target']}; train {desc['train']}; "
                     f"test {desc['test']}{extra}.")
    lines += ["", "## Results (mean ± std over seeds)", ""]
    header = ["Task", "Metric"] + list(METHODS)
    rows = []
    for task, res in d["results"].items():
        for metric in task_metrics(task):
            cells = []
            best = max((res[mm]["summary"][metric]["mean"] for mm in METHODS if mm in res),
                       default=None)
            for mm in METHODS:
                s = res.get(mm, {}).get("summary", {}).get(metric)
                c = fmt(s)
                if s is not None and best is not None and s["mean"] >= best - 1e-12:
                    c = f"**{c}**"
                cells.append(c)
            rows.append([task, metric.replace("_", " ")] + cells)
    lines += [_common.markdown_table(header, rows, align=["l", "l", "r", "r", "r"]), ""]

    lines += ["### Diagnostics (same fits)", "",
              "FineTune + LR refits a linear classifier on FineTune's embeddings; "
              "PairTune tuned half + LR uses only the tuned encoder's features of "
              "PairTune's embeddings (with include_pretrained, the pretrained ones come "
              "first); "
              "(CV C) picks C from "
              f"{d['c_grid']} by inner cross-validation on the training clips "
              "(balanced accuracy; folds by speaker on the unseen-speaker task, by kit on "
              "drums, stratified 3-fold on the speaker task).", ""]
    header = ["Task", "Metric"] + list(DIAGNOSTICS)
    rows = []
    for task, res in d["results"].items():
        metric = primary_metric(task)
        rows.append([task, metric.replace("_", " ")]
                    + [fmt(res.get(mm, {}).get("summary", {}).get(metric)) for mm in DIAGNOSTICS])
    lines += [_common.markdown_table(header, rows, align=["l", "l"] + ["r"] * len(DIAGNOSTICS)),
              ""]

    lines += ["### Per seed", ""]
    header = ["Task", "Method"] + [f"seed {s}" for s in d["seeds"]]
    rows = []
    for task, res in d["results"].items():
        metric = primary_metric(task)
        for mm in ALL_METHODS:
            if mm in res:
                rows.append([task, mm] + [f"{r[metric]:.3f}" for r in res[mm]["per_seed"]])
    lines += [_common.markdown_table(header, rows, align=["l", "l"] + ["r"] * len(d["seeds"])), ""]

    per_speaker = d["results"].get("fsdd-digit-unseen-speaker")
    if per_speaker:
        lines += ["### fsdd-digit-unseen-speaker by held-out speaker (mean over seeds)", ""]
        speakers = d["tasks"]["fsdd-digit-unseen-speaker"]["rotations"]
        rows = []
        for mm in ALL_METHODS:
            if mm in per_speaker:
                ps = per_speaker[mm]["per_seed"]
                rows.append([mm] + [f"{np.mean([r['per_speaker'][s] for r in ps]):.3f}"
                                    for s in speakers])
        lines += [_common.markdown_table(["Method"] + list(speakers), rows), ""]

    drums = d["results"].get("drums-leave-kits-out")
    if drums:
        lines += ["### drums-leave-kits-out confusion matrices (first seed, rows = true)", ""]
        for mm in METHODS:
            if mm in drums:
                r = drums[mm]["per_seed"][0]
                labs = r["confusion_labels"]
                rows = [[labs[i]] + list(map(str, row)) for i, row in enumerate(r["confusion"])]
                lines += [f"{mm}:", "", _common.markdown_table(["true \\ predicted"] + labs, rows),
                          ""]

    for task, res in d["results"].items():
        if not task.startswith("gm"):
            continue
        lines += [f"### {task} by held-out soundfont (mean ± std over seeds)", ""]
        folds = d["tasks"][task]["rotations"]
        rows = []
        for mm in ALL_METHODS:
            if mm in res:
                ps = res[mm]["per_seed"]
                rows.append([mm] + [fmt(mean_std([r["per_fold"][f] for r in ps]))
                                    for f in folds])
        lines += [_common.markdown_table(["Method"] + list(folds), rows), ""]

    lines += ["### Fit time and optimiser steps (per fit, mean over seeds and splits)", ""]
    rows = []
    for task, res in d["results"].items():
        t = d["timing"].get(task, {})
        steps = {m: [f["steps"] for f in d["fits"] if f["task"] == task and f["model"] == m
                     and f.get("steps") is not None] for m in ("FineTune", "PairTune")}
        rows.append([task] + [f"{t[k]:.0f}" if t.get(k) is not None else "n/a"
                              for k in ("FineTune", "PairTune", "frozen_embed")]
                    + [f"{np.mean(steps[m]):.0f}" if steps[m] else "n/a"
                       for m in ("FineTune", "PairTune")])
    lines += [_common.markdown_table(["Task", "FineTune fit s", "PairTune fit s",
                                      "Frozen: embed all clips s", "FineTune steps",
                                      "PairTune steps"], rows), ""]

    lines += ["## Goal check: PairTune + LR >= FineTune and >= Frozen + LR", ""]
    rows = []
    for g in goal_check(d):
        vf = "n/a" if g["vs_finetune"] is None else f"{g['vs_finetune']:+.3f}"
        vz = "n/a" if g["vs_frozen"] is None else f"{g['vs_frozen']:+.3f}"
        rows.append([g["task"], g["metric"].replace("_", " "), vf, vz,
                     "yes" if g["met"] else "**no**"])
    lines += [_common.markdown_table(["Task", "Metric", "PairTune − FineTune",
                                      "PairTune − Frozen", "Goal met (means)"], rows,
                                     align=["l", "l", "r", "r", "l"]), ""]
    lines += ["Differences are of seed means; with 3 seeds a gap smaller than the std is "
              "not a real difference.", ""]
    if d.get("findings"):
        lines += ["## Findings", "", d["findings"].strip(), ""]
    if d.get("variants"):
        lines += ["## Variants (exploratory screens: seeds and held-out folds as listed below; "
                  "settings as in the Other column)", "", variants_markdown(d), ""]
    lines += [f"![accuracy bar chart]({d['figure']})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------- main


def merge_reports(paths):
    """One report from runs that each covered some seeds and held-out folds.

    Per task, method and seed, the per-fold accuracies of all runs are pooled and
    the seed's accuracy is their mean; every seed must end up with the same folds.
    Fits and timings are concatenated; ``total_seconds`` is the longest run's (they
    ran side by side), ``cpu_process_seconds`` their sum.
    """
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    report = {k: v for k, v in runs[0].items() if k not in ("results", "fits", "timing")}
    report["command"] = "; ".join(r["command"] for r in runs)
    report["merged_from"] = [Path(p).name for p in paths]
    report["seeds"] = sorted({s for r in runs for s in r["seeds"]})
    report["fits"] = [f for r in runs for f in r["fits"]]
    report["total_seconds"] = max(r["total_seconds"] for r in runs)
    report["cpu_process_seconds"] = sum(r["total_seconds"] for r in runs)
    commits = {(r.get("code") or {}).get("package_sha256") for r in runs}
    if len(commits) > 1:
        raise ValueError(f"the runs measured different package sources: {commits}")
    report["results"], report["timing"], report["tasks"] = {}, {}, {}
    for name in sorted({t for r in runs for t in r["results"]}, key=TASKS.index):
        folds = {}  # method -> seed -> fold -> accuracy
        for r in runs:
            if name not in r["results"]:
                continue
            report["tasks"][name] = dict(r["tasks"][name])
            for method, res in r["results"][name].items():
                for row in res["per_seed"]:
                    seeds = report["seeds"] if method.startswith("Frozen") else [row["seed"]]
                    # A task of one split (no folds) counts as one fold, "all".
                    per_fold = row.get("per_fold", {"all": row["accuracy"]})
                    for seed in seeds:  # the frozen encoder's folds hold for every seed
                        folds.setdefault(method, {}).setdefault(seed, {}).update(per_fold)
        results = {}
        for method in ALL_METHODS:
            if method not in folds:
                continue
            per_seed = [{"seed": seed, "accuracy": float(np.mean(list(f.values()))),
                         "per_fold": f} for seed, f in sorted(folds[method].items())]
            if len({tuple(sorted(r["per_fold"])) for r in per_seed}) > 1:
                raise ValueError(f"{name} {method}: seeds cover different folds")
            results[method] = {"summary": summarise(per_seed, ("accuracy",)),
                               "per_seed": per_seed}
        report["results"][name] = results
        report["tasks"][name]["rotations"] = sorted(
            next(iter(results.values()))["per_seed"][0]["per_fold"])
        fits = [f for f in report["fits"] if f["task"] == name]
        mean = lambda model: (float(np.mean([f["fit_seconds"] for f in fits
                                             if f["model"] == model]))
                              if any(f["model"] == model for f in fits) else None)
        report["timing"][name] = {"FineTune": mean("FineTune"), "PairTune": mean("PairTune"),
                                  "frozen_embed": None}
    report["load_average_at_end"] = runs[-1].get("load_average_at_end")
    return report


def _package_default(name):
    from skaudio_confit import PairTuneTransformer

    return PairTuneTransformer().get_params()[name]


def run(args, argv):
    started = time.perf_counter()
    code = _common.code_state()
    _common.set_threads(args.threads)
    report = {
        "benchmark": "accuracy",
        "question": "Does a linear classifier on PairTune's embeddings match or beat "
                    "FineTune and a linear classifier on the frozen encoder?",
        "date": _common.now(),
        "command": _common.command_line("accuracy.py", argv),
        "machine": _common.machine(args.device),
        "code": code,
        "device": args.device,
        "seeds": args.seeds,
        "backbone": args.backbone or "bundled Whisper tiny.en encoder",
        "epochs": args.epochs,
        "learning_rate": (args.learning_rate if args.learning_rate is not None
                          else _package_default("learning_rate")),
        "package_defaults": {k: _package_default(k) for k in (
            "layer", "learning_rate", "lr_schedule", "epochs", "batch_size", "keep_best")},
        "pairtune_params": dict(args.pairtune),
        "finetune_params": dict(args.finetune),
        "frozen_params": dict(args.frozen),
        "c_grid": args.c_grid,
        "max_splits": args.max_splits,
        "methods": {"Frozen + LR": "PairTuneTransformer(epochs=0) + StandardScaler + "
                                   "LogisticRegression(max_iter=2000)",
                    "FineTune": "FineTuneClassifier, its own linear head",
                    "PairTune + LR": "PairTuneTransformer + StandardScaler + "
                                     "LogisticRegression(max_iter=2000)",
                    "FineTune + LR": "FineTuneClassifier.transform + StandardScaler + "
                                     "LogisticRegression(max_iter=2000)",
                    "PairTune tuned half + LR": "with include_pretrained=True: the tuned "
                                                "encoder's columns of PairTune's "
                                                "embeddings only + StandardScaler + "
                                                "LogisticRegression(max_iter=2000)",
                    "... (CV C)": "C from c_grid by inner CV on the training clips"},
        "tasks": {}, "results": {}, "timing": {}, "fits": [],
    }
    for name in args.tasks:
        task = load_task(name, args)
        report["tasks"][name] = task["description"]
        print(f"{name}: {len(task['splits'])} split(s), {len(task['X'])} clips loaded",
              flush=True)
        preds = {}  # method -> seed -> split -> predictions
        timing = {"FineTune": [], "PairTune": []}
        if "frozen" in args.methods:
            E, seconds, n_used = frozen_embeddings_of(task, args)
            timing["frozen_embed"] = seconds
            print(f"  frozen: embedded {n_used} clips in {seconds:.0f} s", flush=True)
            frozen = {}
            for split in task["splits"]:
                out, info = run_split("frozen", task, split, args, None, E)
                frozen[split[0]] = out
                report["fits"].append({"task": name, "model": "Frozen", "seed": None,
                                       "split": split[0], **info})
            for seed in args.seeds:  # seed-free: the same predictions for every seed
                for split in task["splits"]:
                    for method, p in frozen[split[0]].items():
                        preds.setdefault(method, {}).setdefault(seed, {})[split[0]] = p
        for seed in args.seeds:
            for split in task["splits"]:
                for kind in ("finetune", "pairtune"):
                    if kind not in args.methods:
                        continue
                    out, info = run_split(kind, task, split, args, seed)
                    for method, p in out.items():
                        preds.setdefault(method, {}).setdefault(seed, {})[split[0]] = p
                    label = METHOD_KEYS[kind]
                    timing[label].append(info["fit_seconds"])
                    report["fits"].append({"task": name, "model": label, "seed": seed,
                                           "split": split[0], **info})
                    te = split[2]
                    accs = ", ".join(f"{m} {np.mean(p == task['y'][te]):.3f}"
                                     for m, p in out.items())
                    print(f"  seed {seed} {split[0]:>9} {label:>8}: {accs} (fit "
                          f"{info['fit_seconds']:.0f} s, embed {info['embed_seconds']:.0f} s,"
                          f" probes {info['probe_seconds']:.0f} s; "
                          f"{(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        results = {}
        for method in ALL_METHODS:
            if method not in preds:
                continue
            per_seed = [{"seed": seed, **score_task(name, task["y"], preds[method][seed],
                                                   task["splits"])}
                        for seed in args.seeds]
            results[method] = {"summary": summarise(per_seed, task_metrics(name)),
                               "per_seed": per_seed}
        report["results"][name] = results
        report["timing"][name] = {
            "FineTune": float(np.mean(timing["FineTune"])) if timing["FineTune"] else None,
            "PairTune": float(np.mean(timing["PairTune"])) if timing["PairTune"] else None,
            "frozen_embed": timing.get("frozen_embed"),
        }
        for method, r in results.items():
            print(f"  {name} {method:>22}: " + ", ".join(
                f"{k} {fmt(v)}" for k, v in r["summary"].items()), flush=True)
    report["total_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = _common.load_average()
    return report


def main(argv=None):
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / f"{args.name}.json"
    if args.merge is not None:
        report = merge_reports(args.merge)
    elif args.render_only:
        report = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        report = run(args, argv)
    if args.variants is not None:
        report["variants"] = [variant_summary(path) for path in args.variants]
    if args.findings is not None:
        report["findings"] = args.findings.read_text(encoding="utf-8")
    report["figure"] = f"{args.name}.png"
    report["goal_check"] = goal_check(report)
    _common.write_report(report, args.output_dir, args.name, plot, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
