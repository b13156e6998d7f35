"""Seeded class-balanced batches: several clips of each of several classes per batch."""

from __future__ import annotations

import numpy as np


def class_balanced_batches(codes, batch_size, samples_per_class, rng):
    """One epoch of batches, each holding ``samples_per_class`` clips of several classes.

    Every clip appears once per epoch. A class whose clips do not fill a group of
    ``samples_per_class`` has its last group completed by repeating some of its clips
    (random crops and dropout make the repeats differ), so that every anchor has a
    positive. Batches hold ``batch_size // samples_per_class`` classes (at most the
    number of classes), chosen at random in proportion to the groups they have left.

    Parameters
    ----------
    codes : ndarray of shape (n_clips,)
        Integer class codes.
    batch_size : int
        Target number of clips per batch.
    samples_per_class : int
        Clips of each class in a batch.
    rng : numpy.random.Generator
        The only source of randomness: same generator state, same batches.

    Returns
    -------
    batches : list of ndarray of int
    """
    codes = np.asarray(codes)
    classes = np.unique(codes)
    groups = {}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(codes == c))
        n_fill = (-len(idx)) % samples_per_class
        if n_fill:
            idx = np.concatenate([idx, rng.choice(idx, size=n_fill, replace=len(idx) < n_fill)])
        groups[c] = list(idx.reshape(-1, samples_per_class))
    classes_per_batch = max(2, min(len(classes), batch_size // samples_per_class))
    batches = []
    while True:
        left = np.array([c for c in classes if groups[c]])
        if len(left) == 0:
            break
        if len(left) == 1 and batches:
            # A batch of one class has no negatives: put its groups into the last batch.
            batches[-1] = np.concatenate([batches[-1], *groups[left[0]]])
            groups[left[0]] = []
            continue
        weights = np.array([len(groups[c]) for c in left], dtype=float)
        chosen = rng.choice(left, size=min(classes_per_batch, len(left)), replace=False,
                            p=weights / weights.sum())
        batches.append(np.concatenate([groups[c].pop() for c in chosen]))
    return batches
