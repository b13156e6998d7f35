"""The ``skaudio-confit`` command line.

Only the standard library and numpy are imported at start-up, so ``--help`` and argument
errors are instant; torch and the estimators are imported by the command that needs them.
Every command checks its inputs and outputs before any expensive work.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import numpy as np

_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Columns of an audio folder's metadata.csv / ESC-50's esc50.csv that are not candidate
# group columns (paths, labels and per-clip measurements).
_NOT_GROUP_COLUMNS = {"path", "label", "filename", "fold", "target", "category", "esc10",
                      "take", "duration_s", "truncated", "peak_dbfs", "source_file"}


class CommandError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def _note(message):
    print(f"skaudio-confit: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- outputs


def _check_writable_parent(path):
    """Raise unless the nearest existing ancestor of ``path`` is a writable directory."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CommandError(f"cannot create {str(path)!r}: {str(parent)!r} is not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write {str(path)!r}: {str(parent)!r} is not writable.")


def _check_output_dir(path, overwrite):
    """Refuse a model directory we would clobber or cannot write, before any work."""
    from .persistence import check_save_target

    target = Path(path)
    try:
        check_save_target(path, overwrite=overwrite)
    except (FileExistsError, NotADirectoryError) as exc:
        hint = ("" if not target.is_dir() or "--overwrite" in str(exc)
                else " Pass --overwrite to write into it anyway.")
        raise CommandError(f"--out: {exc}{hint}") from None
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise CommandError(f"cannot write into {str(target)!r}: it is not writable.")
    else:
        _check_writable_parent(target)


def _check_output_file(path, overwrite, suffixes):
    """Refuse an output file with an unknown suffix, that exists, or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise CommandError(
            f"--out must end in {' or '.join(suffixes)}, got {str(path)!r}."
        )
    if path.is_dir():
        raise CommandError(f"--out {str(path)!r} is a directory, not a file.")
    if path.exists():
        if not overwrite:
            raise CommandError(
                f"--out {str(path)!r} already exists; pass --overwrite to replace it."
            )
        if not os.access(path, os.W_OK):
            raise CommandError(f"--out {str(path)!r} is not writable.")
    _check_writable_parent(path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normalise_modes(directory):
    """Give every file a save wrote the same mode: read-write as umask allows.

    Some writers (safetensors) create 0600 files while others follow the umask (0644),
    so a saved model would be half unreadable to the group that can read its manifest.
    """
    mode = 0o666 & ~_umask()
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


# --------------------------------------------------------------------------- inputs


def _audio_files_in(folder):
    files = [p for p in folder.rglob("*") if p.suffix.lower() in _AUDIO_SUFFIXES
             and p.is_file() and not any(part.startswith(".")
                                         for part in p.relative_to(folder).parts)]
    if not files:
        raise CommandError(
            f"no audio files ({', '.join(_AUDIO_SUFFIXES)}) found in folder {str(folder)!r}."
        )
    return sorted(files)


def _audio_files_in_csv(csv_path):
    import pandas as pd

    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CommandError(f"could not read {str(csv_path)!r} as CSV: {exc}") from None
    if "path" not in frame.columns:
        raise CommandError(
            f"{str(csv_path)!r} needs a 'path' column of audio files (relative to the CSV's "
            f"folder or absolute); it has {', '.join(map(str, frame.columns)) or 'none'}."
        )
    paths = [p for p in frame["path"] if p.strip()]
    if not paths:
        raise CommandError(f"{str(csv_path)!r} lists no files.")
    return [Path(p) if Path(p).is_absolute() else csv_path.parent / p for p in paths]


def _expand_inputs(items):
    """Audio files from the command line: files, folders (searched recursively, sorted)
    and CSV files with a ``path`` column. Every file must exist; the same file given
    twice (``a.wav`` and ``./a.wav``) is kept but warned about."""
    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(_audio_files_in(path))
        elif path.suffix.lower() == ".csv" and path.is_file():
            files.extend(_audio_files_in_csv(path))
        else:
            files.append(path)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise CommandError(
            f"{len(missing)} input file(s) not found, e.g. {missing[0]!r}."
        )
    seen = {}
    for path in files:
        real = os.path.realpath(path)
        if real in seen:
            _note(f"warning: {str(path)!r} and {str(seen[real])!r} are the same file; "
                  "it is processed twice.")
        else:
            seen[real] = path
    return [str(p) for p in files]


def _load_data(path, group_column=None):
    """An ESC-50 root (meta/esc50.csv) or an audio folder, as a Bunch with ``groups``."""
    from .datasets import load_audio_folder, load_esc50

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Data directory not found: {str(root)!r}.")
    if (root / "meta" / "esc50.csv").is_file():
        bunch = load_esc50(root)
        bunch.groups = None
        if group_column is not None:
            if group_column not in bunch.frame.columns:
                raise CommandError(
                    f"--group-column {group_column!r} is not a column of esc50.csv (it has "
                    f"{', '.join(map(str, bunch.frame.columns))})."
                )
            bunch.groups = bunch.frame[group_column].to_numpy().astype(str)
        return bunch
    return load_audio_folder(root, group_column=group_column or "group")


def _suggest_group_column(bunch, group_column):
    """Warn when the data have columns that look like groups but none is used."""
    if group_column is not None or bunch.get("groups") is not None:
        return
    frame = bunch.get("frame")
    if frame is None:
        return
    candidates = [c for c in frame.columns if c not in _NOT_GROUP_COLUMNS
                  and 1 < frame[c].nunique() < len(frame)]
    if candidates:
        _note(
            f"note: clips are split without groups; if clips sharing a value of "
            f"{', '.join(map(repr, candidates[:5]))} (e.g. one speaker, kit or recording) "
            "must stay together, pass --group-column NAME so held-out scores are not "
            "inflated."
        )


# --------------------------------------------------------------------------- models


def _encoder_params(args, *, pairtune):
    """Estimator parameters given on the command line; the rest keep the estimator's
    own defaults, so the CLI and the Python API never disagree."""
    names = ["backbone", "epochs", "batch_size", "learning_rate", "max_duration", "device",
             "layer"]
    if pairtune:
        names.append("samples_per_class")
    params = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    params["random_state"] = args.seed
    params["verbose"] = int(not args.quiet)
    return params


def _check_device(args):
    """An unusable --device fails now, not after the data are loaded."""
    if args.device is not None:
        from ._device import resolve_device

        resolve_device(args.device)


def _pairtune_pipeline(sampling_rate, args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from . import PairTuneTransformer

    return Pipeline([
        ("pairtune", PairTuneTransformer(sampling_rate=sampling_rate,
                                         **_encoder_params(args, pairtune=True))),
        ("clf", LogisticRegression(max_iter=2000)),
    ])


def _subset(data, indices):
    return [data[i] for i in indices]


def _held_out_split(bunch, fraction, seed):
    """Train/test indices: grouped when the data have groups, else stratified."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    indices = np.arange(len(bunch.target))
    if bunch.get("groups") is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        train, test = next(splitter.split(indices, groups=bunch.groups))
        return train, test, "grouped"
    try:
        train, test = train_test_split(indices, test_size=fraction, stratify=bunch.target,
                                       random_state=seed)
    except ValueError as exc:
        raise CommandError(
            f"--test-fraction {fraction} cannot hold out clips of every class ({exc}); "
            "use a larger fraction or more clips per class."
        ) from None
    return train, test, "stratified"


def _scores(model, X, y):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    predicted = model.predict(X)
    return accuracy_score(y, predicted), balanced_accuracy_score(y, predicted)


def _card_sections(args, bunch, seconds, held_out):
    """What the saved model's card adds about the data and the fit, by heading."""
    groups = bunch.get("groups")
    lines = [
        f"- Data: `{args.data}`: {len(bunch.target)} clips, {len(bunch.target_names)} classes "
        f"({', '.join(map(str, bunch.target_names[:10]))}"
        f"{', ...' if len(bunch.target_names) > 10 else ''}), {bunch.sampling_rate} Hz"
        + (f", {len(np.unique(groups))} groups ({args.group_column or 'group'})"
           if groups is not None else ""),
        f"- Trained on: all {len(bunch.target)} clips of the data",
        f"- Fit time: {seconds:.1f} s",
    ]
    if held_out is None:
        lines.append("- Held-out accuracy: not measured (use `--test-fraction` or "
                     "`skaudio-confit evaluate`)")
    else:
        lines.append(
            f"- Held-out estimate: a separate model with the same parameters, trained on "
            f"{held_out['n_train']} clips and scored on the other {held_out['n_test']} "
            f"({held_out['kind']} split, fraction {args.test_fraction}, seed {args.seed}): "
            f"accuracy {held_out['accuracy']:.4f}, balanced accuracy "
            f"{held_out['balanced_accuracy']:.4f}. The saved model saw all clips, so "
            "score it only on new data."
        )
    return {"Training data": "\n".join(lines)}


# --------------------------------------------------------------------------- commands


def _demo(args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from . import FineTuneClassifier, PairTuneTransformer
    from .datasets import load_spoken_digits

    bunch = load_spoken_digits(target="speaker")
    take = bunch.frame["take"].to_numpy()
    # Few-shot speaker identification: a few takes of each digit per speaker to
    # train on, FSDD's official test takes (0-4) to score on.
    train = (take >= 5) & (take < 5 + args.train_takes)
    test = bunch.split == "test"
    X_train = [x for x, keep in zip(bunch.data, train) if keep]
    X_test = [x for x, keep in zip(bunch.data, test) if keep]
    y_train, y_test = bunch.target[train], bunch.target[test]
    print(
        f"FSDD speaker identification ({len(bunch.target_names)} speakers): "
        f"{len(X_train)} training clips ({args.train_takes} takes per speaker and digit), "
        f"{len(X_test)} test clips; bundled Whisper tiny.en encoder."
    )
    verbose = int(not args.quiet)

    def pairtune(epochs):
        return make_pipeline(
            PairTuneTransformer(sampling_rate=bunch.sampling_rate, epochs=epochs,
                                learning_rate=args.learning_rate, random_state=args.seed,
                                verbose=verbose),
            StandardScaler(),
            LogisticRegression(max_iter=2000),
        )

    models = [
        ("frozen encoder + LogisticRegression", pairtune(0)),
        (f"FineTune ({args.epochs} epochs)",
         FineTuneClassifier(sampling_rate=bunch.sampling_rate, epochs=args.epochs,
                            learning_rate=args.learning_rate, random_state=args.seed,
                            verbose=verbose)),
        (f"PairTune ({args.epochs} epochs) + LogisticRegression", pairtune(args.epochs)),
    ]
    rows = []
    for name, model in models:
        start = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        rows.append((name, model.score(X_test, y_test), seconds))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  test accuracy  fit seconds")
    for name, accuracy, seconds in rows:
        print(f"{name:<{width}}  {accuracy:>13.3f}  {seconds:>11.1f}")
    return 0


def _fit(args):
    from .persistence import save_pipeline

    _check_output_dir(args.out, args.overwrite)
    _check_device(args)
    bunch = _load_data(args.data, args.group_column)
    held_out = None
    if args.test_fraction:
        _suggest_group_column(bunch, args.group_column)
        train, test, kind = _held_out_split(bunch, args.test_fraction, args.seed)
        estimate = _pairtune_pipeline(bunch.sampling_rate, args)
        estimate.fit(_subset(bunch.data, train), bunch.target[train])
        accuracy, balanced = _scores(estimate, _subset(bunch.data, test), bunch.target[test])
        held_out = {"n_train": len(train), "n_test": len(test), "kind": kind,
                    "accuracy": accuracy, "balanced_accuracy": balanced}
        print(f"held-out accuracy {accuracy:.4f}, balanced accuracy {balanced:.4f} "
              f"({len(test)} clips, {kind} split); now fitting on all {len(bunch.target)} "
              "clips")
    model = _pairtune_pipeline(bunch.sampling_rate, args)
    start = time.perf_counter()
    model.fit(bunch.data, bunch.target)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    try:
        save_pipeline(model, out, overwrite=args.overwrite,
                      card_sections=_card_sections(args, bunch, seconds, held_out))
    except Exception as exc:
        if _is_safetensors_error(exc):  # safetensors reports disk full and I/O errors so
            raise CommandError(f"could not write the model to {str(out)!r}: {exc}") from None
        raise
    _normalise_modes(out)
    print(f"fitted on all {len(bunch.target)} clips in {seconds:.1f} s; model saved to {out}")
    return 0


def _check_model_dir(directory):
    from .persistence import PIPELINE_MANIFEST

    if not (Path(directory) / PIPELINE_MANIFEST).is_file():
        raise FileNotFoundError(
            f"No saved pipeline in {str(directory)!r}: {PIPELINE_MANIFEST} is missing "
            "(write one with `skaudio-confit fit DATA --out MODEL_DIR`)."
        )


def _load_model(directory):
    from .persistence import load_pipeline

    pipeline = load_pipeline(directory)
    pipeline.steps[0][1].set_params(verbose=0)
    return pipeline


def _embed(args):
    _check_output_file(args.out, args.overwrite, (".npy", ".csv"))
    _check_model_dir(args.model)
    files = _expand_inputs(args.inputs)
    pipeline = _load_model(args.model)
    encoder = pipeline.steps[0][1]
    embeddings = encoder.transform(files)
    out = Path(args.out)
    if out.suffix.lower() == ".npy":
        np.save(out, embeddings)
    else:
        import pandas as pd

        width = len(str(embeddings.shape[1] - 1))
        columns = [f"embedding_{i:0{width}d}" for i in range(embeddings.shape[1])]
        frame = pd.DataFrame(embeddings, columns=columns)
        frame.insert(0, "file", files)
        frame.to_csv(out, index=False)
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {out}")
    return 0


def _predict(args):
    _check_model_dir(args.model)
    files = _expand_inputs(args.inputs)
    pipeline = _load_model(args.model)
    proba = pipeline.predict_proba(files)
    classes = pipeline.classes_
    for path, row in zip(files, proba):
        best = int(np.argmax(row))
        print(f"{path}\t{classes[best]}\t{row[best]:.3f}")
    return 0


def _evaluate(args):
    from sklearn.model_selection import (
        GroupKFold,
        PredefinedSplit,
        StratifiedKFold,
        cross_validate,
    )

    from . import FineTuneClassifier

    _check_device(args)
    bunch = _load_data(args.data, args.group_column)
    X, y = bunch.data, bunch.target
    groups = None
    if args.cv == "folds":
        if "fold" not in bunch:
            raise CommandError("--cv folds needs a dataset with predefined folds (ESC-50).")
        cv = PredefinedSplit(bunch.fold - 1)
        description = "the dataset's predefined folds"
    else:
        n_splits = int(args.cv)
        if bunch.get("groups") is not None:
            n_groups = len(np.unique(bunch.groups))
            if n_groups < n_splits:
                raise CommandError(
                    f"--cv {n_splits} needs at least {n_splits} groups; the data have "
                    f"{n_groups}."
                )
            cv, groups = GroupKFold(n_splits=n_splits), bunch.groups
            description = (f"{n_splits}-fold cross-validation grouped by "
                           f"{args.group_column or 'group'} ({n_groups} groups)")
        else:
            _suggest_group_column(bunch, args.group_column)
            cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=args.seed)
            description = f"{n_splits}-fold stratified cross-validation"
    print(f"{args.data}: {len(y)} clips, {len(bunch.target_names)} classes; {description}.")
    models = {
        "PairTune + LogisticRegression": _pairtune_pipeline(bunch.sampling_rate, args),
        "FineTune": FineTuneClassifier(sampling_rate=bunch.sampling_rate,
                                       **_encoder_params(args, pairtune=False)),
    }
    rows = []
    for name, model in models.items():
        start = time.perf_counter()
        result = cross_validate(model, X, y, cv=cv, groups=groups,
                                scoring=("accuracy", "balanced_accuracy"), error_score="raise")
        seconds = time.perf_counter() - start
        accuracy, balanced = result["test_accuracy"], result["test_balanced_accuracy"]
        print(f"{name}: accuracy per fold {' '.join(f'{s:.3f}' for s in accuracy)}; "
              f"balanced accuracy per fold {' '.join(f'{s:.3f}' for s in balanced)}")
        rows.append((name, accuracy, balanced, seconds))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  accuracy (mean +- std)  balanced accuracy  seconds")
    for name, accuracy, balanced, seconds in rows:
        print(f"{name:<{width}}  {accuracy.mean():>8.3f} +- {accuracy.std():<11.3f}  "
              f"{balanced.mean():>17.3f}  {seconds:>7.1f}")
    return 0


# --------------------------------------------------------------------------- arguments


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _cv_spec(text):
    if text == "folds":
        return text
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be 'folds' or an integer >= 2")
    return str(value)


def _add_training_options(parser, *, default_note):
    own = f"default: {default_note}'s own"
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")
    parser.add_argument("--epochs", type=_non_negative_int, default=None,
                        help=f"training epochs; 0 = frozen encoder ({own})")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help=f"({own})")
    parser.add_argument("--samples-per-class", type=_positive_int, default=None,
                        help=f"clips per class in a PairTune batch ({own})")
    parser.add_argument("--learning-rate", type=_positive_float, default=None,
                        help=f"({own})")
    parser.add_argument("--max-duration", type=_positive_float, default=None,
                        help=f"seconds per crop/window ({own})")
    parser.add_argument("--layer", type=int, default=None,
                        help=f"encoder layer to pool, -1 = last ({own})")
    parser.add_argument("--device", default=None,
                        help=f"'auto', 'cpu' or 'cuda:N' ({own}: 'auto')")
    parser.add_argument("--group-column", default=None, metavar="NAME",
                        help="column of metadata.csv (or esc50.csv) naming each clip's group "
                        "(speaker, kit, session): held-out clips come from unseen groups "
                        "(default: the 'group' column if there is one)")
    parser.add_argument("--seed", type=int, default=0, help="random_state (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


DATA_HELP = ("DATA is an ESC-50 root (audio/, meta/esc50.csv) or an audio folder (one "
             "sub-folder per class, or metadata.csv with path,label[,group] columns).")
INPUTS_HELP = ("audio files, folders (searched recursively) or CSV files with a 'path' "
               "column (relative to the CSV)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skaudio-confit",
        description="Contrastive fine-tuning of pretrained audio encoders (AudioConFit).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="frozen vs FineTune vs PairTune on bundled FSDD speakers (offline, CPU ok)",
        description="Few-shot speaker identification on the bundled Free Spoken Digit "
        "Dataset with the bundled Whisper tiny.en encoder: frozen encoder + "
        "LogisticRegression, FineTune, and PairTune + LogisticRegression, same split. "
        "A quick run: 3 epochs unless --epochs says otherwise.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=3,
                      help="FineTune and PairTune epochs (3, for a quick demo)")
    demo.add_argument("--train-takes", type=_positive_int, default=5,
                      choices=range(1, 46), metavar="N",
                      help="training takes per speaker and digit, 1-45 (5)")
    demo.add_argument("--learning-rate", type=_positive_float, default=1e-4,
                      help="peak learning rate (1e-4, the estimators' default)")
    demo.add_argument("--seed", type=int, default=0, help="random_state (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    fit = commands.add_parser(
        "fit", help="fit PairTune + LogisticRegression on all of DATA and save it",
        description=f"{DATA_HELP} Fits PairTune + LogisticRegression on all clips of DATA "
        "and saves the pipeline in the safe format (safetensors + JSON) with a "
        "MODEL_CARD.md. With --test-fraction, first estimates held-out accuracy with a "
        "separate fit on the rest (twice the training time).",
    )
    fit.add_argument("data", metavar="DATA")
    fit.add_argument("--out", required=True, metavar="MODEL_DIR",
                     help="new or empty directory, or a previous save")
    fit.add_argument("--overwrite", action="store_true",
                     help="write into MODEL_DIR even if it holds other files")
    fit.add_argument("--test-fraction", type=_fraction, default=0.0, metavar="F",
                     help="also report accuracy on a held-out fraction F of DATA "
                     "(grouped when there are groups); 0 = no held-out estimate (0)")
    _add_training_options(fit, default_note="PairTuneTransformer")
    fit.set_defaults(func=_fit)

    embed = commands.add_parser("embed", help="embed audio with a saved model",
                                description="Write one embedding per file to .npy or .csv "
                                "(columns file, embedding_0, embedding_1, ...).")
    embed.add_argument("model", metavar="MODEL_DIR")
    embed.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    embed.add_argument("--out", required=True, help="embeddings.npy or embeddings.csv")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    embed.set_defaults(func=_embed)

    predict = commands.add_parser("predict", help="predict labels of audio",
                                  description="Print file, predicted label, probability.")
    predict.add_argument("model", metavar="MODEL_DIR")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP)
    predict.set_defaults(func=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="cross-validated accuracy, PairTune vs FineTune",
        description=f"{DATA_HELP} Cross-validated accuracy and balanced accuracy (per fold "
        "and mean) of PairTune + LogisticRegression and of FineTune. --cv folds uses "
        "ESC-50's official folds; an integer N uses N-fold cross-validation, grouped when "
        "the data have groups (see --group-column).",
    )
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--cv", type=_cv_spec, default="5", help="'folds' or N (5)")
    _add_training_options(evaluate, default_note="the estimators")
    evaluate.set_defaults(func=_evaluate)
    return parser


def _is_safetensors_error(exc):
    return type(exc).__module__.split(".")[0] == "safetensors"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"skaudio-confit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {exc.filename!r}" if exc.filename else ""
            print(f"skaudio-confit: error: disk full{where}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"skaudio-confit: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"skaudio-confit: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _is_safetensors_error(exc):  # a corrupt or truncated checkpoint
            print(f"skaudio-confit: error: could not read model weights: {exc}",
                  file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("skaudio-confit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
