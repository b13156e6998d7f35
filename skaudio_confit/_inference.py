"""Streamed inference: clips read and featurized in a background thread, encoded here.

``transform`` and ``predict`` go through :func:`embed_stream`. A producer thread
reads a chunk of clips (files, resampling), cuts them into windows, sorts the
windows by length into batches and runs the backbone's front end on each batch
(``featurize``), handing the batches over through a small bounded queue; the calling
thread runs the encoder on them, so reading and the front end overlap with the
encoder: file reads (which wait on the disk, not the CPU) always, computation where
a core is left over (when the encoder's threads take every core, the two share them).
Memory stays flat: at most one chunk of waveforms (each batch's samples are dropped
once featurized) and a few featurized batches are alive, per-window results are
folded into the output as they come, and a chunk's rows are written (and freed memory
handed back to the system) as soon as its last batch is encoded.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ._device import autocast
from ._memory import MemoryKeeper, release_free_memory
from ._pooling import encoder_rows, length_batches, masked_mean, prepare_clip
from ._threads import batch_threads, invariant_inference
from .backbones._base import batch_to

# Featurized batches waiting for the encoder: enough to ride out an uneven file read,
# few enough that long windows (30 s of log-mel) do not pile up in memory.
_QUEUE_BATCHES = 4
_DONE = object()


class _Chunk:
    """Where the windows of one chunk of clips go: ``start`` row, window owners."""

    def __init__(self, start, n_clips, owners):
        self.start = start
        self.n_clips = n_clips
        self.owners = owners  # chunk-relative clip index of each window


_END = object()  # after a chunk's last batch


def _produce(load_chunk, clips, chunk_size, backbone, max_samples, batch_size, out, stop):
    """Fill ``out`` with, per chunk, a ``_Chunk`` marker, ``(window indices, batch,
    rows)`` items (``rows``: clips x encoder frames, what :func:`batch_threads` reads)
    and ``_END``."""

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
            waves = load_chunk(clips[start:start + chunk_size], start)
            items, owners = [], []
            for i, wave in enumerate(waves):
                windows = prepare_clip(wave, backbone, max_samples)
                items.extend(windows)
                owners.extend([i] * len(windows))
            del waves
            if not put(_Chunk(start, min(chunk_size, len(clips) - start),
                              np.asarray(owners))):
                return
            batches = length_batches([len(w) for w in items], batch_size,
                                     exact_length=not backbone.padding_invariant)
            for idx in batches:
                windows = [items[i] for i in idx]
                for i in idx:  # the batch's samples are not needed once featurized
                    items[i] = None
                with torch.inference_mode():
                    batch = backbone.featurize(windows)
                rows = encoder_rows(backbone, windows)
                del windows
                if not put((idx, batch, rows)):
                    return
            if not put(_END):
                return
        put(_DONE)
    except BaseException as exc:  # handed to the caller's thread, raised there
        put(exc)


def embed_stream(backbone, clips, *, load_chunk, chunk_size, layer, batch_size,
                 max_samples, device, threads=None, progress=None):
    """Mean-pooled embeddings of ``clips``, one row per clip, read and encoded in a stream.

    Parameters
    ----------
    backbone : AudioBackbone
        Run in eval mode (its mode is restored after).
    clips : list
        Clips as :func:`~skaudio_confit._input.as_clip_list` returns them.
    load_chunk : callable
        ``load_chunk(clips, first_index) -> list of waveforms`` at the backbone's rate;
        runs in the producer thread, its errors are raised in the caller's.
    chunk_size : int
        Clips read at a time (bounds memory; windows are batched within a chunk).
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
        args=(load_chunk, clips, chunk_size, backbone, max_samples, batch_size, handoff,
              stop),
    )
    memory = MemoryKeeper()
    was_training = backbone.training
    backbone.eval()
    chunk, sums, counts, shown = None, None, None, 0

    def finish(chunk):
        out[chunk.start:chunk.start + chunk.n_clips] = sums / counts[:, None]
        release_free_memory()
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
                    counts = np.bincount(chunk.owners, minlength=chunk.n_clips)
                    continue
                if threads is not None:
                    threads.update()
                idx, batch, rows = item
                with batch_threads(rows):
                    hidden, frame_mask = backbone(batch_to(batch, device), layer)
                    pooled = masked_mean(hidden.float(), frame_mask).cpu().numpy()
                np.add.at(sums, chunk.owners[idx], pooled)
                del hidden, frame_mask, batch
                memory.check()
                if progress is not None:  # windows as clips, the rest when the chunk ends
                    step = min(len(idx), chunk.n_clips - shown)
                    progress.update(step)
                    shown += step
    finally:
        stop.set()
        producer.join()
        backbone.train(was_training)
    return out
