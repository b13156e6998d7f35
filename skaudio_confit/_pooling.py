"""Masked mean pooling and length-bucketed batched inference."""

from __future__ import annotations

import numpy as np
import torch

from ._windows import pad_to_length, split_windows
from ._device import autocast
from ._threads import batch_threads, invariant_inference
from .backbones._base import batch_to


def masked_mean(hidden, frame_mask):
    """Mean of ``hidden`` (batch, frames, dim) over the frames where ``frame_mask`` is True."""
    weights = frame_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def length_batches(lengths, batch_size, exact_length=False, frames=None, max_rows=None):
    """Split clip indices into batches of similar (or, if ``exact_length``, equal) length.

    Sorting by length keeps padding small; ``exact_length`` is for backbones whose
    output changes when a clip is padded. With ``frames`` (each clip's encoder frames)
    and ``max_rows``, a batch is also cut where its clips times its longest clip's
    frames would pass ``max_rows`` (a batch holds at least one clip). The order is
    deterministic.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    if not exact_length:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        batches = []
        for length in np.unique(lengths):
            group = order[lengths[order] == length]
            batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    if max_rows is None:
        return batches
    return [piece for batch in batches for piece in _cut_rows(batch, frames, max_rows)]


def _cut_rows(batch, frames, max_rows):
    """``batch`` (indices sorted by length) cut into runs of at most ``max_rows`` rows."""
    pieces, start = [], 0
    for end in range(1, len(batch)):
        if (end + 1 - start) * frames[batch[end]] > max_rows:
            pieces.append(batch[start:end])
            start = end
    pieces.append(batch[start:])
    return pieces


# On CPU, inference batches hold at most this many rows (clips x encoder frames of
# the longest): larger ones spill out of the caches and cost more per clip (5 s
# clips, 250 frames each: 1.33 s per 64 clips of the bundled encoder in batches of 8,
# 1.57 s in batches of 32), while smaller ones leave the cores idle. On a GPU,
# ``batch_size`` alone sets the batch.
CPU_BATCH_ROWS = 2048


def inference_batches(backbone, lengths, batch_size, device):
    """:func:`length_batches` of windows of ``lengths`` samples for inference on ``device``."""
    exact_length = not backbone.padding_invariant
    if torch.device(device).type != "cpu":
        return length_batches(lengths, batch_size, exact_length=exact_length)
    frames = [backbone.encoder_frames(n) for n in lengths]
    return length_batches(lengths, batch_size, exact_length=exact_length, frames=frames,
                          max_rows=CPU_BATCH_ROWS)


def prepare_clip(wave, backbone, max_samples):
    """Pad a clip to the backbone's receptive field and split it into windows."""
    wave = pad_to_length(wave, backbone.min_samples)
    if max_samples is None:
        return [wave]
    return split_windows(wave, max(max_samples, backbone.min_samples))


def encoder_rows(backbone, windows):
    """Rows the transformer layers see for a batch of ``windows`` (clips x encoder
    frames of the longest): what :func:`~skaudio_confit._threads.batch_threads` reads."""
    return len(windows) * backbone.encoder_frames(max(len(w) for w in windows))


def embed_waveforms(
    backbone, waves, *, layer=-1, batch_size=32, max_samples=None, device=None, progress=None,
    threads=None,
):
    """Mean-pooled embeddings of ``waves``, one row per clip, independent of batching.

    Clips longer than ``max_samples`` are split into windows whose embeddings are
    averaged. Windows are batched by length so that padding is minimal, and padded
    frames never enter the mean. The result does not depend on torch's thread count
    (:func:`~skaudio_confit._threads.invariant_inference`); ``threads``, a
    :class:`~skaudio_confit._threads.ThreadPolicy` entered by the caller, is updated
    between batches.

    Returns
    -------
    embeddings : ndarray of shape (len(waves), backbone.hidden_size), dtype float32
    """
    device = device or torch.device("cpu")
    items, owners = [], []
    for i, wave in enumerate(waves):
        windows = prepare_clip(wave, backbone, max_samples)
        items.extend(windows)
        owners.extend([i] * len(windows))
    pooled = np.empty((len(items), backbone.hidden_size), dtype=np.float32)
    batches = inference_batches(backbone, [len(w) for w in items], batch_size, device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode(), autocast(device), invariant_inference(
                backbone, None if threads is None else threads.steady_threads):
            for idx in batches:
                if threads is not None:
                    threads.update()
                windows = [items[i] for i in idx]
                batch = batch_to(backbone.featurize(windows), device)
                with batch_threads(encoder_rows(backbone, windows)):
                    hidden, frame_mask = backbone(batch, layer)
                    pooled[idx] = masked_mean(hidden.float(), frame_mask).cpu().numpy()
                if progress is not None:
                    progress.update(len(idx))
    finally:
        backbone.train(was_training)
    owners = np.asarray(owners)
    out = np.zeros((len(waves), backbone.hidden_size), dtype=np.float64)
    np.add.at(out, owners, pooled)
    return (out / np.bincount(owners, minlength=len(waves))[:, None]).astype(np.float32)
