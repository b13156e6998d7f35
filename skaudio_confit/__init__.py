"""skaudio-confit: Audio Contrastive-based Fine-tuning (AudioConFit) for scikit-learn.

Stage 1, :class:`PairTuneTransformer`, fine-tunes a pretrained audio encoder with a
supervised contrastive loss; its ``transform`` gives mean-pooled embeddings for a
linear classifier (stage 2) in a scikit-learn ``Pipeline``.
"""

from .finetune import FineTuneClassifier
from .heads import LinearHeadClassifier
from .pairtune import PairTuneTransformer

__version__ = "0.1.0"

__all__ = ["FineTuneClassifier", "LinearHeadClassifier", "PairTuneTransformer", "__version__"]
