"""Tests for the class-balanced batch plan used by PairTune."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudio_confit._sampling import class_balanced_batches


def plan(codes, batch_size, samples_per_class, seed=0):
    return class_balanced_batches(
        np.asarray(codes), batch_size, samples_per_class, np.random.default_rng(seed)
    )


def check_invariants(codes, batches, batch_size, samples_per_class):
    """What every epoch must satisfy, whatever the class sizes."""
    codes = np.asarray(codes)
    n_classes = len(np.unique(codes))
    sizes = Counter(codes.tolist())
    # Every clip is seen at least once, and nothing else is.
    seen = np.concatenate(batches)
    assert seen.dtype.kind == "i"
    assert set(seen.tolist()) == set(range(len(codes)))
    # At most classes_per_batch groups per batch: the batch size is bounded.
    classes_per_batch = max(2, min(n_classes, batch_size // samples_per_class))
    for batch in batches:
        per_class = Counter(codes[batch].tolist())
        assert len(per_class) >= 2, "a batch without negatives"
        assert len(per_class) <= classes_per_batch
        assert all(n == samples_per_class for n in per_class.values()), per_class
        assert len(batch) <= max(batch_size, 2 * samples_per_class)
        # Repeats inside a group only for a class with fewer clips than a group.
        for c in per_class:
            distinct = len(set(batch[codes[batch] == c].tolist()))
            assert distinct == min(sizes[c], samples_per_class), (c, batch)


def test_balanced_classes_every_clip_exactly_once():
    codes = np.repeat(np.arange(6), 8)  # 6 classes x 8 clips, groups of 4
    batches = plan(codes, batch_size=16, samples_per_class=4)
    check_invariants(codes, batches, 16, 4)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(codes)))  # no repeats at all
    assert [len(b) for b in batches] == [16, 16, 16]  # 4 classes per batch, 12 groups


def test_class_with_remainder_repeats_only_to_fill_its_last_group():
    codes = np.repeat([0, 1, 2], [5, 8, 6])  # 5 -> 2 groups (3 fills), 6 -> 2 groups (2 fills)
    for seed in range(20):
        # Room for all 3 classes in a batch: two batches, one group of each class.
        batches = plan(codes, batch_size=12, samples_per_class=4, seed=seed)
        check_invariants(codes, batches, 12, 4)
        assert len(batches) == 2
        counts = Counter(np.concatenate(batches).tolist())
        for c, n_fill in [(0, 3), (1, 0), (2, 2)]:
            members = np.flatnonzero(codes == c)
            assert sum(counts[i] for i in members) == len(members) + n_fill
            assert all(counts[i] >= 1 for i in members)


@pytest.mark.parametrize("n_small", [1, 2, 3])
def test_classes_with_fewer_clips_than_samples_per_class(n_small):
    codes = np.concatenate([np.zeros(8, int), np.ones(n_small, int), np.full(4, 2)])
    batches = plan(codes, batch_size=12, samples_per_class=4)
    check_invariants(codes, batches, 12, 4)
    small_idx = set(np.flatnonzero(codes == 1).tolist())
    small_groups = [b[codes[b] == 1] for b in batches if 1 in codes[b]]
    assert small_groups, "the small class never appears"
    for group in small_groups:
        # The group of 4 is made of the class's own clips, each of them at least once.
        assert len(group) == 4 and set(group.tolist()) == small_idx


def test_imbalanced_classes_keep_batches_small_and_mixed():
    # One dominant class: once the others run out, its groups still get negatives
    # (drawn again from the other classes) instead of one oversized batch.
    codes = np.repeat(np.arange(10), [200] + [20] * 9)
    batches = plan(codes, batch_size=32, samples_per_class=4)
    check_invariants(codes, batches, 32, 4)
    assert max(len(b) for b in batches) == 32
    # Two classes, 100 vs 4 clips: every batch is one group of each.
    codes = np.repeat([0, 1], [100, 4])
    batches = plan(codes, batch_size=8, samples_per_class=4)
    check_invariants(codes, batches, 8, 4)
    assert [len(b) for b in batches] == [8] * 25


def test_fewer_classes_than_a_batch_can_hold():
    codes = np.repeat(np.arange(3), 8)
    batches = plan(codes, batch_size=64, samples_per_class=4)  # room for 16 classes
    check_invariants(codes, batches, 64, 4)
    for batch in batches:
        assert sorted(Counter(codes[batch].tolist()).items()) == [(0, 4), (1, 4), (2, 4)]
    assert len(batches) == 2


def test_batch_size_below_two_groups_still_pairs_two_classes():
    codes = np.repeat(np.arange(4), 4)
    batches = plan(codes, batch_size=5, samples_per_class=4)
    check_invariants(codes, batches, 5, 4)
    assert all(len(b) == 8 for b in batches)


def test_same_seed_same_batches_different_seed_different():
    codes = np.repeat(np.arange(5), 9)
    a = plan(codes, 12, 3, seed=7)
    b = plan(codes, 12, 3, seed=7)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = plan(codes, 12, 3, seed=8)
    assert len(a) != len(c) or not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_generator_state_advances_between_epochs():
    # The training loop calls the plan once per epoch with the same generator:
    # consecutive epochs must differ, and the sequence must be reproducible.
    codes = np.repeat(np.arange(4), 6)
    rng = np.random.default_rng(0)
    epoch1 = class_balanced_batches(codes, 8, 2, rng)
    epoch2 = class_balanced_batches(codes, 8, 2, rng)
    assert not all(np.array_equal(x, y) for x, y in zip(epoch1, epoch2))
    rng = np.random.default_rng(0)
    again = class_balanced_batches(codes, 8, 2, rng)
    assert all(np.array_equal(x, y) for x, y in zip(epoch1, again))


@settings(max_examples=150, deadline=None)
@given(
    class_sizes=st.lists(st.integers(1, 30), min_size=2, max_size=8),
    samples_per_class=st.integers(2, 6),
    batch_size=st.integers(2, 48),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_invariants_hold_for_any_class_sizes(
    class_sizes, samples_per_class, batch_size, seed
):
    # Class codes need not be contiguous or sorted.
    labels = np.arange(len(class_sizes)) * 3 + 1
    codes = np.random.default_rng(seed).permutation(np.repeat(labels, class_sizes))
    batches = plan(codes, batch_size, samples_per_class, seed)
    check_invariants(codes, batches, batch_size, samples_per_class)


def test_classes_are_drawn_in_proportion_to_their_groups_left():
    # Class 0 has 10 groups, classes 1-3 one each; batches hold 2 classes. Drawn in
    # proportion to groups left, the first batch lacks class 0 with probability
    # 3/13 * 2/12 = 0.04; drawn uniformly, with probability 3/6 = 0.5.
    codes = np.repeat(np.arange(4), [40, 4, 4, 4])
    with_class_0 = [0 in codes[plan(codes, 8, 4, seed=seed)[0]] for seed in range(200)]
    assert np.mean(with_class_0) > 0.9
