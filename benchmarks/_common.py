"""What the benchmark scripts share: data and splits, the linear probe, summaries,
report headers, argument blocks, plotting and output files.

Only the package's public API is used here, so that a benchmark measures what a
user gets.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The team's shared data sit beside the checkout (``../shared/data``); override with
# SKAUDIO_CONFIT_SHARED_DATA to point elsewhere.
SHARED_DATA = Path(os.environ.get("SKAUDIO_CONFIT_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
DRUMS_ROOT = SHARED_DATA / "drums"
GM_ROOT = SHARED_DATA / "gm_instruments"
# Core-3 protocol of gm_instruments: one soundfont per independent sample lineage.
GM_CORE3 = ("fluidr3", "timgm6mb", "opl3")
GM_SHOTS = 4  # clips per program in the few-shot tasks
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
TRAIN_TAKES = range(5, 10)  # FSDD few-shot training takes; the official test is 0-4
FIGURE_DPI = 110


def now():
    """The current local time, ISO 8601 with the UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def cpu_name():
    """The CPU model, from /proc/cpuinfo where there is one, else platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device=None):
    """What the results were measured on: platform, CPU, library versions, GPU if used."""
    import sklearn
    import torch

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def jsonable(value):
    """``value`` with numpy scalars/arrays as Python values and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path, data):
    """Write ``data`` as strict JSON (no NaN), indented; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def write_text(path, text):
    """Write ``text`` (e.g. markdown), ending in one newline; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return path


def write_report(report, output_dir, name, plot=None, markdown=None):
    """Write ``<name>.json`` from ``report``, then ``<name>.png`` by ``plot(report, path)``
    and ``<name>.md`` from ``markdown(report)`` where given; prints what was written."""
    output_dir = Path(output_dir)
    write_json(output_dir / f"{name}.json", report)
    written = ["json"]
    if plot is not None:
        plot(report, output_dir / f"{name}.png")
        written.append("png")
    if markdown is not None:
        write_text(output_dir / f"{name}.md", markdown(report))
        written.append("md")
    print(f"wrote {output_dir}/{name}.{{{','.join(x for x in ('md', 'json', 'png') if x in written)}}}")


def markdown_table(header, rows, align=None):
    """A GitHub markdown table; ``align`` holds "l" or "r" per column (default: l, r...)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def code_state(root=None):
    """Which code was measured: git commit, whether the tree had uncommitted changes,
    and a SHA-256 over the package's source files as they were read at the start.

    The package may be edited while a long benchmark runs; the digest identifies the
    sources the run imported (take it before importing anything else heavy).
    """
    import hashlib
    import subprocess

    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    state = {}
    try:
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "skaudio_confit"], cwd=root,
            capture_output=True, text=True, check=True, timeout=10).stdout
        state["package_uncommitted_changes"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        state["commit"] = None
    digest = hashlib.sha256()
    for path in sorted((root / "skaudio_confit").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    state["package_sha256"] = digest.hexdigest()
    return state


def set_threads(n):
    """``torch.set_num_threads(n)`` when ``n`` is given (on a shared, oversubscribed
    CPU one thread per process is often faster than several that spin-wait)."""
    if n:
        import torch

        torch.set_num_threads(int(n))


# ------------------------------------------------------------------ arguments


def key_value(text):
    """``KEY=VALUE`` with VALUE a Python literal (number, string, None, bool)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a bare string
    return key, value


def add_model_arguments(parser, *, seeds, epochs, learning_rate, device="cpu",
                        learning_rate_help=None):
    """``--seeds``, ``--epochs``, ``--learning-rate``, ``--device`` and ``--backbone``."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                        help="random_state of the fine-tuned models (default: "
                             f"{' '.join(map(str, seeds))})")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--learning-rate", type=float, default=learning_rate,
                        help=learning_rate_help)
    parser.add_argument("--device", default=device, choices=("cpu", "cuda", "auto"),
                        help=f"torch device (default: {device})")
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")


def add_task_arguments(parser, params_help):
    """``--task`` (FSDD speakers or few-shot GM programs), ``--gm-fold`` and ``--params``."""
    parser.add_argument("--task", default="fsdd-speaker",
                        choices=("fsdd-speaker", "gm128-fewshot"),
                        help="fsdd-speaker (6 classes, default) or gm128-fewshot (128 GM "
                             "programs, 4 clips each from two soundfonts of Core-3, tested "
                             "on the third)")
    parser.add_argument("--gm-fold", default="timgm6mb",
                        help="held-out soundfont of gm128-fewshot (default: timgm6mb)")
    parser.add_argument("--params", type=key_value, nargs="+", default=[],
                        metavar="KEY=VALUE", help=params_help)


def add_output_arguments(parser, name):
    """``--threads``, ``--output-dir`` and ``--name`` (the output file stem)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=name, help="output file stem")


# ----------------------------------------------------------------------- data


def peak_normalise(wave):
    """``wave`` scaled to a peak of 1 (silence unchanged)."""
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    return (wave / peak).astype(np.float32) if peak > 0 else wave


def fsdd_fewshot_indices(bunch):
    """Indices of FSDD's few-shot training takes (5-9) and of the official test split."""
    train = np.isin(bunch.frame["take"].to_numpy(), list(TRAIN_TAKES))
    return np.flatnonzero(train), np.flatnonzero(bunch.split == "test")


def gm_fewshot_train(meta, train, held_out):
    """``GM_SHOTS`` clips per program of the rows ``train`` of ``meta``: half from
    each training soundfont, drawn with a seed fixed by the held-out soundfont (the
    same for every model seed and target)."""
    rng = np.random.default_rng(GM_CORE3.index(held_out))
    picked = []
    for _, rows in meta.iloc[train].groupby(["program", "soundfont"]):
        idx = rows.index.to_numpy()
        picked.extend(rng.choice(idx, size=min(GM_SHOTS // 2, len(idx)), replace=False))
    return np.sort(np.array(picked))


def load_fsdd_task(name, rotations=SPEAKERS):
    """The FSDD tasks of accuracy.py; see :func:`load_task`."""
    from skaudio_confit.datasets import load_spoken_digits

    speaker_task = name in ("fsdd-speaker-fewshot", "fsdd60-fewshot")
    bunch = load_spoken_digits(target="speaker" if speaker_task else "digit")
    speaker = bunch.frame["speaker"].to_numpy().astype(str)
    train_idx, test_idx = fsdd_fewshot_indices(bunch)
    data = "Free Spoken Digit Dataset (bundled, 8 kHz)"
    if speaker_task:
        splits = [("official", train_idx, test_idx)]
        inner_groups = None  # stratified folds over the training clips
        description = {
            "data": data,
            "target": "speaker (6 classes)",
            "train": "takes 5-9, 300 clips (5 per speaker and digit)",
            "test": "official test split, takes 0-4, 300 clips",
        }
        if name == "fsdd60-fewshot":
            digit = bunch.frame["digit"].to_numpy()
            bunch.target = np.array([f"{s}-{d}" for s, d in zip(speaker, digit)])
            description.update(
                target="speaker x digit (60 classes)",
                train="takes 5-9, 300 clips (5 per class: few-shot, unseen takes)")
    else:
        train = np.zeros(len(speaker), dtype=bool)
        train[train_idx] = True
        splits = [(s, np.flatnonzero(train & (speaker != s)), np.flatnonzero(speaker == s))
                  for s in rotations]
        inner_groups = speaker  # inner CV also holds speakers out
        description = {
            "data": data,
            "target": "digit (10 classes)",
            "train": "takes 5-9 of the 5 other speakers, 250 clips",
            "test": "all 50 takes of the held-out speaker, 500 clips",
            "rotations": list(rotations),
        }
    return {"X": bunch.data, "y": np.asarray(bunch.target), "rate": bunch.sampling_rate,
            "splits": splits, "inner_groups": inner_groups, "description": description}


def load_drums_task(root=DRUMS_ROOT, folds=4, normalise=True):
    """drums-leave-kits-out of accuracy.py; see :func:`load_task`."""
    from sklearn.model_selection import GroupKFold

    from skaudio_confit.datasets import load_audio_folder

    bunch = load_audio_folder(root, group_column="kit")
    X = [peak_normalise(w) for w in bunch.data] if normalise else bunch.data
    y, rate, kits = np.asarray(bunch.target), bunch.sampling_rate, bunch.groups
    splits = [(f"fold{i}", tr, te) for i, (tr, te) in enumerate(
        GroupKFold(n_splits=folds).split(np.zeros(len(y)), y, groups=kits))]
    description = {
        "data": f"Hydrogen drum one-shots ({root}, {rate} Hz)",
        "target": "instrument (6 classes: kick, snare, hihat, tom, cymbal, clap)",
        "train": f"GroupKFold({folds}) by kit (12 kits), ~3/4 of 463 clips per fold",
        "test": "the held-out kits of each fold; out-of-fold predictions pooled",
        "peak_normalised": bool(normalise),
        "folds": [{"name": n, "test_kits": sorted(set(kits[te].tolist())),
                   "n_train": len(tr), "n_test": len(te)} for n, tr, te in splits],
    }
    return {"X": X, "y": y, "rate": rate, "splits": splits, "inner_groups": kits,
            "description": description}


def load_gm_task(name, root=GM_ROOT, held_out=GM_CORE3):
    """gm_instruments, Core-3 protocol: train on two soundfonts, test on the third.

    ``gm128-*``: the GM program (128 classes); ``gm16-*``: the GM family (16
    classes). ``*-fewshot`` trains on ``GM_SHOTS`` clips per program (see
    :func:`gm_fewshot_train`); ``*-all`` on every clip of the two training soundfonts.
    See :func:`load_task` for what is returned.
    """
    import pandas as pd
    import soundfile as sf

    meta = pd.read_csv(Path(root) / "metadata.csv")
    meta = meta[meta["soundfont"].isin(GM_CORE3)].reset_index(drop=True)
    X = []
    for path in meta["path"]:
        wave, rate = sf.read(Path(root) / path, dtype="float32")
        X.append(wave)
    target = "program" if name.startswith("gm128") else "family"
    y = meta[target].to_numpy()
    soundfont = meta["soundfont"].to_numpy().astype(str)
    fewshot = name.endswith("fewshot")
    splits = []
    for fold in held_out:
        train = np.flatnonzero(soundfont != fold)
        if fewshot:
            train = gm_fewshot_train(meta, train, fold)
        splits.append((fold, train, np.flatnonzero(soundfont == fold)))
    description = {
        "data": f"gm_instruments Core-3 ({', '.join(GM_CORE3)}; 1 s notes, {rate} Hz)",
        "target": f"GM {target} ({len(np.unique(y))} classes)",
        "train": (f"{GM_SHOTS} clips per program ({GM_SHOTS // 2} notes from each of the two "
                  f"training soundfonts, fixed per fold), {len(splits[0][1])} clips"
                  if fewshot else "all clips of the two training soundfonts, ~1,535 clips"),
        "test": "every clip of the held-out soundfont (767-768); accuracy averaged "
                "over the held-out soundfonts",
        "rotations": list(held_out),
    }
    return {"X": X, "y": y, "rate": rate, "splits": splits, "inner_groups": soundfont,
            "description": description}


def load_task(name, *, rotations=SPEAKERS, drums_root=DRUMS_ROOT, peak_normalised=True,
              folds=4, gm_root=GM_ROOT, gm_folds=GM_CORE3, max_splits=None):
    """Clips, labels, rate, the outer splits and the inner-CV groups of one task of
    accuracy.py (its docstring describes the tasks).

    Returns a dict with ``X`` (list of waveforms), ``y``, ``rate``, ``splits`` (list
    of ``(split_name, train_idx, test_idx)``, the first ``max_splits`` if given),
    ``inner_groups`` (array or None) and ``description``.
    """
    if name.startswith("gm"):
        task = load_gm_task(name, gm_root, gm_folds)
    elif name.startswith("fsdd"):
        task = load_fsdd_task(name, rotations)
    else:
        task = load_drums_task(drums_root, folds, peak_normalised)
    if max_splits is not None:
        task["splits"] = task["splits"][:max_splits]
    return task


def load_train_test(task, gm_fold):
    """``X_train, y_train, X_test, y_test, rate`` of the one-split tasks of analysis.py
    and convergence.py: ``fsdd-speaker`` (takes 5-9 against the official test split)
    or ``gm128-fewshot`` with ``gm_fold`` held out."""
    name = "fsdd-speaker-fewshot" if task == "fsdd-speaker" else task
    loaded = load_task(name, gm_folds=[gm_fold])
    (_, train, test), = loaded["splits"]
    X, y = loaded["X"], loaded["y"]
    return ([X[i] for i in train], y[train], [X[i] for i in test], y[test],
            loaded["rate"])


# --------------------------------------------------------------------- models


def make_estimator(kind, args, seed, sampling_rate, **params):
    """A quiet estimator of ``kind``: "frozen" (``PairTuneTransformer(epochs=0)``, the
    pretrained encoder), "pairtune" or "finetune", on ``args.backbone`` and
    ``args.device``, with ``random_state=seed`` and ``params``."""
    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    params = {"backbone": args.backbone, "sampling_rate": sampling_rate,
              "device": args.device, "random_state": seed, "verbose": 0, **params}
    if kind == "frozen":
        params["epochs"] = 0
    return (FineTuneClassifier if kind == "finetune" else PairTuneTransformer)(**params)


# --------------------------------------------------------------------- probes


def linear_probe():
    """The benchmarks' linear classifier on embeddings: scaling, then logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def probe_accuracy(E_train, y_train, E_test, y_test):
    """Test accuracy of :func:`linear_probe` fitted on the training embeddings."""
    return float(linear_probe().fit(E_train, y_train).score(E_test, y_test))


# ------------------------------------------------------------------ summaries


def mean_std(values):
    """``{"mean", "std"}`` of ``values``; std with ddof=1 (0.0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def summarise(rows, keys=None):
    """Mean ± std over ``rows`` (e.g. one per seed) of each key in ``keys``
    (default: every numeric key of the first row except ``seed``)."""
    if keys is None:
        keys = [k for k, v in rows[0].items()
                if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: mean_std([r[k] for r in rows]) for k in keys}


def fmt(stats, digits=3):
    """``"mean ± std"`` of a :func:`mean_std` dict; ``"n/a"`` for None."""
    if stats is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


# -------------------------------------------------------------- report header


def command_line(script, argv=None):
    """How the run was started: ``python benchmarks/<script> ARGS``."""
    return " ".join(["python", f"benchmarks/{script}",
                     *(sys.argv[1:] if argv is None else argv)])


def load_average():
    """The 1, 5 and 15 minute load averages, rounded (None where unknown)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def code_line(code):
    """The report's line naming the measured code (see :func:`code_state`)."""
    if not code:
        return "Code: not recorded"
    text = f"Code: git commit {code.get('commit') or 'unknown'}"
    if code.get("package_uncommitted_changes"):
        text += " plus uncommitted changes to the package"
    return text + f"; package sources sha256 {code['package_sha256'][:12]}"


# ------------------------------------------------------------------- plotting


def new_figure(width, height):
    """A matplotlib figure with constrained layout, not tied to any GUI backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path):
    """Save ``fig`` as a PNG at the benchmarks' resolution; returns the path."""
    fig.savefig(path, dpi=FIGURE_DPI)
    return path
