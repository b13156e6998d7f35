"""Streamed inference: clips read and featurized in a background thread, encoded here.

``transform`` and ``predict`` go through :func:`embed_stream`. A producer thread
sorts a chunk of clips by their expected length (a file's header, an array's shape),
reads them (files, resampling) a batch's worth at a time in that order, cuts them
into windows, batches the windows by length and runs the backbone's front end on each
batch (``featurize``), handing the batches over through a small bounded queue; the
calling thread runs the encoder on them, so reading and the front end overlap with the
encoder: file reads (which wait on the disk, not the CPU) always, computation where
a core is left over (when the encoder's threads take every core, the two share them).
Memory stays flat: one group of waveforms (dropped once featurized) and a few
featurized batches are alive, per-window results are folded into the output as they
come, and a chunk's rows are written (and freed memory handed back to the system) as
soon as its last batch is encoded.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ._device import autocast
from ._memory import MemoryKeeper, release_free_memory
from ._pooling import encoder_rows, inference_batches, masked_mean, prepare_clip
from ._threads import batch_threads, invariant_inference
from .backbones._base import batch_to

# Featurized batches waiting for the encoder: enough to ride out an uneven file read,
# few enough that long windows (30 s of log-mel) do not pile up in memory.
_QUEUE_BATCHES = 4
_DONE = object()


class _Chunk:
    """Where the windows of one chunk of clips go: its first row and its clip count."""

    def __init__(self, start, n_clips):
        self.start = start
        self.n_clips = n_clips


_END = object()  # after a chunk's last batch


def _produce(load_chunk, length_of, clips, chunk_size, backbone, max_samples, batch_size,
             device, out, stop):
    """Fill ``out`` with, per chunk, a ``_Chunk`` marker, ``(owners, batch, rows)``
    items (``owners``: the chunk-relative clip of each window; ``rows``: clips x
    encoder frames, what :func:`batch_threads` reads) and ``_END``.

    A chunk's clips are sorted by their expected length (``length_of``: a file's
    header, an array's shape) and read ``batch_size`` at a time in that order, so
    batches hold clips of similar length while only one group of waveforms is alive:
    reading ahead costs one batch of samples, not a chunk.
    """

    def put(item):
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # The front end and resampling run torch ops: one thread here, so that the encoder
    # keeps the cores its thread policy chose.
    torch.set_num_threads(1)
    try:
        for start in range(0, len(clips), chunk_size):
            chunk = clips[start:start + chunk_size]
            if not put(_Chunk(start, len(chunk))):
                return
            order = np.argsort([length_of(clip) for clip in chunk], kind="stable")
            unread = set(range(len(chunk)))
            for first in range(0, len(order), batch_size):
                group = order[first:first + batch_size]
                try:
                    waves = load_chunk([chunk[i] for i in group], start + group)
                except Exception as exc:
                    raise (_first_error(load_chunk, chunk, start, unread) or exc) from None
                unread.difference_update(group.tolist())
                items, owners = [], []
                for i, wave in zip(group, waves):
                    windows = prepare_clip(wave, backbone, max_samples)
                    items.extend(windows)
                    owners.extend([i] * len(windows))
                del waves
                owners = np.asarray(owners)
                for idx in inference_batches(backbone, [len(w) for w in items],
                                             batch_size, device):
                    windows = [items[i] for i in idx]
                    for i in idx:  # the batch's samples are not needed once featurized
                        items[i] = None
                    with torch.inference_mode():
                        batch = backbone.featurize(windows)
                    rows = encoder_rows(backbone, windows)
                    del windows
                    if not put((owners[idx], batch, rows)):
                        return
            if not put(_END):
                return
        put(_DONE)
    except BaseException as exc:  # handed to the caller's thread, raised there
        put(exc)


def _first_error(load_chunk, chunk, start, unread):
    """The error of the first clip, in input order, of ``unread`` that cannot be read.

    Clips are read in order of length; an input with several bad clips still gets the
    error of its first one, as when everything was read in order.
    """
    for i in sorted(unread):
        try:
            load_chunk([chunk[i]], [start + i])
        except Exception as exc:  # noqa: BLE001 - returned to be raised by the caller
            return exc
    return None


def embed_stream(backbone, clips, *, load_chunk, chunk_size, layer, batch_size,
                 max_samples, device, length_of=len, threads=None, progress=None):
    """Mean-pooled embeddings of ``clips``, one row per clip, read and encoded in a stream.

    Parameters
    ----------
    backbone : AudioBackbone
        Run in eval mode (its mode is restored after).
    clips : list
        Clips as :func:`~skaudio_confit._input.as_clip_list` returns them.
    load_chunk : callable
        ``load_chunk(clips, indices) -> list of waveforms`` at the backbone's rate
        (``indices``: the clips' positions in ``clips``, for error messages); runs in
        the producer thread, its errors are raised in the caller's.
    chunk_size : int
        Clips sorted by length together (clips of similar length share batches).
    length_of : callable
        A clip's expected length (any unit common to all clips), read before the clip
        is: it orders the reads. The embeddings do not depend on it.
    layer : int
        Hidden layer pooled.
    max_samples : int or None
        Window length; longer clips are split and their windows' embeddings averaged.
    threads : ThreadPolicy or None
        Its :meth:`~skaudio_confit._threads.ThreadPolicy.update` is called between
        batches (the caller enters it). The result does not depend on the thread
        count (:func:`~skaudio_confit._threads.invariant_inference`).

    Returns
    -------
    embeddings : ndarray of shape (len(clips), backbone.hidden_size), dtype float32
    """
    out = np.empty((len(clips), backbone.hidden_size), dtype=np.float32)
    handoff = queue.Queue(maxsize=_QUEUE_BATCHES)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, name="skaudio-confit-reader", daemon=True,
        args=(load_chunk, length_of, clips, chunk_size, backbone, max_samples, batch_size,
              device, handoff, stop),
    )
    memory = MemoryKeeper()
    was_training = backbone.training
    backbone.eval()
    chunk, sums, counts, shown = None, None, None, 0

    def finish(chunk):
        out[chunk.start:chunk.start + chunk.n_clips] = sums / counts[:, None]
        release_free_memory()
        memory.reset()
        if progress is not None:
            progress.update(chunk.n_clips - shown)

    producer.start()
    try:
        with torch.inference_mode(), autocast(device), invariant_inference(
                backbone, None if threads is None else threads.steady_threads):
            while True:
                item = handoff.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    finish(chunk)
                    continue
                if isinstance(item, _Chunk):
                    chunk, shown = item, 0
                    sums = np.zeros((chunk.n_clips, backbone.hidden_size))
                    counts = np.zeros(chunk.n_clips)
                    continue
                if threads is not None:
                    threads.update()
                owners, batch, rows = item
                with batch_threads(rows):
                    hidden, frame_mask = backbone(batch_to(batch, device), layer)
                    pooled = masked_mean(hidden.float(), frame_mask).cpu().numpy()
                np.add.at(sums, owners, pooled)
                np.add.at(counts, owners, 1)
                del hidden, frame_mask, batch
                memory.check()
                if progress is not None:  # windows as clips, the rest when the chunk ends
                    step = min(len(owners), chunk.n_clips - shown)
                    progress.update(step)
                    shown += step
    finally:
        stop.set()
        producer.join()
        backbone.train(was_training)
    return out
