"""SupCon with more negatives (a cross-batch memory) and an optional cross-entropy term.

Two extensions of :class:`~skaudio_confit._objectives.SupConObjective`, both off by
default:

- a memory of the last ``memory_size`` projected embeddings (pytorch-metric-learning's
  ``CrossBatchMemory``), so that each anchor meets positives and negatives from
  earlier batches too, which a CPU-sized batch of a few classes otherwise lacks;
- a hybrid loss: SupCon plus ``ce_weight`` times the (label-smoothed)
  cross-entropy of a linear head on the pooled embeddings.
"""

from __future__ import annotations

from torch.nn import functional as F

from ._objectives import SupConObjective, _head, _head_group


def _counting_memory(loss, embedding_size, memory_size, miner):
    """A ``CrossBatchMemory`` that remembers how many pairs its last call used."""
    from pytorch_metric_learning.losses import CrossBatchMemory

    class _CountingMemory(CrossBatchMemory):
        last_pairs = (0, 0)

        def create_indices_tuple(self, *args, **kwargs):
            indices = super().create_indices_tuple(*args, **kwargs)
            self.last_pairs = (len(indices[0]), len(indices[2]))
            return indices

    return _CountingMemory(loss, embedding_size, memory_size=memory_size, miner=miner)


class SupConVariantObjective(SupConObjective):
    """SupCon (as :class:`SupConObjective`) with a memory and/or a cross-entropy term.

    Parameters
    ----------
    in_dim, projection_dim, temperature, mining, margin, head_learning_rate
        As :class:`SupConObjective`.
    n_classes : int
        Number of classes (width of the cross-entropy head).
    memory_size : int or None
        Projected embeddings kept from past batches (with their labels) and compared
        with every anchor; None: in-batch pairs only. The memory starts empty at
        every fit.
    ce_weight : float
        Weight of the cross-entropy term; 0: none (no head is built).
    label_smoothing : float
        Label smoothing of the cross-entropy term.
    """

    def __init__(self, in_dim, projection_dim=256, temperature=0.1, mining="multi-similarity",
                 margin=0.1, head_learning_rate=None, *, n_classes, memory_size=None,
                 ce_weight=0.0, label_smoothing=0.0):
        super().__init__(in_dim, projection_dim, temperature, mining, margin,
                         head_learning_rate=head_learning_rate)
        self.memory = None
        if memory_size is not None:
            self.memory = _counting_memory(self.loss, projection_dim, memory_size, self.miner)
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.classifier = _head(in_dim, n_classes) if ce_weight > 0 else None

    def param_groups(self):
        groups = super().param_groups()
        if self.classifier is not None:
            groups += _head_group(self.classifier, self.head_learning_rate)
        return groups

    def forward(self, pooled, targets):
        if self.memory is None:
            loss, stats = super().forward(pooled, targets)
        else:
            z = F.normalize(self.projection(F.normalize(pooled, dim=1)), dim=1)
            loss = self.memory(z, targets)
            n_pos, n_neg = self.memory.last_pairs
            stats = {"positive_pairs": n_pos, "negative_pairs": n_neg}
        if self.classifier is not None:
            logits = self.classifier(pooled)
            loss = loss + self.ce_weight * F.cross_entropy(
                logits, targets, label_smoothing=self.label_smoothing
            )
            stats["train_accuracy"] = (logits.argmax(dim=1) == targets).float().mean().item()
        return loss, stats
