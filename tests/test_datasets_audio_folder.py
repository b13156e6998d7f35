"""Tests for load_audio_folder on tiny folders written here and on the shared drums set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.model_selection import GroupKFold
from sklearn.utils import Bunch

from skaudio_confit.datasets import load_audio_folder

DRUMS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drums"
RATE = 8000


def write(path, rate=RATE, n=200, channels=1, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (n,) if channels == 1 else (n, channels)
    data = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    subtype = "VORBIS" if path.suffix.lower() == ".ogg" else "PCM_16"
    sf.write(str(path), data, rate, subtype)
    return path


@pytest.fixture
def class_folders(tmp_path):
    """dog/ and cat/ class folders, plus files the loader must skip."""
    root = tmp_path / "sounds"
    write(root / "dog" / "b.wav", seed=1)
    write(root / "dog" / "a.flac", seed=2)
    write(root / "dog" / "more" / "c.ogg", seed=3)  # nested: still a dog
    write(root / "cat" / "z.WAV", seed=4)  # extensions match case-insensitively
    (root / "cat" / "notes.txt").write_text("not audio")
    write(root / "cat" / ".hidden.wav", seed=5)
    write(root / ".cache" / "x.wav", seed=6)  # hidden folder: not a class
    write(root / "loose.wav", seed=7)  # not in a class folder
    (root / "empty").mkdir()  # no audio: no class
    return root


def test_class_folders(class_folders):
    bunch = load_audio_folder(class_folders)
    assert isinstance(bunch, Bunch)
    assert set(bunch) == {
        "data",
        "target",
        "target_names",
        "sampling_rate",
        "groups",
        "frame",
        "filenames",
        "DESCR",
    }
    expected = ["cat/z.WAV", "dog/a.flac", "dog/b.wav", "dog/more/c.ogg"]
    assert bunch.frame["path"].tolist() == expected
    assert bunch.frame.columns.tolist() == ["path", "label"]
    assert bunch.frame.index.equals(pd.RangeIndex(4))
    assert bunch.target.tolist() == ["cat", "dog", "dog", "dog"]
    assert bunch.target_names.tolist() == ["cat", "dog"]
    assert bunch.groups is None
    assert bunch.sampling_rate == RATE and isinstance(bunch.sampling_rate, int)
    assert bunch.filenames.tolist() == [str(class_folders / p) for p in expected]
    for clip, filename in zip(bunch.data, bunch.filenames, strict=True):
        assert clip.dtype == np.float32 and clip.ndim == 1
        np.testing.assert_array_equal(clip, sf.read(filename, dtype="float32")[0])
    assert "4 clips" in bunch.DESCR and "2 classes" in bunch.DESCR

    X, y = load_audio_folder(class_folders, return_X_y=True)
    assert len(X) == 4 and y.tolist() == bunch.target.tolist()


def test_extensions(class_folders):
    bunch = load_audio_folder(class_folders, extensions=("FLAC", ".ogg"))
    assert bunch.frame["path"].tolist() == ["dog/a.flac", "dog/more/c.ogg"]
    assert bunch.target_names.tolist() == ["dog"]
    assert load_audio_folder(class_folders, extensions=".wav").target.tolist() == [
        "cat",
        "dog",
    ]
    with pytest.raises(ValueError, match="extensions"):
        load_audio_folder(class_folders, extensions=())


def test_deterministic_order(class_folders):
    first = load_audio_folder(class_folders)
    second = load_audio_folder(class_folders)
    assert first.filenames.tolist() == second.filenames.tolist()
    for a, b in zip(first.data, second.data, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resamples_to_the_most_common_rate_and_mixes_stereo(tmp_path):
    write(tmp_path / "a" / "1.wav", rate=16000, n=400)
    write(tmp_path / "a" / "2.wav", rate=16000, n=400, channels=2)
    write(tmp_path / "b" / "3.wav", rate=8000, n=200)
    bunch = load_audio_folder(tmp_path)
    assert bunch.sampling_rate == 16000
    assert [len(clip) for clip in bunch.data] == [400, 400, 400]
    stereo = sf.read(tmp_path / "a" / "2.wav", dtype="float32")[0]
    np.testing.assert_allclose(bunch.data[1], stereo.mean(axis=1), atol=1e-7)

    low = load_audio_folder(tmp_path, sampling_rate=8000)
    assert low.sampling_rate == 8000
    assert [len(clip) for clip in low.data] == [200, 200, 200]
    assert all(clip.dtype == np.float32 for clip in low.data)


def test_rate_tie_goes_to_the_highest_rate(tmp_path):
    write(tmp_path / "a" / "1.wav", rate=8000, n=200)
    write(tmp_path / "b" / "2.wav", rate=16000, n=400)
    assert load_audio_folder(tmp_path).sampling_rate == 16000


def test_metadata_csv_takes_precedence(class_folders):
    pd.DataFrame(
        {
            "path": ["dog/b.wav", "cat/z.WAV", "loose.wav"],
            "label": ["bark", "meow", "other"],
            "group": ["s2", "s1", "s1"],
            "note": ["x", "y", "z"],
        }
    ).to_csv(class_folders / "metadata.csv", index=False)
    bunch = load_audio_folder(class_folders)
    # Sorted by path; only the listed files; labels from the csv, not the folders.
    assert bunch.frame["path"].tolist() == ["cat/z.WAV", "dog/b.wav", "loose.wav"]
    assert bunch.frame.columns.tolist() == ["path", "label", "group", "note"]
    assert bunch.target.tolist() == ["meow", "bark", "other"]
    assert bunch.target_names.tolist() == ["bark", "meow", "other"]
    assert bunch.groups.tolist() == ["s1", "s2", "s1"]
    assert bunch.filenames[2] == str(class_folders / "loose.wav")
    assert "listed in metadata.csv" in bunch.DESCR

    assert load_audio_folder(class_folders, group_column=None).groups is None
    by_note = load_audio_folder(class_folders, group_column="note")
    assert by_note.groups.tolist() == ["y", "x", "z"]


def test_metadata_without_group_column(tmp_path):
    write(tmp_path / "clips" / "a.wav")
    write(tmp_path / "clips" / "b.wav", seed=1)
    (tmp_path / "metadata.csv").write_text(
        "path,label,duration\nclips/b.wav,NA,0.5\nclips/a.wav,007,\n"
    )
    bunch = load_audio_folder(tmp_path)
    assert bunch.groups is None
    # Labels are the csv's text as written: no number parsing, "NA" is a label.
    assert bunch.target.tolist() == ["007", "NA"]
    assert bunch.target.dtype.kind == "U"
    assert bunch.target_names.tolist() == ["007", "NA"]
    # Other columns are parsed as usual.
    assert bunch.frame["duration"].dtype == np.float64
    assert np.isnan(bunch.frame["duration"][0])
    with pytest.raises(ValueError, match="group_column='speaker' is not a column"):
        load_audio_folder(tmp_path, group_column="speaker")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_audio_folder(tmp_path / "nowhere")
    write(tmp_path / "file.wav")
    with pytest.raises(NotADirectoryError, match="file.wav"):
        load_audio_folder(tmp_path / "file.wav")

    empty = tmp_path / "empty"
    (empty / "dog").mkdir(parents=True)
    (empty / "dog" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"No audio files .*\.flac, \.ogg, \.wav.*empty"):
        load_audio_folder(empty)

    flat = tmp_path / "flat"
    write(flat / "a.wav")
    with pytest.raises(ValueError, match="directly in the root folder"):
        load_audio_folder(flat)
    with pytest.raises(ValueError, match="needs a metadata.csv"):
        load_audio_folder(flat, group_column="kit")

    listed = tmp_path / "listed"
    write(listed / "x" / "a.wav")
    csv = listed / "metadata.csv"
    csv.write_text("file,label\nx/a.wav,dog\n")
    with pytest.raises(ValueError, match="lacks the column.*path"):
        load_audio_folder(listed)
    csv.write_text("path,label\nx/a.wav,dog\nx/missing.wav,cat\n")
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 files.*missing\.wav"):
        load_audio_folder(listed)
    csv.write_text("path,label\nx/a.wav,dog\nx/a.wav,cat\n")
    with pytest.raises(ValueError, match="more than once"):
        load_audio_folder(listed)
    csv.write_text("path,label\nx/a.wav,\n")
    with pytest.raises(ValueError, match="empty"):
        load_audio_folder(listed)
    csv.write_text("path,label\n")
    with pytest.raises(ValueError, match="lists no files"):
        load_audio_folder(listed)
    (listed / "x" / "bad.wav").write_bytes(b"not audio at all")
    csv.write_text("path,label\nx/bad.wav,dog\n")
    with pytest.raises(ValueError, match="bad.wav"):
        load_audio_folder(listed)


@pytest.mark.skipif(
    not (DRUMS / "metadata.csv").is_file(), reason="shared drums data absent"
)
def test_drums():
    drums = load_audio_folder(DRUMS, group_column="kit")
    assert len(drums.data) == 463
    assert drums.target_names.tolist() == [
        "clap",
        "cymbal",
        "hihat",
        "kick",
        "snare",
        "tom",
    ]
    assert len(np.unique(drums.groups)) == 12
    assert drums.sampling_rate == 16000
    assert drums.groups.tolist() == drums.frame["kit"].tolist()
    assert drums.target.tolist() == drums.frame["label"].tolist()
    assert drums.frame["path"].is_monotonic_increasing
    assert all(clip.dtype == np.float32 and clip.ndim == 1 for clip in drums.data)
    assert {"license", "source_file"} <= set(drums.frame.columns)
    for train, test in GroupKFold(n_splits=4).split(drums.data, drums.target, drums.groups):
        assert not set(drums.groups[train]) & set(drums.groups[test])
    # Without group_column="kit" the csv has no "group" column: no groups.
    assert load_audio_folder(DRUMS, return_X_y=True)[1].shape == (463,)
