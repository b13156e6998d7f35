"""Tests for the bundled Free Spoken Digit Dataset loader."""

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.utils import Bunch

from skaudio_confit.datasets import load_spoken_digits

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
FSDD_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"


@pytest.fixture(scope="module")
def fsdd():
    return load_spoken_digits()


def test_bundle_ships_data_and_licence():
    data_dir = files("skaudio_confit.datasets") / "data"
    for name in ("fsdd.flac", "fsdd.csv", "FSDD_LICENSE.md"):
        assert data_dir.joinpath(name).is_file(), name
    licence = data_dir.joinpath("FSDD_LICENSE.md").read_text(encoding="utf-8")
    assert "10.5281/zenodo.1342401" in licence
    assert "CC BY-SA 4.0" in licence


def test_bunch_fields(fsdd):
    assert isinstance(fsdd, Bunch)
    assert set(fsdd) == {
        "data",
        "target",
        "target_names",
        "sampling_rate",
        "frame",
        "split",
        "DESCR",
    }
    assert fsdd.sampling_rate == 8000
    assert "Zohar Jackson" in fsdd.DESCR
    assert "CC BY-SA 4.0" in fsdd.DESCR


def test_waveforms(fsdd):
    assert isinstance(fsdd.data, list)
    assert len(fsdd.data) == 3000
    for clip in fsdd.data:
        assert isinstance(clip, np.ndarray)
        assert clip.dtype == np.float32
        assert clip.ndim == 1
    lengths = np.array([len(clip) for clip in fsdd.data])
    assert lengths.min() > 1000  # every clip holds a spoken digit, not a stub
    assert len(np.unique(lengths)) > 100  # lengths vary per clip
    all_samples = np.concatenate(fsdd.data)
    assert all_samples.min() >= -1.0
    assert all_samples.max() < 1.0
    # int16 scaled by 1 / 32768: every value is an exact multiple of 2 ** -15.
    scaled = all_samples * 32768
    np.testing.assert_array_equal(scaled, np.round(scaled))


def test_frame_and_structure(fsdd):
    frame = fsdd.frame
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["digit", "speaker", "take"]
    assert len(frame) == 3000
    assert sorted(frame["speaker"].unique()) == SPEAKERS
    assert sorted(frame["digit"].unique()) == list(range(10))
    # Full grid: every speaker says every digit in takes 0-49, exactly once.
    counts = frame.groupby(["speaker", "digit"])["take"].agg(["count", "min", "max"])
    assert len(counts) == 60
    assert (counts["count"] == 50).all()
    assert (counts["min"] == 0).all()
    assert (counts["max"] == 49).all()
    assert not frame.duplicated().any()
    # Documented order: by speaker, digit, take.
    order = frame.sort_values(["speaker", "digit", "take"]).index
    np.testing.assert_array_equal(order, frame.index)


def test_split(fsdd):
    split = fsdd.split
    assert isinstance(split, np.ndarray)
    assert split.shape == (3000,)
    assert set(split) == {"train", "test"}
    assert (split == "test").sum() == 300
    assert (split == "train").sum() == 2700
    np.testing.assert_array_equal(split == "test", fsdd.frame["take"] < 5)
    # Each speaker x digit cell has 5 test takes, so the test set is balanced.
    test_frame = fsdd.frame[split == "test"]
    assert (test_frame.groupby(["speaker", "digit"]).size() == 5).all()


def test_digit_target(fsdd):
    assert fsdd.target.shape == (3000,)
    assert fsdd.target.dtype == np.int64
    np.testing.assert_array_equal(fsdd.target, fsdd.frame["digit"])
    assert fsdd.target_names.tolist() == [str(d) for d in range(10)]


def test_speaker_target():
    bunch = load_spoken_digits(target="speaker")
    assert bunch.target.shape == (3000,)
    assert bunch.target.dtype.kind == "U"
    np.testing.assert_array_equal(bunch.target, bunch.frame["speaker"].to_numpy(str))
    assert bunch.target_names.tolist() == SPEAKERS
    assert (pd.Series(bunch.target).value_counts() == 500).all()


@pytest.mark.parametrize("target", ["digit", "speaker"])
def test_return_X_y(fsdd, target):
    X, y = load_spoken_digits(target=target, return_X_y=True)
    bunch = load_spoken_digits(target=target)
    assert isinstance(X, list)
    assert len(X) == len(y) == 3000
    np.testing.assert_array_equal(y, bunch.target)
    for a, b in zip(X, fsdd.data):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("target", ["Digit", "label", None])
def test_invalid_target(target):
    with pytest.raises(ValueError, match="'digit', 'speaker'"):
        load_spoken_digits(target=target)


def test_returned_arrays_are_independent_of_the_cache():
    first = load_spoken_digits()
    expected = first.data[0].copy()
    target, take = first.target.copy(), first.frame["take"].copy()
    first.data[0][:] = 0.5
    first.target[:] = -1
    first.frame.loc[:, "take"] = -1
    second = load_spoken_digits()
    np.testing.assert_array_equal(second.data[0], expected)
    np.testing.assert_array_equal(second.target, target)
    pd.testing.assert_series_equal(second.frame["take"], take)


@pytest.mark.skipif(
    not (FSDD_SOURCE / "recordings").is_dir(),
    reason=f"FSDD source WAVs not found at {FSDD_SOURCE / 'recordings'}",
)
def test_bit_identical_to_source_wavs(fsdd):
    """Every bundled clip equals its original WAV, sample for sample."""
    recordings = FSDD_SOURCE / "recordings"
    assert len(list(recordings.glob("*.wav"))) == len(fsdd.data)
    for clip, row in zip(fsdd.data, fsdd.frame.itertuples(index=False)):
        path = recordings / f"{row.digit}_{row.speaker}_{row.take}.wav"
        source, sampling_rate = sf.read(path, dtype="int16")
        assert sampling_rate == fsdd.sampling_rate
        # Scaling by 32768 is exact in float32, so equality is bit-exactness.
        np.testing.assert_array_equal(clip * 32768, source, err_msg=path.name)
