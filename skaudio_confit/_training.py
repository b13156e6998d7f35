"""The one training loop, shared by PairTune and FineTune.

It owns everything but the loss: seeding, device and precision, batches and random
crops, the optimiser, progress bars and the per-epoch history. What varies between
estimators is the objective (a module mapping pooled features and labels to a loss)
and the batch plan (class-balanced for contrastive learning, shuffled for
cross-entropy). Callbacks see each epoch's record and may stop training early.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from ._audio import pad_to_length, random_crop
from ._device import autocast
from ._pooling import masked_mean
from .backbones._base import batch_to


def seeds_from(random_state):
    """Derive a torch seed and a numpy Generator from a scikit-learn ``random_state``."""
    from sklearn.utils import check_random_state

    rs = check_random_state(random_state)
    torch_seed, numpy_seed = rs.randint(0, 2**31 - 1, size=2)
    return int(torch_seed), np.random.default_rng(int(numpy_seed))


def shuffled_batches(n_clips, batch_size):
    """A batch plan for cross-entropy: a fresh permutation cut into batches."""

    def plan(rng):
        order = rng.permutation(n_clips)
        return [order[i : i + batch_size] for i in range(0, n_clips, batch_size)]

    return plan


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
    layer=-1,
    max_samples=None,
    device=None,
    gradient_checkpointing=False,
    seed=0,
    rng=None,
    callbacks=(),
    verbose=1,
    desc="fit",
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
    max_samples : int or None
        Clips longer than this are randomly cropped to it, anew each epoch.
    seed : int
        Seeds torch (head initialisation, dropout, masking) for this run only.
    rng : numpy.random.Generator
        Draws the batches and crops.
    callbacks : sequence
        Objects with ``on_epoch_end(record) -> bool``; True stops training.

    Returns
    -------
    history : list of dict
        One record per epoch: ``epoch``, ``loss``, ``seconds``, ``batches`` and the
        objective's statistics (summed over the epoch for counts).
    """
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    rng = rng if rng is not None else np.random.default_rng(seed)
    codes = np.asarray(codes)
    backbone.to(device)
    objective.to(device)
    if gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}]
    # An objective may give its head its own learning rate through param_groups().
    groups += (objective.param_groups() if hasattr(objective, "param_groups")
               else [{"params": list(objective.parameters())}])
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
    history = []
    # fork_rng keeps the caller's global torch RNG untouched while dropout, masking
    # and head initialisation draw from our seed.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            # Heads are (re)initialised under the seed so fits are reproducible.
            for module in objective.modules():
                if isinstance(module, torch.nn.Linear):
                    module.reset_parameters()
            for epoch in range(1, epochs + 1):
                batches = batch_plan(rng)
                record = _run_epoch(
                    backbone, objective, optimizer, waves, codes, batches, rng,
                    layer=layer, max_samples=max_samples, device=device,
                    progress=tqdm(total=len(batches), desc=f"{desc} epoch {epoch}/{epochs}",
                                  disable=not verbose, leave=False, unit="batch"),
                )
                record["epoch"] = epoch
                history.append(record)
                if verbose:
                    tqdm.write(
                        f"{desc} epoch {epoch}/{epochs}: loss {record['loss']:.4f} "
                        f"({record['seconds']:.1f} s)"
                    )
                if any(cb.on_epoch_end(record) for cb in callbacks):
                    break
    finally:
        if gradient_checkpointing:
            backbone.model.gradient_checkpointing_disable()
        backbone.eval()
        objective.eval()
    return history


def _run_epoch(backbone, objective, optimizer, waves, codes, batches, rng, *, layer,
               max_samples, device, progress):
    backbone.train()
    objective.train()
    start = time.perf_counter()
    total_loss, n_seen = 0.0, 0
    stats_sum = defaultdict(float)
    with progress:
        for idx in batches:
            clips = [_training_clip(waves[i], backbone, max_samples, rng) for i in idx]
            batch = batch_to(backbone.featurize(clips), device)
            targets = torch.as_tensor(codes[idx], device=device)
            with autocast(device):
                hidden, frame_mask = backbone(batch, layer)
            # The objective runs in float32: similarities at low temperature need it.
            loss, stats = objective(masked_mean(hidden.float(), frame_mask), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    "The training loss became NaN or infinite; lower learning_rate."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            n_seen += len(idx)
            for key, value in stats.items():
                stats_sum[key] += value * (len(idx) if key.endswith("accuracy") else 1)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
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
    """

    def __init__(self, score_fn, modules, patience=None):
        self.score_fn = score_fn
        self.modules = modules
        self.patience = patience
        self.best_score = None
        self.best_epoch = None
        self._best_states = None
        self._since_best = 0

    def on_epoch_end(self, record):
        score = float(self.score_fn())
        record["valid_accuracy"] = score
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self._since_best = score, record["epoch"], 0
            if self.patience is not None:
                self._best_states = [
                    {k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules
                ]
        else:
            self._since_best += 1
        return self.patience is not None and self._since_best >= self.patience

    def restore_best(self):
        """Load the weights of the best epoch back (only kept when stopping early)."""
        if self._best_states is not None:
            for module, state in zip(self.modules, self._best_states):
                module.load_state_dict(state)
