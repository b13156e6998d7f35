"""The one training loop, shared by PairTune and FineTune.

It owns everything but the loss: seeding, device and precision, batches and random
crops, the optimiser, progress bars and the per-epoch history. What varies between
estimators is the objective (a module mapping pooled features and labels to a loss)
and the batch plan (class-balanced for contrastive learning, shuffled for
cross-entropy). Callbacks see each epoch's record and may stop training early.

The loop runs torch on the thread budget of the worker it is in (``_threads``), and,
when ``torch.distributed`` has been initialised with more than one process (a script
launched by ``torchrun``), trains data-parallel through ``DistributedDataParallel``:
every rank draws the same batch plan, takes every ``world_size``-th batch of it, and
gradients are averaged across ranks at each step. See docs/scale-out.md.
"""

from __future__ import annotations

import copy
import math
import os
import time
import zlib
from collections import defaultdict

import numpy as np
import torch

from ._windows import pad_to_length, random_crop
from ._device import autocast
from ._front_cache import front_end_cache
from ._pooling import masked_mean
from ._threads import thread_policy
from .backbones._base import batch_to


def seeds_from(random_state):
    """Derive a torch seed and a numpy Generator from a scikit-learn ``random_state``.

    Under ``torch.distributed`` (more than one process) rank 0's seeds hold for every
    rank, so that all ranks split, batch and crop alike even with ``random_state=None``.
    """
    from sklearn.utils import check_random_state

    rs = check_random_state(random_state)
    torch_seed, numpy_seed = rs.randint(0, 2**31 - 1, size=2)
    if _process_group() is not None:
        torch_seed, numpy_seed = _broadcast_from_rank0([torch_seed, numpy_seed])
    return int(torch_seed), np.random.default_rng(int(numpy_seed))


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
    callbacks=(),
    verbose=1,
    desc="fit",
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
    callbacks : sequence
        Objects with ``on_epoch_end(record) -> bool``; True stops training.
    n_threads : int, "auto" or None
        torch intra-op threads (see Notes); restored at the end.
    cache_front_end : bool
        Compute a frozen front end once per uncropped clip (``_front_cache``).

    Returns
    -------
    history : list of dict
        One record per epoch: ``epoch``, ``loss``, ``seconds``, ``batches``,
        ``steps`` (optimiser steps so far) and the objective's statistics (summed over
        the epoch for counts). Callbacks may prepend an epoch-0 record.

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
            callbacks=callbacks, verbose=verbose, desc=desc, threads=threads,
            front=front_end_cache(backbone, waves, cache_front_end),
        )


def _train_encoder(backbone, objective, waves, codes, *, batch_plan, epochs, learning_rate,
                   weight_decay, lr_schedule, max_steps, layer, max_samples, device,
                   gradient_checkpointing, seed, rng, callbacks, verbose, desc, threads=None,
                   front=None):
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    rng = rng if rng is not None else np.random.default_rng(seed)
    codes = np.asarray(codes)
    group = _process_group()
    rank, world = group if group is not None else (0, 1)
    if group is not None:
        device = _rank_device(device)
        _check_same_fit(waves, codes, batch_plan, rng, [
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
    # fork_rng keeps the caller's global torch RNG untouched while dropout, masking
    # and head initialisation draw from our seed.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            # SpecAugment masks come from this fit's own stream (one per rank), never
            # from the global np.random that transformers would use.
            backbone.mask_rng = np.random.default_rng([seed, rank])
            # Heads are (re)initialised under the seed so fits are reproducible.
            for module in objective.modules():
                if isinstance(module, torch.nn.Linear):
                    module.reset_parameters()
            model = _TrainingStep(backbone, objective, layer, device)
            if world > 1:
                model = _data_parallel(model, device)
            for epoch in range(1, epochs + 1):
                batches = batch_plan(rng)
                n_steps = math.ceil(len(batches) / world)
                if max_steps is not None:
                    n_steps = min(n_steps, max_steps - steps_done)
                    batches = batches[: n_steps * world]
                record = _run_epoch(
                    model, backbone, optimizer, waves, codes, batches, rng,
                    max_samples=max_samples, device=device, rank=rank, world=world,
                    scheduler=scheduler, threads=threads, front=front,
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
                stop = any(cb.on_epoch_end(record) for cb in callbacks)
                if world > 1:  # rank 0 decides, so that no rank waits for the others
                    stop = bool(_broadcast_from_rank0([int(stop)])[0])
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
               device, progress, rank=0, world=1, scheduler=None, threads=None, front=None):
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
        crops = [[_training_clip(waves[i], backbone, max_samples, rng) for i in idx]
                 for idx in batches]
        steps = ((batches[j], crops[j]) for j in _rank_steps(len(batches), rank, world))
    with progress:
        for idx, clips in steps:
            if threads is not None:  # "auto" follows the machine's load batch by batch
                threads.update()
            if clips is None:
                clips = [_training_clip(waves[i], backbone, max_samples, rng) for i in idx]
            batch = batch_to(backbone.featurize(clips) if front is None
                             else front.featurize(idx, clips), device)
            targets = torch.as_tensor(codes[idx], device=device)
            loss, stats = model(batch, targets)
            finite = bool(torch.isfinite(loss))
            if world > 1:  # every rank raises, or none: none may wait in backward
                finite = _all_ranks_true(finite)
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
        summed = _sum_over_ranks([total_loss, n_seen, *(stats_sum[k] for k in keys)])
        total_loss, n_seen = summed[0], int(summed[1])
        stats_sum = dict(zip(keys, summed[2:]))
    record = {"loss": total_loss / max(n_seen, 1), "batches": len(batches)}
    for key, value in stats_sum.items():
        record[key] = value / n_seen if key.endswith("accuracy") else int(value)
    record["seconds"] = time.perf_counter() - start
    return record


def _training_clip(wave, backbone, max_samples, rng):
    """A fresh random crop of ``wave``, padded to the backbone's receptive field."""
    if max_samples is not None:
        wave = random_crop(wave, max_samples, rng)
    return pad_to_length(wave, backbone.min_samples)


class ValidationMonitor:
    """Callback: score held-out clips after each epoch, keep the best weights, stop early.

    Parameters
    ----------
    score_fn : callable
        ``score_fn() -> float``, higher is better; stored as ``valid_accuracy``.
    modules : list of torch.nn.Module
        Whose weights are kept at the best epoch and restored by :meth:`restore_best`.
    patience : int or None
        Stop after this many epochs without improvement; None never stops.
    keep_best : bool
        Keep the best epoch's weights even without early stopping, so that
        :meth:`restore_best` ends training at the best epoch.
    """

    def __init__(self, score_fn, modules, patience=None, keep_best=False):
        self.score_fn = score_fn
        self.modules = modules
        self.patience = patience
        self.keep_best = keep_best
        self.best_score = None
        self.best_epoch = None
        self._best_states = None
        self._since_best = 0

    def _score(self):
        if _process_group() is None:
            return float(self.score_fn())
        # Rank 0 scores; its score holds for all, so every rank keeps the same best
        # epoch and stops at the same time (the weights are the same).
        rank, _ = _process_group()
        score = float(self.score_fn()) if rank == 0 else 0.0
        return float(_broadcast_from_rank0([score], dtype=torch.float64)[0])

    def score_start(self):
        """Score the weights before training as epoch 0; return its history record.

        The starting (pretrained) weights then compete with every epoch's, so that
        a fit that keeps the best epoch never ends below where it started.
        """
        start = time.perf_counter()
        record = {"epoch": 0, "loss": None, "batches": 0, "steps": 0}
        self._update(record)
        record["seconds"] = time.perf_counter() - start
        return record

    def on_epoch_end(self, record):
        self._update(record)
        return self.patience is not None and self._since_best >= self.patience

    def _update(self, record):
        score = self._score()
        record["valid_accuracy"] = score
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self._since_best = score, record["epoch"], 0
            if self.patience is not None or self.keep_best:
                self._best_states = [
                    {k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules
                ]
        else:
            self._since_best += 1

    def restore_best(self):
        """Load the weights of the best epoch back (kept with patience or keep_best)."""
        if self._best_states is not None:
            for module, state in zip(self.modules, self._best_states):
                module.load_state_dict(state)


# --------------------------------------------------------------------------------------
# torch.distributed: the few collectives the loop needs
# --------------------------------------------------------------------------------------


def _process_group():
    """``(rank, world_size)`` of an initialised default process group of 2+ processes.

    None otherwise (no ``torch.distributed``, not initialised, or a single process),
    in which case training is the plain single-process loop.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def _local_cuda_device():
    """This rank's GPU: ``LOCAL_RANK`` (set by torchrun), else the current device."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(local_rank) < torch.cuda.device_count():
        return torch.device("cuda", int(local_rank))
    return torch.device("cuda", torch.cuda.current_device())


def _rank_device(device):
    """A bare ``cuda`` (what ``device="auto"`` gives) becomes this rank's own GPU.

    It is also made the current CUDA device, so that inference after ``fit`` (which
    asks for plain ``cuda``) runs on the same GPU. An explicit ``cuda:N`` is kept.
    """
    if device.type == "cuda" and device.index is None:
        device = _local_cuda_device()
        torch.cuda.set_device(device)
    return device


def _collective_device():
    """Where small tensors for collectives live: the rank's GPU for NCCL, else CPU."""
    if torch.distributed.get_backend() == "nccl":
        return _local_cuda_device()
    return torch.device("cpu")


def _broadcast_from_rank0(values, dtype=torch.int64):
    """Rank 0's ``values`` (a list of numbers), on every rank."""
    tensor = torch.tensor(list(values), dtype=dtype, device=_collective_device())
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


def _sum_over_ranks(values):
    """Element-wise sum over ranks of a list of numbers (float64)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64,
                          device=_collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def _all_ranks_true(flag):
    """Whether ``flag`` holds on every rank."""
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int64, device=_collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return bool(tensor.item())


def _check_same_fit(waves, codes, batch_plan, rng, settings):
    """Raise on every rank unless all ranks fit the same clips, labels and settings.

    A rank with other data would silently train on a mix; one with another number
    of epochs or batches would leave the others waiting forever. Compared: the clips
    (a CRC of their samples), the labels, the first epoch's batch plan (drawn from a
    copy of ``rng``, so batch sizes count too) and ``settings`` (numbers).
    """
    clips_crc = 0
    for wave in waves:
        clips_crc = zlib.crc32(np.ascontiguousarray(wave), clips_crc)
    plan = batch_plan(copy.deepcopy(rng))
    fingerprint = [
        len(waves),
        clips_crc,
        zlib.crc32(np.ascontiguousarray(codes, dtype=np.int64)),
        len(plan),
        zlib.crc32(np.concatenate([np.asarray(b, dtype=np.int64) for b in plan])),
        *settings,
    ]
    tensor = torch.tensor([float(v) for v in fingerprint], dtype=torch.float64,
                          device=_collective_device())
    low, high = tensor.clone(), tensor.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise ValueError(
            "Under torch.distributed every rank must call fit with the same clips, "
            "labels, parameters and random_state; they differ between ranks (each rank "
            "runs its share of one common batch plan). Load the same data on every rank."
        )


def _rank_steps(n_batches, rank, world):
    """Indices of the batches that ``rank`` runs: ``rank, rank + world, ...``.

    The plan is padded by wrapping around to a multiple of ``world`` so that every
    rank takes ``ceil(n_batches / world)`` steps (each step averages ``world``
    batches); every batch is run at least once per epoch.
    """
    return [(rank + world * step) % n_batches for step in range(math.ceil(n_batches / world))]


def _data_parallel(model, device):
    """Wrap ``model`` in ``DistributedDataParallel`` for this rank's device.

    ``find_unused_parameters``: with ``layer`` below the last one the layers above it
    get no gradient, and layerdrop skips layers at random.
    """
    from torch.nn.parallel import DistributedDataParallel

    kwargs = {"find_unused_parameters": True}
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model, **kwargs)
