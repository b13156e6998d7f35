"""Callbacks: hook into the training of PairTune and FineTune.

Pass a list of callbacks as ``callbacks=[...]`` to
:class:`~skaudio_confit.PairTuneTransformer` or
:class:`~skaudio_confit.FineTuneClassifier`. A callback has three hooks, each given
the estimator being fitted and the :class:`TrainingState` of the fit:

- ``on_train_begin(estimator, state)``: before the first epoch;
- ``on_epoch_end(estimator, record, state)``: after each epoch, with the epoch's
  record (a dict that ends up in ``history_``, which the callback may extend);
  returning True stops training;
- ``on_train_end(estimator, state)``: after the last epoch, before the weights
  become the fitted ``backbone_``.

Every fit works on a shallow copy (``copy.copy``) of each callback, so the state a
callback sets on ``self`` during a fit never lands on the object you passed, and
the same list serves any number of fits, clones and grid-search candidates. Objects
a callback holds (a probe, a sink for log lines) are shared with yours: a callback
clones an estimator before fitting it, and a sink can be your experiment tracker.

Callbacks act in training only: a model saved in the safe format stores
``callbacks=None`` (they are code, which that format does not hold), while pickle
and joblib keep them.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import HasMethods, Interval


class TrainingState:
    """What callbacks see of a fit in progress.

    Built by ``fit``; callbacks read it and should not change its attributes.

    Attributes
    ----------
    backbone : AudioBackbone
        The encoder being trained (its weights change every epoch).
    objective : torch.nn.Module
        The training objective with its head (PairTune's projection, FineTune's
        linear classifier).
    classes : ndarray
        The class labels; codes index into it.
    train_waves, valid_waves : list of ndarray
        Training and validation clips at the backbone's rate (``valid_waves`` is None
        without a validation set).
    train_codes, valid_codes : ndarray of int
        Their class codes (``valid_codes`` is None without a validation set).
    history : list of dict
        The records of the epochs so far (the current one included in
        ``on_epoch_end``).
    """

    def __init__(self, *, backbone, objective, classes, train_waves, train_codes,
                 valid_waves, valid_codes, embed):
        self.backbone = backbone
        self.objective = objective
        self.classes = classes
        self.train_waves = train_waves
        self.train_codes = train_codes
        self.valid_waves = valid_waves
        self.valid_codes = valid_codes
        self.history = []
        self._embed = embed
        self._cache = {}

    @property
    def has_validation(self):
        """Whether the fit has validation clips (``validation_data`` or ``validation_fraction``)."""
        return self.valid_waves is not None

    def embed(self, waves):
        """Pooled embeddings of ``waves`` (clips at the backbone's rate) by the current weights.

        The features ``transform`` would return now: with PairTune's
        ``include_pretrained``, the pretrained copy's embedding (computed once per
        list of clips, as no epoch changes it) beside the trained encoder's.
        """
        return self._embed(waves)

    def train_embeddings(self):
        """Embeddings of the training clips by the current weights (computed once per epoch)."""
        if "train" not in self._cache:
            self._cache["train"] = self.embed(self.train_waves)
        return self._cache["train"]

    def valid_embeddings(self):
        """Embeddings of the validation clips by the current weights (once per epoch)."""
        if not self.has_validation:
            raise ValueError("This fit has no validation clips: pass validation_data to fit "
                             "or set validation_fraction.")
        if "valid" not in self._cache:
            self._cache["valid"] = self.embed(self.valid_waves)
        return self._cache["valid"]

    def _weights_changed(self):
        self._cache.clear()


class Callback(BaseEstimator):
    """Base class of callbacks: hooks that do nothing.

    Subclasses take their configuration as ``__init__`` parameters (stored as given,
    as in scikit-learn) and keep per-fit state in attributes ending in ``_`` set in
    :meth:`on_train_begin`.

    A callback whose ``score_pretrained`` attribute is true asks for an epoch-0
    record: before training, every callback's :meth:`on_epoch_end` then sees a
    record ``{"epoch": 0, "loss": None, ...}`` of the pretrained weights (with
    ``valid_accuracy`` when there is a validation set), which starts ``history_``.
    """

    score_pretrained = False

    def on_train_begin(self, estimator, state):
        """Called before the first epoch (and before an epoch-0 record)."""

    def on_epoch_end(self, estimator, record, state):
        """Called after each epoch with its ``record``; return True to stop training."""
        return False

    def on_train_end(self, estimator, state):
        """Called after the last epoch (not when training failed)."""


def _need_validation(callback, state):
    if not state.has_validation:
        raise ValueError(
            f"{type(callback).__name__} scores validation clips, but this fit has none: "
            "pass validation_data to fit or set validation_fraction."
        )


class EarlyStopping(Callback):
    """Stop when a score stops improving, and end with the best epoch's weights.

    Parameters
    ----------
    monitor : str, default="valid_accuracy"
        Key of the epoch record to watch: ``valid_accuracy`` (the estimator's own
        validation score, recorded whenever there is a validation set), or a key
        written by a callback placed before this one (e.g. :class:`EpochScoring`).
    patience : int or None, default=5
        Stop after this many epochs without a better score; None never stops (with
        ``load_best``, training then simply ends at the best epoch's weights).
    lower_is_better : bool, default=False
        Whether smaller scores are better (a loss).
    load_best : bool, default=True
        Keep the weights of the best epoch (the first one on ties) and load them at
        the end of training.
    score_pretrained : bool, default=False
        Let the pretrained weights compete as epoch 0, so that with ``load_best`` a fit
        never ends below where it started.

    Attributes
    ----------
    best_score_ : float
        Best score seen in the fit (on the per-fit copy).
    best_epoch_ : int
        Its epoch.

    Notes
    -----
    The estimators' ``n_iter_no_change=k`` is ``EarlyStopping(patience=k)`` and
    ``keep_best=True`` is ``EarlyStopping(patience=None, score_pretrained=True)``
    (both: ``patience=k, score_pretrained=True``).
    """

    _parameter_constraints = {
        "monitor": [str],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "lower_is_better": ["boolean"],
        "load_best": ["boolean"],
        "score_pretrained": ["boolean"],
    }

    def __init__(self, monitor="valid_accuracy", patience=5, *, lower_is_better=False,
                 load_best=True, score_pretrained=False):
        self.monitor = monitor
        self.patience = patience
        self.lower_is_better = lower_is_better
        self.load_best = load_best
        self.score_pretrained = score_pretrained

    def on_train_begin(self, estimator, state):
        self._validate_params()
        if self.monitor == "valid_accuracy":
            _need_validation(self, state)
        self.best_score_ = None
        self.best_epoch_ = None
        self.epochs_since_best_ = 0
        self._best_states = None

    def on_epoch_end(self, estimator, record, state):
        if record["epoch"] == 0 and not self.score_pretrained:
            return False
        if self.monitor not in record:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which the epoch record lacks "
                f"(it has {', '.join(sorted(record))}); a callback writing it must come "
                "before EarlyStopping in callbacks."
            )
        score = float(record[self.monitor])
        sign = -1.0 if self.lower_is_better else 1.0
        if self.best_score_ is None or sign * score > sign * self.best_score_:
            self.best_score_, self.best_epoch_, self.epochs_since_best_ = (
                score, record["epoch"], 0)
            if self.load_best:
                self._best_states = [
                    {k: v.detach().clone() for k, v in module.state_dict().items()}
                    for module in (state.backbone, state.objective)
                ]
        else:
            self.epochs_since_best_ += 1
        return self.patience is not None and self.epochs_since_best_ >= self.patience

    def on_train_end(self, estimator, state):
        if self.load_best and self._best_states is not None:
            for module, weights in zip((state.backbone, state.objective), self._best_states):
                module.load_state_dict(weights)
            self._best_states = None  # the copies are not needed any more


class EpochScoring(Callback):
    """Score each epoch's embeddings with your own probe on the validation clips.

    After every epoch a clone of ``probe`` (any scikit-learn estimator) is fitted on
    the embeddings of the training clips and scored on those of the validation clips;
    the score is recorded as ``record[name]`` (and so in ``history_``). Training is
    not affected, unless an :class:`EarlyStopping` placed after this callback
    monitors ``name``.

    Parameters
    ----------
    probe : estimator
        E.g. ``make_pipeline(StandardScaler(), LogisticRegression())``. It is fitted
        on the class codes (``0 .. n_classes - 1``, indices into ``classes_``).
    name : str, default="probe_score"
        Key of the score in the epoch record.
    scoring : str, callable or None, default=None
        A scikit-learn scorer; None uses ``probe.score``.
    score_pretrained : bool, default=False
        Also score the pretrained weights, as an epoch-0 record.
    """

    _parameter_constraints = {
        "probe": [HasMethods(["fit"])],
        "name": [str],
        "scoring": [str, callable, None],
        "score_pretrained": ["boolean"],
    }

    def __init__(self, probe, *, name="probe_score", scoring=None, score_pretrained=False):
        self.probe = probe
        self.name = name
        self.scoring = scoring
        self.score_pretrained = score_pretrained

    def on_train_begin(self, estimator, state):
        self._validate_params()
        _need_validation(self, state)

    def on_epoch_end(self, estimator, record, state):
        from sklearn.base import clone
        from sklearn.metrics import check_scoring

        if self.name in record:
            raise ValueError(f"EpochScoring cannot record {self.name!r}: the epoch record "
                             "has that key already; choose another name.")
        probe = clone(self.probe).fit(state.train_embeddings(), state.train_codes)
        scorer = check_scoring(probe, scoring=self.scoring)
        record[self.name] = float(scorer(probe, state.valid_embeddings(), state.valid_codes))
        return False


class PrintLog(Callback):
    """Write one line per epoch: its number and the numbers of its record.

    Parameters
    ----------
    sink : callable, default=print
        Called with each line, e.g. ``logging.getLogger("train").info`` or your
        tracker's log method.
    keys : list of str or None, default=None
        Record keys to show, in order; None shows all but ``epoch`` and ``steps``.
    """

    _parameter_constraints = {"sink": [callable], "keys": [list, tuple, None]}

    def __init__(self, sink=print, keys=None):
        self.sink = sink
        self.keys = keys

    def on_train_begin(self, estimator, state):
        self._validate_params()

    def on_epoch_end(self, estimator, record, state):
        keys = self.keys if self.keys is not None else [
            k for k in record if k not in ("epoch", "steps")]
        shown = ", ".join(f"{k} {_format(record[k])}" for k in keys if k in record)
        self.sink(f"{type(estimator).__name__} epoch {record['epoch']}: {shown}")
        return False


def _format(value):
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


__all__ = ["Callback", "EarlyStopping", "EpochScoring", "PrintLog", "TrainingState"]
