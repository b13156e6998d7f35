"""Tests for the audio input layer: ``load_waveforms`` and its helpers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import dominant_frequency, sine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import DataConversionWarning

from skaudio_confit._labels import check_targets
from skaudio_confit._input import as_clip_list, check_sampling_rate, load_waveforms
from skaudio_confit._io import read_audio_file
from skaudio_confit._windows import max_samples, pad_to_length, random_crop, split_windows

SR = 16000

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def load(X, sampling_rate=SR, target_rate=SR):
    return load_waveforms(X, sampling_rate=sampling_rate, target_rate=target_rate)


def resampled_length(n, source_rate, target_rate=SR):
    """Length torchaudio's resampler gives: ceil(n * target / source)."""
    if source_rate == target_rate:
        return n
    return -(-n * int(target_rate) // int(source_rate))


def assert_mono_float32(waves, lengths):
    assert isinstance(waves, list)
    assert [len(w) for w in waves] == list(lengths)
    for w in waves:
        assert isinstance(w, np.ndarray)
        assert w.dtype == np.float32
        assert w.ndim == 1
        assert w.flags.c_contiguous
        assert np.all(np.isfinite(w))


# --------------------------------------------------------------------------------------
# Accepted inputs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_of_1d_arrays_of_different_lengths(container):
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in (1, 500, 1600, 37)]
    waves = load(container(clips))
    assert_mono_float32(waves, [1, 500, 1600, 37])
    for wave, clip in zip(waves, clips):
        np.testing.assert_array_equal(wave, clip)


def test_2d_array_is_clips_by_samples():
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (3, 800))
    waves = load(X)
    assert_mono_float32(waves, [800] * 3)
    for wave, row in zip(waves, X):
        np.testing.assert_allclose(wave, row.astype(np.float32))


def test_2d_array_with_few_samples_is_not_taken_as_channels():
    # (n_clips, n_samples) even when n_samples is small: each row is a clip.
    X = np.arange(40, dtype=np.float32).reshape(20, 2) / 100
    waves = load(X)
    assert_mono_float32(waves, [2] * 20)
    np.testing.assert_allclose(np.stack(waves), X)


def test_3d_array_is_clips_by_channels_by_samples():
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, (4, 2, 300)).astype(np.float32)
    waves = load(X)
    assert_mono_float32(waves, [300] * 4)
    for wave, clip in zip(waves, X):
        np.testing.assert_allclose(wave, clip.mean(axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_channels", [2, 3, 6])
def test_multichannel_clips_channels_first_and_last_are_mixed_to_the_channel_mean(
    n_channels,
):
    rng = np.random.default_rng(n_channels)
    clip = rng.uniform(-1, 1, (n_channels, 1000)).astype(np.float32)
    expected = clip.mean(axis=0)
    first, last = load([clip, clip.T.copy()])
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(last, expected, rtol=1e-6, atol=1e-7)
    # Not simply the first channel.
    assert not np.allclose(first, clip[0])


def test_multichannel_int16_is_scaled_then_mixed():
    clip = np.array([[16384, -16384, 32767], [0, -16384, -32768]], dtype=np.int16)
    (wave,) = load([clip])
    np.testing.assert_allclose(
        wave, [0.25, -0.5, (32767 - 32768) / 2 / 32768], atol=1e-7
    )


@pytest.mark.parametrize(
    "dtype, value, expected",
    [
        (np.int16, 16384, 0.5),
        (np.int16, -32768, -1.0),
        (np.int16, 32767, 32767 / 32768),
        (np.int32, 2**30, 0.5),
        (np.int32, -(2**31), -1.0),
        (np.int8, -64, -0.5),
        (np.uint8, 192, 0.5),
        (np.uint8, 128, 0.0),
        (np.uint8, 0, -1.0),
    ],
)
def test_integer_pcm_is_scaled_to_unit_range(dtype, value, expected):
    (wave,) = load([np.full(10, value, dtype=dtype)])
    assert wave.dtype == np.float32
    np.testing.assert_allclose(wave, expected, rtol=0, atol=1e-7)
    assert np.all(np.abs(wave) <= 1.0)


def test_int16_full_range_stays_within_unit_interval():
    clip = np.arange(-32768, 32768, 7, dtype=np.int16)
    (wave,) = load([clip])
    assert wave.min() == -1.0
    assert wave.max() < 1.0
    np.testing.assert_allclose(wave, clip / 32768.0, atol=1e-7)


def test_mixed_dtypes_and_paths_in_one_list(make_audio_file):
    rng = np.random.default_rng(3)
    f32 = rng.uniform(-1, 1, 200).astype(np.float32)
    f64 = rng.uniform(-1, 1, 300)
    f16 = rng.uniform(-1, 1, 50).astype(np.float16)
    i16 = np.full(120, -8192, dtype=np.int16)
    i32 = np.full(130, 2**29, dtype=np.int32)
    u8 = np.full(140, 64, dtype=np.uint8)
    wav = make_audio_file("a.wav", np.full(400, 0.25), SR, subtype="PCM_16")
    flac = make_audio_file("b.flac", np.full(500, -0.5), SR, subtype="PCM_16")
    X = [f32, str(wav), f64, i16, Path(flac), i32, u8, f16]
    waves = load(X)
    assert_mono_float32(waves, [200, 400, 300, 120, 500, 130, 140, 50])
    np.testing.assert_array_equal(waves[0], f32)
    np.testing.assert_allclose(waves[1], 0.25)
    np.testing.assert_allclose(waves[2], f64.astype(np.float32))
    np.testing.assert_allclose(waves[3], -0.25)
    np.testing.assert_allclose(waves[4], -0.5)
    np.testing.assert_allclose(waves[5], 0.25)
    np.testing.assert_allclose(waves[6], -0.5)
    np.testing.assert_allclose(waves[7], f16.astype(np.float32))


@pytest.mark.parametrize(
    "ext, subtype",
    [(".wav", "PCM_16"), (".wav", "FLOAT"), (".flac", None), (".ogg", None)],
)
@pytest.mark.parametrize("as_path", [str, Path])
def test_audio_files_by_str_and_pathlib(make_audio_file, ext, subtype, as_path):
    wave = sine(440, SR, 0.5)
    path = make_audio_file("tone" + ext, wave, SR, subtype=subtype)
    (loaded,) = load([as_path(path)])
    assert_mono_float32([loaded], [len(wave)])
    if ext == ".ogg":  # lossy: same tone, close waveform
        assert abs(dominant_frequency(loaded, SR) - 440) <= 2
        assert np.corrcoef(loaded, wave)[0, 1] > 0.99
    else:
        np.testing.assert_allclose(loaded, wave, atol=1.0 / 2**14)


def test_stereo_file_is_mixed_to_the_channel_mean(make_audio_file):
    left = np.linspace(-0.5, 0.5, 400)
    right = np.full(400, 0.25)
    path = make_audio_file(
        "stereo.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT"
    )
    (wave,) = load([path])
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)
    data, rate = read_audio_file(path)
    assert rate == SR
    np.testing.assert_allclose(data, (left + right) / 2, atol=1e-6)


def test_torch_tensors():
    rng = np.random.default_rng(4)
    a = rng.uniform(-1, 1, 100)
    two_d = torch.tensor(rng.uniform(-1, 1, (2, 64)), dtype=torch.float32)
    waves = load(two_d)
    assert_mono_float32(waves, [64, 64])
    np.testing.assert_allclose(np.stack(waves), two_d.numpy())

    clips = [
        torch.tensor(a),  # float64
        torch.tensor(a, dtype=torch.float16),
        torch.tensor(a, dtype=torch.bfloat16),
        torch.full((30,), 16384, dtype=torch.int16),
        torch.tensor(rng.uniform(-1, 1, (2, 50)), dtype=torch.float32),  # stereo
    ]
    waves = load(clips)
    assert_mono_float32(waves, [100, 100, 100, 30, 50])
    np.testing.assert_allclose(waves[0], a, atol=1e-7)
    np.testing.assert_allclose(waves[1], a, atol=1e-3)
    np.testing.assert_allclose(waves[2], a, atol=1e-2)
    np.testing.assert_allclose(waves[3], 0.5)
    np.testing.assert_allclose(waves[4], clips[4].numpy().mean(axis=0), atol=1e-7)


def test_torch_tensors_requiring_grad():
    t = torch.rand(3, 100, requires_grad=True)
    waves = load(t)
    assert_mono_float32(waves, [100] * 3)
    np.testing.assert_allclose(np.stack(waves), t.detach().numpy())
    waves = load([t[0]])
    np.testing.assert_allclose(waves[0], t[0].detach().numpy())


def test_pandas_series_and_single_column_frame(make_audio_file):
    rng = np.random.default_rng(5)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in (100, 200)]
    path = make_audio_file("c.wav", np.full(300, 0.5), SR, subtype="PCM_16")
    series = pd.Series([clips[0], str(path), clips[1]], index=[10, 20, 30])
    waves = load(series)
    assert_mono_float32(waves, [100, 300, 200])
    np.testing.assert_array_equal(waves[0], clips[0])
    np.testing.assert_allclose(waves[1], 0.5)
    frame = pd.DataFrame({"audio": series})
    for a, b in zip(load(frame), waves):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exactly one column"):
        load(pd.DataFrame({"a": series, "b": series}))


def test_numpy_arrays_of_paths(make_audio_file):
    paths = [
        make_audio_file(f"{i}.wav", np.full(100 * (i + 1), 0.5), SR, subtype="PCM_16")
        for i in range(2)
    ]
    for X in (np.array([str(p) for p in paths]), np.array(paths, dtype=object)):
        waves = load(X)
        assert_mono_float32(waves, [100, 200])


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source_rate, freq",
    [(8000, 1000.0), (44100, 440.0), (22050, 3000.0), (48000, 5000.0)],
)
def test_arrays_are_resampled_from_sampling_rate(source_rate, freq):
    clip = sine(freq, source_rate, 1.0)
    (wave,) = load([clip], sampling_rate=source_rate)
    assert len(wave) == resampled_length(len(clip), source_rate)
    assert len(wave) == SR  # one second
    assert dominant_frequency(wave, SR) == pytest.approx(freq, abs=1.0)
    # Amplitude preserved away from the edges.
    core = wave[1000:-1000]
    assert np.sqrt(np.mean(core**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_downsampling_removes_content_above_the_new_nyquist():
    # 12 kHz at 44.1 kHz would alias to 4 kHz at 16 kHz without a low-pass filter.
    (wave,) = load([sine(12000, 44100, 1.0)], sampling_rate=44100)
    assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) < 0.01


def test_resampling_lengths_for_several_clip_lengths():
    clips = [np.zeros(n, np.float32) + 0.1 for n in (1, 2, 3, 441, 1000, 44101)]
    waves = load(clips, sampling_rate=44100)
    assert_mono_float32(waves, [resampled_length(len(c), 44100) for c in clips])


def test_float_sampling_rate_is_accepted():
    (wave,) = load([sine(440, 22050, 0.5)], sampling_rate=22050.0, target_rate=16000.0)
    assert len(wave) == 8000


def test_files_are_resampled_from_their_own_rate(make_audio_file):
    wav8k = make_audio_file("8k.wav", sine(1000, 8000, 1.0), 8000, subtype="PCM_16")
    flac44k = make_audio_file("44k.flac", sine(440, 44100, 0.5), 44100)
    ogg22k = make_audio_file("22k.ogg", sine(2000, 22050, 1.0), 22050)
    array16k = sine(3000, 8000, 0.25)  # in memory, at sampling_rate=8000
    waves = load([wav8k, flac44k, array16k, ogg22k], sampling_rate=8000)
    assert [len(w) for w in waves] == [16000, 8000, 4000, 16000]
    for wave, freq in zip(waves, (1000, 440, 3000, 2000)):
        assert dominant_frequency(wave, SR) == pytest.approx(freq, abs=2.5)
    # The in-memory sampling_rate never applies to files.
    for other in (16000, 48000):
        again = load([wav8k, flac44k], sampling_rate=other)
        np.testing.assert_array_equal(again[0], waves[0])
        np.testing.assert_array_equal(again[1], waves[1])


def test_file_at_the_target_rate_is_not_resampled(make_audio_file):
    clip = np.random.default_rng(6).uniform(-0.9, 0.9, 777).astype(np.float32)
    path = make_audio_file("same.wav", clip, SR, subtype="FLOAT")
    (wave,) = load([path], sampling_rate=8000)
    np.testing.assert_array_equal(wave, clip)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_empty_X():
    with pytest.raises(ValueError, match="X is empty"):
        load([])
    with pytest.raises(ValueError, match="X is empty"):
        load(np.zeros((0, 100)))


def test_empty_clip_names_its_index():
    with pytest.raises(ValueError, match=r"Clip 1 is empty"):
        load([np.ones(10), np.array([], dtype=np.float32)])
    with pytest.raises(ValueError, match=r"Clip 0 is empty"):
        load([np.zeros((2, 0))])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad):
    clip = np.zeros(50)
    clip[17] = bad
    with pytest.raises(ValueError, match=r"Clip 2 contains NaN or infinite"):
        load([np.zeros(10), np.zeros(10), clip])
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        load(np.stack([clip, np.zeros(50)]))


def test_float64_beyond_float32_range_is_rejected():
    # Refused by name before the cast to float32 (which would warn and give inf).
    with pytest.raises(ValueError, match=r"Clip 0 has samples beyond the float32 range"):
        load([np.full(10, 1e300)])


def test_non_finite_file_is_rejected(make_audio_file):
    clip = np.zeros(100, dtype=np.float32)
    clip[3] = np.nan
    path = make_audio_file("nan.wav", clip, SR, subtype="FLOAT")
    with pytest.raises(ValueError, match=re.escape(path.name) + ".*NaN or infinite"):
        load([path])


@pytest.mark.parametrize(
    "clip",
    [
        ["a", "b", "c"],
        np.array(["0.1", "0.2"]),
        np.array([b"ab", b"cd"]),
        [None],
        None,
        np.array([object(), object()], dtype=object),
        object(),
        {"samples": [0.1, 0.2]},
        np.array([True, False]),
        np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
    ],
    ids=[
        "str-list",
        "str-array",
        "bytes",
        "none-list",
        "none",
        "objects",
        "object",
        "dict",
        "bool",
        "datetime",
    ],
)
def test_non_numeric_clip(clip):
    with pytest.raises(TypeError, match=r"Clip 1 .*(non-numeric|not a numeric)"):
        load([np.zeros(10), clip])


def test_complex_clip_is_a_value_error_like_scikit_learn():
    # scikit-learn's check_array raises ValueError("Complex data not supported").
    with pytest.raises(
        ValueError, match=r"Clip 1 has complex samples.*Complex data not supported"
    ):
        load([np.zeros(10), np.array([1 + 1j, 2])])
    with pytest.raises(ValueError, match="Complex data not supported"):
        load(np.ones((3, 10), dtype=np.complex64))


def test_sparse_X_is_refused_by_name():
    from scipy import sparse

    with pytest.raises(
        TypeError, match=r"Sparse input \(csr_matrix\) is not supported"
    ):
        load(sparse.csr_matrix(np.ones((3, 10))))


def test_2d_object_array_of_numbers_is_numeric():
    X = np.arange(30, dtype=np.float64).reshape(3, 10) / 30
    waves = load(X.astype(object))
    np.testing.assert_array_equal(np.stack(waves), X.astype(np.float32))
    bad = X.astype(object)
    bad[1, 2] = {"foo": "bar"}
    with pytest.raises(TypeError, match="object array X must hold numbers.*dict"):
        load(bad)


def test_2d_array_without_samples_uses_scikit_learns_wording():
    with pytest.raises(
        ValueError, match=r"0 feature\(s\) \(shape=\(4, 0\)\) while a minimum of 1"
    ):
        load(np.zeros((4, 0)))


def test_ragged_nested_list_clip():
    with pytest.raises(TypeError, match=r"Clip 0 is not a numeric array"):
        load([[[0.1, 0.2], [0.3]]])


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.uint32, np.uint64])
def test_integer_clip_without_pcm_convention_is_taken_as_is(dtype):
    # No PCM full scale for these types: the values are the samples, cast to float32.
    (wave,) = load([np.arange(10, dtype=dtype)])
    assert wave.dtype == np.float32
    np.testing.assert_array_equal(wave, np.arange(10, dtype=np.float32))
    # 2-D (channels x samples) clips are mixed to mono from the same values.
    (mono,) = load([np.array([np.arange(10), np.arange(10) + 2], dtype=dtype)])
    np.testing.assert_array_equal(mono, np.arange(10, dtype=np.float32) + 1)


def test_bare_1d_array_asks_for_reshape():
    with pytest.raises(ValueError, match="reshape"):
        load(np.zeros(16000, dtype=np.float32))
    with pytest.raises(ValueError, match="reshape"):
        load(torch.zeros(16000))


def test_flat_list_of_numbers():
    with pytest.raises(ValueError, match="flat list of numbers"):
        load([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="flat list of numbers"):
        load((1, 2, 3))


@pytest.mark.parametrize("X", [np.float32(1.0), np.zeros((2, 3, 4, 5))])
def test_scalar_and_4d_arrays(X):
    with pytest.raises(ValueError, match="scalar|2-D .*or 3-D"):
        load(X)


@pytest.mark.parametrize("X", [None, 5, 3.5, {"a": 1}])
def test_unsupported_container(X):
    with pytest.raises(TypeError, match="X must be a list of clips"):
        load(X)


def test_3d_clip_in_a_list():
    with pytest.raises(ValueError, match=r"Clip 0 must be 1-D .*got shape \(2, 3, 4\)"):
        load([np.zeros((2, 3, 4))])


def test_2d_clip_without_a_channel_axis():
    with pytest.raises(ValueError, match="cannot tell channels from samples"):
        load([np.zeros((100, 200))])


@pytest.mark.parametrize("as_path", [str, Path])
def test_single_path_not_wrapped_in_a_list(make_audio_file, as_path):
    path = make_audio_file("one.wav", np.zeros(100), SR)
    with pytest.raises(TypeError, match=r"single path .*wrap it in a list"):
        load(as_path(path))


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "no_such_clip.wav"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load([np.zeros(10), missing])
    with pytest.raises(FileNotFoundError, match="no_such_clip.wav"):
        load([str(missing)])


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(
        ValueError, match=r"got a directory: .*" + re.escape(tmp_path.name)
    ):
        load([tmp_path])


def test_garbage_bytes_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(ValueError, match=r"Could not read audio file .*garbage\.wav"):
        load([path])
    text = tmp_path / "notes.flac"
    text.write_text("definitely not audio\n" * 50)
    with pytest.raises(ValueError, match=r"Could not read audio file .*notes\.flac"):
        load([text])


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(ValueError, match=r"Could not read audio file .*empty\.wav"):
        load([path])


def test_audio_file_without_frames(make_audio_file):
    path = make_audio_file("silent.wav", np.zeros(0), SR)
    assert sf.info(str(path)).frames == 0
    with pytest.raises(ValueError, match=r"silent\.wav.*holds no samples"):
        load([path])


@pytest.mark.parametrize("rate", [0, -16000, 0.0, float("nan"), float("inf"), -np.inf, 10**400])
def test_non_positive_or_non_finite_sampling_rate(rate):
    with pytest.raises(ValueError, match="sampling_rate must be a positive number"):
        load([np.zeros(10)], sampling_rate=rate)
    with pytest.raises(ValueError, match="target_rate must be a positive number"):
        load([np.zeros(10)], target_rate=rate)


@pytest.mark.parametrize("rate", [True, False, "16000", None, [16000]])
def test_non_numeric_or_bool_sampling_rate(rate):
    with pytest.raises(TypeError, match="sampling_rate must be a positive number"):
        load([np.zeros(10)], sampling_rate=rate)


def test_check_sampling_rate_returns_float():
    assert check_sampling_rate(np.int64(22050)) == 22050.0
    assert isinstance(check_sampling_rate(8000), float)
    # An int too large for int64 is still a number (numpy's isfinite cannot take it).
    assert check_sampling_rate(10**30) == 1e30


# --------------------------------------------------------------------------------------
# check_targets
# --------------------------------------------------------------------------------------


def test_check_targets_accepts_1d_and_column_vectors():
    np.testing.assert_array_equal(check_targets(3, [0, 1, 0]), [0, 1, 0])
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        column = check_targets(3, np.array([[1], [2], [3]]))
    np.testing.assert_array_equal(column, [1, 2, 3])
    out = check_targets(2, pd.Series(["a", "b"], index=[5, 9]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, ["a", "b"])


def test_check_targets_length_mismatch():
    with pytest.raises(ValueError, match="inconsistent lengths: 3 clips but 2 labels"):
        check_targets(3, [0, 1])


def test_check_targets_2d():
    with pytest.raises(ValueError, match=r"y must be 1-D .*got shape \(3, 2\)"):
        check_targets(3, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="y must be 1-D"):
        check_targets(1, 5)


def test_check_targets_missing_or_non_finite():
    with pytest.raises(ValueError, match="y is required"):
        check_targets(2, None)
    with pytest.raises(ValueError, match="NaN or infinite labels"):
        check_targets(2, [0.5, np.nan])


# --------------------------------------------------------------------------------------
# Padding, cropping, windowing
# --------------------------------------------------------------------------------------


def test_pad_to_length():
    wave = np.arange(1, 6, dtype=np.float32)
    padded = pad_to_length(wave, 8)
    assert len(padded) == 8
    np.testing.assert_array_equal(padded[:5], wave)
    np.testing.assert_array_equal(padded[5:], 0)
    assert padded.dtype == np.float32
    assert pad_to_length(wave, 5) is wave
    assert pad_to_length(wave, 3) is wave


def test_random_crop_is_seeded_in_bounds_and_contiguous():
    wave = np.arange(12, dtype=np.float32)
    crops = [random_crop(wave, 10, np.random.default_rng(s)) for s in range(200)]
    again = [random_crop(wave, 10, np.random.default_rng(s)) for s in range(200)]
    for a, b in zip(crops, again):
        np.testing.assert_array_equal(a, b)
    starts = set()
    for crop in crops:
        assert len(crop) == 10
        start = int(crop[0])
        np.testing.assert_array_equal(crop, np.arange(start, start + 10))
        assert 0 <= start <= 2
        starts.add(start)
    assert starts == {0, 1, 2}  # every position, both ends included


def test_random_crop_of_a_short_clip_returns_it():
    wave = np.arange(5, dtype=np.float32)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert random_crop(wave, 5, rng) is wave
    assert random_crop(wave, 9, rng) is wave
    assert rng.bit_generator.state == state  # no randomness consumed


@pytest.mark.parametrize(
    "length, window",
    [(25000, 10000), (30000, 10000), (10001, 10000), (1000, 7), (99, 98)],
)
def test_split_windows_are_full_length_and_cover_the_clip(length, window):
    wave = np.arange(length, dtype=np.float64)
    windows = split_windows(wave, window)
    assert len(windows) == math.ceil(length / window)
    covered = np.zeros(length, dtype=bool)
    for w in windows:
        assert len(w) == window
        start = int(w[0])
        np.testing.assert_array_equal(w, np.arange(start, start + window))
        covered[start : start + window] = True
    assert windows[0][0] == 0
    assert windows[-1][-1] == length - 1
    assert covered.all()
    starts = [int(w[0]) for w in windows]
    assert starts == sorted(starts)


def test_split_windows_of_an_exact_multiple_do_not_overlap():
    windows = split_windows(np.arange(30), 10)
    assert [int(w[0]) for w in windows] == [0, 10, 20]


@pytest.mark.parametrize("length", [1, 500, 1000])
def test_split_windows_of_a_short_clip_returns_it(length):
    wave = np.ones(length)
    (only,) = split_windows(wave, 1000)
    assert only is wave


def test_max_samples():
    assert max_samples(None, SR) is None
    assert max_samples(2.5, SR) == 40000
    assert max_samples(1e-9, SR) == 1


def test_as_clip_list_does_not_read_files(tmp_path):
    missing = tmp_path / "later.wav"
    assert as_clip_list([missing, str(missing)]) == [missing, str(missing)]


# --------------------------------------------------------------------------------------
# Property test
# --------------------------------------------------------------------------------------

DTYPES = [
    "float32",
    "float64",
    "float16",
    "int16",
    "int32",
    "int8",
    "uint8",
    "int64",
    "bool",
]


@st.composite
def clip_specs(draw):
    length = draw(st.integers(0, 2000))
    dtype = draw(st.sampled_from(DTYPES))
    channels = draw(st.sampled_from([None, 1, 2]))  # None: 1-D clip
    if channels and length:  # (2, 1) is ambiguous: it reads as one channel of 2 samples
        length = max(length, channels)
    poison = draw(st.booleans()) and dtype.startswith("float") and length > 0
    seed = draw(st.integers(0, 2**32 - 1))
    return length, dtype, channels, poison, seed


def make_clip(length, dtype, channels, poison, seed):
    rng = np.random.default_rng(seed)
    shape = (length,) if channels is None else (channels, length)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        clip = rng.uniform(-1.5, 1.5, shape).astype(dt)
        if poison:
            clip.flat[rng.integers(clip.size)] = rng.choice([np.nan, np.inf, -np.inf])
    elif dt.kind == "b":
        clip = rng.integers(0, 2, shape).astype(bool)
    else:
        info = np.iinfo(dt)
        clip = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dt)
    return clip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(clip_specs(), min_size=1, max_size=4),
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
)
def test_property_outputs_are_finite_float32_at_the_target_rate(specs, rate):
    clips = [make_clip(*spec) for spec in specs]
    invalid_type = any(spec[1] == "bool" for spec in specs)
    invalid_value = any(spec[0] == 0 or spec[3] for spec in specs)
    if invalid_type or invalid_value:
        with pytest.raises((ValueError, TypeError)):
            load(clips, sampling_rate=rate)
        return
    waves = load(clips, sampling_rate=rate)
    assert_mono_float32(waves, [resampled_length(spec[0], rate) for spec in specs])
    if (
        rate == SR
    ):  # no resampling: values are the (scaled, mixed) inputs, within [-1.5, 1.5]
        for wave, spec in zip(waves, specs):
            if (
                spec[1] != "int64"
            ):  # int64 has no PCM scale: its values are kept as they are
                assert np.all(np.abs(wave) <= 1.5)
