"""Seeded class-balanced batches: several clips of each of several classes per batch."""

from __future__ import annotations

import numpy as np


def class_balanced_batches(codes, batch_size, samples_per_class, rng):
    """One epoch of batches, each holding ``samples_per_class`` clips of several classes.

    Every clip appears at least once per epoch. A class whose clips do not fill a
    group of ``samples_per_class`` has its last group completed by repeating some of
    its clips (random crops and dropout make the repeats differ), so that every anchor
    has a positive. Batches hold ``batch_size // samples_per_class`` classes (at least
    2, at most the number of classes), chosen at random in proportion to the groups
    they have left. When only one class has groups left (imbalanced data), each of
    its groups is batched with groups drawn afresh from other classes, so that every
    batch has negatives and no batch grows beyond its usual size.

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
    groups, members = {}, {}
    for c in classes:
        members[c] = np.flatnonzero(codes == c)
        idx = rng.permutation(members[c])
        n_fill = (-len(idx)) % samples_per_class
        if n_fill:
            # Complete the last group with clips not already in it, where the class has
            # enough; only a class with fewer clips than a group repeats within one.
            tail = len(idx) % samples_per_class
            pool = idx[: len(idx) - tail] if len(idx) >= samples_per_class else idx
            idx = np.concatenate(
                [idx, rng.choice(pool, size=n_fill, replace=len(pool) < n_fill)]
            )
        groups[c] = list(idx.reshape(-1, samples_per_class))
    classes_per_batch = max(2, min(len(classes), batch_size // samples_per_class))
    batches = []
    while True:
        left = np.array([c for c in classes if groups[c]])
        if len(left) == 0:
            break
        if len(left) == 1 and len(classes) > 1:
            # A batch of one class has no negatives: complete it with clips of other
            # classes, drawn again (they were all seen already this epoch).
            others = classes[classes != left[0]]
            chosen = rng.choice(others, size=min(classes_per_batch, len(classes)) - 1,
                                replace=False)
            extra = [_one_group(members[c], samples_per_class, rng) for c in chosen]
            batches.append(np.concatenate([groups[left[0]].pop(), *extra]))
            continue
        weights = np.array([len(groups[c]) for c in left], dtype=float)
        chosen = rng.choice(left, size=min(classes_per_batch, len(left)), replace=False,
                            p=weights / weights.sum())
        batches.append(np.concatenate([groups[c].pop() for c in chosen]))
    return batches


def _one_group(members, samples_per_class, rng):
    """``samples_per_class`` clips of one class, distinct unless the class is short."""
    idx = rng.permutation(members)
    if len(idx) >= samples_per_class:
        return idx[:samples_per_class]
    n_fill = samples_per_class - len(idx)
    return np.concatenate([idx, rng.choice(idx, size=n_fill, replace=len(idx) < n_fill)])
