"""Tests for the training objectives and label encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from skaudio_confit._labels import encode_labels
from skaudio_confit._objectives import SupConObjective


def identity_head(objective):
    """Make the projection the identity, so that z is the normalised input."""
    with torch.no_grad():
        objective.projection.weight.copy_(torch.eye(objective.projection.in_features))
        objective.projection.bias.zero_()
    return objective


def on_circle(degrees):
    angles = np.deg2rad(degrees)
    return torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)


def pair_set(anchors, others):
    return set(zip(anchors.tolist(), others.tolist()))


# Hand-built example: class 0 at 0 and 20 degrees, class 1 at 90, 100 and 10 degrees.
# The class-1 point at 10 degrees sits inside class 0, so (cosine similarity,
# margin 0.1) the multi-similarity rule keeps, per anchor:
#   0: positive 1 (cos 20 = .94 < .985 + .1 of negative 4), negative 4 (.985 > .94 - .1)
#   1: positive 0, negative 4 (same reasons)
#   2: positive 4 only (cos 80 = .17 < .34 + .1 of negative 1; cos 10 = .985 is easy),
#      negative 1 only (cos 70 = .34 > .17 - .1; negative 0 at cos 90 = 0 is easy)
#   3: positive 4 (cos 90 = 0 < .17 + .1), negative 1 (.17 > 0 - .1; 0 at -.17 is easy)
#   4: both positives (.17 and 0, far below its negatives' .985) and both negatives
HARD_DEGREES = [0, 20, 90, 100, 10]
HARD_TARGETS = torch.tensor([0, 0, 1, 1, 1])
HARD_POSITIVES = {(0, 1), (1, 0), (2, 4), (3, 4), (4, 2), (4, 3)}
HARD_NEGATIVES = {(0, 4), (1, 4), (2, 1), (3, 1), (4, 0), (4, 1)}


def test_multi_similarity_mines_the_hard_pairs_of_a_hand_built_example():
    objective = identity_head(SupConObjective(2, 2, temperature=0.1, margin=0.1))
    x = on_circle(HARD_DEGREES)
    a1, p, a2, n = objective.miner(torch.nn.functional.normalize(x), HARD_TARGETS)
    assert pair_set(a1, p) == HARD_POSITIVES
    assert pair_set(a2, n) == HARD_NEGATIVES
    loss, stats = objective(x, HARD_TARGETS)
    assert stats == {"positive_pairs": 6, "negative_pairs": 6}
    # The loss is SupCon restricted to exactly those pairs, not to all pairs.
    pos = torch.tensor(sorted(HARD_POSITIVES)).T
    neg = torch.tensor(sorted(HARD_NEGATIVES)).T
    z = torch.nn.functional.normalize(x)
    expected = losses.SupConLoss(temperature=0.1)(z, HARD_TARGETS, (pos[0], pos[1], neg[0], neg[1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    all_pairs = losses.SupConLoss(temperature=0.1)(z, HARD_TARGETS)
    assert abs(loss.item() - all_pairs.item()) > 1e-3


def test_multi_similarity_margin_changes_what_is_hard():
    x = on_circle(HARD_DEGREES)
    z = torch.nn.functional.normalize(x)
    # With a huge margin every pair is "hard".
    _, wide = identity_head(SupConObjective(2, 2, margin=5.0))(x, HARD_TARGETS)
    assert wide == {"positive_pairs": 2 * 1 + 3 * 2, "negative_pairs": 2 * (2 * 3)}
    # Margin 0 keeps the pairs of the hand-built example: no comparison there is
    # within 0.1 of its threshold (anchor 2: positive 3 at .985 vs negative .34;
    # negative 0 at 0 vs positive .17; anchor 3 likewise with .985, .17 and -.17).
    a1, p, a2, n = identity_head(SupConObjective(2, 2, margin=0.0)).miner(z, HARD_TARGETS)
    assert pair_set(a1, p) == HARD_POSITIVES
    assert pair_set(a2, n) == HARD_NEGATIVES
    # Margin 0.9 makes anchor 2's easy pairs hard (.985 - .9 < .34; 0 + .9 > .17),
    # anchor 3's (.985 - .9 < .17; -.17 + .9 > 0) and anchor 1's negatives at 90
    # and 100 degrees (.34 + .9 and .17 + .9 > .94); anchor 0's stay easy (0 + .9
    # and -.17 + .9 < .94).
    a1, p, a2, n = identity_head(SupConObjective(2, 2, margin=0.9)).miner(z, HARD_TARGETS)
    assert pair_set(a1, p) == HARD_POSITIVES | {(2, 3), (3, 2)}
    assert pair_set(a2, n) == HARD_NEGATIVES | {(2, 0), (3, 0), (1, 2), (1, 3)}


def test_no_hard_pairs_gives_a_zero_loss_that_still_backpropagates():
    objective = identity_head(SupConObjective(2, 2))
    x = on_circle([0, 20, 90, 100]).requires_grad_(True)  # two tight, distant classes
    loss, stats = objective(x, torch.tensor([0, 0, 1, 1]))
    assert stats == {"positive_pairs": 0, "negative_pairs": 0}
    assert loss.item() == 0.0
    loss.backward()  # the training loop calls backward on every batch
    assert torch.all(x.grad == 0)


def test_mining_none_uses_all_pairs():
    objective = identity_head(SupConObjective(2, 2, temperature=0.1, mining="none"))
    assert objective.miner is None
    x = on_circle(HARD_DEGREES)
    loss, stats = objective(x, HARD_TARGETS)
    # Ordered pairs: positives 2*1 + 3*2 = 8, negatives 2 * (2*3) = 12.
    assert stats == {"positive_pairs": 8, "negative_pairs": 12}
    z = torch.nn.functional.normalize(x)
    assert loss.item() == pytest.approx(
        losses.SupConLoss(temperature=0.1)(z, HARD_TARGETS).item(), rel=1e-6
    )


@pytest.mark.parametrize("mining", ["multi-similarity", "none"])
def test_loss_is_finite_and_decreases_on_separable_embeddings(mining):
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 3
    targets = torch.arange(3).repeat_interleave(8)
    pooled = centres[targets] + torch.randn(24, 16)  # separable, but not yet by the head
    objective = SupConObjective(16, 8, temperature=0.1, mining=mining)
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.05)
    history = []
    for _ in range(30):
        loss, stats = objective(pooled, targets)
        assert torch.isfinite(loss)
        assert set(stats) == {"positive_pairs", "negative_pairs"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), stats["positive_pairs"]))
    (first, first_pos), (last, last_pos) = history[0], history[-1]
    if mining == "none":
        # With all pairs, SupCon cannot go below log(positives per anchor) = log 7,
        # reached when each class collapses to a point: the excess must mostly vanish.
        floor = np.log(7)
        assert first - floor > 0.1
        assert last - floor < 0.1 * (first - floor)
    else:
        # Mined pairs: as the classes separate, fewer pairs stay hard and the loss falls.
        assert last < 0.5 * first
        assert last_pos < first_pos / 4


def supcon_by_hand(z, targets, temperature):
    """SupCon (Khosla et al. 2020, L_out) in float64: for each anchor, the mean over
    its positives of -log softmax over all other clips of z_i . z_a / temperature."""
    z, targets = z.double().numpy(), targets.numpy()
    logits = z @ z.T / temperature
    losses_ = []
    for i in range(len(z)):
        others = np.arange(len(z)) != i
        log_denominator = np.log(np.exp(logits[i, others]).sum())
        positives = others & (targets == targets[i])
        losses_.append(np.mean(log_denominator - logits[i, positives]))
    return np.mean(losses_)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.05])
def test_loss_is_the_supcon_formula_at_each_temperature(temperature):
    # Unit vectors at these angles, so z is known once the head is the identity.
    x = on_circle([0, 15, 40, 90, 120, 200])
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    objective = identity_head(SupConObjective(2, 2, temperature=temperature, mining="none"))
    loss, _ = objective(x * 3.0, targets)  # the input scale is normalised away
    expected = supcon_by_hand(torch.nn.functional.normalize(x), targets, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_finite_at_low_temperature():
    # At temperature 0.01 the logits reach 100: exp overflows float32 without the
    # max-subtraction the loss relies on.
    x = on_circle([0, 1, 180, 181])
    targets = torch.tensor([0, 1, 0, 1])  # positives far apart, negatives close
    objective = identity_head(SupConObjective(2, 2, temperature=0.01, mining="none"))
    loss, _ = objective(x, targets)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(supcon_by_hand(x, targets, 0.01), rel=1e-4)


def test_projection_output_is_unit_norm_whatever_the_input_scale():
    objective = SupConObjective(4, 3, mining="none")
    x = torch.randn(6, 4)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    # Pooled features are normalised before the head: scale does not change the loss.
    small, _ = objective(x * 1e-3, targets)
    large, _ = objective(x * 1e3, targets)
    assert small.item() == pytest.approx(large.item(), rel=1e-5)


# --------------------------------------------------------------------------------------
# encode_labels
# --------------------------------------------------------------------------------------


def test_encode_integer_labels():
    classes, codes = encode_labels(np.array([7, 3, 7, -1, 3]))
    np.testing.assert_array_equal(classes, [-1, 3, 7])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, [2, 1, 2, 0, 1])
    np.testing.assert_array_equal(classes[codes], [7, 3, 7, -1, 3])


def test_encode_string_labels():
    y = np.array(["lucas", "george", "theo", "george"])
    classes, codes = encode_labels(y)
    np.testing.assert_array_equal(classes, ["george", "lucas", "theo"])
    np.testing.assert_array_equal(classes[codes], y)


def test_encode_mixed_type_object_labels():
    y = np.array([3, "b", 1, "a", 3, 2.5, "b"], dtype=object)
    with pytest.raises(TypeError):
        np.unique(y)  # what encode_labels must work around
    classes, codes = encode_labels(y)
    assert classes.dtype == object
    # Sorted by type name, then value: float < int < str.
    assert classes.tolist() == [2.5, 1, 3, "a", "b"]
    assert codes.dtype == np.int64
    assert classes[codes].tolist() == y.tolist()


def test_encode_object_labels_of_one_type_and_column_vector():
    classes, codes = encode_labels(np.array(["x", "y", "x"], dtype=object))
    assert classes.tolist() == ["x", "y"]
    np.testing.assert_array_equal(codes, [0, 1, 0])
    # A column vector gives flat codes.
    classes, codes = encode_labels(np.array([[2], [1], [2]]))
    assert codes.shape == (3,)
    np.testing.assert_array_equal(classes[codes], [2, 1, 2])


def test_encode_against_known_classes():
    """Codes index into given classes (a fitted classes_); unknown labels are named."""
    classes = np.array(["a", "b", "c"])
    got, codes = encode_labels(["c", "a", "c"], classes=classes)
    np.testing.assert_array_equal(got, classes)
    np.testing.assert_array_equal(codes, [2, 0, 2])
    with pytest.raises(ValueError, match="y_val has labels not seen in y: d, e"):
        encode_labels(["a", "e", "d"], classes=classes, name="y_val")
