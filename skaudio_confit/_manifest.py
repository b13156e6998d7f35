"""Reading and writing the JSON manifests and file references of the safe format.

Everything read here comes from outside: a value that is not what the format says
is a ``ValueError`` naming the file, never an exception from deep inside json,
numpy or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

# Bumped only when an older reader could misread a newer save; new optional
# manifest entries keep the version (older saves without them still load).
FORMAT_VERSION = 2  # the newest format read; see persistence for what writes 2


def json_value(value):
    """``value`` as JSON data; numpy arrays keep their dtype (see :func:`from_json`)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"Cannot save a value of type {type(value).__name__} ({value!r}) in the safe "
        "format; use an int or None for random_state, or joblib for arbitrary objects."
    )


def from_json(value):
    """Inverse of :func:`json_value` for one value."""
    if isinstance(value, dict) and "__ndarray__" in value:
        if value["dtype"] == "object":
            out = np.empty(len(value["__ndarray__"]), dtype=object)
            out[:] = value["__ndarray__"]
            return out
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    return value


def json_bytes(manifest):
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def read_manifest(path):
    """The manifest at ``path`` as a dict, or a ValueError saying why it is not one."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a valid manifest: {exc}") from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is not a valid manifest: it is nested too "
                         "deeply.") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{str(path)!r} is not a valid manifest: expected a JSON object, got "
            f"{type(manifest).__name__}."
        )
    return manifest


def check_format_version(version, path):
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{str(path)!r} is not a valid manifest: format_version {version!r} is not a "
            "positive integer."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"Saved model format version {version!r} is not supported by this version of "
            f"skaudio-confit (reads up to {FORMAT_VERSION}); upgrade the package."
        )


def file_inside(directory, name, what):
    """``directory / name`` if ``name`` is a plain file name; refuse anything that could
    point outside ``directory`` (``../x``, absolute paths, links leading elsewhere)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name
            or "\\" in name):
        raise ValueError(
            f"The manifest in {str(directory)!r} names {what} {name!r}, which is not a plain "
            "name inside that directory; refusing to read it."
        )
    path = directory / name
    if path.exists() and directory.resolve() not in path.resolve().parents:
        raise ValueError(
            f"{what.capitalize()} {str(path)!r} leads outside {str(directory)!r}; refusing "
            "to read it."
        )
    return path


def sha256_of_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_entry(file_name, tensors, data):
    """The manifest's description of a safetensors file: name, shapes, sha256."""
    return {"file": file_name, "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "sha256": hashlib.sha256(data).hexdigest()}


def checked_weights_file(directory, file_name, sha256):
    """The weight file a manifest names, once it is inside ``directory`` and whole."""
    path = file_inside(directory, file_name, "weight file")
    if not path.is_file():
        raise FileNotFoundError(f"Weight file {str(path)!r} is missing.")
    if sha256_of_file(path) != sha256:
        raise ValueError(
            f"Weight file {str(path)!r} does not match the sha256 in the manifest: "
            "it was altered or truncated."
        )
    return path


def tensor_shapes(path):
    """Tensor names and shapes from a safetensors header, without reading the data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Could not read weights {str(path)!r}: {exc}") from None


def read_tensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Could not read weights {str(path)!r}: {exc}") from None
