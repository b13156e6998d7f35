"""What every estimator built on a fine-tuned audio encoder shares."""

from __future__ import annotations

import copy
import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._input import as_clip_list, expected_length, load_waveforms
from ._windows import max_samples
from ._device import resolve_device
from ._distributed import broadcast_from_rank0, process_group
from ._labels import check_targets, encode_labels
from ._pooling import embed_waveforms
from ._inference import embed_stream
from ._random import forked_torch_rng, seeds_from
from ._threads import thread_policy
from ._training import train_encoder
from .backbones import load_backbone
from .callbacks import EarlyStopping, TrainingState

# Parameters both estimators share, validated alike (scikit-learn's constraints).
ENCODER_PARAMETER_CONSTRAINTS = {
    "backbone": [None, str, os.PathLike],
    "sampling_rate": [Interval(Real, 0, None, closed="neither")],
    "max_duration": [Interval(Real, 0, None, closed="neither"), None],
    "epochs": [Interval(Integral, 0, None, closed="left")],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "head_learning_rate": [Interval(Real, 0, None, closed="neither"), None],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "lr_schedule": [StrOptions({"constant", "linear", "cosine"})],
    "max_steps": [Interval(Integral, 1, None, closed="left"), None],
    "layer": [Integral, StrOptions({"middle"})],
    "freeze_feature_encoder": ["boolean"],
    "gradient_checkpointing": ["boolean"],
    "spec_augment": [StrOptions({"auto"}), "boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
    "keep_best": ["boolean"],
    "callbacks": [list, tuple, None],
    "device": [str],
    "n_threads": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}

# Clips sorted by length together by transform/predict (then read a batch at a time):
# enough to batch clips of similar length, and a bound on what is planned ahead.
_STREAM_CLIPS = 512

_CALLBACK_HOOKS = ("on_train_begin", "on_epoch_end", "on_train_end")


class AudioEncoderMixin:
    """What every estimator built on a fine-tuned audio encoder shares.

    Loading the input (one audio layer for all), loading the pretrained backbone,
    the fit (validation split, callbacks, the shared training loop) and mean-pooled
    embeddings of a fitted ``backbone_``.

    Subclasses say what is trained through three methods, which a user's subclass
    may override (docs/user-guide.md, "Subclassing"):

    - ``_make_objective(backbone, n_classes)``: a fresh ``torch.nn.Module`` mapping
      pooled encoder output and class codes to ``(loss, stats)`` (``stats``: a dict
      of numbers for the epoch record); its parameters (a head) are trained too, at
      the rates its optional ``param_groups()`` gives.
    - ``_batch_plan(codes)``: a function ``plan(rng) -> list of index arrays``, the
      batches of one epoch, drawn from the numpy Generator ``rng``.
    - ``_validation_score(state)``: the ``valid_accuracy`` recorded after each epoch
      when there are validation clips (higher is better), from a
      :class:`~skaudio_confit.callbacks.TrainingState`.
    """

    # Whether training needs two clips of a class in a batch (contrastive objectives).
    _needs_positive_pairs = False
    # Whether fit(X) with y=None and epochs=0 returns the frozen encoder (a transformer
    # can; a classifier needs its classes).
    _frozen_fit_without_labels = False

    def _load_input(self, X, target_rate):
        import inspect

        default = inspect.signature(type(self).__init__).parameters["sampling_rate"].default
        return load_waveforms(X, sampling_rate=self.sampling_rate, target_rate=target_rate,
                              warn_file_rates=self.sampling_rate != default)

    def _record_input_shape(self, X):
        # n_features_in_ only means something for a 2-D array of equal-length clips.
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype != object:
            self.n_features_in_ = X.shape[1]
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_

    def _check_input_shape(self, X):
        n_expected = getattr(self, "n_features_in_", None)
        if (n_expected is not None and isinstance(X, np.ndarray) and X.ndim == 2
                and X.dtype != object and X.shape[1] != n_expected):
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{n_expected} features as input."
            )

    def _pretrained_backbone(self):
        backbone = load_backbone(self.backbone)
        self._check_backbone(backbone)
        backbone.set_spec_augment(self.spec_augment)
        if self.freeze_feature_encoder:
            backbone.freeze_feature_encoder()
        return backbone

    def _check_backbone(self, backbone):
        """Raise ``ValueError`` if ``layer`` or ``max_duration`` do not suit ``backbone``."""
        backbone.check_layer(self._layer_of(backbone))
        limit = getattr(backbone, "max_samples", None)
        if limit is not None and self.max_duration is not None:
            if self.max_duration * backbone.sampling_rate > limit:
                raise ValueError(
                    f"max_duration={self.max_duration} exceeds what this backbone can read "
                    f"in one window ({limit / backbone.sampling_rate:.0f} s)."
                )

    def _layer_of(self, backbone):
        """The layer pooled: ``layer``, or for "middle" ``num_layers // 2``."""
        return backbone.num_layers // 2 if self.layer == "middle" else self.layer

    def _window_samples(self, backbone):
        """Window length: max_duration, or the backbone's limit if it has one."""
        limit = getattr(backbone, "max_samples", None)
        window = max_samples(self.max_duration, backbone.sampling_rate)
        return limit if window is None else window

    @property
    def _n_features_out(self):
        # Read by get_feature_names_out; derived so that no extra state is stored.
        return self._inference_backbone().hidden_size

    def _inference_backbone(self):
        """What ``transform`` runs: the fitted encoder (subclasses may add to it)."""
        return self.backbone_

    def _embed(self, X):
        """Pooled embeddings of ``X`` from the fitted encoder, with a progress bar.

        The input is read, resampled and featurized a batch at a time (clips sorted
        by length in chunks of ``_STREAM_CLIPS``) by a background thread while this
        one runs the encoder
        (:mod:`._inference`), so memory stays flat however many clips (or files) ``X``
        holds; torch's threads follow ``n_threads`` (:mod:`._threads`: with None, at
        most torch's setting, fewer while other processes hold cores; the embeddings
        do not depend on the count).
        """
        from tqdm.auto import tqdm

        check_is_fitted(self)
        # Parameters may have changed since fit (set_params) or come from a file.
        self._validate_params()
        self._check_backbone(self.backbone_)
        self._check_input_shape(X)
        clips = as_clip_list(X)
        if len(clips) == 0:
            raise ValueError("X is empty: at least one clip is required.")
        device = resolve_device(self.device)
        backbone = self._inference_backbone().to(device)

        def load_chunk(chunk, indices):
            return load_waveforms(chunk, sampling_rate=self.sampling_rate,
                                  target_rate=backbone.sampling_rate, indices=indices)

        def length_of(clip):
            return expected_length(clip, sampling_rate=self.sampling_rate,
                                   target_rate=backbone.sampling_rate)

        with tqdm(total=len(clips), desc="embed", unit="clip", disable=not self.verbose,
                  leave=False) as bar, thread_policy(self.n_threads, inference=True) as threads:
            return embed_stream(
                backbone, clips, load_chunk=load_chunk, chunk_size=_STREAM_CLIPS,
                layer=self._layer_of(backbone), batch_size=self.batch_size,
                max_samples=self._window_samples(backbone), device=device,
                length_of=length_of, threads=threads, progress=bar,
            )

    def _fit_encoder(self, X, y, *, validation_data, desc, beside=None):
        """Load input and the pretrained backbone, then train under ``_make_objective``.

        The validation clips are ``validation_data`` if given, else a
        ``validation_fraction`` of ``X``. ``beside`` (a :class:`._stacked.FixedBeside`)
        puts a fixed encoder's embeddings before the trained one's in what callbacks
        and the validation score see, as ``transform`` will. Returns ``(backbone,
        objective, classes, history)``; nothing is stored on ``self``, so that a failed
        fit leaves a fitted estimator intact.
        """
        self._validate_params()
        as_clip_list(X)  # input-kind errors before the (slower) backbone load
        if validation_data is not None and self.validation_fraction is not None:
            raise ValueError("Pass validation_data or set validation_fraction, not both.")
        self._check_callbacks()
        # Weight initialisation while loading and building the head draws from torch's
        # global generator: keep the caller's state (training forks and seeds its own).
        with forked_torch_rng():
            backbone = self._pretrained_backbone()
        waves = self._load_input(X, backbone.sampling_rate)
        if y is None and self.epochs == 0 and self._frozen_fit_without_labels:
            # The frozen baseline trains nothing, so it needs no labels.
            return backbone.eval(), None, None, []
        y = check_targets(len(waves), y)
        classes, codes = encode_labels(y)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got "
                f"{len(classes)} class{'es' if len(classes) != 1 else ''}."
            )
        device = resolve_device(self.device)
        seed, rng = seeds_from(self.random_state)
        with forked_torch_rng():
            objective = self._make_objective(backbone, len(classes))
        history = []
        if self.epochs > 0:
            train_idx, valid_idx = self._split_validation(len(waves), codes, rng)
            train_waves, train_codes = [waves[i] for i in train_idx], codes[train_idx]
            if self._needs_positive_pairs and np.bincount(train_codes).max() < 2:
                warnings.warn(
                    f"Every class has a single training clip: {type(self).__name__}'s "
                    "contrastive loss then has no positive pair of two different clips "
                    "(only a clip and its own copy), so it cannot learn what the clips of "
                    "a class share. Give classes at least 2 clips, or use "
                    "FineTuneClassifier.", UserWarning, stacklevel=3,
                )
            valid_waves = valid_codes = None
            if validation_data is not None:
                valid_waves, valid_codes = self._validation_clips(validation_data, classes,
                                                                  backbone)
            elif valid_idx is not None:
                valid_waves, valid_codes = [waves[i] for i in valid_idx], codes[valid_idx]

            def embed(clips):
                return self._embed_waves(backbone, clips, device)

            state = TrainingState(
                backbone=backbone, objective=objective, classes=classes,
                train_waves=train_waves, train_codes=train_codes, valid_waves=valid_waves,
                valid_codes=valid_codes, embed=embed if beside is None else beside.wrap(embed),
            )
            history = self._train(state, seed=seed, rng=rng, device=device,
                                  desc=self._fit_label(desc, len(train_waves)))
        return backbone.eval(), objective.eval(), classes, history

    def _check_callbacks(self):
        """Raise ``TypeError`` for an item of ``callbacks`` with no callback method."""
        for i, callback in enumerate(self.callbacks or ()):
            if not any(callable(getattr(callback, hook, None)) for hook in _CALLBACK_HOOKS):
                raise TypeError(
                    f"callbacks[{i}] is a {type(callback).__name__}, which has none of "
                    f"the callback methods {', '.join(_CALLBACK_HOOKS)}; see "
                    "skaudio_confit.callbacks."
                )

    def _fit_callbacks(self, has_validation):
        """This fit's callbacks: copies of ``callbacks``, then the compatibility one.

        Copies, so that what a callback records during a fit never lands on the
        user's objects. ``n_iter_no_change`` and ``keep_best`` are an
        :class:`~skaudio_confit.callbacks.EarlyStopping`, used (as they always were)
        only when there are validation clips.
        """
        callbacks = [copy.copy(callback) for callback in self.callbacks or ()]
        if has_validation and (self.n_iter_no_change is not None or self.keep_best):
            callbacks.append(EarlyStopping(patience=self.n_iter_no_change,
                                           score_pretrained=self.keep_best))
        return callbacks

    def _train(self, state, *, seed, rng, device, desc):
        """Run the callbacks around the shared training loop; return the history."""
        callbacks = self._fit_callbacks(state.has_validation)

        def call(callback, hook, *args):
            method = getattr(callback, hook, None)
            if method is None:
                return None
            try:
                return method(self, *args, state)
            except Exception as exc:
                exc.add_note(f"(raised by callback {type(callback).__name__} in {hook})")
                raise

        def epoch_end(record):
            state._weights_changed()
            if state.has_validation:
                record["valid_accuracy"] = self._shared_validation_score(state)
            state.history.append(record)
            # Every callback sees every epoch, even after one asked to stop.
            stops = [bool(call(cb, "on_epoch_end", record)) for cb in callbacks]
            return any(stops)

        for callback in callbacks:
            call(callback, "on_train_begin")
        stop = False
        if any(getattr(cb, "score_pretrained", False) for cb in callbacks):
            # The pretrained weights as epoch 0, so that they compete with every epoch.
            start = time.perf_counter()
            record = {"epoch": 0, "loss": None, "batches": 0, "steps": 0}
            stop = epoch_end(record)
            record["seconds"] = time.perf_counter() - start
            if process_group() is not None:  # rank 0 decides, as after every epoch
                stop = bool(broadcast_from_rank0([int(stop)])[0])
        if not stop:
            train_encoder(
                state.backbone, state.objective, state.train_waves, state.train_codes,
                batch_plan=self._batch_plan(state.train_codes), epochs=self.epochs,
                learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                lr_schedule=self.lr_schedule, max_steps=self.max_steps,
                layer=self._layer_of(state.backbone),
                max_samples=max_samples(self.max_duration, state.backbone.sampling_rate),
                device=device, gradient_checkpointing=self.gradient_checkpointing,
                seed=seed, rng=rng, on_epoch_end=epoch_end, verbose=self.verbose, desc=desc,
                n_threads=self.n_threads,
                augment=self._training_augmentation(state.backbone),
            )
        for callback in callbacks:
            call(callback, "on_train_end")
        return state.history

    def _training_augmentation(self, backbone):
        """Random perturbation of the training clips and batches, or None (no
        augmentation; :class:`~skaudio_confit.PairTuneTransformer` has ``augmentation``)."""
        return None

    def _shared_validation_score(self, state):
        """``_validation_score``; under torch.distributed rank 0's, broadcast to all.

        Every rank then keeps the same best epoch and stops at the same time (the
        weights are the same on every rank).
        """
        group = process_group()
        if group is None:
            return float(self._validation_score(state))
        score = float(self._validation_score(state)) if group[0] == 0 else 0.0
        return float(broadcast_from_rank0([score], dtype=torch.float64)[0])

    def _fit_label(self, name, n_clips):
        """How progress lines name this fit: the parameters that differ from the
        defaults and the number of clips, so that the fits of a grid search or a
        cross-validation can be told apart."""
        from sklearn.utils._pprint import _changed_params

        changed = {k: v for k, v in _changed_params(self).items()
                   if k not in ("backbone", "callbacks", "device", "epochs", "verbose")}
        shown = ", ".join(f"{k}={v!r}" if not hasattr(v, "shape") else f"{k}=..."
                          for k, v in changed.items())
        return f"{name}({shown}) on {n_clips} clips"

    def _validation_clips(self, validation_data, classes, backbone):
        """Waves and class codes of a user's ``(X_val, y_val)``."""
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val).")
        waves = self._load_input(validation_data[0], backbone.sampling_rate)
        labels = check_targets(len(waves), validation_data[1])
        return waves, encode_labels(labels, classes=classes, name="validation_data")[1]

    def _embed_waves(self, backbone, waves, device, progress=None):
        backbone.to(device)
        # Torch threads follow n_threads and the Dask/loky worker's budget; as in
        # transform, None follows the load here (at most the training's count), since
        # the embeddings do not depend on the thread count.
        with thread_policy(self.n_threads, inference=True) as threads:
            return embed_waveforms(
                backbone, waves, layer=self._layer_of(backbone), batch_size=self.batch_size,
                max_samples=self._window_samples(backbone), device=device, progress=progress,
                threads=threads,
            )

    def _split_validation(self, n_clips, codes, rng):
        """Stratified train/validation indices when ``validation_fraction`` is set."""
        from sklearn.model_selection import train_test_split

        indices = np.arange(n_clips)
        if self.validation_fraction is None:
            return indices, None
        seed = int(rng.integers(2**31 - 1))
        try:
            return train_test_split(indices, test_size=self.validation_fraction,
                                    stratify=codes, random_state=seed)
        except ValueError as exc:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} cannot hold out clips of "
                f"every class ({exc}); use a larger fraction, more clips, or None."
            ) from None


def nearest_centroid_accuracy(train_embeddings, train_codes, test_embeddings, test_codes):
    """Accuracy of assigning each test embedding to the nearest class centroid (cosine).

    Centroids are the means of the L2-normalised training embeddings of each class.
    Needs no trained head, so it scores contrastive embeddings during training.
    """

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)

    train, test = unit(train_embeddings), unit(test_embeddings)
    classes = np.unique(train_codes)
    centroids = unit(np.stack([train[train_codes == c].mean(axis=0) for c in classes]))
    return float(np.mean(classes[(test @ centroids.T).argmax(axis=1)] == test_codes))
