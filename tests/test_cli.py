"""End-to-end tests of the ``skaudio-confit`` command line on tiny data."""

from __future__ import annotations

import errno
import hashlib
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
    assert "18 clips" in card and "3 classes" in card
    # The saved model is trained on all of DATA, and the card says so.
    assert "Trained on: all 18 clips" in card
    assert "Held-out accuracy: not measured" in card


def test_fit_trains_the_saved_model_on_all_of_the_data(model_dir, audio_folder,
                                                       tiny_whisper_encoder_dir):
    from skaudio_confit.cli import _pairtune_pipeline, build_parser
    from skaudio_confit.datasets import load_audio_folder
    from skaudio_confit.persistence import load_pipeline

    # The same fit in Python on every clip gives the saved model (same seed, CPU).
    args = build_parser().parse_args(["fit", str(audio_folder), "--out", "unused",
                                      "--backbone", str(tiny_whisper_encoder_dir), *FAST])
    X, y = load_audio_folder(audio_folder, return_X_y=True)
    expected = _pairtune_pipeline(16000, args).fit(X, y)
    saved = load_pipeline(model_dir)
    np.testing.assert_allclose(saved[:-1].transform(X[:4]), expected[:-1].transform(X[:4]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved[-1].coef_, expected[-1].coef_, rtol=1e-4, atol=1e-6)


def test_fit_with_a_test_fraction_reports_held_out_scores_then_fits_on_everything(
        audio_folder, tiny_whisper_encoder_dir, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["fit", str(audio_folder), "--out", str(out), "--test-fraction", "0.5",
                 "--backbone", str(tiny_whisper_encoder_dir), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "balanced accuracy" in printed
    assert "fitted on all 18 clips" in printed
    card = (out / "MODEL_CARD.md").read_text()
    assert "Trained on: all 18 clips" in card
    assert "trained on 9 clips and scored on the other 9" in card


def test_saved_files_have_one_mode(model_dir):
    modes = {path.stat().st_mode & 0o777 for path in model_dir.rglob("*") if path.is_file()}
    assert len(modes) == 1 and modes.pop() & 0o600 == 0o600


def saved_pipeline(model_dir):
    from skaudio_confit.persistence import load_pipeline

    return load_pipeline(model_dir)


def test_predict_prints_one_line_per_file(model_dir, audio_folder, capsys):
    files = sorted(str(p) for p in audio_folder.rglob("*.wav"))[:4]
    assert main(["predict", str(model_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    # Label and probability are those of the saved pipeline, to the printed 3 decimals.
    pipeline = saved_pipeline(model_dir)
    proba = pipeline.predict_proba(files)
    for line, row in zip(lines, proba):
        _, label, probability = line.split("\t")
        assert label == pipeline.classes_[row.argmax()]
        assert float(probability) == pytest.approx(row.max(), abs=5.1e-4)


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
        assert list(frame.columns[1:]) == [f"embedding_{i:02d}" for i in range(64)]
        emb = frame.drop(columns="file").to_numpy()
    # The saved encoder's transform of the same files (CSV holds float32 as text).
    expected = saved_pipeline(model_dir)[0].transform(files)
    assert emb.shape == expected.shape == (3, 64)  # [pretrained, tuned] features
    np.testing.assert_allclose(emb, expected, rtol=1e-6, atol=1e-7)


def test_predict_takes_a_folder_and_a_csv(model_dir, audio_folder, tmp_path, capsys):
    files = sorted(audio_folder.rglob("*.wav"))
    assert main(["predict", str(model_dir), str(audio_folder)]) == 0
    from_folder = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in from_folder] == [str(p) for p in files]
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(files[0]), str(files[-1])]}).to_csv(listing, index=False)
    assert main(["predict", str(model_dir), str(listing)]) == 0
    from_csv = capsys.readouterr().out.strip().splitlines()
    assert from_csv == [from_folder[0], from_folder[-1]]


def test_the_same_file_twice_is_warned_about(model_dir, audio_folder, tmp_path,
                                             monkeypatch, capsys):
    wav = next(audio_folder.rglob("*.wav"))
    monkeypatch.chdir(wav.parent)
    assert main(["predict", str(model_dir), wav.name, f"./{wav.name}"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2
    assert "same file" in captured.err and wav.name in captured.err


def test_fit_refuses_a_foreign_directory_before_any_work(audio_folder, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    # The data path does not even exist: the output is checked first.
    assert main(["fit", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skaudio-confit: error: --out") and str(out) in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "precious"
    assert main(["fit", str(tmp_path / "no-data"), "--out", str(out / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skaudio-confit: error: --out") and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "precious"


def test_fit_overwrite_and_refit_into_a_previous_save(audio_folder, tiny_whisper_encoder_dir,
                                                      tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "README").write_text("mine")
    args = ["fit", str(audio_folder), "--out", str(out), "--backbone",
            str(tiny_whisper_encoder_dir), *FAST]
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert main(args) == 0  # a previous save of ours may be replaced without --overwrite


def test_embed_checks_its_output_before_loading_anything(tmp_path, capsys):
    existing = tmp_path / "e.npy"
    existing.write_bytes(b"keep")
    missing_model = str(tmp_path / "no-model")
    assert main(["embed", missing_model, "x.wav", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert existing.read_bytes() == b"keep"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["embed", missing_model, "x.wav", "--out", str(blocker / "e.npy")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["embed", missing_model, "x.wav", "--out", str(tmp_path / "new.npy")]) == 2
    assert "No saved pipeline" in capsys.readouterr().err


def test_inputs_are_checked_before_the_model_is_loaded(model_dir, tmp_path, monkeypatch,
                                                        capsys):
    import skaudio_confit.persistence as persistence

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(persistence, "load_pipeline", never)
    assert main(["embed", str(model_dir), str(tmp_path / "nope.wav"), "--out",
                 str(tmp_path / "new.npy")]) == 2
    assert "nope.wav" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(tmp_path)]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_embed_overwrite_replaces_the_file(model_dir, audio_folder, tmp_path):
    wav = str(next(audio_folder.rglob("*.wav")))
    out = tmp_path / "e.npy"
    out.write_bytes(b"old")
    assert main(["embed", str(model_dir), wav, "--out", str(out), "--overwrite"]) == 0
    np.testing.assert_array_equal(np.load(out), saved_pipeline(model_dir)[0].transform([wav]))


def test_a_corrupt_checkpoint_gives_a_one_line_error(model_dir, audio_folder, tmp_path,
                                                     capsys):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "pairtune" / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)  # not a safetensors file at all
    manifest = broken / "pairtune" / "skaudio_confit.json"
    entries = json.loads(manifest.read_text())
    entries["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(entries))
    wav = str(next(audio_folder.rglob("*.wav")))
    assert main(["predict", str(broken), wav]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skaudio-confit: error:") and "model.safetensors" in err
    assert len(err.splitlines()) == 1


def test_a_weights_write_failure_gives_a_one_line_error(audio_folder, tiny_whisper_encoder_dir,
                                                       tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    import skaudio_confit.persistence as persistence

    def full(*args, **kwargs):  # what safetensors raises when the disk fills up
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(persistence, "save_pipeline", full)
    out = tmp_path / "m"
    assert main(["fit", str(audio_folder), "--out", str(out), "--backbone",
                 str(tiny_whisper_encoder_dir), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not write the model" in err and str(out) in err and "No space" in err
    assert len(err.splitlines()) == 1


def test_a_full_disk_gives_a_one_line_error(model_dir, audio_folder, tmp_path, monkeypatch,
                                            capsys):
    def no_space(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(np, "save", no_space)
    wav = str(next(audio_folder.rglob("*.wav")))
    out = tmp_path / "e.npy"
    assert main(["embed", str(model_dir), wav, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "disk full" in err and "e.npy" in err and len(err.splitlines()) == 1


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
    out = capsys.readouterr().out
    assert "2-fold stratified" in out
    for model in ("PairTune + LogisticRegression", "FineTune"):
        line = next(line for line in out.splitlines() if line.startswith(f"{model}: "))
        per_fold = np.array(line.split("accuracy per fold ")[1].split(";")[0].split(),
                            dtype=float)
        # Accuracies of 9 test clips each (18 clips, 2 folds), printed to 3 decimals.
        assert len(per_fold) == 2
        np.testing.assert_allclose(per_fold * 9, np.round(per_fold * 9), atol=9 * 5.1e-4)
        assert "balanced accuracy per fold" in line
        # The summary row's mean is the mean of the folds.
        summary = next(row for row in out.splitlines()[::-1] if row.startswith(model))
        assert float(summary.split()[-5]) == pytest.approx(per_fold.mean(), abs=1.1e-3)
    assert "balanced accuracy" in out.splitlines()[-3]


@pytest.fixture(scope="module")
def folder_with_kits(tmp_path_factory):
    """An audio folder with a metadata.csv whose groups are in a 'kit' column."""
    root = tmp_path_factory.mktemp("kits")
    X, y = make_class_sines(n_per_class=6, n_classes=2, seed=2)
    rows = []
    for i, (wave, label) in enumerate(zip(X, y)):
        sf.write(root / f"{i}.wav", wave, 16000)
        rows.append({"path": f"{i}.wav", "label": f"c{label}", "kit": f"kit{i % 3}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_evaluate_suggests_and_uses_a_group_column(folder_with_kits, tiny_whisper_encoder_dir,
                                                   capsys):
    args = ["evaluate", str(folder_with_kits), "--cv", "3", "--backbone",
            str(tiny_whisper_encoder_dir), *FAST]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "3-fold stratified" in captured.out
    assert "'kit'" in captured.err and "--group-column" in captured.err
    assert main([*args, "--group-column", "kit"]) == 0
    captured = capsys.readouterr()
    assert "grouped by kit (3 groups)" in captured.out and "--group-column" not in captured.err
    assert main([*args, "--group-column", "speaker"]) == 2
    assert "'speaker'" in capsys.readouterr().err


def test_layer_and_device_reach_the_estimator(audio_folder, tiny_whisper_encoder_dir,
                                              tmp_path):
    from skaudio_confit.persistence import load_pipeline

    out = tmp_path / "m"
    assert main(["fit", str(audio_folder), "--out", str(out), "--backbone",
                 str(tiny_whisper_encoder_dir), "--layer", "1", "--device", "cpu",
                 *FAST]) == 0
    params = load_pipeline(out).named_steps["pairtune"].get_params()
    assert params["layer"] == 1 and params["device"] == "cpu"


def test_a_bad_device_fails_before_the_data_are_read(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "no-data"), "--out", str(tmp_path / "m"),
                 "--device", "tpu"]) == 2
    assert "device must be" in capsys.readouterr().err


def test_unset_options_keep_the_estimators_defaults():
    from skaudio_confit import PairTuneTransformer
    from skaudio_confit.cli import _encoder_params, build_parser

    args = build_parser().parse_args(["fit", "d", "--out", "m"])
    params = _encoder_params(args, pairtune=True)
    assert set(params) == {"random_state", "verbose"}
    defaults = PairTuneTransformer().get_params()
    assert PairTuneTransformer(**params).get_params()["epochs"] == defaults["epochs"]


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
    ["fit", "d", "--out", "m", "--test-fraction", "1"],
    ["fit", "d", "--out", "m", "--epochs", "-1"],
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


def test_import_and_help_do_not_load_torch_transformers_or_skorch():
    code = (
        "import sys, contextlib, io\n"
        "import skaudio_confit\n"
        "from skaudio_confit.cli import main\n"
        "for argv in ([ '--help'], ['fit', '--help'], ['predict', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "heavy = [m for m in ('torch', 'transformers', 'skorch') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_estimators_still_import_from_the_package():
    import skaudio_confit
    from skaudio_confit import FineTuneClassifier, PairTuneTransformer

    assert PairTuneTransformer.__module__ == "skaudio_confit.pairtune"
    assert FineTuneClassifier is skaudio_confit.FineTuneClassifier
    assert set(skaudio_confit.__all__) <= set(dir(skaudio_confit))
    with pytest.raises(AttributeError, match="no attribute 'Bogus'"):
        skaudio_confit.Bogus


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "skaudio_confit.cli", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("demo", "fit", "embed", "predict", "evaluate"):
        assert command in result.stdout
