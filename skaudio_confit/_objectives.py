"""Training objectives: what turns pooled encoder output and labels into a loss.

The training loop is shared; an objective is the only part that differs between
PairTune (projection head + miner + SupCon loss) and FineTune (linear head +
cross-entropy). Heads live in the objective so they are dropped with it after fit.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ._random import forked_torch_rng

MINING_OPTIONS = ("multi-similarity", "none")


def _head(in_dim, out_dim):
    """A linear head built without drawing from the caller's global torch RNG.

    The training loop initialises heads again under the fit's own seed; building one
    here must not advance the user's random stream.
    """
    with forked_torch_rng():
        return nn.Linear(in_dim, out_dim)


def _head_group(head, learning_rate):
    """The optimiser group of a head: its own learning rate if one is given."""
    group = {"params": list(head.parameters())}
    if learning_rate is not None:
        group["lr"] = learning_rate
    return [group]


class SupConObjective(nn.Module):
    """Supervised contrastive loss on a projection of L2-normalised embeddings.

    Pooled encoder output is L2-normalised, projected by one linear layer and
    normalised again; pytorch-metric-learning's ``SupConLoss`` compares the
    projections, optionally restricted to the hard pairs that its
    ``MultiSimilarityMiner`` selects (positives less similar than the hardest
    negative, negatives more similar than the hardest positive, by ``margin``).
    """

    def __init__(self, in_dim, projection_dim=256, temperature=0.1, mining="multi-similarity",
                 margin=0.1, head_learning_rate=None):
        super().__init__()
        from pytorch_metric_learning import losses, miners

        self.projection = _head(in_dim, projection_dim)
        self.head_learning_rate = head_learning_rate
        self.loss = losses.SupConLoss(temperature=temperature)
        self.miner = miners.MultiSimilarityMiner(epsilon=margin) if mining != "none" else None

    def param_groups(self):
        """Optimiser groups: the projection head may learn at its own rate."""
        return _head_group(self.projection, self.head_learning_rate)

    def forward(self, pooled, targets):
        z = F.normalize(self.projection(F.normalize(pooled, dim=1)), dim=1)
        pairs = None
        if self.miner is not None:
            pairs = self.miner(z, targets)
            n_pos, n_neg = len(pairs[0]), len(pairs[2])
        else:  # every ordered pair of distinct clips is used
            counts = targets.bincount()
            n_pos = int((counts * (counts - 1)).sum())
            n_neg = len(targets) ** 2 - int((counts * counts).sum())
        stats = {"positive_pairs": n_pos, "negative_pairs": n_neg}
        return self.loss(z, targets, pairs), stats


class CrossEntropyObjective(nn.Module):
    """A linear classification head on pooled features with cross-entropy loss."""

    def __init__(self, in_dim, n_classes, head_learning_rate=None):
        super().__init__()
        self.head = _head(in_dim, n_classes)
        self.head_learning_rate = head_learning_rate

    def param_groups(self):
        """Optimiser groups: the head may learn at its own rate."""
        return _head_group(self.head, self.head_learning_rate)

    def forward(self, pooled, targets):
        logits = self.head(pooled)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
        return loss, {"train_accuracy": accuracy}
