"""Loader for a folder of labelled audio files: one sub-folder per class, or a csv index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._base import read_clips

METADATA_FILE = "metadata.csv"
_DEFAULT_GROUP_COLUMN = "group"
_DEFAULT_EXTENSIONS = (".wav", ".flac", ".ogg")


def _check_extensions(extensions):
    if isinstance(extensions, str):
        extensions = (extensions,)
    try:
        extensions = tuple(extensions)
    except TypeError:
        raise TypeError(
            f"extensions must be a sequence of file name endings such as ('.wav',), "
            f"got {extensions!r}."
        ) from None
    if not extensions or not all(isinstance(e, str) and e.strip(".") for e in extensions):
        raise ValueError(
            "extensions must be a non-empty sequence of file name endings such as "
            f"('.wav', '.flac'), got {extensions!r}."
        )
    return tuple(sorted({("." + e.lstrip(".")).lower() for e in extensions}))


def _is_hidden(relative):
    return any(part.startswith(".") for part in relative.parts)


def _scan_class_folders(root, extensions):
    """``(relative posix path, label)`` of every audio file under a class sub-folder."""
    entries = []
    for class_dir in root.iterdir():
        if not class_dir.is_dir() or class_dir.name.startswith("."):
            continue
        for path in class_dir.rglob("*"):
            relative = path.relative_to(root)
            if (
                path.suffix.lower() in extensions
                and not _is_hidden(relative)
                and path.is_file()
            ):
                entries.append((relative.as_posix(), class_dir.name))
    if not entries:
        loose = [
            p.name
            for p in root.iterdir()
            if p.suffix.lower() in extensions and p.is_file() and not p.name.startswith(".")
        ]
        hint = (
            f" {len(loose)} audio file(s) lie directly in the root folder (e.g. "
            f"{loose[0]!r}), but files must be in one sub-folder per class, or be "
            f"listed with their labels in {METADATA_FILE}."
            if loose
            else ""
        )
        raise ValueError(
            f"No audio files with extensions {', '.join(extensions)} found in the class "
            f"sub-folders of {str(root)!r}.{hint}"
        )
    frame = pd.DataFrame(entries, columns=["path", "label"])
    return frame.sort_values("path", kind="stable", ignore_index=True)


def _read_metadata(root, csv_path, group_column):
    """The rows of ``metadata.csv``, checked, sorted by path."""
    frame = pd.read_csv(csv_path)
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{str(csv_path)!r} lacks the column(s) {', '.join(missing)}: it needs "
            f"'path' (relative to the root folder) and 'label' columns, and optionally "
            f"a group column (has {', '.join(map(str, frame.columns))})."
        )
    if group_column is not None and group_column not in frame.columns:
        if group_column != _DEFAULT_GROUP_COLUMN:
            raise ValueError(
                f"group_column={group_column!r} is not a column of {str(csv_path)!r} "
                f"(it has {', '.join(map(str, frame.columns))})."
            )
        group_column = None
    if frame.empty:
        raise ValueError(f"{str(csv_path)!r} lists no files.")
    checked = ["path", "label"] + ([group_column] if group_column else [])
    # Paths, labels and groups are text exactly as written: "007" stays "007" and
    # "NA" is a label, not a missing value; only blank cells count as empty.
    raw = pd.read_csv(csv_path, usecols=checked, dtype=str, keep_default_na=False)
    for column in checked:
        frame[column] = raw[column].to_numpy(dtype=object)
    empty = frame[checked].apply(lambda c: c.str.strip() == "").any(axis=1)
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ValueError(
            f"{str(csv_path)!r} has empty {'/'.join(checked)} values on "
            f"{int(empty.sum())} row(s), e.g. data row {row + 1}: "
            f"{frame.iloc[row].to_dict()}."
        )
    duplicated = frame["path"].duplicated()
    if duplicated.any():
        raise ValueError(
            f"{str(csv_path)!r} lists {int(duplicated.sum())} path(s) more than once, "
            f"e.g. {frame['path'][duplicated].iloc[0]!r}; each file must appear once."
        )
    found = np.array([(root / p).is_file() for p in frame["path"]])
    if not found.all():
        first = root / frame["path"][~found].iloc[0]
        raise FileNotFoundError(
            f"{int((~found).sum())} of the {len(frame)} files listed in "
            f"{str(csv_path)!r} not found, e.g. {str(first)!r} (paths are relative "
            f"to {str(root)!r})."
        )
    frame = frame.sort_values("path", kind="stable", ignore_index=True)
    return frame, group_column


def _as_array(column):
    values = column.to_numpy()
    return values.astype(str) if values.dtype == object else values.copy()


def load_audio_folder(
    root,
    *,
    return_X_y=False,
    extensions=_DEFAULT_EXTENSIONS,
    sampling_rate=None,
    group_column=_DEFAULT_GROUP_COLUMN,
):
    """Load a folder of labelled audio clips.

    Two layouts are read, the usual "audio folder" ones:

    - **one sub-folder per class**: ``root/<label>/<file>``; files in nested
      folders below a class folder belong to that class, files directly in
      ``root`` are ignored;
    - **a metadata file**: ``root/metadata.csv`` with a ``path`` column
      (relative to ``root``), a ``label`` column and optionally a group column
      (``group`` by default, see ``group_column``). When the file exists it
      takes precedence over the folder structure, and only the files it lists
      are loaded.

    Parameters
    ----------
    root : str or path-like
        The dataset folder.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    extensions : sequence of str, default=(".wav", ".flac", ".ogg")
        File name endings of the audio files to load from class sub-folders,
        matched case-insensitively (the leading dot is optional). Not used when
        ``metadata.csv`` lists the files. Any format soundfile reads works.

    sampling_rate : float, default=None
        Rate to return all clips at, in Hz; clips at another rate are resampled
        with torchaudio. ``None`` keeps the most common rate among the files
        (the highest of them on a tie) and resamples only the others.

    group_column : str or None, default="group"
        Column of ``metadata.csv`` that gives each clip's group, such as the
        speaker or recording session, for
        :class:`~sklearn.model_selection.GroupKFold` and similar splitters. If
        the default ``"group"`` column is absent, ``groups`` is None; any other
        name must be a column of the csv. ``None`` never reads groups.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : list of ndarray of shape (n_samples_i,), dtype float32
            One mono waveform per clip (multi-channel files are averaged),
            sorted by relative path.
        target : ndarray of shape (n_clips,), dtype str
            The label of each clip: its class folder's name, or the csv's
            ``label`` text exactly as written (``"007"`` stays ``"007"``).
        target_names : ndarray of shape (n_classes,), dtype str
            The sorted distinct labels.
        sampling_rate : int or float
            The common sampling rate of the waveforms in Hz (an int when it is
            a whole number).
        groups : ndarray of shape (n_clips,), dtype str, or None
            The group of each clip from ``group_column``, as text; None for
            the sub-folder layout or when the csv has no group column.
        frame : pandas.DataFrame of shape (n_clips, n_columns)
            One row per clip in the order of ``data``, with a fresh
            ``RangeIndex``: the csv's rows with all its columns, or the columns
            ``path`` (relative, with ``/`` separators) and ``label`` for the
            sub-folder layout.
        filenames : ndarray of shape (n_clips,), dtype str
            The full path of each clip's file.
        DESCR : str
            A short description of what was loaded.

    (data, target) : tuple if ``return_X_y`` is True
        The list of waveforms and the target array described above.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist, or a file listed in ``metadata.csv`` does
        not.
    NotADirectoryError
        If ``root`` is a file.
    ValueError
        If no audio file with the given extensions is found in the class
        sub-folders; if ``metadata.csv`` lacks the ``path`` or ``label``
        column (or ``group_column``), lists no file, has empty values or the
        same path twice; or if a file cannot be read as audio.

    See Also
    --------
    load_esc50 : Load the ESC-50 environmental sound dataset.

    Examples
    --------
    A folder ``sounds/`` with ``dog/*.wav`` and ``cat/*.wav``:

    >>> from skaudio_confit.datasets import load_audio_folder
    >>> sounds = load_audio_folder("sounds")  # doctest: +SKIP
    >>> sounds.target_names.tolist()  # doctest: +SKIP
    ['cat', 'dog']
    >>> X, y = load_audio_folder("sounds", return_X_y=True)  # doctest: +SKIP

    A folder with a ``metadata.csv`` of ``path,label,kit`` rows, evaluated with
    all clips of one kit held out together:

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GroupKFold, cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from skaudio_confit import PairTuneTransformer
    >>> drums = load_audio_folder("drums", group_column="kit")  # doctest: +SKIP
    >>> model = make_pipeline(
    ...     PairTuneTransformer(sampling_rate=drums.sampling_rate),
    ...     LogisticRegression(max_iter=1000))  # doctest: +SKIP
    >>> scores = cross_val_score(
    ...     model, drums.data, drums.target, groups=drums.groups,
    ...     cv=GroupKFold(n_splits=4))  # doctest: +SKIP
    """
    extensions = _check_extensions(extensions)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Audio folder not found: {str(root)!r}.")
    if not root.is_dir():
        raise NotADirectoryError(
            f"Expected a folder of audio files, got a file: {str(root)!r}."
        )

    csv_path = root / METADATA_FILE
    if csv_path.is_file():
        frame, group_column = _read_metadata(root, csv_path, group_column)
        source = f"listed in {METADATA_FILE}"
    else:
        if group_column not in (None, _DEFAULT_GROUP_COLUMN):
            raise ValueError(
                f"group_column={group_column!r} needs a {METADATA_FILE} in "
                f"{str(root)!r} with that column; there is none, and the sub-folder "
                "layout has no groups."
            )
        frame = _scan_class_folders(root, extensions)
        group_column = None
        source = f"from class sub-folders ({', '.join(extensions)})"

    paths = [root / p for p in frame["path"]]
    data, rate = read_clips(paths, sampling_rate)
    target = _as_array(frame["label"])
    if return_X_y:
        return data, target

    groups = None if group_column is None else _as_array(frame[group_column])
    target_names = np.unique(target)
    descr = (
        f"Audio folder {str(root)!r}: {len(data)} clips {source}, "
        f"{len(target_names)} classes"
        + (
            f", {len(np.unique(groups))} groups ({group_column!r})"
            if groups is not None
            else ""
        )
        + f", at {rate} Hz."
    )
    return Bunch(
        data=data,
        target=target,
        target_names=target_names,
        sampling_rate=rate,
        groups=groups,
        frame=frame,
        filenames=np.array([str(p) for p in paths]),
        DESCR=descr,
    )
