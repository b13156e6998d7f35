"""benchmarks/_common.py: the data splits, summaries and arguments the benchmarks share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        sys.modules.pop("_common", None)
        import _common

        yield _common
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_summaries_are_mean_and_sample_std(common):
    rows = [{"seed": 0, "accuracy": 0.5, "n": 3, "name": "a", "ok": True},
            {"seed": 1, "accuracy": 0.7, "n": 5, "name": "b", "ok": False}]
    summary = common.summarise(rows)
    assert set(summary) == {"accuracy", "n"}  # numbers only, not the seed or flags
    assert summary["accuracy"] == pytest.approx({"mean": 0.6, "std": np.sqrt(0.02)})
    assert common.summarise(rows[:1], ["accuracy"]) == {"accuracy": {"mean": 0.5, "std": 0.0}}
    assert common.fmt(summary["n"], 1) == "4.0 ± 1.4"
    assert common.fmt(None) == "n/a"


def test_key_value_reads_python_literals(common):
    assert common.key_value("layer=2") == ("layer", 2)
    assert common.key_value("max_duration=None") == ("max_duration", None)
    assert common.key_value("mining=none") == ("mining", "none")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        common.key_value("layer")


def test_peak_normalise(common):
    wave = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    np.testing.assert_allclose(common.peak_normalise(wave), [0.25, -1.0, 0.5])
    silence = np.zeros(4, dtype=np.float32)
    assert common.peak_normalise(silence) is silence


def test_fsdd_splits(common):
    speakers = common.load_task("fsdd-speaker-fewshot")
    (name, train, test), = speakers["splits"]
    assert (name, len(train), len(test)) == ("official", 300, 300)
    assert not set(train) & set(test)
    digits = common.load_task("fsdd-digit-unseen-speaker", rotations=["theo", "george"],
                              max_splits=1)
    (name, digit_train, digit_test), = digits["splits"]
    assert (name, len(digit_train), len(digit_test)) == ("theo", 250, 500)
    groups = digits["inner_groups"]
    assert set(groups[digit_test]) == {"theo"} and "theo" not in set(groups[digit_train])
    # The one-split loader of analysis.py and convergence.py gives the same clips.
    X_train, y_train, X_test, y_test, rate = common.load_train_test("fsdd-speaker", "opl3")
    np.testing.assert_array_equal(y_train, speakers["y"][train])
    np.testing.assert_array_equal(X_test[7], speakers["X"][test[7]])
    assert rate == speakers["rate"] == 8000


def test_gm_fewshot_takes_two_notes_per_program_and_soundfont(common):
    rows = [{"program": p, "soundfont": s, "note": n}
            for p in range(3) for s in common.GM_CORE3 for n in range(5)]
    meta = pd.DataFrame(rows)
    train = np.flatnonzero(meta["soundfont"] != "opl3")
    picked = common.gm_fewshot_train(meta, train, "opl3")
    assert len(picked) == 3 * 2 * common.GM_SHOTS // 2
    chosen = meta.iloc[picked]
    assert set(chosen["soundfont"]) == {"fluidr3", "timgm6mb"}
    assert chosen.groupby(["program", "soundfont"]).size().tolist() == [2] * 6
    # Fixed by the held-out soundfont, whatever the model seed.
    np.testing.assert_array_equal(common.gm_fewshot_train(meta, train, "opl3"), picked)
