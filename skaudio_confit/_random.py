"""Random streams of a fit: seeds from ``random_state`` and a private torch RNG."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ._distributed import broadcast_from_rank0, process_group


def seeds_from(random_state):
    """Derive a torch seed and a numpy Generator from a scikit-learn ``random_state``.

    Under ``torch.distributed`` (more than one process) rank 0's seeds hold for every
    rank, so that all ranks split, batch and crop alike even with ``random_state=None``.
    """
    from sklearn.utils import check_random_state

    rs = check_random_state(random_state)
    torch_seed, numpy_seed = rs.randint(0, 2**31 - 1, size=2)
    if process_group() is not None:
        torch_seed, numpy_seed = broadcast_from_rank0([torch_seed, numpy_seed])
    return int(torch_seed), np.random.default_rng(int(numpy_seed))


@contextmanager
def forked_torch_rng(seed=None, device=None):
    """Run the block on a copy of torch's global RNG, restored afterwards.

    Parameters
    ----------
    seed : int or None, default=None
        Seed the copy (CPU and the CUDA ``device``), for reproducible draws; None keeps
        drawing from a copy of the caller's state, so the caller's stream is not
        advanced by what the block draws.
    device : torch.device, str or None, default=None
        A CUDA device whose generator is forked (and seeded) too; only that one, since
        forking or seeding every visible GPU is slow and touches devices not in use.
    """
    cuda = []
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index
        cuda = [torch.cuda.current_device() if index is None else index]
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
        yield
