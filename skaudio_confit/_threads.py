"""Thread budgets: torch's intra-op threads follow the worker a fit runs in.

A process that runs several fits side by side (a Dask worker, a joblib/loky worker)
owns a share of the machine's cores. torch sizes its intra-op pool from the
environment once, at import, and a library or user may change it later, so a fit
sets the pool to the worker's allotment for its own duration and restores it after.
Outside any worker nothing is changed: the caller's ``torch.set_num_threads`` stands.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os

import torch


def _dask_worker_threads():
    """``nthreads`` of the Dask worker running this task, or None outside one."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not inside a task of a worker
        return None
    state = getattr(worker, "state", None)
    nthreads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return int(nthreads) if nthreads else None


def _loky_worker_threads():
    """The thread limit joblib gave this loky worker process, or None outside one.

    joblib starts loky workers with ``OMP_NUM_THREADS`` (and the MKL/OpenBLAS
    equivalents) set to ``cpu_count() // n_jobs``, or to ``inner_max_num_threads``
    of ``joblib.parallel_config``; the limit is read only inside such a worker, so a
    user's own ``OMP_NUM_THREADS`` never overrides their ``torch.set_num_threads``.
    """
    process = multiprocessing.current_process()
    if type(process).__name__ != "LokyProcess":
        return None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        try:
            value = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return None


def thread_budget():
    """Intra-op threads this process may use for a fit or ``transform``, or None.

    Inside a Dask worker: the worker's ``nthreads`` (``threads_per_worker``).
    Inside a joblib loky worker: the thread limit joblib set for it. Otherwise None,
    meaning "leave torch as it is".
    """
    budget = _dask_worker_threads()
    if budget is None:
        budget = _loky_worker_threads()
    return budget


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``torch.set_num_threads(n)``; restore the count after.

    ``n=None`` changes nothing. With torch's OpenMP thread pool (the Linux, Windows
    and macOS wheels) the count belongs to the calling thread: fits running side by
    side in threads of one process (a Dask worker with several threads) each set and
    restore their own, and other threads keep theirs.
    """
    if n is None:
        yield
        return
    n = int(n)
    if n < 1:
        raise ValueError(f"A thread budget must be at least 1, got {n}.")
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def budget_threads():
    """``torch_threads(thread_budget())``: the worker's budget for this block."""
    return torch_threads(thread_budget())
