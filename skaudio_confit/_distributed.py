"""torch.distributed: the few collectives the training loop needs.

When a default process group of two or more processes is initialised (a script
launched by ``torchrun``), the loop trains data-parallel: every rank draws the same
batch plan, runs its share of it, and rank 0 decides what all ranks must agree on
(seeds, validation scores, stopping). See docs/scale-out.md.
"""

from __future__ import annotations

import copy
import math
import os
import zlib

import numpy as np
import torch


def process_group():
    """``(rank, world_size)`` of an initialised default process group of 2+ processes.

    None otherwise (no ``torch.distributed``, not initialised, or a single process),
    in which case training is the plain single-process loop.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def local_cuda_device():
    """This rank's GPU: ``LOCAL_RANK`` (set by torchrun), else the current device."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(local_rank) < torch.cuda.device_count():
        return torch.device("cuda", int(local_rank))
    return torch.device("cuda", torch.cuda.current_device())


def rank_device(device):
    """A bare ``cuda`` (what ``device="auto"`` gives) becomes this rank's own GPU.

    It is also made the current CUDA device, so that inference after ``fit`` (which
    asks for plain ``cuda``) runs on the same GPU. An explicit ``cuda:N`` is kept.
    """
    if device.type == "cuda" and device.index is None:
        device = local_cuda_device()
        torch.cuda.set_device(device)
    return device


def collective_device():
    """Where small tensors for collectives live: the rank's GPU for NCCL, else CPU."""
    if torch.distributed.get_backend() == "nccl":
        return local_cuda_device()
    return torch.device("cpu")


def broadcast_from_rank0(values, dtype=torch.int64):
    """Rank 0's ``values`` (a list of numbers), on every rank."""
    tensor = torch.tensor(list(values), dtype=dtype, device=collective_device())
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


def sum_over_ranks(values):
    """Element-wise sum over ranks of a list of numbers (float64)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64,
                          device=collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def all_ranks_true(flag):
    """Whether ``flag`` holds on every rank."""
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int64, device=collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return bool(tensor.item())


def check_same_fit(waves, codes, batch_plan, rng, settings):
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
                          device=collective_device())
    low, high = tensor.clone(), tensor.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise ValueError(
            "Under torch.distributed every rank must call fit with the same clips, "
            "labels, parameters and random_state; they differ between ranks (each rank "
            "runs its share of one common batch plan). Load the same data on every rank."
        )


def rank_steps(n_batches, rank, world):
    """Indices of the batches that ``rank`` runs: ``rank, rank + world, ...``.

    The plan is padded by wrapping around to a multiple of ``world`` so that every
    rank takes ``ceil(n_batches / world)`` steps (each step averages ``world``
    batches); every batch is run at least once per epoch.
    """
    return [(rank + world * step) % n_batches for step in range(math.ceil(n_batches / world))]


def data_parallel(model, device):
    """Wrap ``model`` in ``DistributedDataParallel`` for this rank's device.

    ``find_unused_parameters``: with ``layer`` below the last one the layers above it
    get no gradient, and layerdrop skips layers at random.
    """
    from torch.nn.parallel import DistributedDataParallel

    kwargs = {"find_unused_parameters": True}
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model, **kwargs)
