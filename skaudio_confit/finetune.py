"""FineTuneClassifier: the paper's baseline, end-to-end cross-entropy fine-tuning."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._estimator import ENCODER_PARAMETER_CONSTRAINTS, AudioEncoderMixin
from ._objectives import CrossEntropyObjective
from ._training import shuffled_batches
from .persistence import EncoderPersistenceMixin


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


class FineTuneClassifier(EncoderPersistenceMixin, AudioEncoderMixin,
                         ClassNamePrefixFeaturesOutMixin, ClassifierMixin, TransformerMixin,
                         BaseEstimator):
    """End-to-end cross-entropy fine-tuning of a pretrained audio encoder (the baseline).

    A linear head on the mean-pooled encoder output is trained together with the
    whole encoder (no layer frozen unless asked) by cross-entropy, with the same
    training loop, input layer, pooling and persistence as
    :class:`~skaudio_confit.PairTuneTransformer`, so the two compare like for like.
    Like scikit-learn's ``LinearDiscriminantAnalysis`` it is also a transformer:
    ``transform`` returns the tuned encoder's pooled embeddings (the head's input).

    Parameters
    ----------
    backbone : str, os.PathLike or None, default=None
        Hub id or local directory of a transformers audio encoder; None uses the
        bundled Whisper tiny.en encoder (offline).
    sampling_rate : float, default=16000
        Rate of in-memory arrays in ``X``; files are read at their own rate.
    max_duration : float or None, default=10.0
        Seconds: random crops in training, averaged windows at prediction.
    epochs : int, default=5
        Passes over the training clips.
    batch_size : int, default=32
        Clips per batch (shuffled batches); also the most clips of a batch at
        prediction (on CPU, prediction batches also stop at 2,048 clips x frames,
        where larger ones run slower).
    learning_rate : float, default=1e-4
        Peak AdamW learning rate of the encoder (the paper: 5e-5).
    head_learning_rate : float or None, default=None
        Learning rate of the fresh linear head; None uses ``learning_rate`` (the
        paper's setting, where the head learns slowly).
    weight_decay : float, default=0.0
        Decoupled weight decay.
    lr_schedule : {"constant", "linear", "cosine"}, default="cosine"
        "linear"/"cosine": linear warm-up over the first tenth of the optimiser
        steps, then decay to 0. "constant": ``learning_rate`` throughout (the paper).
    max_steps : int or None, default=None
        Stop after this many optimiser steps (batches), even within an epoch, for
        comparisons at an equal number of updates. None: ``epochs`` full epochs.
    layer : int or "middle", default="middle"
        Encoder layer whose output is pooled ("middle": ``num_layers // 2``); the
        same default as PairTune's, so that the two compare like for like. The
        paper's recipe: ``layer=-1, learning_rate=5e-5, lr_schedule="constant"``.
    freeze_feature_encoder : bool, default=False
        Keep the convolutional feature encoder fixed.
    gradient_checkpointing : bool, default=False
        Trade compute for memory in training.
    spec_augment : "auto" or bool, default="auto"
        SpecAugment in training (masked time spans and feature channels of the
        wav2vec2 family): "auto" follows the checkpoint's config (on for
        wav2vec2/HuBERT/WavLM/data2vec-audio base checkpoints, as they were
        fine-tuned), True applies the config's masks even where it switches them
        off, False never masks. Masks come from ``random_state``. The Whisper
        encoder has none ("auto" and False do nothing, True is an error).
    validation_fraction : float or None, default=None
        Fraction of clips held out (stratified) to record ``valid_accuracy`` per epoch,
        as with ``fit(..., validation_data=...)``.
    n_iter_no_change : int or None, default=None
        With a validation set, stop after this many epochs without improvement and
        keep the best epoch's weights.
    keep_best : bool, default=False
        With a validation set, also score the pretrained encoder (with the fresh head)
        as epoch 0 and end with the weights of the best-scoring epoch (first on ties).
    callbacks : list of Callback or None, default=None
        Called in training (:mod:`skaudio_confit.callbacks`): e.g.
        ``EarlyStopping``, ``EpochScoring`` with your own probe, ``PrintLog``. Each fit
        works on copies of them. Not stored by ``save`` (a loaded model has None).
    device : str, default="auto"
        "auto" (CUDA with bf16 autocast if available, else CPU), "cpu", "cuda:N".
    n_threads : int, "auto" or None, default=None
        torch intra-op threads in ``fit``, ``transform`` and ``predict``. None (the
        default): training steps run on ``torch.get_num_threads()`` threads, fixed for
        the whole fit, so that the same ``random_state`` gives the same bits;
        inference (``transform``, ``predict*``, ``decision_function``, ``score`` and
        the embeddings scored during ``fit``) uses at most that many and fewer while
        other processes hold cores (on a busy machine fewer threads are faster:
        threads waiting for a shared core stall each other), which leaves its results
        unchanged (docs: Speed and memory). "auto": the cores other processes leave
        idle, re-measured every half second, in training too (faster on a busy
        machine, but reruns may differ in the last bits). An int is used as given.
        Inside a Dask or joblib worker the worker's share of the cores caps it.
        torch's setting is restored afterwards.
    random_state : int, RandomState instance or None, default=None
        Seeds batches, crops, dropout and the head.
    verbose : int, default=1
        0 silences progress bars.

    Attributes
    ----------
    backbone_ : AudioBackbone
        The fine-tuned encoder.
    coef_ : ndarray of shape (n_classes, hidden_size)
        Weights of the linear head.
    intercept_ : ndarray of shape (n_classes,)
        Bias of the linear head.
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    history_ : list of dict
        Per epoch: ``loss``, ``train_accuracy``, ``batches``, ``steps`` (optimiser
        steps so far), ``seconds`` and, with a validation set, ``valid_accuracy``,
        and what callbacks add; with ``keep_best`` (or a callback's
        ``score_pretrained``), first an epoch-0 record of the starting weights.
    n_features_in_ : int
        Samples per clip, only when ``fit`` got a 2-D array.

    Notes
    -----
    Subclasses may change what is trained by overriding ``_make_objective``,
    ``_batch_plan`` and ``_validation_score`` (user guide, "Subclassing").

    Examples
    --------
    >>> from skaudio_confit import FineTuneClassifier
    >>> from skaudio_confit.datasets import load_spoken_digits
    >>> X, y = load_spoken_digits(target="speaker", return_X_y=True)
    >>> clf = FineTuneClassifier(sampling_rate=8000, epochs=1, random_state=0, verbose=0)
    >>> clf.fit(X[::30], y[::30]).score(X[1::30], y[1::30]) > 0.3  # doctest: +SKIP
    True
    """

    _json_fitted_attributes = ("classes_", "history_", "n_features_in_", "coef_", "intercept_")

    _parameter_constraints = {
        **ENCODER_PARAMETER_CONSTRAINTS,
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        backbone=None,
        *,
        sampling_rate=16000,
        max_duration=10.0,
        epochs=5,
        batch_size=32,
        learning_rate=1e-4,
        head_learning_rate=None,
        weight_decay=0.0,
        lr_schedule="cosine",
        max_steps=None,
        layer="middle",
        freeze_feature_encoder=False,
        gradient_checkpointing=False,
        spec_augment="auto",
        validation_fraction=None,
        n_iter_no_change=None,
        keep_best=False,
        callbacks=None,
        device="auto",
        n_threads=None,
        random_state=None,
        verbose=1,
    ):
        self.backbone = backbone
        self.sampling_rate = sampling_rate
        self.max_duration = max_duration
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.max_steps = max_steps
        self.layer = layer
        self.freeze_feature_encoder = freeze_feature_encoder
        self.gradient_checkpointing = gradient_checkpointing
        self.spec_augment = spec_augment
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.keep_best = keep_best
        self.callbacks = callbacks
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y, validation_data=None):
        """Fine-tune encoder and linear head on labelled clips.

        Parameters
        ----------
        X : list of array-like or path, or ndarray of shape (n_clips, n_samples)
            Clips of any length (arrays at ``sampling_rate``, or audio files).
        y : array-like of shape (n_clips,)
            Class labels (strings, integers or a mix); at least two classes.
        validation_data : tuple (X_val, y_val), default=None
            Held-out clips whose accuracy is recorded after every epoch
            (``valid_accuracy`` in ``history_``); with ``n_iter_no_change``, training
            stops early and keeps the best epoch.

        Returns
        -------
        self : FineTuneClassifier
        """
        backbone, objective, classes, history = self._fit_encoder(
            X, y, validation_data=validation_data, desc="FineTune")
        # Fitted state is set only now, so a failed fit leaves a fitted model as it was.
        self.backbone_ = backbone
        self.coef_ = objective.head.weight.detach().cpu().numpy().astype(np.float32)
        self.intercept_ = objective.head.bias.detach().cpu().numpy().astype(np.float32)
        self.classes_ = classes
        self.history_ = history
        self._record_input_shape(X)
        return self

    def _make_objective(self, backbone, n_classes):
        """A fresh linear head with cross-entropy."""
        return CrossEntropyObjective(backbone.hidden_size, n_classes,
                                     head_learning_rate=self.head_learning_rate)

    def _batch_plan(self, codes):
        """Shuffled batches of ``batch_size`` clips."""
        return shuffled_batches(len(codes), self.batch_size)

    def _validation_score(self, state):
        """Accuracy of the head being trained on the validation clips."""
        head = state.objective.head
        logits = (state.valid_embeddings() @ head.weight.detach().cpu().numpy().T
                  + head.bias.detach().cpu().numpy())
        return float(np.mean(logits.argmax(axis=1) == state.valid_codes))

    def transform(self, X):
        """Mean-pooled embeddings of the fine-tuned encoder (the head's input).

        Returns
        -------
        embeddings : ndarray of shape (n_clips, hidden_size), dtype float32
        """
        return self._embed(X)

    def _logits(self, X):
        check_is_fitted(self)
        # In float64 with numpy: never on torch's threads, whose count follows the load
        # in inference (a matmul of a few rows would sum differently on another count).
        return (self._embed(X).astype(np.float64) @ self.coef_.T.astype(np.float64)
                + self.intercept_)

    def decision_function(self, X):
        """Scores of the linear head.

        Returns
        -------
        scores : ndarray of shape (n_clips, n_classes), or (n_clips,) for two classes
            Logits; with two classes, as in scikit-learn, the logit difference in favour
            of ``classes_[1]``.
        """
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X):
        """Class probabilities (softmax of the head's logits), shape (n_clips, n_classes)."""
        return _softmax(self._logits(X))

    def predict(self, X):
        """Most probable class label of each clip."""
        best = self._logits(X).argmax(axis=1)
        return self.classes_[best]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags
