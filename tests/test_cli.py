"""End-to-end tests of the ``skaudio-confit`` command line on tiny data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import make_class_sines

from skaudio_confit.cli import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")
FAST = ["--epochs", "1", "--batch-size", "6", "--samples-per-class", "2", "--quiet"]


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    X, y = make_class_sines(n_per_class=6)
    for i, (wave, label) in enumerate(zip(X, y)):
        (root / f"class{label}").mkdir(exist_ok=True)
        sf.write(root / f"class{label}" / f"{i}.wav", wave, 16000)
    return root


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory):
    """A miniature ESC-50 layout: 3 categories, 10 clips, folds 1-5."""
    root = tmp_path_factory.mktemp("esc50")
    (root / "audio").mkdir()
    (root / "meta").mkdir()
    X, y = make_class_sines(n_per_class=10, n_classes=2, seed=1)
    rows = []
    for i, (wave, label) in enumerate(zip(X, y)):
        name = f"{i % 5 + 1}-{i}-A-{label}.wav"
        sf.write(root / "audio" / name, wave, 16000)
        rows.append({"filename": name, "fold": i % 5 + 1, "target": label,
                     "category": ["dog", "rain"][label], "esc10": True,
                     "src_file": i, "take": "A"})
    pd.DataFrame(rows).to_csv(root / "meta" / "esc50.csv", index=False)
    return root


@pytest.fixture(scope="module")
def model_dir(audio_folder, tiny_whisper_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["fit", str(audio_folder), "--out", str(out), "--backbone",
                 str(tiny_whisper_encoder_dir), *FAST]) == 0
    return out


def test_fit_writes_a_safe_model_and_a_model_card(model_dir, capsys):
    assert (model_dir / "pipeline.json").is_file()
    assert (model_dir / "pairtune" / "model.safetensors").is_file()
    assert not list(model_dir.rglob("*.pkl")) and not list(model_dir.rglob("*.joblib"))
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "Held-out accuracy" in card and "18 clips" in card and "3 classes" in card


def test_predict_prints_one_line_per_file(model_dir, audio_folder, capsys):
    files = sorted(str(p) for p in audio_folder.rglob("*.wav"))[:4]
    assert main(["predict", str(model_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    for line in lines:
        _, label, probability = line.split("\t")
        assert label in {"class0", "class1", "class2"} and 0 < float(probability) <= 1


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_embed_writes_npy_or_csv(model_dir, audio_folder, tmp_path, suffix):
    files = sorted(str(p) for p in audio_folder.rglob("*.wav"))[:3]
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(model_dir), *files, "--out", str(out)]) == 0
    if suffix == ".npy":
        emb = np.load(out)
    else:
        frame = pd.read_csv(out)
        assert list(frame["file"]) == files
        emb = frame.drop(columns="file").to_numpy()
    assert emb.shape == (3, 32) and np.isfinite(emb).all()


def test_evaluate_with_esc50_folds(esc50_root, tiny_whisper_encoder_dir, capsys):
    assert main(["evaluate", str(esc50_root), "--cv", "folds", "--backbone",
                 str(tiny_whisper_encoder_dir), *FAST]) == 0
    out = capsys.readouterr().out
    assert "predefined folds" in out
    assert "PairTune + LogisticRegression" in out and "FineTune" in out


def test_evaluate_with_n_folds_on_an_audio_folder(audio_folder, tiny_whisper_encoder_dir,
                                                  capsys):
    assert main(["evaluate", str(audio_folder), "--cv", "2", "--backbone",
                 str(tiny_whisper_encoder_dir), *FAST]) == 0
    assert "2-fold stratified" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["predict", "/nonexistent/model", "a.wav"], "No saved pipeline"),
    (["fit", "/nonexistent/data", "--out", "x"], "Data directory not found"),
    (["evaluate", "/nonexistent/data", "--cv", "folds"], "Data directory not found"),
])
def test_bad_paths_give_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skaudio-confit: error:") and message in err
    assert len(err.splitlines()) == 1


def test_unreadable_audio_gives_a_one_line_error(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    assert main(["predict", str(model_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.wav" in err and len(err.strip().splitlines()) == 1


def test_embed_refuses_an_unknown_output_format(model_dir, audio_folder, tmp_path, capsys):
    wav = str(next(audio_folder.rglob("*.wav")))
    assert main(["embed", str(model_dir), wav, "--out", str(tmp_path / "e.txt")]) == 2
    assert ".npy or .csv" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["fit"], ["demo", "--epochs", "0"], ["evaluate", "d", "--cv", "1"],
    ["fit", "d", "--out", "m", "--learning-rate", "-1"],
])
def test_bad_arguments_exit_non_zero(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["demo", "fit", "embed", "predict", "evaluate"])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: skaudio-confit " + command in capsys.readouterr().out


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "skaudio_confit.cli", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("demo", "fit", "embed", "predict", "evaluate"):
        assert command in result.stdout
