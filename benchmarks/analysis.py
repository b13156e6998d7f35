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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_arguments(parser, seeds=(0,), epochs=3, learning_rate=5e-5)
    parser.add_argument("--projection", default="auto", choices=("auto", "umap", "tsne", "pca"),
                        help="2-D projection of the plots (auto: UMAP if installed, else t-SNE)")
    _common.add_task_arguments(parser, "extra parameters of all three models (e.g. layer=2)")
    _common.add_output_arguments(parser, "analysis")
    return parser.parse_args(argv)


def load_task_data(args):
    """Train and test clips of ``args.task``, and a description for the report."""
    X_train, y_train, X_test, y_test, rate = _common.load_train_test(args.task, args.gm_fold)
    if args.task == "fsdd-speaker":
        description = {
            "name": "Free Spoken Digit Dataset (bundled)",
            "task": "speaker identification, 6 speakers",
            "train": f"takes 5-9, {len(X_train)} clips (5 per speaker and digit)",
            "test": f"official test split, takes 0-4, {len(X_test)} clips",
        }
    else:
        description = {
            "name": "gm_instruments, Core-3",
            "task": "GM program identification, 128 classes",
            "train": f"{len(X_train)} clips: 4 per program from the two training soundfonts",
            "test": f"held-out soundfont {args.gm_fold}, {len(X_test)} clips",
        }
    return X_train, y_train, X_test, y_test, rate, {**description, "sampling_rate": rate}


def make_model(name, args, seed, sampling_rate):
    """``name`` of ``MODELS`` with this run's settings (the frozen encoder is not tuned)."""
    tuning = {} if name == "Frozen" else {"epochs": args.epochs,
                                          "learning_rate": args.learning_rate}
    return _common.make_estimator(name.lower(), args, seed, sampling_rate,
                                  **tuning, **dict(args.params))


def measure(model, X_train, y_train, X_test, y_test):
    """Fit, embed both splits, and compute the geometry of the test embeddings."""
    from sklearn.base import is_classifier

    from skaudio_confit.analysis import dimension_contribution, separability_score

    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    E_train, E_test = model.transform(X_train), model.transform(X_test)
    embed_seconds = time.perf_counter() - start

    contribution = dimension_contribution(E_test)
    row = {
        "anisotropy": contribution.anisotropy,
        **{k: contribution[k] for k in ("top1", "top2", "top3",
                                        "dims_for_50", "dims_for_80", "dims_for_90")},
        "top_dimensions": contribution.order[:5].tolist(),
        "separability": separability_score(E_test, y_test),
        "accuracy": _common.probe_accuracy(E_train, y_train, E_test, y_test),
        "fit_seconds": fit_seconds,
        "embed_seconds": embed_seconds,
    }
    if is_classifier(model):  # FineTune's own linear head, on the same test clips
        row["head_accuracy"] = model.score(X_test, y_test)
    return row, E_test


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
    from skaudio_confit.analysis import plot_separability

    fig = _common.new_figure(5.2 * len(embeddings), 5.4)
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
    _common.save_figure(fig, path)
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
        _common.code_line(report.get("code")),
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
    code = _common.code_state()
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
    summaries = {name: _common.summarise(results[name]["per_seed"]) for name in MODELS}
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
        "command": _common.command_line("analysis.py", argv),
        "machine": machine,
        "code": code,
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
    # Fit times depend on what else ran on the machine.
    machine["load_average_at_end"] = _common.load_average()
    _common.write_json(args.output_dir / f"{args.name}.json", report)
    _common.write_text(args.output_dir / f"{args.name}.md", markdown(report, summaries))
    print(f"wrote {args.output_dir}/{args.name}.{{md,json,png}} in "
          f"{report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
