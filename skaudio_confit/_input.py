"""Input coercion: everything a user can pass as ``X``, as mono float32 waveforms.

Everything a user can pass as ``X`` comes through :func:`load_waveforms`, which
validates it (arrays, tensors, DataFrames, file paths) and returns one mono float32
waveform per clip at the backbone's sampling rate. Files are read by :mod:`._io`
and rates converted by :mod:`._resampling`; the estimators never look at raw user
input themselves.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from ._io import read_audio_file
from ._resampling import _FLOAT32_MAX, resample_clips

# The axis with at most this many entries is taken as the channel axis of a 2-D clip.
_MAX_CHANNELS = 16

# Integer PCM types and the value that maps to full scale (1.0).
_PCM_SCALE = {
    np.dtype(np.int8): 2.0**7,
    np.dtype(np.int16): 2.0**15,
    np.dtype(np.int32): 2.0**31,
}


def check_sampling_rate(sampling_rate, name="sampling_rate"):
    """Return ``sampling_rate`` as a positive float, or raise a clear error."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {sampling_rate!r}.")
    try:
        rate = float(sampling_rate)  # an int beyond float range overflows here
    except OverflowError:
        rate = math.inf
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be a positive number, got {sampling_rate!r}.")
    return rate


def _is_path(item):
    return isinstance(item, (str, os.PathLike))


def as_clip_list(X):
    """Turn any accepted ``X`` into a list of clips (arrays or paths), without reading files.

    Accepted: a list/tuple (or pandas Series, or 1-column DataFrame) whose items are
    1-D arrays, 2-D multi-channel arrays or file paths; a 2-D numeric array
    ``(n_clips, n_samples)`` or an all-numeric DataFrame of that shape; a 3-D numeric
    array ``(n_clips, n_channels, n_samples)`` (an object array of numbers counts as
    numeric). Sparse matrices are refused.
    """
    if hasattr(X, "iloc") and hasattr(X, "columns"):  # pandas DataFrame
        numeric = all(kind in "biuf" for kind in X.dtypes.map(lambda d: d.kind))
        if numeric:  # rows of samples, like a 2-D array (n_clips, n_samples)
            X = X.to_numpy()
        elif X.shape[1] == 1:
            X = X.iloc[:, 0]
        else:
            raise ValueError(
                "A DataFrame X must be all numeric (one clip per row) or have exactly one "
                f"column holding clips or file paths, got {X.shape[1]} columns."
            )
    if hasattr(X, "iloc"):  # pandas Series
        X = X.tolist()
    if _is_path(X):
        raise TypeError(
            "X must be a list of clips or file paths, got a single path "
            f"{str(X)!r}; wrap it in a list: [path]."
        )
    if _is_sparse(X):
        raise TypeError(
            f"Sparse input ({type(X).__name__}) is not supported: X must be a list of "
            "clips or file paths, or a dense 2-D array (n_clips, n_samples); use "
            "X.toarray() if it really holds equal-length clips."
        )
    if hasattr(X, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        X = _torch_to_numpy(X)
    if isinstance(X, np.ndarray):
        if X.dtype == object and X.ndim in (2, 3):
            # Equal-length clips in an object array (np.array(clips, dtype=object)
            # stacks them): numbers are read as float64, anything else is an error.
            for value in X.ravel():
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    # The wording matches scikit-learn's check_dtype_object.
                    raise TypeError(
                        f"A {X.ndim}-D object array X must hold numbers (n_clips, "
                        f"n_samples), found a {type(value).__name__}. Each element "
                        "argument must be a real number; a string, even one holding a "
                        "number, is refused."
                    )
            X = X.astype(np.float64)
        if X.dtype == object or (X.ndim == 1 and X.dtype.kind in "US"):  # e.g. paths
            if X.ndim != 1:
                raise ValueError(f"An object array X must be 1-D, got shape {X.shape}.")
            return list(X)
        if X.ndim == 0:
            raise ValueError("X must be a list of clips or a 2-D array, got a scalar.")
        if X.ndim == 1:
            raise ValueError(
                "Expected a list of clips or a 2-D array (n_clips, n_samples), got a 1-D "
                "array of numbers. Reshape your data using array.reshape(1, -1) if it "
                "contains a single clip, or pass [clip]."
            )
        if X.ndim > 3:
            raise ValueError(
                "A numeric array X must be 2-D (n_clips, n_samples) or 3-D "
                f"(n_clips, n_channels, n_samples), got shape {X.shape}."
            )
        if X.shape[-1] == 0 and X.shape[0] > 0:
            # scikit-learn's wording for arrays without features, plus what it means here.
            raise ValueError(
                f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is "
                "required: every clip needs at least one sample."
            )
        return list(X)
    if isinstance(X, (list, tuple)):
        if len(X) > 0 and all(
            isinstance(v, numbers.Number) and not isinstance(v, bool) for v in X
        ):
            raise ValueError(
                "Expected a list of clips, got a flat list of numbers. If it is a single "
                "clip, pass [clip] or np.reshape(clip, (1, -1))."
            )
        return list(X)
    if hasattr(X, "__array__") or hasattr(X, "numpy"):  # e.g. a torch tensor
        return as_clip_list(np.asarray(X))
    raise TypeError(
        "X must be a list of clips (1-D arrays) or file paths, or a 2-D array "
        f"(n_clips, n_samples); got {type(X).__name__}."
    )


def _is_sparse(X):
    try:
        from scipy import sparse
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return False
    return sparse.issparse(X)


def _torch_to_numpy(tensor):
    """A torch tensor as a numpy array (float16/bfloat16 widened to float32)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


def _to_mono_float(clip, index):
    """Validate one in-memory clip and return it as mono float32."""
    if hasattr(clip, "detach"):  # torch tensor
        clip = _torch_to_numpy(clip)
    try:
        arr = np.asarray(clip)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(f"Clip {index} is not a numeric array: {exc}") from None
    if arr.dtype == object:
        arr = _object_clip_to_float(arr, index)
    if arr.dtype.kind == "c":
        # ValueError with scikit-learn's wording, as check_array raises for complex data.
        raise ValueError(
            f"Clip {index} has complex samples (dtype {arr.dtype}): Complex data not "
            "supported; pass real float or integer PCM samples."
        )
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"Clip {index} has non-numeric or unsupported data (dtype {arr.dtype}); "
            "expected real float or integer PCM samples, or a file path."
        )
    if arr.size == 0:  # before mixing, whose channel guess is meaningless when empty
        raise ValueError(f"Clip {index} is empty (0 samples).")
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"Clip {index} must be 1-D (samples) or 2-D (channels x samples), got shape "
            f"{arr.shape}."
        )
    if arr.dtype.kind in "iu":
        arr = _pcm_to_float(arr, index)
    else:
        _check_float_range(arr, index)
    if arr.ndim == 2:
        arr = _mix_to_mono(arr, index)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _object_clip_to_float(arr, index):
    """An object array of real numbers as float64 (as for a 2-D object ``X``)."""
    for value in arr.ravel():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"Clip {index} has non-numeric or unsupported data (an object array "
                f"holding {type(value).__name__}); expected real float or integer PCM "
                "samples, or a file path."
            )
    return arr.astype(np.float64)



def _check_float_range(arr, index):
    """Refuse NaN/inf samples and samples that float32 cannot hold (they would be inf)."""
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Clip {index} contains NaN or infinite samples.")
    if arr.dtype.itemsize > 4:
        peak = float(np.max(np.abs(arr)))
        if peak > _FLOAT32_MAX:
            raise ValueError(
                f"Clip {index} has samples beyond the float32 range (peak |sample| "
                f"{peak:.3g} > {_FLOAT32_MAX:.3g}); audio samples are expected in [-1, 1]: "
                "scale the clip down."
            )


def _mix_to_mono(arr, index):
    """The channel mean of a 2-D float32 clip (computed in float64: no overflow)."""
    n0, n1 = arr.shape
    if n0 <= _MAX_CHANNELS and n0 <= n1:
        channel_axis = 0
    elif n1 <= _MAX_CHANNELS:
        channel_axis = 1
    else:
        raise ValueError(
            f"Clip {index} has shape {arr.shape}: cannot tell channels from samples. "
            f"A 2-D clip must have at most {_MAX_CHANNELS} channels on one axis."
        )
    if arr.shape[channel_axis] == 1:
        return arr.reshape(-1)
    return arr.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)


def _pcm_to_float(arr, index):
    """Integer samples as float32.

    int8/int16/int32 are PCM, scaled so that full scale is 1.0; uint8 is 8-bit WAV
    PCM, centred on 128. Other integer types (int64, uint16, uint32, uint64) have no
    PCM convention: their values are taken as sample values as they are, cast to
    float32 (so ``np.arange(n)`` or scikit-learn's integer test data are accepted).
    """
    if arr.dtype == np.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return (arr.astype(np.float32) - 128.0) / 128.0
    scale = _PCM_SCALE.get(arr.dtype)
    if scale is None:
        return arr.astype(np.float32)
    return (arr.astype(np.float64) / scale).astype(np.float32)

def load_waveforms(X, *, sampling_rate, target_rate, indices=None, warn_file_rates=False):
    """Validate ``X`` and return a list of mono float32 waveforms at ``target_rate``.

    Parameters
    ----------
    X : list of array-like or path, or ndarray of shape (n_clips, n_samples)
        Clips of any length. In-memory arrays are taken to be at ``sampling_rate``;
        files (WAV, FLAC, OGG, anything soundfile reads) at their own rate.
        Multi-channel clips are mixed to mono; int8/int16/int32 PCM is scaled to
        [-1, 1] and uint8 PCM is centred on 128; other integer types (int64, uint16,
        uint32, uint64) are taken as sample values as they are.
    sampling_rate : float
        Rate of the in-memory arrays, in Hz.
    target_rate : float
        Rate the backbone expects, in Hz.
    indices : sequence of int or None, default=None
        Index of each clip in error messages, when ``X`` holds clips picked from a
        longer input (None: 0, 1, 2, ...).
    warn_file_rates : bool, default=False
        Warn when files are at a rate other than ``sampling_rate``: set when the user
        gave ``sampling_rate`` explicitly, who may expect it to apply to files too.

    Returns
    -------
    waveforms : list of ndarray of shape (n_samples_i,), dtype float32
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    target_rate = check_sampling_rate(target_rate, "target_rate")
    clips = as_clip_list(X)
    if len(clips) == 0:
        raise ValueError("X is empty: at least one clip is required.")
    with_rates = []
    for i, clip in zip(range(len(clips)) if indices is None else indices, clips):
        if _is_path(clip):
            with_rates.append((*read_audio_file(clip), f"Audio file {os.fspath(clip)!r}"))
        else:
            with_rates.append((_to_mono_float(clip, i), sampling_rate, f"Clip {i}"))
    if warn_file_rates:
        _warn_file_rates(clips, with_rates, sampling_rate)
    return resample_clips(with_rates, target_rate)


def expected_length(clip, *, sampling_rate, target_rate):
    """A clip's length in samples at ``target_rate``, known before it is read.

    From a file's header or an array's shape (its longest axis: channels are the
    shorter one). Only orders the reads of a streamed ``transform`` (clips of similar
    length batched together), so anything unreadable counts as 0 and is reported when
    the clip itself is read.
    """
    try:
        if _is_path(clip):
            import soundfile as sf

            info = sf.info(os.fspath(clip))
            return info.frames * target_rate / info.samplerate
        shape = np.shape(clip)
        return (max(shape) if shape else 0) * target_rate / sampling_rate
    except Exception:  # noqa: BLE001 - reported when the clip is read
        return 0


def _warn_file_rates(clips, with_rates, sampling_rate):
    """Say once that ``sampling_rate`` did not apply to files at another rate."""
    other = [(os.fspath(clip), rate) for clip, (_, rate, _) in zip(clips, with_rates)
             if _is_path(clip) and rate != sampling_rate]
    if other:
        import warnings

        rates = ", ".join(f"{r:g}" for r in sorted({rate for _, rate in other}))
        warnings.warn(
            f"sampling_rate={sampling_rate:g} applies to in-memory arrays only: "
            f"{len(other)} audio file(s) are at {rates} Hz (e.g. {other[0][0]!r}) and were "
            "read at their own rate. Nothing is wrong if that is what you meant; if the "
            "arrays in X are not at sampling_rate either, their pitch and timing are off.",
            UserWarning, stacklevel=4,
        )



__all__ = ["as_clip_list", "check_sampling_rate", "load_waveforms"]
