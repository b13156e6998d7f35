"""Transactional directory saves: the previous save stays whole until the new one is.

A save is written into a fresh hidden sibling directory (``.NAME.saving-XXXX``),
checked by loading it back, and only then swapped into place by one rename. A
failure or crash at any point before the swap leaves the target exactly as it was;
after a hard crash the hidden sibling may remain and can be deleted. Files are
created with ``O_EXCL | O_NOFOLLOW`` in that fresh directory, so a save never writes
through a symbolic link, and with ordinary modes (``0o666`` less the umask).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import uuid
from pathlib import Path


def check_target(directory, markers, *, overwrite=False):
    """Check that a save may go to ``directory``; return it as an absolute path.

    Writes nothing. Raises ``FileExistsError`` for a non-empty directory holding none
    of ``markers`` (the manifest of a previous save) unless ``overwrite``, or for a
    file in the way; ``ValueError`` for a symbolic link; ``PermissionError`` when the
    directory could not be created or replaced.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}.")
    target = Path(os.path.abspath(os.fspath(directory)))
    if target.parent == target:
        raise ValueError(f"Cannot save to {str(target)!r}: choose a directory to create.")
    if target.is_symlink():
        raise ValueError(
            f"Cannot save to {str(target)!r}: it is a symbolic link, and saves never "
            "write through links. Pass the directory it points to, or another path."
        )
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(
                errno.EEXIST,
                f"Cannot save to {str(target)!r}: a file of that name exists and is not a "
                "directory. Choose another path.",
            )
        ours = any((target / marker).is_file() and not (target / marker).is_symlink()
                   for marker in markers)
        if not overwrite and not ours and any(target.iterdir()):
            raise FileExistsError(
                errno.EEXIST,
                f"Refusing to save into {str(target)!r}: it is not empty and holds no "
                f"previous save ({' or '.join(markers)}). Pass overwrite=True to replace "
                "it and everything in it, or choose another directory.",
            )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FileExistsError(
            errno.EEXIST, f"Cannot save to {str(target)!r}: {str(ancestor)!r} is not a directory."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"Cannot save to {str(target)!r}: {str(ancestor)!r} is not writable."
        )
    return target


def save_directory(directory, write, validate, *, markers, overwrite=False):
    """Save transactionally: ``write(staging)``, ``validate(staging)``, then swap.

    ``write`` fills the fresh staging directory (through :func:`write_file` and
    :func:`make_dir`); ``validate`` loads it back and raises if it is not right.
    """
    target = check_target(directory, markers, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _fresh_sibling(target, "saving")
        make_dir(staging)
    except OSError as exc:
        raise _save_error(target, exc) from None
    try:
        try:
            write(staging)
            _fsync_dir(staging)
        except OSError as exc:
            raise _save_error(target, exc) from None
        validate(staging)
        # Someone may have written into the target since the first check.
        check_target(target, markers, overwrite=overwrite)
        leftover = swap_into_place(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        _discard(staging)
        raise
    if leftover is not None:
        _discard(leftover)
    return target


def write_file(path, data):
    """Create ``path`` (it must not exist; never through a link) holding ``data``."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def make_dir(path):
    """Create the directory ``path`` (it must not exist), with the umask's mode."""
    os.mkdir(path)


def swap_into_place(staging, target):
    """Put ``staging`` at ``target``; return where the old target now is (or None).

    Uses one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``) when the target
    exists; elsewhere two renames, undoing the first if the second fails.
    """
    if not os.path.lexists(target):
        os.rename(staging, target)
        return None
    if _exchange(staging, target):
        return staging
    old = _fresh_sibling(target, "replaced")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


@functools.cache
def _renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux, or an old libc
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a, b):
    """Atomically swap paths ``a`` and ``b``; False where the system cannot."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _fresh_sibling(target, purpose):
    return target.with_name(f".{target.name}.{purpose}-{uuid.uuid4().hex[:12]}")


def _fsync_dir(path):
    # Makes the new entries durable; some file systems cannot fsync a directory.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(path):
    shutil.rmtree(path, ignore_errors=True)


def _save_error(target, exc):
    message = f"Could not save to {str(target)!r}: {exc}"
    # OSError(errno, message) is the errno's subclass (PermissionError, ...).
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)
