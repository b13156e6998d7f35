"""The ``skaudio-confit`` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from . import PairTuneTransformer
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
    rows = []
    for name, epochs in [("frozen encoder + LogisticRegression", 0),
                         (f"PairTune ({args.epochs} epochs) + LogisticRegression", args.epochs)]:
        model = make_pipeline(
            PairTuneTransformer(
                sampling_rate=bunch.sampling_rate, epochs=epochs,
                learning_rate=args.learning_rate, random_state=args.seed,
                verbose=int(not args.quiet),
            ),
            StandardScaler(),
            LogisticRegression(max_iter=2000),
        )
        start = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        rows.append((name, model.score(X_test, y_test), seconds))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  test accuracy  fit seconds")
    for name, accuracy, seconds in rows:
        print(f"{name:<{width}}  {accuracy:>13.3f}  {seconds:>11.1f}")
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skaudio-confit",
        description="Contrastive fine-tuning of pretrained audio encoders (AudioConFit).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="PairTune vs the frozen encoder on bundled FSDD speakers (offline, CPU ok)",
        description="Few-shot speaker identification on the bundled Free Spoken Digit "
        "Dataset with the bundled Whisper tiny.en encoder: frozen encoder + "
        "LogisticRegression against PairTune + LogisticRegression, same split.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=3, help="PairTune epochs (3)")
    demo.add_argument("--train-takes", type=_positive_int, default=5,
                      choices=range(1, 46), metavar="N",
                      help="training takes per speaker and digit, 1-45 (5)")
    demo.add_argument("--learning-rate", type=float, default=5e-5, help="(5e-5)")
    demo.add_argument("--seed", type=int, default=0, help="random_state (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
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
