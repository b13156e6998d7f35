"""Thread budgets: how many intra-op threads torch uses in fit and transform.

Two limits compose (the smaller wins):

- the estimators' ``n_threads``:

  - None (the default): training steps run at torch's setting, fixed for the whole
    fit, so that the same ``random_state`` gives bit-identical weights; inference
    (``transform``, ``predict``, the embeddings scored during a fit) uses at most
    torch's setting and fewer while other processes hold cores (a divisor of the
    setting: :func:`_divisor_at_most`), since its results do not depend on the thread
    count (:func:`invariant_inference`).
  - ``"auto"``: the cores other processes leave free in training too (faster on a
    busy machine; the last bits of the weights may then differ between runs, as
    float sums of the backward pass split with the thread count).
  - an integer: exactly that many threads everywhere.

  "The cores other processes leave free" are the usable cores minus the other
  processes' runnable threads (Linux's run queue), re-decided every half second while
  the work runs (:class:`ThreadPolicy`; elsewhere all usable cores). On a 2-core
  machine with one core kept busy by another process, two torch threads are about 2-3x
  slower than one (OpenMP's threads wait on each other for the core they share); one
  thread on an idle machine leaves a core unused.
- a worker's budget: a process that runs several fits side by side (a Dask worker,
  a joblib/loky worker) owns a share of the machine's cores, so the pool never
  exceeds that share (:func:`thread_budget`).

torch's setting is restored when the fit or ``transform`` ends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import threading
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
        # The two reads are not one snapshot: torch's own threads switch between
        # running and waiting in between, and each one missed would count as another
        # process's. So this process's running threads are read before and after the
        # run queue and the larger count is taken.
        own = _own_running_threads()
        with open("/proc/stat") as f:
            total = next(int(line.split()[1]) for line in f
                         if line.startswith("procs_running"))
        own = max(own, _own_running_threads())
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(0, total - own)


def _own_running_threads():
    """Threads of this process running or waiting for a CPU now (Linux)."""
    own = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                own += f.read().rpartition(")")[2].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            continue
    return own


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
    # A core kept busy elsewhere costs a torch thread more than it brings; less than
    # half a core on average is mostly this process's own threads caught between the
    # reads of the run queue (0.2-0.5 measured on an idle machine), so it is ignored.
    return max(1, min(cores, cores - math.ceil(runnable_elsewhere - 0.5)))


class ThreadPolicy:
    """Set torch's intra-op threads for a fit or ``transform``; restore them at the end.

    Parameters
    ----------
    n_threads : int, "auto" or None
        An integer is used as it is; ``"auto"`` uses the usable cores minus the
        other processes' runnable threads (:func:`auto_threads`), re-decided by
        :meth:`update`; None keeps torch's current setting, or with ``inference``
        uses at most that many, fewer while other processes hold cores (a divisor of
        the setting, re-decided like "auto").
    budget : int or None
        A worker's thread budget (:func:`thread_budget`); caps the count.
    inference : bool
        Whether the block only runs inference, whose results do not depend on the
        thread count (:func:`invariant_inference`), so that None may follow the load.

    Use as a context manager in the thread that runs torch (with OpenMP the count
    belongs to the calling thread), and call :meth:`update` between batches.
    """

    def __init__(self, n_threads="auto", budget=None, inference=False):
        if n_threads is not None and n_threads != "auto":
            n_threads = int(n_threads)
            if n_threads < 1:
                raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
        if budget is not None and int(budget) < 1:
            raise ValueError(f"A thread budget must be at least 1, got {budget}.")
        self.n_threads = n_threads
        self.budget = None if budget is None else int(budget)
        self.inference = bool(inference)
        self._previous = None
        self._samples = []
        self._decide_at = None

    @property
    def adaptive(self):
        """Whether the count follows the machine's load."""
        return self.n_threads == "auto" or (self.n_threads is None and self.inference)

    def __enter__(self):
        self._previous = torch.get_num_threads()
        if self.adaptive:
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

    @property
    def steady_threads(self):
        """For None in inference, the count of the parts whose bits depend on it
        (:func:`invariant_inference`): torch's setting, capped by the budget, as in
        training; None when no result needs to stay the same ("auto", an int)."""
        if not (self.n_threads is None and self.inference):
            return None
        previous = torch.get_num_threads() if self._previous is None else self._previous
        return previous if self.budget is None else min(previous, self.budget)

    def update(self):
        """Sample the run queue (adaptive counts); every half second, adapt the count."""
        if not self.adaptive:
            return
        self._sample()
        if time.monotonic() >= self._decide_at:
            self._apply(self._wanted())

    def _sample(self):
        value = _runnable_elsewhere()
        if value is not None:
            self._samples.append(value)

    def _wanted(self):
        if self.adaptive:
            other = np.mean(self._samples) if self._samples else None
            self._samples, self._decide_at = [], time.monotonic() + _DECIDE_SECONDS
            wanted = auto_threads(other)
            if self.n_threads is None:
                wanted = _divisor_at_most(self.steady_threads, wanted)
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


def _divisor_at_most(steady, n):
    """The largest divisor of ``steady`` that is at most ``n`` (at least 1).

    Under None, inference runs on torch's setting or a divisor of it (8 threads: 8, 4,
    2 or 1): elementwise ops (GELU, ...) cut a tensor into one chunk per thread and
    finish each chunk's last elements with scalar code, which can round differently
    from the vector code; with a divisor of the setting and layer widths that are
    multiples of 16 times the count (384, 768, 1024, 1536, ... on up to 8 threads),
    every chunk ends on a vector boundary. Measured with a wav2vec2-base-sized
    encoder set to 8 threads: 1, 2, 4 and 8 threads gave the same bits, 5 and 7 did
    not (the bundled Whisper: the same on every count).
    """
    n = max(1, min(n, steady))
    while steady % n:
        n -= 1
    return n


def thread_policy(n_threads="auto", inference=False):
    """A :class:`ThreadPolicy` for ``n_threads``, capped by this worker's budget."""
    return ThreadPolicy(n_threads, budget=thread_budget(), inference=inference)


# --------------------------------------------------------------------------------------
# Inference whose results do not depend on the thread count
# --------------------------------------------------------------------------------------

# Batches whose linear layers see fewer rows (clips x encoder frames) than this run on
# one thread. MKL's sgemm (torch's CPU matmul) takes another kernel on one thread than
# on several for 5-11 rows, whatever the widths (measured with torch 2.11 for widths
# 16 to 3072 and 1 to 6 threads; 12 rows and more, and 1-4 or 8 rows, gave the same
# bits on any count); such batches are cheap, so a margin costs nothing.
_ONE_THREAD_ROWS = 32


def batch_threads(n_rows):
    """``torch_threads(1)`` for a batch of ``n_rows`` rows (clips x encoder frames)
    below :data:`_ONE_THREAD_ROWS`, else no change."""
    return torch_threads(1) if n_rows < _ONE_THREAD_ROWS else contextlib.nullcontext()


_hook_state = threading.local()


def _set_threads_before(n, module, args):
    stack = _hook_state.__dict__.setdefault("previous", [])
    stack.append(torch.get_num_threads())
    if stack[-1] != n:
        torch.set_num_threads(n)


def _restore_after(module, args, output):
    previous = _hook_state.previous.pop()
    if torch.get_num_threads() != previous:
        torch.set_num_threads(previous)


_CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d)


@contextlib.contextmanager
def invariant_inference(module, conv_threads=None):
    """Make the forward of ``module`` give the same bits on any thread count (CPU).

    What torch computes with another summation order on one thread than on several,
    found by comparing every layer's output at 1, 2 and 3 threads (torch 2.11, MKL):

    - parametrized weights (the weight norm of the wav2vec2 family's positional conv:
      torch's ``_weight_norm`` over the last dimension sums per thread): computed on
      one thread, by hooks on the parametrizations;
    - convolutions (oneDNN's and torch's own split the frames between threads, and
      a frame's result depends on the split from 3 threads on): run on
      ``conv_threads`` threads when given (a count that does not follow the load),
      by hooks on every ``Conv1d``/``Conv2d``;
    - MKL's matmul on a few rows: the caller runs such batches under
      :func:`batch_threads`;
    - elementwise ops finish each thread's chunk with scalar code: the policy keeps
      to divisors of torch's setting (:func:`_divisor_at_most`).

    Everything else the encoders run (matmuls of 12 rows and more, attention, norms,
    reductions over frames) splits its work between threads along the outputs, so
    each output sums in the same order on any count. The hooks are removed at the end.
    """
    from torch.nn.utils import parametrize

    handles = []

    def fix(target, n):
        handles.append(target.register_forward_pre_hook(
            functools.partial(_set_threads_before, n)))
        handles.append(target.register_forward_hook(_restore_after, always_call=True))

    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            for parametrizations in sub.parametrizations.values():
                fix(parametrizations, 1)
        if conv_threads is not None and isinstance(sub, _CONVOLUTIONS):
            fix(sub, int(conv_threads))
    try:
        yield module
    finally:
        for handle in handles:
            handle.remove()
