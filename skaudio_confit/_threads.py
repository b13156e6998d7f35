"""Thread budgets: how many intra-op threads torch uses in fit and transform.

Two limits compose (the smaller wins):

- the estimator's ``n_threads``: an integer, or ``"auto"`` (the default), which uses
  the cores that other processes leave free: the usable cores minus the other
  processes' runnable threads (Linux's run queue), re-decided every half second
  while the work runs (:class:`ThreadPolicy`; elsewhere all usable cores). On a
  2-core machine with one core kept busy by another process, two torch threads are
  about 3x slower than one (OpenMP's threads wait on each other for the core they
  share); one thread on an idle machine leaves a core unused. ``None`` leaves
  torch's setting as it is.
- a worker's budget: a process that runs several fits side by side (a Dask worker,
  a joblib/loky worker) owns a share of the machine's cores, so the pool never
  exceeds that share (:func:`thread_budget`).

torch's setting is restored when the fit or ``transform`` ends.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time

import numpy as np
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


# How often "auto" re-decides, in seconds: long enough to average a few samples of
# the run queue, short next to a transform or an epoch.
_DECIDE_SECONDS = 0.5
# The first decision averages this many samples of the run queue, this far apart.
_FIRST_SAMPLES, _FIRST_SAMPLE_GAP = 3, 0.005


def _runnable_elsewhere():
    """Threads of other processes running or waiting for a CPU now, or None off Linux.

    The system's run queue (``procs_running`` of ``/proc/stat``) minus this process's
    own running threads. Demand, not CPU time used: a niced process that gets little
    CPU still takes its core from torch's threads often enough to stall them.
    """
    try:
        with open("/proc/stat") as f:
            total = next(int(line.split()[1]) for line in f
                         if line.startswith("procs_running"))
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    own += f.read().rpartition(")")[2].split()[0] == "R"
            except OSError:  # the thread ended meanwhile
                continue
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(0, total - own)


def _usable_cores():
    """Cores this process may run on (its CPU affinity), at most torch's own default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, _TORCH_DEFAULT_THREADS))


# torch's intra-op count when this package is imported (torch's default is the
# physical cores, or OMP_NUM_THREADS): "auto" never goes above it.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def auto_threads(runnable_elsewhere, cores=None):
    """Threads for "auto": the usable cores minus the other processes' demand, >= 1.

    ``runnable_elsewhere`` is the mean number of other processes' runnable threads
    (None when unknown: all usable cores).
    """
    cores = _usable_cores() if cores is None else cores
    if runnable_elsewhere is None:
        return cores
    # Half a busy core already costs a torch thread more than it brings: round up.
    return max(1, min(cores, cores - math.ceil(runnable_elsewhere - 0.25)))


class ThreadPolicy:
    """Set torch's intra-op threads for a fit or ``transform``; restore them at the end.

    Parameters
    ----------
    n_threads : int, "auto" or None
        An integer is used as it is; ``"auto"`` uses the usable cores minus the
        other processes' runnable threads (:func:`auto_threads`), re-decided by
        :meth:`update`; None keeps torch's current setting.
    budget : int or None
        A worker's thread budget (:func:`thread_budget`); caps the count.

    Use as a context manager in the thread that runs torch (with OpenMP the count
    belongs to the calling thread), and call :meth:`update` between batches.
    """

    def __init__(self, n_threads="auto", budget=None):
        if n_threads is not None and n_threads != "auto":
            n_threads = int(n_threads)
            if n_threads < 1:
                raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
        if budget is not None and int(budget) < 1:
            raise ValueError(f"A thread budget must be at least 1, got {budget}.")
        self.n_threads = n_threads
        self.budget = None if budget is None else int(budget)
        self._previous = None
        self._samples = []
        self._decide_at = None

    def __enter__(self):
        self._previous = torch.get_num_threads()
        if self.n_threads == "auto":
            for _ in range(_FIRST_SAMPLES):
                self._sample()
                time.sleep(_FIRST_SAMPLE_GAP)
        self._apply(self._wanted())
        return self

    def __exit__(self, *exc):
        if torch.get_num_threads() != self._previous:
            torch.set_num_threads(self._previous)
        return False

    @property
    def threads(self):
        """The count in force now."""
        return torch.get_num_threads()

    def update(self):
        """Sample the run queue ("auto"); every half second, adapt the thread count."""
        if self.n_threads != "auto":
            return
        self._sample()
        if time.monotonic() >= self._decide_at:
            self._apply(self._wanted())

    def _sample(self):
        value = _runnable_elsewhere()
        if value is not None:
            self._samples.append(value)

    def _wanted(self):
        if self.n_threads == "auto":
            other = np.mean(self._samples) if self._samples else None
            self._samples, self._decide_at = [], time.monotonic() + _DECIDE_SECONDS
            wanted = auto_threads(other)
        elif self.n_threads is None:
            wanted = self._previous
        else:
            wanted = self.n_threads
        if self.budget is not None:
            wanted = min(wanted, self.budget)
        return wanted

    def _apply(self, n):
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def thread_policy(n_threads="auto"):
    """A :class:`ThreadPolicy` for ``n_threads``, capped by this worker's budget."""
    return ThreadPolicy(n_threads, budget=thread_budget())
