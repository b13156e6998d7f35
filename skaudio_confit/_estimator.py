"""What every estimator built on a fine-tuned audio encoder shares."""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._audio import check_targets
from ._input import as_clip_list, load_waveforms
from ._windows import max_samples
from ._device import resolve_device
from ._objectives import encode_labels
from ._pooling import embed_waveforms
from ._inference import embed_stream
from ._threads import thread_policy
from ._training import ValidationMonitor, seeds_from, train_encoder
from .backbones import load_backbone

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
    "device": [str],
    "n_threads": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}

# Clips read and embedded at a time by transform/predict: bounds memory on long inputs
# while leaving enough clips to batch by similar length.
_STREAM_CLIPS = 512


class AudioEncoderMixin:
    """What every estimator built on a fine-tuned audio encoder shares.

    Loading the input (one audio layer for all), loading the pretrained backbone,
    and mean-pooled embeddings of a fitted ``backbone_``.
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
        return self.backbone_.hidden_size

    def _embed(self, X):
        """Pooled embeddings of ``X`` from the fitted encoder, with a progress bar.

        The input is read, resampled and featurized in chunks of ``_STREAM_CLIPS``
        clips by a background thread while this one runs the encoder
        (:mod:`._inference`), so memory stays flat however many clips (or files) ``X``
        holds; torch's threads follow ``n_threads`` (:mod:`._threads`).
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
        backbone = self.backbone_.to(device)

        def load_chunk(chunk, first_index):
            return load_waveforms(chunk, sampling_rate=self.sampling_rate,
                                  target_rate=backbone.sampling_rate, first_index=first_index)

        with tqdm(total=len(clips), desc="embed", unit="clip", disable=not self.verbose,
                  leave=False) as bar, thread_policy(self.n_threads) as threads:
            return embed_stream(
                backbone, clips, load_chunk=load_chunk, chunk_size=_STREAM_CLIPS,
                layer=self._layer_of(backbone), batch_size=self.batch_size,
                max_samples=self._window_samples(backbone), device=device,
                threads=threads, progress=bar,
            )

    def _fit_encoder(self, X, y, *, validation_data, make_objective, batch_plan, score_fn,
                     min_classes, desc):
        """Load input and the pretrained backbone, then train under ``make_objective``.

        ``batch_plan(codes) -> plan`` and ``score_fn(backbone, objective, valid_waves,
        valid_codes, train_waves, train_codes, device) -> float`` (validation score,
        higher is better) adapt the shared loop to one estimator. The validation clips
        are ``validation_data`` if given, else a ``validation_fraction`` of ``X``.
        Returns ``(backbone, objective, classes, history)``; nothing is stored on
        ``self``, so that a failed fit leaves a fitted estimator intact.
        """
        self._validate_params()
        as_clip_list(X)  # input-kind errors before the (slower) backbone load
        if validation_data is not None and self.validation_fraction is not None:
            raise ValueError("Pass validation_data or set validation_fraction, not both.")
        # Weight initialisation while loading and building the head draws from torch's
        # global generator: keep the caller's state (training forks and seeds its own).
        with torch.random.fork_rng(devices=[]):
            backbone = self._pretrained_backbone()
        waves = self._load_input(X, backbone.sampling_rate)
        if y is None and self.epochs == 0 and self._frozen_fit_without_labels:
            # The frozen baseline trains nothing, so it needs no labels.
            return backbone.eval(), None, None, []
        y = check_targets(len(waves), y)
        classes, codes = encode_labels(y)
        if len(classes) < min_classes:
            raise ValueError(
                f"{type(self).__name__} needs at least {min_classes} classes in y, got "
                f"{len(classes)} class{'es' if len(classes) != 1 else ''}."
            )
        device = resolve_device(self.device)
        seed, rng = seeds_from(self.random_state)
        with torch.random.fork_rng(devices=[]):
            objective = make_objective(backbone, len(classes))
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
            if validation_data is not None:
                valid_waves, valid_codes = self._validation_clips(validation_data, classes,
                                                                  backbone)
            elif valid_idx is not None:
                valid_waves, valid_codes = [waves[i] for i in valid_idx], codes[valid_idx]
            monitor, callbacks = None, ()
            if validation_data is not None or valid_idx is not None:
                monitor = ValidationMonitor(
                    lambda: score_fn(backbone, objective, valid_waves, valid_codes,
                                     train_waves, train_codes, device),
                    [backbone, objective], patience=self.n_iter_no_change,
                    keep_best=self.keep_best,
                )
                callbacks = (monitor,)
                if self.keep_best:
                    history.append(monitor.score_start())
            history += train_encoder(
                backbone, objective, train_waves, train_codes,
                batch_plan=batch_plan(train_codes), epochs=self.epochs,
                learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                lr_schedule=self.lr_schedule, max_steps=self.max_steps,
                layer=self._layer_of(backbone),
                max_samples=max_samples(self.max_duration, backbone.sampling_rate),
                device=device, gradient_checkpointing=self.gradient_checkpointing,
                seed=seed, rng=rng, callbacks=callbacks, verbose=self.verbose,
                n_threads=self.n_threads,
                desc=self._fit_label(desc, len(train_waves)),
            )
            if monitor is not None:
                monitor.restore_best()
        return backbone.eval(), objective.eval(), classes, history

    def _fit_label(self, name, n_clips):
        """How progress lines name this fit: the parameters that differ from the
        defaults and the number of clips, so that the fits of a grid search or a
        cross-validation can be told apart."""
        from sklearn.utils._pprint import _changed_params

        changed = {k: v for k, v in _changed_params(self).items()
                   if k not in ("backbone", "device", "epochs", "verbose")}
        shown = ", ".join(f"{k}={v!r}" if not hasattr(v, "shape") else f"{k}=..."
                          for k, v in changed.items())
        return f"{name}({shown}) on {n_clips} clips"

    def _validation_clips(self, validation_data, classes, backbone):
        """Waves and class codes of a user's ``(X_val, y_val)``."""
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val).")
        waves = self._load_input(validation_data[0], backbone.sampling_rate)
        labels = check_targets(len(waves), validation_data[1])
        lookup = {label: code for code, label in enumerate(classes.tolist())}
        unknown = sorted({str(v) for v in labels.tolist() if v not in lookup})
        if unknown:
            raise ValueError(
                f"validation_data has labels not seen in y: {', '.join(unknown[:5])}."
            )
        return waves, np.array([lookup[v] for v in labels.tolist()])

    def _embed_waves(self, backbone, waves, device, progress=None):
        backbone.to(device)
        # Torch threads follow n_threads and the Dask/loky worker's budget.
        with thread_policy(self.n_threads):
            return embed_waveforms(
                backbone, waves, layer=self._layer_of(backbone), batch_size=self.batch_size,
                max_samples=self._window_samples(backbone), device=device, progress=progress,
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
