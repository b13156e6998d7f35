"""Loader and downloader for ESC-50, the dataset for environmental sound classification."""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._base import get_data_home, read_clips

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
"""The official ESC-50 archive: the GitHub zip of the repository's master branch."""

ESC50_FOLDER = "ESC-50-master"
"""The top-level folder of the official archive, kept as is under the data home."""

_CSV = Path("meta") / "esc50.csv"
_AUDIO = "audio"
_REQUIRED_COLUMNS = ("filename", "fold", "category")
_CHUNK = 1 << 20

_DESCR = """\
.. _esc50_dataset:

ESC-50: Dataset for Environmental Sound Classification
------------------------------------------------------

**Data Set Characteristics:**

:Number of Instances: 2,000 clips, 40 per class
:Classes: 50, loosely arranged into 5 major categories: animals; natural
    soundscapes and water sounds; human non-speech sounds; interior/domestic
    sounds; exterior/urban noises
:Clip Length: 5 s
:Sampling Rate: 44.1 kHz, mono (WAV)
:Split: 5 predefined folds (column ``fold``, 1-5) for cross-validation;
    fragments of the same original recording are always in the same fold
:Subset: ESC-10, 10 of the classes (column ``esc10``)

The clips were extracted by hand from public field recordings gathered by the
Freesound.org project. Results on ESC-50 are reported as the mean accuracy of
the official 5-fold cross-validation: train on four folds, test on the fifth,
for each of the five folds. ``PredefinedSplit(bunch.fold - 1)`` reproduces it.

.. rubric:: Attribution and licence

K. J. Piczak, "ESC: Dataset for Environmental Sound Classification", in
Proceedings of the 23rd ACM International Conference on Multimedia, 2015,
DOI 10.1145/2733373.2806390; https://github.com/karolpiczak/ESC-50. The
dataset is available under the terms of the Creative Commons
Attribution-NonCommercial licence; the clips come from Freesound.org, whose
original authors are credited in the dataset's repository.
"""


def _guidance(data_home):
    target = Path(data_home) / ESC50_FOLDER
    return (
        f"To use a local copy, unpack the official archive so that "
        f"{str(target / _CSV)!r} and {str(target / _AUDIO)!r} exist "
        f"(the archive's top-level folder is {ESC50_FOLDER!r}), or load any "
        "ESC-50 folder directly with load_esc50(root)."
    )


def load_esc50(root, *, return_X_y=False):
    """Load ESC-50 from a local copy in the official layout.

    ESC-50 holds 2,000 five-second clips of environmental sounds (dogs, rain,
    sirens, keyboard typing...) in 50 classes of 40 clips, split into 5
    predefined cross-validation folds. Use :func:`fetch_esc50` to download
    it; this function only reads files already on disk.

    ==============   ===============================
    Clips            2,000 (40 per class)
    Classes          50
    Folds            5 (400 clips each)
    Sampling rate    44,100 Hz
    Clip length      5 s (220,500 samples)
    ==============   ===============================

    Read more in the ``DESCR`` field of the returned bunch.

    Parameters
    ----------
    root : str or path-like
        The dataset folder, holding ``audio/*.wav`` and ``meta/esc50.csv``
        (columns ``filename``, ``fold``, ``target``, ``category``, ``esc10``,
        ``src_file`` and ``take``; ``filename``, ``fold`` and ``category`` are
        required). This is the ``ESC-50-master`` folder of the official
        archive.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : list of ndarray of shape (n_samples_i,), dtype float32
            One mono waveform per clip (multi-channel files are averaged), in
            the order of ``meta/esc50.csv``.
        target : ndarray of shape (n_clips,), dtype str
            The class name (``category``) of each clip, such as ``"dog"``.
        target_names : ndarray of shape (n_classes,), dtype str
            The sorted class names of the loaded clips. They are not in the
            order of the csv's integer ``target`` column, which stays
            available in ``frame``.
        fold : ndarray of shape (n_clips,), dtype int64
            The official fold of each clip, 1 to 5.
        sampling_rate : int
            Sampling rate of the waveforms in Hz (44100 for the official
            files). If the files differ in rate, the clips are resampled to
            the most common rate among them.
        frame : pandas.DataFrame of shape (n_clips, n_columns)
            The rows of ``meta/esc50.csv`` for the loaded clips, in the same
            order as ``data``, with a fresh ``RangeIndex``.
        filenames : ndarray of shape (n_clips,), dtype str
            The full path of each clip's file.
        DESCR : str
            Description of the dataset, with attribution and licence.

    (data, target) : tuple if ``return_X_y`` is True
        The list of waveforms and the target array described above.

    Raises
    ------
    FileNotFoundError
        If ``meta/esc50.csv`` or the ``audio`` folder is missing, or none of
        the files listed in the csv exists.
    ValueError
        If the csv lacks a required column, has folds that are not integers,
        or an audio file cannot be read.

    Warns
    -----
    UserWarning
        If some of the files listed in the csv are missing; the clips that
        exist are loaded.

    See Also
    --------
    fetch_esc50 : Download ESC-50 if needed, then load it.

    Notes
    -----
    ESC-50 is licensed under Creative Commons Attribution-NonCommercial; cite
    K. J. Piczak, "ESC: Dataset for Environmental Sound Classification", ACM
    Multimedia 2015 (DOI 10.1145/2733373.2806390).

    All 2,000 clips at 44.1 kHz take about 1.8 GB of memory as float32.

    Examples
    --------
    >>> from skaudio_confit.datasets import load_esc50
    >>> esc50 = load_esc50("ESC-50-master")  # doctest: +SKIP
    >>> len(esc50.data), esc50.sampling_rate  # doctest: +SKIP
    (2000, 44100)
    >>> esc50.target_names[:3].tolist()  # doctest: +SKIP
    ['airplane', 'breathing', 'brushing_teeth']

    The official protocol is 5-fold cross-validation over the predefined
    folds. :class:`~sklearn.model_selection.PredefinedSplit` takes the test
    fold of each clip, numbered from 0:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import (
    ...     GridSearchCV, PredefinedSplit, cross_val_score)
    >>> from sklearn.pipeline import Pipeline
    >>> from skaudio_confit import PairTuneTransformer
    >>> cv = PredefinedSplit(esc50.fold - 1)  # doctest: +SKIP
    >>> model = Pipeline([
    ...     ("pairtune", PairTuneTransformer(sampling_rate=esc50.sampling_rate)),
    ...     ("clf", LogisticRegression(max_iter=1000)),
    ... ])  # doctest: +SKIP
    >>> scores = cross_val_score(model, esc50.data, esc50.target, cv=cv)  # doctest: +SKIP
    >>> len(scores)  # one accuracy per held-out fold  # doctest: +SKIP
    5

    The same splitter keeps a hyper-parameter search on the official folds:

    >>> search = GridSearchCV(
    ...     model, {"clf__C": [0.1, 1.0, 10.0]}, cv=cv)  # doctest: +SKIP
    >>> search.fit(esc50.data, esc50.target)  # doctest: +SKIP

    ``search.best_score_`` is the mean accuracy over the five official folds
    of the best setting; as the same folds chose that setting, it is slightly
    optimistic compared with a score from fixed hyper-parameters.

    The ESC-10 subset is a boolean column of ``frame``:

    >>> import numpy as np
    >>> esc10 = esc50.frame["esc10"].to_numpy(dtype=bool)  # doctest: +SKIP
    >>> X10 = [clip for clip, keep in zip(esc50.data, esc10) if keep]  # doctest: +SKIP
    >>> y10, folds10 = esc50.target[esc10], esc50.fold[esc10]  # doctest: +SKIP
    """
    root = Path(root)
    csv_path = root / _CSV
    audio_dir = root / _AUDIO
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"ESC-50 metadata not found: {str(csv_path)!r}. The root folder must hold "
            "meta/esc50.csv and audio/ as in the official archive "
            f"({ESC50_FOLDER}/); use fetch_esc50() to download it."
        )
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"ESC-50 audio folder not found: {str(audio_dir)!r}. The root folder must "
            "hold meta/esc50.csv and audio/ as in the official archive "
            f"({ESC50_FOLDER}/); use fetch_esc50() to download it."
        )

    frame = pd.read_csv(csv_path, dtype={"filename": str, "category": str})
    missing_columns = [c for c in _REQUIRED_COLUMNS if c not in frame.columns]
    if missing_columns:
        raise ValueError(
            f"{str(csv_path)!r} lacks the column(s) {', '.join(missing_columns)}; "
            f"ESC-50 metadata needs {', '.join(_REQUIRED_COLUMNS)} "
            f"(it has {', '.join(map(str, frame.columns))})."
        )
    if frame.empty:
        raise ValueError(f"{str(csv_path)!r} lists no clips.")
    if frame[list(_REQUIRED_COLUMNS)].isna().any().any():
        bad = frame.index[frame[list(_REQUIRED_COLUMNS)].isna().any(axis=1)]
        raise ValueError(
            f"{str(csv_path)!r} has empty filename, fold or category values on "
            f"{len(bad)} row(s), e.g. data row {int(bad[0]) + 1}."
        )
    try:
        folds = frame["fold"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        folds = np.array([np.nan])
    if not np.all(np.mod(folds, 1) == 0):
        raise ValueError(
            f"The fold column of {str(csv_path)!r} must hold integers (1-5), "
            f"got values such as {frame['fold'].iloc[0]!r}."
        )

    paths = [audio_dir / name for name in frame["filename"]]
    present = np.array([path.is_file() for path in paths])
    if not present.any():
        raise FileNotFoundError(
            f"None of the {len(paths)} files listed in {str(csv_path)!r} exists in "
            f"{str(audio_dir)!r} (e.g. {str(paths[0])!r})."
        )
    if not present.all():
        n_missing = int((~present).sum())
        first = paths[int(np.flatnonzero(~present)[0])]
        warnings.warn(
            f"{n_missing} of the {len(paths)} files listed in {str(csv_path)!r} are "
            f"missing from {str(audio_dir)!r} (e.g. {first.name!r}); loading the "
            f"{int(present.sum())} that exist.",
            UserWarning,
            stacklevel=2,
        )
        frame = frame[present].reset_index(drop=True)
        paths = [path for path, ok in zip(paths, present, strict=True) if ok]

    data, sampling_rate = read_clips(paths)
    target = frame["category"].to_numpy(dtype=str)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        target_names=np.unique(target),
        fold=frame["fold"].to_numpy(dtype=np.int64),
        sampling_rate=sampling_rate,
        frame=frame,
        filenames=np.array([str(path) for path in paths]),
        DESCR=_DESCR,
    )


def fetch_esc50(
    data_home=None, *, download_if_missing=True, url=ESC50_URL, timeout=10, return_X_y=False
):
    """Load ESC-50, downloading it into the data home first if needed.

    The official archive (about 600 MB) is downloaded once and unpacked into
    ``data_home/ESC-50-master``; later calls read it from there without any
    network access. See :func:`load_esc50` for the data.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder for downloaded datasets. ``None`` uses the
        ``SKAUDIO_CONFIT_DATA`` environment variable, else
        ``~/skaudio_confit_data`` (see :func:`get_data_home`).

    download_if_missing : bool, default=True
        If False, raise a :class:`FileNotFoundError` when the data are not in
        ``data_home`` instead of downloading them.

    url : str, default=ESC50_URL
        Where to download the zip archive from; it must hold an
        ``ESC-50-master/`` folder with ``meta/esc50.csv`` and ``audio/``.
        Point it at a mirror if GitHub is not reachable.

    timeout : float, default=10
        Seconds to wait for the server to connect or to send more data
        before giving up.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch` or tuple
        As returned by :func:`load_esc50`.

    Raises
    ------
    FileNotFoundError
        If the data are not in ``data_home`` and ``download_if_missing`` is
        False.
    FileExistsError
        If ``data_home/ESC-50-master`` exists but has no ``meta/esc50.csv``:
        an incomplete copy is never overwritten.
    ConnectionError
        If the download fails (no network, timeout, HTTP error). The message
        names the URL and where to put a local copy instead.
    OSError
        If the downloaded file is not a valid ESC-50 zip archive.

    See Also
    --------
    load_esc50 : Load ESC-50 from any local folder.

    Notes
    -----
    The archive is written to a temporary file in ``data_home`` and unpacked
    into a temporary folder there, which is renamed to ``ESC-50-master`` only
    once complete; the temporary files are removed whatever happens, so an
    interrupted download leaves nothing half-unpacked behind. Zip entries
    that would land outside the folder (absolute paths, ``..``) are refused.
    The archive has no published checksum (it is GitHub's snapshot of the
    master branch), so it is checked for the expected layout only.

    Examples
    --------
    >>> from skaudio_confit.datasets import fetch_esc50
    >>> esc50 = fetch_esc50()  # doctest: +SKIP
    >>> esc50.frame.columns.tolist()  # doctest: +SKIP
    ['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take']

    Offline, with the archive unpacked by hand into the data home:

    >>> esc50 = fetch_esc50(download_if_missing=False)  # doctest: +SKIP
    """
    data_home = get_data_home(data_home)
    root = data_home / ESC50_FOLDER
    if not (root / _CSV).is_file():
        if root.exists():
            raise FileExistsError(
                f"{str(root)!r} exists but has no {_CSV.as_posix()}: it looks like an "
                "incomplete copy of ESC-50. Complete it, or remove it to download "
                f"the dataset again. {_guidance(data_home)}"
            )
        if not download_if_missing:
            raise FileNotFoundError(
                f"ESC-50 not found in {str(data_home)!r} and download_if_missing is "
                f"False. {_guidance(data_home)}"
            )
        _download_and_unpack(url, data_home, timeout)
    return load_esc50(root, return_X_y=return_X_y)


def _download_and_unpack(url, data_home, timeout):
    """Download the archive at ``url`` and move its ESC-50 folder into ``data_home``."""
    data_home.mkdir(parents=True, exist_ok=True)
    fd, archive = tempfile.mkstemp(prefix=".esc50-", suffix=".zip.part", dir=data_home)
    unpack_dir = None
    try:
        with os.fdopen(fd, "wb") as f:
            _download(url, f, timeout, data_home)
        unpack_dir = Path(
            tempfile.mkdtemp(prefix=".esc50-", suffix=".unpack", dir=data_home)
        )
        _safe_extract(archive, unpack_dir, url)
        unpacked = unpack_dir / ESC50_FOLDER
        if not (unpacked / _CSV).is_file() or not (unpacked / _AUDIO).is_dir():
            raise OSError(
                f"The archive downloaded from {url} has no {ESC50_FOLDER}/"
                f"{_CSV.as_posix()} and {ESC50_FOLDER}/{_AUDIO}/; it is not the ESC-50 "
                f"archive. {_guidance(data_home)}"
            )
        root = data_home / ESC50_FOLDER
        try:
            os.replace(unpacked, root)  # atomic on one file system
        except OSError:
            if not (root / _CSV).is_file():  # not just a concurrent download winning
                raise
    finally:
        Path(archive).unlink(missing_ok=True)
        if unpack_dir is not None:
            shutil.rmtree(unpack_dir, ignore_errors=True)


def _download(url, file, timeout, data_home):
    """Stream ``url`` into the open binary ``file``; raise ConnectionError on failure.

    Only network errors become ConnectionError; an error writing ``file`` (a full
    disk, say) propagates as it is.
    """

    def failed(exc):
        if isinstance(exc, urllib.error.HTTPError):
            reason = str(exc)  # "HTTP Error 404: Not Found"
        else:
            reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            reason = f"no answer within timeout={timeout} s ({reason})"
        return ConnectionError(
            f"Could not download ESC-50 from {url}: {reason}. {_guidance(data_home)}"
        )

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise failed(exc) from exc
    with response:
        expected = response.headers.get("Content-Length")
        n_bytes = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise failed(exc) from exc
            if not chunk:
                break
            file.write(chunk)
            n_bytes += len(chunk)
    if expected is not None and expected.isdigit() and n_bytes != int(expected):
        raise ConnectionError(
            f"The download from {url} was cut short: got {n_bytes} of {expected} "
            f"bytes. Try again. {_guidance(data_home)}"
        )


def _safe_extract(archive, dest, url):
    """Unpack the zip ``archive`` into ``dest``, refusing entries that leave it."""
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename.replace("\\", "/"))
                target = (dest / name).resolve()
                if (
                    name.is_absolute()
                    or ".." in name.parts
                    or not target.is_relative_to(dest)
                ):
                    raise OSError(
                        f"Refusing to unpack the archive from {url}: entry "
                        f"{info.filename!r} would be written outside {str(dest)!r}."
                    )
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # symlink
                    raise OSError(
                        f"Refusing to unpack the archive from {url}: entry "
                        f"{info.filename!r} is a symbolic link."
                    )
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise OSError(
            f"The file downloaded from {url} is not a valid zip archive ({exc}); the "
            "download may be incomplete or the URL wrong."
        ) from exc
