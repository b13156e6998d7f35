"""Handing freed memory back to the system between chunks of a streamed ``transform``.

The encoder's activations change size with every batch (clips sorted by length), and
glibc's allocator keeps what they free in its heaps, raising its mmap threshold as it
goes: measured with the bundled encoder on FSDD files, the resident set of a
``transform`` grew from 150 MB at 500 clips to 355 MB at 2,000 although nothing was
alive, and ``malloc_trim`` gave it all back. :class:`MemoryKeeper` trims whenever
the resident set has grown by a set amount past the working set (reading it costs
microseconds; a trim about a millisecond, and the page faults that refill what the
next batch needs again more), which keeps the peak flat; no allocator setting is
changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory():
    """Return the allocator's free memory to the system (glibc; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# Growth of the resident set, in bytes, that triggers a trim.
_TRIM_GROWTH = 32 * 2**20


def _resident_bytes():
    """This process's resident set size (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryKeeper:
    """Trim the allocator once the resident set has grown ``growth`` bytes past the
    working set.

    The working set is read one batch after each trim (and at the first check): a
    trim hands back the pages the next batch needs again, so measuring from right
    after it would count that batch's own activations as growth and trim on every
    other batch (81 trims in 5,000 FSDD clips, each followed by page faults); measured
    from one batch later, only memory the allocator keeps beyond its working set
    counts.
    """

    def __init__(self, growth=_TRIM_GROWTH):
        self.growth = growth
        self.enabled = _malloc_trim() is not None and _resident_bytes() is not None
        self._floor = None

    def check(self):
        """Trim if the resident set grew past the threshold (call between batches)."""
        if not self.enabled:
            return
        resident = _resident_bytes()
        if self._floor is None:
            self._floor = resident
        elif resident - self._floor > self.growth:
            release_free_memory()
            self._floor = None

    def reset(self):
        """Measure the working set again at the next check (after an outside trim)."""
        self._floor = None
