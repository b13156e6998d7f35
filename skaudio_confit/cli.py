"""The ``skaudio-confit`` command line."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


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


def _load_data(path):
    """An ESC-50 root (meta/esc50.csv) or an audio folder, as a Bunch."""
    from pathlib import Path

    from .datasets import load_audio_folder, load_esc50

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Data directory not found: {str(root)!r}.")
    if (root / "meta" / "esc50.csv").is_file():
        return load_esc50(root)
    return load_audio_folder(root)


def _encoder_params(args):
    params = {"epochs": args.epochs, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "max_duration": args.max_duration,
              "random_state": args.seed, "verbose": int(not args.quiet)}
    if args.backbone is not None:
        params["backbone"] = args.backbone
    return params


def _pairtune_pipeline(bunch, args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from . import PairTuneTransformer

    return Pipeline([
        ("pairtune", PairTuneTransformer(sampling_rate=bunch.sampling_rate,
                                         samples_per_class=args.samples_per_class,
                                         **_encoder_params(args))),
        ("clf", LogisticRegression(max_iter=2000)),
    ])


def _fit(args):
    import json
    from pathlib import Path

    from sklearn.model_selection import train_test_split

    from . import __version__
    from .persistence import save_pipeline

    bunch = _load_data(args.data)
    indices = np.arange(len(bunch.target))
    train, test = train_test_split(indices, test_size=args.test_fraction,
                                   stratify=bunch.target, random_state=args.seed)
    model = _pairtune_pipeline(bunch, args)
    start = time.perf_counter()
    model.fit([bunch.data[i] for i in train], bunch.target[train])
    seconds = time.perf_counter() - start
    accuracy = model.score([bunch.data[i] for i in test], bunch.target[test])
    out = Path(args.out)
    save_pipeline(model, out)
    params = model.named_steps["pairtune"].get_params()
    card = [
        "# skaudio-confit model card", "",
        f"- Package: skaudio-confit {__version__}",
        f"- Data: `{args.data}`: {len(bunch.target)} clips, {len(bunch.target_names)} classes "
        f"({', '.join(map(str, bunch.target_names[:10]))}"
        f"{', ...' if len(bunch.target_names) > 10 else ''})",
        f"- Split: {len(train)} training / {len(test)} held-out clips (stratified, seed {args.seed})",
        "- Model: PairTuneTransformer + LogisticRegression",
        f"- Held-out accuracy: {accuracy:.4f}",
        f"- Fit time: {seconds:.1f} s",
        "", "## PairTune parameters", "", "```json",
        json.dumps({k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool))
                        else v) for k, v in params.items()}, indent=2, sort_keys=True),
        "```", "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(card))
    print(f"held-out accuracy {accuracy:.4f} ({len(test)} clips); model saved to {out}")
    return 0


def _embed(args):
    from pathlib import Path

    from .persistence import load_pipeline

    pipeline = load_pipeline(args.model)
    encoder = pipeline.steps[0][1]
    encoder.set_params(verbose=0)
    embeddings = encoder.transform(list(args.files))
    out = Path(args.out)
    if out.suffix == ".npy":
        np.save(out, embeddings)
    elif out.suffix == ".csv":
        import pandas as pd

        frame = pd.DataFrame(embeddings, columns=encoder.get_feature_names_out())
        frame.insert(0, "file", list(args.files))
        frame.to_csv(out, index=False)
    else:
        raise ValueError(f"--out must end in .npy or .csv, got {str(out)!r}.")
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {out}")
    return 0


def _predict(args):
    from .persistence import load_pipeline

    pipeline = load_pipeline(args.model)
    pipeline.steps[0][1].set_params(verbose=0)
    proba = pipeline.predict_proba(list(args.files))
    classes = pipeline.classes_
    for path, row in zip(args.files, proba):
        best = int(np.argmax(row))
        print(f"{path}\t{classes[best]}\t{row[best]:.3f}")
    return 0


def _evaluate(args):
    from sklearn.model_selection import (
        GroupKFold,
        PredefinedSplit,
        StratifiedKFold,
        cross_val_score,
    )

    from . import FineTuneClassifier

    bunch = _load_data(args.data)
    X, y = bunch.data, bunch.target
    groups = None
    if args.cv == "folds":
        if "fold" not in bunch:
            raise ValueError("--cv folds needs a dataset with predefined folds (ESC-50).")
        cv = PredefinedSplit(bunch.fold - 1)
        description = "the dataset's predefined folds"
    else:
        n_splits = int(args.cv)
        if bunch.get("groups") is not None:
            cv, groups = GroupKFold(n_splits=n_splits), bunch.groups
            description = f"{n_splits}-fold cross-validation grouped by the data's groups"
        else:
            cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=args.seed)
            description = f"{n_splits}-fold stratified cross-validation"
    print(f"{args.data}: {len(y)} clips, {len(bunch.target_names)} classes; {description}.")
    models = {
        "PairTune + LogisticRegression": _pairtune_pipeline(bunch, args),
        "FineTune": FineTuneClassifier(sampling_rate=bunch.sampling_rate, **_encoder_params(args)),
    }
    rows = []
    for name, model in models.items():
        start = time.perf_counter()
        scores = cross_val_score(model, X, y, cv=cv, groups=groups)
        rows.append((name, scores.mean(), scores.std(), time.perf_counter() - start))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  accuracy (mean +- std)  seconds")
    for name, mean, std, seconds in rows:
        print(f"{name:<{width}}  {mean:>8.3f} +- {std:<11.3f}  {seconds:>7.1f}")
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _cv_spec(text):
    if text == "folds":
        return text
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be 'folds' or an integer >= 2")
    return str(value)


def _add_training_options(parser):
    parser.add_argument("--backbone", default=None,
                        help="hub id or local directory (default: bundled Whisper tiny.en)")
    parser.add_argument("--epochs", type=_positive_int, default=3, help="(3)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="(32)")
    parser.add_argument("--samples-per-class", type=_positive_int, default=4,
                        help="clips per class in a PairTune batch (4)")
    parser.add_argument("--learning-rate", type=_positive_float, default=5e-5, help="(5e-5)")
    parser.add_argument("--max-duration", type=_positive_float, default=10.0,
                        help="seconds per crop/window (10)")
    parser.add_argument("--seed", type=int, default=0, help="random_state (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
        "LogisticRegression, FineTune, and PairTune + LogisticRegression, same split.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=3,
                      help="FineTune and PairTune epochs (3)")
    demo.add_argument("--train-takes", type=_positive_int, default=5,
                      choices=range(1, 46), metavar="N",
                      help="training takes per speaker and digit, 1-45 (5)")
    demo.add_argument("--learning-rate", type=_positive_float, default=5e-5, help="(5e-5)")
    demo.add_argument("--seed", type=int, default=0, help="random_state (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    fit = commands.add_parser(
        "fit", help="fit PairTune + LogisticRegression on a dataset and save it",
        description="DATA is an ESC-50 root (audio/, meta/esc50.csv) or an audio folder "
        "(one sub-folder per class, or metadata.csv with path,label). Saves the pipeline "
        "in the safe format (safetensors + JSON) and a MODEL_CARD.md.",
    )
    fit.add_argument("data", metavar="DATA")
    fit.add_argument("--out", required=True, metavar="MODEL_DIR")
    fit.add_argument("--test-fraction", type=float, default=0.2,
                     help="held-out fraction for the model card's accuracy (0.2)")
    _add_training_options(fit)
    fit.set_defaults(func=_fit)

    embed = commands.add_parser("embed", help="embed audio files with a saved model",
                                description="Write one embedding per file to .npy or .csv.")
    embed.add_argument("model", metavar="MODEL_DIR")
    embed.add_argument("files", nargs="+", metavar="FILE")
    embed.add_argument("--out", required=True, help="embeddings.npy or embeddings.csv")
    embed.set_defaults(func=_embed)

    predict = commands.add_parser("predict", help="predict labels of audio files",
                                  description="Print file, predicted label, probability.")
    predict.add_argument("model", metavar="MODEL_DIR")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.set_defaults(func=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="cross-validated accuracy, PairTune vs FineTune",
        description="Cross-validated accuracy of PairTune + LogisticRegression and of "
        "FineTune on DATA. --cv folds uses ESC-50's official folds; an integer N uses "
        "N-fold cross-validation (grouped when the data have groups).",
    )
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--cv", type=_cv_spec, default="5", help="'folds' or N (5)")
    _add_training_options(evaluate)
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f"skaudio-confit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
