"""benchmarks/esc50.py end to end on CPU: a tiny backbone and a small fake ESC-50."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import realistic_checkpoint

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def fake_esc50(root, clips_per_fold=2, rate=8000):
    """The official layout (audio/*.wav, meta/esc50.csv) with 3 classes of noisy sines."""
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, 6):
        for target, (category, freq) in enumerate([("dog", 300), ("rain", 1200),
                                                   ("siren", 2500)]):
            for take in "AB"[:clips_per_fold]:
                name = f"{fold}-{100 * fold + target}-{take}-{target}.wav"
                t = np.arange(int(0.1 * rate)) / rate
                wave = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
                sf.write(str(root / "audio" / name), wave.astype(np.float32), rate, "PCM_16")
                rows.append({"filename": name, "fold": fold, "target": target,
                             "category": category, "esc10": False,
                             "src_file": 100 * fold + target, "take": take})
    pd.DataFrame(rows).to_csv(root / "meta" / "esc50.csv", index=False)


def test_esc50_benchmark_runs_the_five_folds_for_every_method(tmp_path, monkeypatch):
    fake_esc50(tmp_path / "ESC-50-master")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("esc50", None)
    import esc50

    out = tmp_path / "results"
    report = esc50.main([
        "--root", str(tmp_path / "ESC-50-master"),
        "--backbone", realistic_checkpoint("wav2vec2_base"),
        "--device", "cpu", "--epochs", "1", "--batch-size", "8", "--learning-rate", "1e-3",
        "--output-dir", str(out), "--name", "esc50_test",
    ])
    saved = json.loads((out / "esc50_test.json").read_text())
    assert saved["clips"] == 30 and saved["sampling_rate"] == 8000
    records = saved["records"]
    assert len(records) == 3 * 5
    for method in ("frozen", "finetune", "pairtune"):
        folds = sorted(r["fold"] for r in records if r["method"] == method)
        assert folds == [1, 2, 3, 4, 5]
    for r in records:
        assert r["train clips"] == 24 and r["test clips"] == 6
        assert r["accuracy"] * 6 == pytest.approx(round(r["accuracy"] * 6))  # of 6 clips
        assert (r["final loss"] is None) == (r["method"] == "frozen")
    summary = saved["summary"]
    for method, s in summary.items():
        per_fold = [r["accuracy"] for r in records if r["method"] == method]
        assert s["mean"] == pytest.approx(np.mean(per_fold))
    # Sines of three frequencies: a linear classifier on any encoder separates them.
    assert summary["frozen"]["mean"] > 0.6
    table = (out / "esc50_test.md").read_text()
    assert "PairTune + LR" in table and "FineTune" in table and "Frozen + LR" in table
    assert report["summary"] == summary
