"""The one training loop, shared by PairTune and FineTune.

It owns everything but the loss: seeding, device and precision, batches and random
crops, the optimiser, progress bars and the per-epoch history. What varies between
estimators is the objective (a module mapping pooled features and labels to a loss)
and the batch plan (class-balanced for contrastive learning, shuffled for
cross-entropy). An epoch-end hook sees each epoch's record and may stop training
early (the estimators run their callbacks through it).

The loop runs torch on the thread budget of the worker it is in (``_threads``), and,
when ``torch.distributed`` has been initialised with more than one process (a script
launched by ``torchrun``), trains data-parallel through ``DistributedDataParallel``:
every rank draws the same batch plan, takes every ``world_size``-th batch of it, and
gradients are averaged across ranks at each step. See docs/scale-out.md.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict

import numpy as np
import torch

from ._windows import pad_to_length, random_crop
from ._device import autocast
from ._distributed import (
    all_ranks_true,
    broadcast_from_rank0,
    check_same_fit,
    data_parallel,
    process_group,
    rank_device,
    rank_steps,
    sum_over_ranks,
)
from ._front_cache import front_end_cache
from ._pooling import masked_mean
from ._random import forked_torch_rng
from ._threads import thread_policy
from .backbones._base import batch_to


def shuffled_batches(n_clips, batch_size):
    """A batch plan for cross-entropy: a fresh permutation cut into batches."""

    def plan(rng):
        order = rng.permutation(n_clips)
        return [order[i : i + batch_size] for i in range(0, n_clips, batch_size)]

    return plan


class _TrainingStep(torch.nn.Module):
    """Backbone, pooling and objective as one module: clips and labels in, loss out.

    One forward for ``DistributedDataParallel`` to wrap (it must see the whole
    forward to average the gradients of every trainable parameter); a single process
    calls it directly, which is the very same computation.
    """

    def __init__(self, backbone, objective, layer, device):
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.layer = layer
        self.device = device

    def forward(self, batch, targets):
        with autocast(self.device):
            hidden, frame_mask = self.backbone(batch, self.layer)
        # The objective runs in float32: similarities at low temperature need it.
        return self.objective(masked_mean(hidden.float(), frame_mask), targets)


def train_encoder(
    backbone,
    objective,
    waves,
    codes,
    *,
    batch_plan,
    epochs,
    learning_rate,
    weight_decay=0.0,
    lr_schedule="constant",
    max_steps=None,
    layer=-1,
    max_samples=None,
    device=None,
    gradient_checkpointing=False,
    seed=0,
    rng=None,
    on_epoch_end=None,
    verbose=1,
    desc="fit",
    augment=None,
    n_threads=None,
    cache_front_end=True,
):
    """Fine-tune ``backbone`` end to end under ``objective``; return the history.

    Parameters
    ----------
    backbone : AudioBackbone
        Trained in place (its trainable parameters only).
    objective : torch.nn.Module
        ``objective(pooled, targets) -> (loss, stats)``; its parameters (the head)
        are trained too.
    waves : list of ndarray
        Training clips at the backbone's rate.
    codes : ndarray of int
        Class code of each clip.
    batch_plan : callable
        ``batch_plan(rng) -> list of index arrays``, called once per epoch.
    lr_schedule : {"constant", "linear", "cosine"}
        "constant" keeps ``learning_rate`` (the paper); the others warm up linearly
        over the first tenth of the optimiser steps, then decay to 0 linearly or
        along a half cosine (transformers' schedules).
    max_steps : int or None
        Stop after this many optimiser steps (the schedule spans them), even within
        an epoch; None: ``epochs`` full epochs.
    max_samples : int or None
        Clips longer than this are randomly cropped to it, anew each epoch.
    seed : int
        Seeds torch (head initialisation, dropout, LayerDrop) and the SpecAugment
        masks (``backbone.mask_rng``) for this run only; global RNG states are left
        as they were.
    rng : numpy.random.Generator
        Draws the batches and crops.
    on_epoch_end : callable or None
        ``on_epoch_end(record) -> bool``, called after each epoch with its record
        (which it may extend); True stops training.
    augment : TrainingAugmentation or None
        Random perturbation of each training clip and batch (``_augmentation``).
    n_threads : int, "auto" or None
        torch intra-op threads (see Notes); restored at the end.
    cache_front_end : bool
        Compute a frozen front end once per uncropped clip (``_front_cache``); never
        with ``augment``, whose perturbed clips it would not see.

    Returns
    -------
    history : list of dict
        One record per epoch: ``epoch``, ``loss``, ``seconds``, ``batches``,
        ``steps`` (optimiser steps so far) and the objective's statistics (summed over
        the epoch for counts).

    Notes
    -----
    Torch runs on ``n_threads`` threads (:class:`~skaudio_confit._threads.ThreadPolicy`:
    "auto" follows the idle cores; None leaves torch's setting), capped by a Dask or
    loky worker's allotment. When ``torch.distributed`` is
    initialised with ``world_size > 1``, every rank must call this with the same
    clips and settings: the rank with index ``r`` runs batches ``r, r + world_size,
    ...`` of each epoch's plan (the plan is padded by wrapping around so that every
    rank takes the same number of steps), ``DistributedDataParallel`` averages the
    gradients, the epoch's record sums loss and statistics over all ranks, and only
    rank 0 shows progress. Every rank ends with the same weights.
    """
    with thread_policy(n_threads) as threads:
        return _train_encoder(
            backbone, objective, waves, codes, batch_plan=batch_plan, epochs=epochs,
            learning_rate=learning_rate, weight_decay=weight_decay,
            lr_schedule=lr_schedule, max_steps=max_steps, layer=layer,
            max_samples=max_samples, device=device,
            gradient_checkpointing=gradient_checkpointing, seed=seed, rng=rng,
            on_epoch_end=on_epoch_end, verbose=verbose, desc=desc, augment=augment,
            threads=threads,
            front=front_end_cache(backbone, waves, cache_front_end and augment is None),
        )


def _train_encoder(backbone, objective, waves, codes, *, batch_plan, epochs, learning_rate,
                   weight_decay, lr_schedule, max_steps, layer, max_samples, device,
                   gradient_checkpointing, seed, rng, on_epoch_end, verbose, desc,
                   augment=None, threads=None, front=None):
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    rng = rng if rng is not None else np.random.default_rng(seed)
    codes = np.asarray(codes)
    group = process_group()
    rank, world = group if group is not None else (0, 1)
    if group is not None:
        device = rank_device(device)
        check_same_fit(waves, codes, batch_plan, rng, [
            seed, epochs, learning_rate, weight_decay, layer,
            -1 if max_samples is None else max_samples, -1 if max_steps is None else max_steps,
            ("constant", "linear", "cosine").index(lr_schedule),
        ])
    show = bool(verbose) and rank == 0
    backbone.to(device)
    objective.to(device)
    if gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}]
    # An objective may give its head its own learning rate through param_groups().
    groups += (objective.param_groups() if hasattr(objective, "param_groups")
               else [{"params": list(objective.parameters())}])
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
    # Steps of the whole fit, for the schedule: the first epoch's plan (drawn from a
    # copy of rng, so the batches are untouched) times the epochs, or max_steps.
    steps_per_epoch = math.ceil(len(batch_plan(copy.deepcopy(rng))) / world)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    scheduler = _lr_scheduler(optimizer, lr_schedule, total_steps)
    steps_done = 0
    history = []
    model = None
    try:
        # The caller's global torch RNG stays untouched while dropout, masking and
        # head initialisation draw from our seed.
        with forked_torch_rng(seed, device):
            # SpecAugment masks come from this fit's own stream (one per rank), never
            # from the global np.random that transformers would use.
            backbone.mask_rng = np.random.default_rng([seed, rank])
            # Heads are (re)initialised under the seed so fits are reproducible.
            for module in objective.modules():
                if isinstance(module, torch.nn.Linear):
                    module.reset_parameters()
            model = _TrainingStep(backbone, objective, layer, device)
            if world > 1:
                model = data_parallel(model, device)
            for epoch in range(1, epochs + 1):
                batches = batch_plan(rng)
                n_steps = math.ceil(len(batches) / world)
                if max_steps is not None:
                    n_steps = min(n_steps, max_steps - steps_done)
                    batches = batches[: n_steps * world]
                record = _run_epoch(
                    model, backbone, optimizer, waves, codes, batches, rng,
                    max_samples=max_samples, device=device, rank=rank, world=world,
                    scheduler=scheduler, augment=augment, threads=threads, front=front,
                    progress=tqdm(total=n_steps, desc=f"{desc} epoch {epoch}/{epochs}",
                                  disable=not show, leave=False, unit="batch"),
                )
                steps_done += n_steps
                record["epoch"] = epoch
                record["steps"] = steps_done
                history.append(record)
                if show:
                    tqdm.write(
                        f"{desc} epoch {epoch}/{epochs}: loss {record['loss']:.4f} "
                        f"({record['seconds']:.1f} s)"
                    )
                stop = bool(on_epoch_end(record)) if on_epoch_end is not None else False
                if world > 1:  # rank 0 decides, so that no rank waits for the others
                    stop = bool(broadcast_from_rank0([int(stop)])[0])
                if stop or (max_steps is not None and steps_done >= max_steps):
                    break
    finally:
        backbone.mask_rng = None
        del model  # a DistributedDataParallel wrapper lets go of the modules
        optimizer.zero_grad(set_to_none=True)  # a fitted model keeps no gradients
        if gradient_checkpointing:
            backbone.model.gradient_checkpointing_disable()
        backbone.eval()
        objective.eval()
    return history


def _lr_scheduler(optimizer, lr_schedule, total_steps):
    """Linear warm-up over a tenth of ``total_steps``, then decay; None if constant.

    Step ``k`` (0-based) runs at ``(k + 1) / warmup`` of the rate while warming up (so
    the first step already learns), then at ``1 - p`` ("linear") or
    ``(1 + cos(pi p)) / 2`` ("cosine"), ``p`` going from 0 towards 1 over the rest.
    """
    if lr_schedule == "constant":
        return None
    warmup = max(1, round(0.1 * total_steps))
    decay_steps = max(1, total_steps - warmup)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay_steps)
        if lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _run_epoch(model, backbone, optimizer, waves, codes, batches, rng, *, max_samples,
               device, progress, rank=0, world=1, scheduler=None, augment=None, threads=None,
               front=None):
    model.train()
    start = time.perf_counter()
    total_loss, n_seen = 0.0, 0
    stats_sum = defaultdict(float)
    if world == 1:
        steps = ((idx, None) for idx in batches)  # crops drawn batch by batch
    else:
        # Every rank draws the crops of every batch, in plan order, so that the numpy
        # stream (and with it the next epoch's plan) stays the same on all ranks and
        # equals that of one process; each rank then runs its own share.
        crops = [[_training_clip(waves[i], backbone, max_samples, rng, augment) for i in idx]
                 for idx in batches]
        steps = ((batches[j], crops[j]) for j in rank_steps(len(batches), rank, world))
    with progress:
        for idx, clips in steps:
            if threads is not None:  # "auto" follows the machine's load batch by batch
                threads.update()
            if clips is None:
                clips = [_training_clip(waves[i], backbone, max_samples, rng, augment)
                         for i in idx]
            batch = backbone.featurize(clips) if front is None else front.featurize(idx, clips)
            if augment is not None:  # per-rank masks, from the rank's own stream
                batch = augment.features(batch, backbone.mask_rng)
            batch = batch_to(batch, device)
            targets = torch.as_tensor(codes[idx], device=device)
            loss, stats = model(batch, targets)
            finite = bool(torch.isfinite(loss))
            if world > 1:  # every rank raises, or none: none may wait in backward
                finite = all_ranks_true(finite)
            if not finite:
                raise FloatingPointError(
                    "The training loss became NaN or infinite; lower learning_rate."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(idx)
            n_seen += len(idx)
            for key, value in stats.items():
                stats_sum[key] += value * (len(idx) if key.endswith("accuracy") else 1)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if world > 1:  # the epoch's record covers the batches of all ranks
        keys = list(stats_sum)
        summed = sum_over_ranks([total_loss, n_seen, *(stats_sum[k] for k in keys)])
        total_loss, n_seen = summed[0], int(summed[1])
        stats_sum = dict(zip(keys, summed[2:]))
    record = {"loss": total_loss / max(n_seen, 1), "batches": len(batches)}
    for key, value in stats_sum.items():
        record[key] = value / n_seen if key.endswith("accuracy") else int(value)
    record["seconds"] = time.perf_counter() - start
    return record


def _training_clip(wave, backbone, max_samples, rng, augment=None):
    """A fresh random crop of ``wave`` (perturbed by ``augment`` if given), padded to
    the backbone's receptive field."""
    if max_samples is not None:
        wave = random_crop(wave, max_samples, rng)
    if augment is not None:
        wave = augment.waveform(wave, rng)
    return pad_to_length(wave, backbone.min_samples)
