"""PairTuneTransformer: supervised contrastive fine-tuning of an audio encoder."""

from __future__ import annotations

from numbers import Integral, Real

from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils._param_validation import Interval, StrOptions

from ._estimator import (
    ENCODER_PARAMETER_CONSTRAINTS,
    AudioEncoderMixin,
    nearest_centroid_accuracy,
)
from ._augmentation import AUGMENTATION_OPTIONS, make_augmentation
from ._device import resolve_device
from ._objectives import MINING_OPTIONS, SupConObjective
from ._partial_freeze import freeze_lower_layers
from ._random import forked_torch_rng
from ._sampling import class_balanced_batches
from ._stacked import FixedBeside, SideBySideBackbones
from ._supcon_variants import SupConVariantObjective
from .persistence import EncoderPersistenceMixin


class PairTuneTransformer(
    EncoderPersistenceMixin,
    AudioEncoderMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Contrastive fine-tuning of a pretrained audio encoder (AudioConFit stage 1).

    The defaults differ from the paper's recipe in four places, measured on
    many-class few-shot tasks (docs/benchmarks.md): the middle layer is pooled, the
    learning rate peaks at 1e-4 with warm-up and cosine decay, and ``transform``
    returns the pretrained encoder's embedding beside the tuned one. The paper's
    recipe is ``layer=-1, learning_rate=5e-5, lr_schedule="constant",
    include_pretrained=False``.

    ``fit`` loads the pretrained encoder afresh and fine-tunes it end to end with
    the supervised contrastive (SupCon) loss: encoder output is mean-pooled over real
    frames, L2-normalised, projected to ``projection_dim`` by one linear layer and
    normalised again; hard pairs are mined by the multi-similarity rule; batches
    hold ``samples_per_class`` clips of each of several classes. The projection head
    is dropped after fitting. ``transform`` returns the mean-pooled output of the
    tuned encoder (by default beside the pretrained encoder's), ready for a linear
    classifier (stage 2).

    Parameters
    ----------
    backbone : str, os.PathLike or None, default=None
        Hub id or local directory of a transformers audio encoder (wav2vec2,
        HuBERT, WavLM, data2vec-audio, Whisper). None uses the bundled Whisper
        tiny.en encoder, which works offline.
    sampling_rate : float, default=16000
        Rate of in-memory arrays in ``X``; files are read at their own rate.
        Everything is resampled to the backbone's rate.
    max_duration : float or None, default=10.0
        Seconds. Longer clips are randomly cropped to this in training and split into
        windows whose embeddings are averaged in ``transform``. None: no limit (for
        Whisper, 30 s windows).
    epochs : int, default=5
        Passes over the training clips. 0 returns the pretrained encoder untouched
        (the frozen baseline).
    batch_size : int, default=32
        Clips per training batch; also the most clips of an inference batch (on CPU,
        inference batches also stop at 2,048 clips x frames, where larger ones
        run slower).
    samples_per_class : int, default=4
        Clips of each class in a training batch (at least 2, so every anchor has a
        positive).
    learning_rate : float, default=1e-4
        Peak learning rate of the AdamW optimiser for the encoder (and the head,
        unless ``head_learning_rate`` is set). The paper: 5e-5.
    head_learning_rate : float or None, default=None
        Learning rate of the projection head; None uses ``learning_rate`` (the paper).
    weight_decay : float, default=0.0
        Decoupled weight decay (with 0, AdamW is the paper's Adam).
    lr_schedule : {"constant", "linear", "cosine"}, default="cosine"
        "linear"/"cosine": linear warm-up over the first tenth of the optimiser
        steps, then decay to 0. "constant": ``learning_rate`` throughout (the paper).
    max_steps : int or None, default=None
        Stop after this many optimiser steps (batches), even within an epoch, for
        comparisons at an equal number of updates. None: ``epochs`` full epochs.
    temperature : float, default=0.1
        Temperature of the SupCon loss.
    projection_dim : int, default=256
        Width of the projection head used in training only.
    mining : {"multi-similarity", "none"}, default="multi-similarity"
        Hard pair mining rule; "none" uses all pairs.
    mining_margin : float, default=0.1
        Margin (epsilon) of the multi-similarity miner.
    layer : int or "middle", default="middle"
        Encoder layer whose output is pooled (0 = input of the first transformer
        layer, -1 = final output, "middle" = layer ``num_layers // 2``, 2 of the
        bundled encoder's 4), in training and in ``transform``; layers above it are
        not run. The paper pools the final output (-1).
    freeze_feature_encoder : bool, default=False
        Keep the convolutional feature encoder fixed (the paper tunes end to end).
    gradient_checkpointing : bool, default=False
        Trade compute for memory in training.
    spec_augment : "auto" or bool, default="auto"
        SpecAugment in training (masked time spans and feature channels of the
        wav2vec2 family): "auto" follows the checkpoint's config (on for
        wav2vec2/HuBERT/WavLM/data2vec-audio base checkpoints, as they were
        fine-tuned), True applies the config's masks even where it switches them
        off, False never masks. Masks come from ``random_state``. The Whisper
        encoder has none ("auto" and False do nothing, True is an error).
    augmentation : {"waveform", "log-mel", "both"} or None, default=None
        Random views of the training clips, new at every epoch (never in
        ``transform``): "waveform" perturbs each clip (gain ±6 dB, time shift
        ±0.1 s, white noise at 20-40 dB SNR); "log-mel" masks two frequency bands
        and two time spans of the log-mel input (Whisper only; the wav2vec2 family
        has ``spec_augment``); "both" does the two. None: the clips as they are
        (the paper).
    memory_size : int or None, default=None
        Keep the projections of the last ``memory_size`` training clips (a
        cross-batch memory) and compare each anchor with them too, for more
        positives and negatives per step than one batch holds. None: in-batch pairs
        only (the paper).
    ce_weight : float, default=0.0
        Add this weight times the cross-entropy of a linear head on the pooled
        embeddings (trained with the encoder, dropped after fit) to the SupCon loss.
        0: SupCon alone (the paper).
    label_smoothing : float, default=0.0
        Label smoothing of that cross-entropy term (only with ``ce_weight > 0``).
    freeze_layers : int, default=0
        Keep the front end and the lowest ``freeze_layers`` transformer layers as
        pretrained (partial fine-tuning). 0: tune the whole encoder (the paper).
    include_pretrained : bool, default=True
        Keep a copy of the pretrained encoder and have ``transform`` return its
        pooled embedding beside the tuned one (``2 * hidden_size`` features, the
        pretrained first), so that a linear classifier sees both views: what tuning
        on few clips learned, and what it may have lost (docs/benchmarks.md: +1.8
        points on 128-way GM few-shot, +2.5 on FSDD digits by unseen speakers).
        The validation score and callbacks see the same ``[pretrained, tuned]``
        features during the fit. Costs a second encoder pass in ``transform`` and
        twice the weights in a save. Ignored with ``epochs=0``. False: the tuned
        embedding alone (the paper).
    validation_fraction : float or None, default=None
        Fraction of the training clips held out (stratified) to score each epoch, as
        with ``fit(..., validation_data=...)``. None: no validation.
    n_iter_no_change : int or None, default=None
        With a validation set, stop after this many epochs without a better score and
        keep the weights of the best epoch. None: train all ``epochs``.
    keep_best : bool, default=False
        With a validation set, also score the pretrained encoder as epoch 0 and end
        with the weights of the best-scoring epoch (first on ties), so that the fit
        never ends below the pretrained encoder on the validation clips.
    callbacks : list of Callback or None, default=None
        Called in training (:mod:`skaudio_confit.callbacks`): e.g.
        ``EarlyStopping``, ``EpochScoring`` with your own probe, ``PrintLog``. Each fit
        works on copies of them. Not stored by ``save`` (a loaded model has None).
    device : str, default="auto"
        "auto" (CUDA if available, with bf16 autocast; else CPU), "cpu", "cuda:N".
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
        Seeds batches, crops, dropout and the head. Same value, same result on CPU.
    verbose : int, default=1
        0 silences progress bars and per-epoch lines.

    Attributes
    ----------
    backbone_ : AudioBackbone
        The fine-tuned encoder; exactly the backbone's parameters, no head.
    pretrained_backbone_ : AudioBackbone
        The untouched pretrained encoder, only with ``include_pretrained=True``
        (and ``epochs > 0``).
    classes_ : ndarray
        Class labels seen in ``fit``.
    history_ : list of dict
        Per epoch: ``loss``, mined ``positive_pairs``/``negative_pairs``,
        ``batches``, ``steps`` (optimiser steps so far), ``seconds`` and, with a
        validation set, ``valid_accuracy``, and what callbacks add; with ``keep_best``
        (or a callback's ``score_pretrained``), first an epoch-0 record of the
        pretrained encoder.
    n_features_in_ : int
        Number of samples per clip, only when ``fit`` got a 2-D array.

    Notes
    -----
    Subclasses may change what is trained by overriding ``_make_objective``,
    ``_batch_plan`` and ``_validation_score`` (user guide, "Subclassing").

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from skaudio_confit import PairTuneTransformer
    >>> from skaudio_confit.datasets import load_spoken_digits
    >>> X, y = load_spoken_digits(target="speaker", return_X_y=True)
    >>> model = make_pipeline(
    ...     PairTuneTransformer(sampling_rate=8000, epochs=1, random_state=0, verbose=0),
    ...     LogisticRegression(max_iter=1000),
    ... )
    >>> model.fit(X[::30], y[::30]).score(X[1::30], y[1::30]) > 0.5  # doctest: +SKIP
    True
    """

    _needs_positive_pairs = True
    _keeps_pretrained = True  # pretrained_backbone_ (include_pretrained) is saved too

    _parameter_constraints = {
        **ENCODER_PARAMETER_CONSTRAINTS,
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "samples_per_class": [Interval(Integral, 2, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "mining": [StrOptions(set(MINING_OPTIONS))],
        "mining_margin": [Interval(Real, 0, None, closed="left")],
        "augmentation": [StrOptions(set(AUGMENTATION_OPTIONS)), None],
        "memory_size": [Interval(Integral, 1, None, closed="left"), None],
        "ce_weight": [Interval(Real, 0, None, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "freeze_layers": [Interval(Integral, 0, None, closed="left")],
        "include_pretrained": ["boolean"],
    }

    def __init__(
        self,
        backbone=None,
        *,
        sampling_rate=16000,
        max_duration=10.0,
        epochs=5,
        batch_size=32,
        samples_per_class=4,
        learning_rate=1e-4,
        head_learning_rate=None,
        weight_decay=0.0,
        lr_schedule="cosine",
        max_steps=None,
        temperature=0.1,
        projection_dim=256,
        mining="multi-similarity",
        mining_margin=0.1,
        layer="middle",
        freeze_feature_encoder=False,
        gradient_checkpointing=False,
        spec_augment="auto",
        augmentation=None,
        memory_size=None,
        ce_weight=0.0,
        label_smoothing=0.0,
        freeze_layers=0,
        include_pretrained=True,
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
        self.samples_per_class = samples_per_class
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.max_steps = max_steps
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.mining = mining
        self.mining_margin = mining_margin
        self.layer = layer
        self.freeze_feature_encoder = freeze_feature_encoder
        self.gradient_checkpointing = gradient_checkpointing
        self.spec_augment = spec_augment
        self.augmentation = augmentation
        self.memory_size = memory_size
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.freeze_layers = freeze_layers
        self.include_pretrained = include_pretrained
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.keep_best = keep_best
        self.callbacks = callbacks
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    _frozen_fit_without_labels = True

    def fit(self, X, y=None, validation_data=None):
        """Fine-tune the pretrained encoder on labelled clips.

        Parameters
        ----------
        X : list of array-like or path, or ndarray of shape (n_clips, n_samples)
            Clips of any length (arrays at ``sampling_rate``, or audio files).
        y : array-like of shape (n_clips,) or None
            Class labels (strings, integers or a mix); at least two classes. Only
            with ``epochs=0`` (the frozen encoder, nothing trained) may it be None;
            ``classes_`` is then not set.
        validation_data : tuple (X_val, y_val), default=None
            Held-out clips scored after every epoch (``valid_accuracy`` in
            ``history_``: nearest-centroid accuracy with the class centroids of the
            training clips' embeddings). With ``n_iter_no_change``, training stops
            early and keeps the best epoch. In a Pipeline pass it as
            ``pairtune__validation_data``.

        Returns
        -------
        self : PairTuneTransformer
        """
        beside = None
        if self.include_pretrained and self.epochs > 0:
            # Loaded again rather than copied before training, and only when needed
            # (after training, or for the first per-epoch embeddings), so that training
            # alone holds one encoder in memory; loading must not draw from the
            # caller's stream.
            def load_copy():
                with forked_torch_rng():
                    return self._pretrained_backbone().eval()

            beside = FixedBeside(load_copy, lambda copy, waves: self._embed_waves(
                copy, waves, resolve_device(self.device)))
        backbone, _, classes, history = self._fit_encoder(
            X, y, validation_data=validation_data, desc="PairTune", beside=beside)
        pretrained = None if beside is None else beside.backbone
        # Fitted state is set only now, so a failed fit leaves a fitted model as it was.
        self.backbone_ = backbone
        if pretrained is None:
            self.__dict__.pop("pretrained_backbone_", None)
        else:
            self.pretrained_backbone_ = pretrained
        if classes is None:  # the frozen encoder fitted without labels
            self.__dict__.pop("classes_", None)
        else:
            self.classes_ = classes
        self.history_ = history
        self._record_input_shape(X)
        return self

    def _make_objective(self, backbone, n_classes):
        """The SupCon objective with its projection head (dropped after fit); with
        ``memory_size`` or ``ce_weight``, the variant that adds a cross-batch memory or
        a cross-entropy term."""
        args = (backbone.hidden_size, self.projection_dim, self.temperature, self.mining,
                self.mining_margin)
        if self.memory_size is None and self.ce_weight == 0:
            return SupConObjective(*args, head_learning_rate=self.head_learning_rate)
        return SupConVariantObjective(
            *args, head_learning_rate=self.head_learning_rate, n_classes=n_classes,
            memory_size=self.memory_size, ce_weight=self.ce_weight,
            label_smoothing=self.label_smoothing,
        )

    def _pretrained_backbone(self):
        backbone = super()._pretrained_backbone()
        freeze_lower_layers(backbone, self.freeze_layers)
        return backbone

    def _inference_backbone(self):
        """The tuned encoder, with the pretrained one beside it if it was kept."""
        pretrained = getattr(self, "pretrained_backbone_", None)
        if pretrained is None:
            return self.backbone_
        return SideBySideBackbones(pretrained, self.backbone_)

    def _training_augmentation(self, backbone):
        """The ``augmentation`` of training clips and batches (None when off)."""
        return make_augmentation(self.augmentation, backbone)

    def _batch_plan(self, codes):
        """Class-balanced batches: ``samples_per_class`` clips of each class drawn."""
        return lambda rng: class_balanced_batches(codes, self.batch_size,
                                                  self.samples_per_class, rng)

    def _validation_score(self, state):
        """Nearest-centroid accuracy: no classifier exists in stage 1."""
        return nearest_centroid_accuracy(state.train_embeddings(), state.train_codes,
                                         state.valid_embeddings(), state.valid_codes)

    def transform(self, X):
        """Mean-pooled embeddings of the tuned encoder.

        Parameters
        ----------
        X : list of array-like or path, or ndarray of shape (n_clips, n_samples)

        Returns
        -------
        embeddings : ndarray of shape (n_clips, n_features), dtype float32
            ``n_features`` is the encoder's ``hidden_size``, twice that with
            ``include_pretrained`` (pretrained features first). Independent of
            batch composition and order.
        """
        return self._embed(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags
