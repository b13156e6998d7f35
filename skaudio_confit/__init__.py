"""skaudio-confit: Audio Contrastive-based Fine-tuning (AudioConFit) for scikit-learn.

Stage 1, :class:`PairTuneTransformer`, fine-tunes a pretrained audio encoder with a
supervised contrastive loss; its ``transform`` gives mean-pooled embeddings for a
linear classifier (stage 2) in a scikit-learn ``Pipeline``.

The estimators are imported on first use, so that ``import skaudio_confit`` and the
command line's ``--help`` start without loading torch, transformers or skorch.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and the API docs; at run time, see __getattr__
    from .finetune import FineTuneClassifier
    from .heads import LinearHeadClassifier
    from .pairtune import PairTuneTransformer

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first attribute access).
_LAZY = {
    "FineTuneClassifier": ".finetune",
    "LinearHeadClassifier": ".heads",
    "PairTuneTransformer": ".pairtune",
}

# Public submodules, also imported on first use.
_SUBMODULES = ("callbacks",)

__all__ = ["FineTuneClassifier", "LinearHeadClassifier", "PairTuneTransformer", "callbacks",
           "__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
