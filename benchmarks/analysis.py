"""Embedding geometry after fine-tuning: the paper's Table 3 and Figure 3 (section 3.4).

Question: does contrastive fine-tuning (PairTune) make the embedding space less
anisotropic, less dominated by a few "rogue" dimensions and better separated by
class than cross-entropy fine-tuning (FineTune) and the frozen pretrained encoder?

Protocol (``--task fsdd-speaker``, the default; ``--task gm128-fewshot`` measures
the same on 128-way GM program ID, one held-out soundfont, see accuracy.py):
FSDD speaker identification, few-shot. FineTune and PairTune are fitted
with the same backbone, epochs, learning rate and seed on takes 5-9 (300 clips, 5
per speaker and digit); the frozen encoder is ``PairTuneTransformer(epochs=0)``.
Each model embeds the official test clips (takes 0-4, 300 clips), and on those
embeddings we measure anisotropy, dimension contribution, the cosine silhouette
score and the accuracy of a logistic regression trained on the model's embeddings
of the training clips. One separability plot per model (first seed) shows the
test embeddings coloured by speaker.

Usage::

    python benchmarks/analysis.py [--seeds 0 1 2] [--device cpu|cuda] [--backbone ID]

Writes ``benchmarks/results/analysis.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import _common  # benchmarks/, this script's own folder

MODELS = ("Frozen", "FineTune", "PairTune")
METRICS = (  # key, column header, format
    ("anisotropy", "Anisotropy", "{:.3f}"),
    ("top1", "Top-1 share", "{:.3f}"),
    ("top2", "Top-2 share", "{:.3f}"),
    ("top3", "Top-3 share", "{:.3f}"),
    ("dims_for_50", "Dims 50 %", "{:.0f}"),
    ("dims_for_80", "Dims 80 %", "{:.0f}"),
    ("dims_for_90", "Dims 90 %", "{:.0f}"),
    ("separability", "Silhouette (cos)", "{:.3f}"),
    ("accuracy", "LogReg acc.", "{:.3f}"),
)
TRAIN_TAKES = range(5, 10)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="random_state of the fine-tuned models (default: 0)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="torch device (default: cpu)")
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--projection", default="auto", choices=("auto", "umap", "tsne", "pca"),
                        help="2-D projection of the plots (auto: UMAP if installed, else t-SNE)")
    parser.add_argument("--task", default="fsdd-speaker",
                        choices=("fsdd-speaker", "gm128-fewshot"),
                        help="fsdd-speaker (default) or gm128-fewshot (128 GM programs, "
                             "4 clips each from two soundfonts, tested on the third)")
    parser.add_argument("--gm-fold", default="timgm6mb",
                        help="held-out soundfont of gm128-fewshot (default: timgm6mb)")
    parser.add_argument("--params", type=_key_value, nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="extra parameters of all three models (e.g. layer=2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--output-dir", type=Path, default=_common.RESULTS_DIR)
    parser.add_argument("--name", default="analysis", help="output file stem")
    return parser.parse_args(argv)


def _key_value(text):
    from accuracy import key_value

    return key_value(text)


def load_task_data(args):
    """Train and test clips of ``args.task``, and a description for the report."""
    if args.task == "fsdd-speaker":
        X_train, y_train, X_test, y_test, rate = load_data()
        return X_train, y_train, X_test, y_test, rate, {
            "name": "Free Spoken Digit Dataset (bundled)",
            "task": "speaker identification, 6 speakers",
            "train": f"takes 5-9, {len(X_train)} clips (5 per speaker and digit)",
            "test": f"official test split, takes 0-4, {len(X_test)} clips",
            "sampling_rate": rate,
        }
    import accuracy

    task = accuracy.load_task(args.task, accuracy.parse_args(["--gm-folds", args.gm_fold]))
    (_, train, test), = task["splits"]
    X, y = task["X"], task["y"]
    return ([X[i] for i in train], y[train], [X[i] for i in test], y[test], task["rate"], {
        "name": "gm_instruments, Core-3",
        "task": "GM program identification, 128 classes",
        "train": f"{len(train)} clips: 4 per program from the two training soundfonts",
        "test": f"held-out soundfont {args.gm_fold}, {len(test)} clips",
        "sampling_rate": task["rate"],
    })


def load_data():
    from skaudio_confit.datasets import load_spoken_digits

    bunch = load_spoken_digits(target="speaker")
    take = bunch.frame["take"].to_numpy()
    train = np.isin(take, list(TRAIN_TAKES))
    test = bunch.split == "test"
    pick = lambda mask: [x for x, keep in zip(bunch.data, mask) if keep]
    return (pick(train), bunch.target[train], pick(test), bunch.target[test],
            bunch.sampling_rate)


def make_model(name, args, seed, sampling_rate):
    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    common = {"backbone": args.backbone, "sampling_rate": sampling_rate,
              "device": args.device, "random_state": seed, "verbose": 0,
              **dict(args.params)}
    if name == "Frozen":
        return PairTuneTransformer(**{**common, "epochs": 0})
    if name == "FineTune":
        return FineTuneClassifier(epochs=args.epochs, learning_rate=args.learning_rate,
                                  **common)
    return PairTuneTransformer(epochs=args.epochs, learning_rate=args.learning_rate, **common)


def measure(model, X_train, y_train, X_test, y_test):
    """Fit, embed both splits, and compute the geometry of the test embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skaudio_confit.analysis import dimension_contribution, separability_score

    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    E_train, E_test = model.transform(X_train), model.transform(X_test)
    embed_seconds = time.perf_counter() - start

    contribution = dimension_contribution(E_test)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(E_train, y_train)
    row = {
        "anisotropy": contribution.anisotropy,
        **{k: contribution[k] for k in ("top1", "top2", "top3",
                                        "dims_for_50", "dims_for_80", "dims_for_90")},
        "top_dimensions": contribution.order[:5].tolist(),
        "separability": separability_score(E_test, y_test),
        "accuracy": classifier.score(E_test, y_test),
        "fit_seconds": fit_seconds,
        "embed_seconds": embed_seconds,
    }
    if hasattr(model, "coef_"):  # FineTune's own linear head, on the same embeddings
        logits = E_test @ model.coef_.T + model.intercept_
        row["head_accuracy"] = float(np.mean(model.classes_[logits.argmax(1)] == y_test))
    return row, E_test


def summarise(rows):
    """Mean and sample standard deviation over seeds of each numeric metric."""
    keys = [k for k, v in rows[0].items()
            if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        values = np.array([r[k] for r in rows], dtype=float)
        out[k] = {"mean": float(values.mean()),
                  "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def cell(stats, key, fmt):
    value = stats.get(key)
    if value is None or not np.isfinite(value["mean"]):
        return "n/a"
    text = fmt.format(value["mean"])
    if value["std"] > 0:
        text += " ± " + fmt.replace(":.0f", ":.1f").format(value["std"])
    return text


def plot(embeddings, y_test, results, args, path):
    """One separability panel per model: the first seed's test embeddings."""
    from matplotlib.figure import Figure

    from skaudio_confit.analysis import plot_separability

    fig = Figure(figsize=(5.2 * len(embeddings), 5.4), layout="constrained")
    axes = fig.subplots(1, len(embeddings))
    method = None
    for ax, (name, E) in zip(np.atleast_1d(axes), embeddings.items()):
        row = results[name]["per_seed"][0]  # the seed these embeddings come from
        title = (f"{name}\nanisotropy {row['anisotropy']:.2f}, "
                 f"top-1 dim share {row['top1']:.2f}")
        plot_separability(E, y_test, method=args.projection, ax=ax, random_state=0,
                          title=title)
        method = ax.get_xlabel().rsplit(" ", 1)[0]
    what = ("FSDD speaker ID, test clips (takes 0-4), embeddings coloured by speaker"
            if args.task == "fsdd-speaker" else
            f"GM 128-way, held-out soundfont {args.gm_fold}, coloured by program")
    fig.suptitle(f"{what} ({method}, cosine geometry; seed {args.seeds[0]})")
    fig.savefig(path, dpi=110)
    return method


def markdown(report, summaries):
    header = ["Model"] + [h for _, h, _ in METRICS] + ["Fit s"]
    rows = []
    for name in MODELS:
        stats = summaries[name]
        rows.append([name] + [cell(stats, k, f) for k, _, f in METRICS]
                    + [cell(stats, "fit_seconds", "{:.0f}")])
    protocol, data, m = report["protocol"], report["data"], report["machine"]
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    bullets = [
        f"Date: {report['date']}; total run time {report['total_seconds']:.0f} s",
        (f"Machine: {m['platform']}; {m['cpu']} ({m['cpu_count']} logical CPUs, load "
         f"average {m.get('load_average_at_start')} at start, "
         f"{m.get('load_average_at_end')} at end: fit times include time shared with "
         f"other processes); torch {m['torch']} on {protocol['device']}{gpu}"),
        f"Command: `{report['command']}`",
        f"Data: {data['name']}, {data['task']}; train {data['train']}; test {data['test']}.",
        (f"Backbone: {report['backbone']} ({report['embedding_dims']}-dim embeddings). "
         f"FineTune and PairTune: {protocol['epochs']} "
         f"epochs, learning rate {protocol['learning_rate']}, other parameters at their "
         f"defaults{' except ' + str(report['params']) if report.get('params') else ''}, "
         f"seeds {report['seeds']}. Frozen: `PairTuneTransformer(epochs=0)`, "
         "independent of the seed (measured once)."),
        ("Metrics on the test embeddings: anisotropy = mean cosine similarity of "
         "distinct pairs; top-k share = fraction of that similarity due to the k "
         "largest-contributing dimensions; dims k % = how many dimensions it takes to "
         "reach k % of it (Timkey & van Schijndel 2021); silhouette score under the "
         "cosine distance, by class; LogReg acc. = test accuracy of "
         "StandardScaler + LogisticRegression fitted on the model's training embeddings."),
    ]
    if len(report["seeds"]) > 1:
        bullets.append("Cells are mean ± standard deviation over seeds.")
    lines = ["# Embedding geometry after fine-tuning (Table 3 / Figure 3 analogue)", ""]
    lines += [f"- {b}" for b in bullets]
    lines += ["", _common.markdown_table(header, rows), ""]
    if len(report["seeds"]) > 1:
        per_seed = [[name, row["seed"] if name != "Frozen" else "any"]
                    + [f.format(row[k]) if row[k] is not None else "n/a"
                       for k, _, f in METRICS] + [f"{row['fit_seconds']:.0f}"]
                    for name in MODELS for row in report["results"][name]["per_seed"]]
        lines += ["Per seed:", "",
                  _common.markdown_table(["Model", "Seed", *header[1:]], per_seed), ""]
    first = report["results"]
    dims = "; ".join(f"{name}: {first[name]['per_seed'][0]['top_dimensions']}"
                     for name in MODELS)
    lines.append(f"Largest-contributing dimensions (first seed, largest first): {dims}.")
    if "head_accuracy" in summaries["FineTune"]:
        head = cell(summaries["FineTune"], "head_accuracy", "{:.3f}")
        lines += ["", (f"FineTune's own linear head scores {head} on the same test clips "
                       "(LogReg acc. above refits a classifier on its embeddings).")]
    lines += ["", f"![separability plots]({report['figure']})", "",
              (f"Projection: {report['projection']} of unit-normalised test embeddings; each "
               "legend gives the silhouette score of the embeddings themselves.")]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    date = _common.now()
    machine = _common.machine(args.device)

    _common.set_threads(args.threads)
    X_train, y_train, X_test, y_test, rate, data = load_task_data(args)
    print(f"{args.task}: {len(X_train)} training clips, {len(X_test)} test clips", flush=True)

    results = {name: {"per_seed": []} for name in MODELS}
    first_embeddings = {}
    for i, seed in enumerate(args.seeds):
        for name in MODELS:
            if name == "Frozen" and i > 0:
                continue  # the pretrained encoder does not depend on the seed
            row, E_test = measure(make_model(name, args, seed, rate),
                                  X_train, y_train, X_test, y_test)
            results[name]["per_seed"].append({"seed": seed, **row})
            if i == 0:
                first_embeddings[name] = E_test
            print(f"seed {seed} {name:>8}: anisotropy {row['anisotropy']:.3f}, top-1 "
                  f"{row['top1']:.3f}, silhouette {row['separability']:.3f}, accuracy "
                  f"{row['accuracy']:.3f} (fit {row['fit_seconds']:.0f} s, embed "
                  f"{row['embed_seconds']:.0f} s)", flush=True)
    summaries = {name: summarise(results[name]["per_seed"]) for name in MODELS}
    for name in MODELS:
        results[name]["summary"] = summaries[name]

    args.output_dir.mkdir(parents=True, exist_ok=True)
    figure = args.output_dir / f"{args.name}.png"
    projection = plot(first_embeddings, y_test, results, args, figure)

    report = {
        "benchmark": "analysis",
        "question": "Does PairTune reduce anisotropy and rogue dimensions and improve class "
                    "separation compared with FineTune and the frozen encoder?",
        "date": date,
        "command": " ".join(["python", "benchmarks/analysis.py", *sys.argv[1:]])
                   if argv is None else " ".join(["python", "benchmarks/analysis.py", *argv]),
        "machine": machine,
        "seeds": args.seeds,
        "backbone": args.backbone or "bundled Whisper tiny.en encoder",
        "embedding_dims": int(next(iter(first_embeddings.values())).shape[1]),
        "data": data,
        "params": dict(args.params),
        "protocol": {
            "models": {"Frozen": "PairTuneTransformer(epochs=0)",
                       "FineTune": "FineTuneClassifier", "PairTune": "PairTuneTransformer"},
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "device": args.device,
            "embeddings": "transform() of the test clips (mean-pooled last layer)",
            "classifier": "StandardScaler + LogisticRegression(max_iter=2000) on the "
                          "training clips' embeddings",
            "separability": "silhouette score, cosine distance, class labels",
            "dimension_contribution": "Timkey & van Schijndel (2021): share of dimension i "
                                      "= E[u_i v_i] / E[cos(u, v)] over distinct pairs",
        },
        "projection": projection,
        "figure": figure.name,
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    if hasattr(os, "getloadavg"):  # fit times depend on what else ran on the machine
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_json(args.output_dir / f"{args.name}.json", report)
    _common.write_text(args.output_dir / f"{args.name}.md", markdown(report, summaries))
    print(f"wrote {args.output_dir}/{args.name}.{{md,json,png}} in "
          f"{report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
