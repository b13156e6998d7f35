"""Stage 2 of AudioConFit: a linear classification head on fixed-size embeddings.

:class:`LinearHeadClassifier` is a skorch ``NeuralNetClassifier`` preset: one
``torch.nn.Linear`` layer trained with softmax cross-entropy and Adam. It takes the
embeddings of a stage-1 transformer (or any 2-D float array), works out the input
dimension and the classes from ``fit``, and behaves like a scikit-learn classifier
(``clone``, ``GridSearchCV``, pickling, ``check_is_fitted``), so that the paper's
grid search over learning rate and batch size is an ordinary ``GridSearchCV``.
"""

from __future__ import annotations

import contextlib
from numbers import Integral, Real
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    Options,
    validate_parameter_constraints,
)
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring
from skorch.dataset import Dataset
from skorch.utils import to_numpy
from torch.utils.data import DataLoader

from ._device import resolve_device

__all__ = ["LinearHead", "LinearHeadClassifier"]


class LinearHead(torch.nn.Module):
    """One fully connected layer mapping an embedding to class logits.

    Parameters
    ----------
    in_features : int
        Embedding dimension.
    n_classes : int
        Number of classes (output logits).
    """

    def __init__(self, in_features, n_classes):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, n_classes)

    def forward(self, X):
        return self.linear(X)


def _softmax_float64(logits):
    """Softmax in float64, so that probability rows sum to one to machine precision."""
    return torch.softmax(logits.to(torch.float64), dim=-1)


def _code_accuracy(net, X, y):
    """Accuracy on the integer class codes skorch trains on (a skorch scorer).

    With a ``train_split``, skorch's validation callbacks pass a ``Dataset`` and the
    encoded targets; ``predict`` expects arrays and returns the original labels.
    """
    y_pred = net.forward(X).argmax(dim=-1)
    return float(np.mean(to_numpy(y_pred) == to_numpy(y)))


class LinearHeadClassifier(NeuralNetClassifier):
    """Linear classification head on fixed-size embeddings (AudioConFit stage 2).

    A skorch :class:`~skorch.classifier.NeuralNetClassifier` preset: a single
    linear layer (:class:`LinearHead`) trained with softmax cross-entropy and Adam
    on the whole training set (no internal validation split). The input dimension
    (``module__in_features``) and the number of classes (``module__n_classes``) are
    taken from the data at ``fit``, and labels may be of any type (strings too):
    ``classes_`` holds the original labels and ``predict`` returns them.

    Every skorch parameter (``callbacks``, ``optimizer__weight_decay``,
    ``module__*``, ...) is accepted and behaves as in skorch; the defaults below
    are the ones that differ from skorch's.

    Parameters
    ----------
    module : type or callable, default=LinearHead
        Called as ``module(in_features=..., n_classes=..., **module__params)`` at
        ``fit``; ``in_features`` and ``n_classes`` are filled in from the data
        unless given as ``module__in_features`` / ``module__n_classes``. It must
        return logits of shape (n_samples, n_classes).
    criterion : type, default=torch.nn.CrossEntropyLoss
        Loss on the logits and integer class codes.
    optimizer : type, default=torch.optim.Adam
        Optimizer class; its keyword arguments go in ``optimizer__*``.
    lr : float, default=1e-3
        Learning rate.
    max_epochs : int, default=100
        Number of passes over the training data.
    batch_size : int, default=32
        Mini-batch size for training and prediction; -1 means the whole data set.
    iterator_train, iterator_valid : type, default=torch.utils.data.DataLoader
        As in skorch.
    dataset : type, default=skorch.dataset.Dataset
        As in skorch.
    train_split : callable or None, default=None
        None trains on all of ``X``; pass e.g. ``skorch.dataset.ValidSplit(5)``
        to hold out a validation fold, whose ``valid_loss`` and ``valid_acc``
        are recorded in ``history_`` (e.g. for ``skorch.callbacks.EarlyStopping``).
        Scoring callbacks of your own get a skorch ``Dataset`` and the targets
        encoded as indices into ``classes_``, so use a callable scorer such as
        ``lambda net, X, y: ...`` working on ``net.forward(X)``.
    callbacks : list or None, default=None
        As in skorch.
    predict_nonlinearity : callable, "auto" or None, default="auto"
        "auto" applies a (float64) softmax to the logits in ``predict_proba``.
    warm_start : bool, default=False
        If True, a second ``fit`` continues training the fitted head (same
        features and classes) instead of starting anew.
    verbose : int, default=0
        1 prints skorch's per-epoch table.
    device : str, torch.device or None, default="auto"
        "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N". "auto"
        is kept as is by ``get_params``/``clone`` and resolved when the head is
        initialised (see ``device_``) and again when a pickled head is loaded.
        None leaves tensors where they are (skorch semantics).
    compile : bool, default=False
        Wrap the module with ``torch.compile`` (skorch).
    use_caching : bool or "auto", default="auto"
        As in skorch.
    torch_load_kwargs : dict or None, default=None
        As in skorch.
    classes : array-like or None, default=None
        All class labels, if ``y`` at ``fit``/``partial_fit`` may not show them
        all. None: the labels found in ``y``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation and the shuffling of mini-batches, so the
        same value gives the same head on CPU (CUDA kernels may still differ in
        the last bits). The global torch random state is left untouched. None
        draws from the global torch random state.
    iterator_train__shuffle : bool, default=True
        Shuffle the training data every epoch.
    **kwargs
        Further skorch parameters with a prefix (``module__*``,
        ``optimizer__*``, ``criterion__*``, ``iterator_train__*``,
        ``iterator_valid__*``, ``callbacks__*``, ``dataset__*``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_features_in_ : int
        Embedding dimension seen at ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` at ``fit`` was a DataFrame with string names.
    module_ : torch.nn.Module
        The trained head.
    device_ : str or None
        The device the head lives on ("cpu", "cuda", ...), resolved from ``device``.
    history_ : skorch.history.History
        Per-epoch ``train_loss`` (and validation scores with a ``train_split``).

    See Also
    --------
    skaudio_confit.PairTuneTransformer : Stage 1, whose embeddings this head classifies.

    Notes
    -----
    ``X`` is validated like any scikit-learn input (2-D, finite, numeric) and cast
    to float32; ``predict_proba`` returns float64. Before ``fit``, ``predict`` and
    ``predict_proba`` raise :class:`sklearn.exceptions.NotFittedError`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skaudio_confit.heads import LinearHeadClassifier
    >>> X, y = make_blobs(n_samples=120, n_features=16, centers=3, random_state=0)
    >>> y = np.array(["cat", "dog", "owl"])[y]
    >>> head = LinearHeadClassifier(lr=1e-2, max_epochs=20, random_state=0).fit(X, y)
    >>> head.classes_
    array(['cat', 'dog', 'owl'], dtype='<U3')
    >>> head.module_.linear
    Linear(in_features=16, out_features=3, bias=True)
    >>> head.score(X, y) > 0.9
    True
    >>> head.predict_proba(X[:2]).shape
    (2, 3)

    The paper's stage-2 grid search:

    >>> pipe = Pipeline([("scale", StandardScaler()),
    ...                  ("clf", LinearHeadClassifier(max_epochs=10, random_state=0))])
    >>> grid = {"clf__lr": [1e-3, 1e-2], "clf__batch_size": [16, 32]}
    >>> search = GridSearchCV(pipe, grid, cv=2).fit(X, y)
    >>> sorted(search.best_params_)
    ['clf__batch_size', 'clf__lr']
    """

    # Checked at fit; the remaining (skorch) parameters are checked by skorch.
    # Not named ``_parameter_constraints``: skorch's ``_validate_params`` shadows
    # scikit-learn's, and this dict does not cover every skorch parameter.
    _head_parameter_constraints: ClassVar[dict] = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "device": [str, torch.device, None],
        "classes": ["array-like", None],
        "random_state": ["random_state"],
    }

    # Unfitted skorch state, until initialize() sets it on the instance (read-only
    # mapping: skorch replaces virtual_params_ with a dict before changing it).
    history_ = None
    initialized_ = False
    virtual_params_ = MappingProxyType({})

    def __init__(
        self,
        module=LinearHead,
        *,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        max_epochs=100,
        batch_size=32,
        iterator_train=DataLoader,
        iterator_valid=DataLoader,
        dataset=Dataset,
        train_split=None,
        callbacks=None,
        predict_nonlinearity="auto",
        warm_start=False,
        verbose=0,
        device="auto",
        compile=False,
        use_caching="auto",
        torch_load_kwargs=None,
        classes=None,
        random_state=None,
        iterator_train__shuffle=True,
        **kwargs,
    ):
        super().__init__(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            iterator_train=iterator_train,
            iterator_valid=iterator_valid,
            dataset=dataset,
            train_split=train_split,
            callbacks=callbacks,
            predict_nonlinearity=predict_nonlinearity,
            warm_start=warm_start,
            verbose=verbose,
            device=device,
            compile=compile,
            use_caching=use_caching,
            torch_load_kwargs=torch_load_kwargs,
            classes=classes,
            iterator_train__shuffle=iterator_train__shuffle,
            **kwargs,
        )
        self.random_state = random_state
        # skorch's __init__ also sets its (unfitted) state; scikit-learn wants only
        # parameters set in __init__, so the class-level defaults below stand in.
        for name in ("history_", "initialized_", "virtual_params_"):
            if vars(self).get(name) == getattr(type(self), name):
                del vars(self)[name]

    # ------------------------------------------------------------------ params

    # ``device`` is stored verbatim (so "auto" survives get_params and clone), but
    # skorch reads ``self.device`` wherever it moves tensors: there it must be a
    # real device, the one resolved when the head was initialised.
    @property
    def device(self):
        raw = self.__dict__.get("device", "auto")
        if isinstance(raw, str) and raw == "auto":
            if "device_" in self.__dict__:
                return self.__dict__["device_"]
            return str(resolve_device("auto"))
        return raw

    @device.setter
    def device(self, value):
        self.__dict__["device"] = value

    @property
    def _default_callbacks(self):
        # skorch's, but valid_acc scores the encoded targets (see _code_accuracy).
        return [
            (name, EpochScoring(_code_accuracy, name="valid_acc", lower_is_better=False))
            if name == "valid_acc"
            else (name, callback)
            for name, callback in super()._default_callbacks
        ]

    @property
    def classes_(self):
        # skorch derives classes_ from its ``classes`` parameter or from y; here it
        # is ordinary fitted state, absent (hasattr False) before fit.
        try:
            return self.__dict__["classes_"]
        except KeyError:
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute 'classes_'"
            ) from None

    @classes_.setter
    def classes_(self, value):
        self.__dict__["classes_"] = value

    @classes_.deleter
    def classes_(self):
        del self.__dict__["classes_"]

    def get_params(self, deep=True, **kwargs):
        params = super().get_params(deep=deep, **kwargs)
        # skorch bookkeeping, rebuilt by __init__ from the prefixed parameters.
        params.pop("_params_to_validate", None)
        if "device" in params:
            params["device"] = self.__dict__.get("device", "auto")
        return params

    def set_params(self, **params):
        """Set parameters, as in skorch; ``callbacks`` itself is checked at ``fit``.

        Returns
        -------
        self : LinearHeadClassifier
        """
        # skorch rebuilds the callbacks from the *current* list whenever a
        # ``callbacks`` key is set (and then swaps the list in), so one bad value
        # would make every later set_params fail. A bare ``callbacks`` is only
        # stored; fit builds the callbacks from it as skorch always does.
        if "callbacks" in params and not any(k.startswith("callbacks__") for k in params):
            self.callbacks = params.pop("callbacks")
        return super().set_params(**params) if params else self

    def __repr__(self):
        # scikit-learn's repr (only the parameters that differ from the defaults),
        # like every other step of a Pipeline.
        return BaseEstimator.__repr__(self)

    def _check_params(self):
        validate_parameter_constraints(
            self._head_parameter_constraints,
            self.get_params(deep=False),
            caller_name=type(self).__name__,
        )

    def _resolve_device(self):
        raw = self.__dict__.get("device", "auto")
        return None if raw is None else resolve_device(raw)

    # ------------------------------------------------------------ fitted state

    def __sklearn_is_fitted__(self):
        return "classes_" in self.__dict__ and isinstance(
            getattr(self, "module_", None), torch.nn.Module
        )

    def initialize(self):
        """Initialise the module, criterion and optimizer on the resolved device.

        Called by ``fit``; calling it directly needs ``module__in_features`` and
        ``module__n_classes``, which ``fit`` otherwise takes from the data.

        Returns
        -------
        self : LinearHeadClassifier
        """
        device = self._resolve_device()
        self.device_ = None if device is None else str(device)
        return super().initialize()

    def initialize_module(self):
        """Build the module, filling in ``in_features`` and ``n_classes`` from the data.

        Returns
        -------
        self : LinearHeadClassifier
        """
        kwargs = self.get_params_for("module")
        # A module instance is used as given (skorch semantics).
        if not isinstance(self.module, torch.nn.Module):
            missing = {"in_features", "n_classes"} - kwargs.keys()
            if missing and not (hasattr(self, "n_features_in_") and hasattr(self, "classes_")):
                raise ValueError(
                    f"{type(self).__name__} takes the input dimension and the classes "
                    "from the data: call fit(X, y), or set module__in_features and "
                    "module__n_classes before calling initialize()."
                )
            if "in_features" in missing:
                kwargs["in_features"] = self.n_features_in_
            if "n_classes" in missing:
                kwargs["n_classes"] = len(self.classes_)
        self.module_ = self.initialized_instance(self.module, kwargs)
        return self

    def check_data(self, X, y):
        # X and y were validated and y label-encoded in fit/partial_fit; skorch's
        # version would infer "classes" from the integer codes.
        pass

    @contextlib.contextmanager
    def _seeded(self):
        """Seed torch from ``random_state``, leaving the global random state as it was."""
        if self.random_state is None:
            yield
            return
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        device = self._resolve_device()
        cuda_devices = []
        if device is not None and device.type == "cuda":
            cuda_devices = [
                device.index if device.index is not None else torch.cuda.current_device()
            ]
        # Only the CPU generator and the CUDA device in use are forked and seeded
        # (torch.manual_seed would also queue a seed for every CUDA device).
        with torch.random.fork_rng(devices=cuda_devices):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda_devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield

    def _validate_training_data(self, X, y, reset, classes):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        if reset:
            labels = np.unique(y if classes is None else np.asarray(classes))
            if len(labels) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in the "
                    f"data, but the data contains only one class: {labels[0]!r}."
                )
            self.classes_ = labels
        return X, self._encode(y)

    def _encode(self, y):
        classes = self.classes_
        known = np.isin(y, classes)
        if not known.all():
            unseen = np.unique(np.asarray(y)[~known]).tolist()
            raise ValueError(f"y contains labels not in classes_: {unseen}")
        return np.searchsorted(classes, y).astype(np.int64)

    # --------------------------------------------------------------- training

    def fit(self, X, y, **fit_params):
        """Train the head from scratch (or on, with ``warm_start=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings; any float dtype (cast to float32), no NaN or inf.
        y : array-like of shape (n_samples,)
            Class labels of any type; at least two classes.
        **fit_params : dict
            Passed on to the module's ``forward`` (skorch).

        Returns
        -------
        self : LinearHeadClassifier
        """
        self._check_params()
        reset = not (self.warm_start and self.__sklearn_is_fitted__())
        X, codes = self._validate_training_data(X, y, reset=reset, classes=self.classes)
        with self._seeded():
            if reset:
                self.initialize()
            # NeuralNet.partial_fit: the data are already validated and encoded.
            super().partial_fit(X, codes, _routing_method="fit", **fit_params)
        return self

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs, starting from the current head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.
        y : array-like of shape (n_samples,)
            Class labels; after the first call, among ``classes_``.
        classes : array-like of shape (n_classes,), default=None
            All labels, on the first call, when ``y`` may not show them all;
            defaults to the ``classes`` parameter, then to the labels in ``y``.
        **fit_params : dict
            Passed on to the module's ``forward`` (skorch).

        Returns
        -------
        self : LinearHeadClassifier
        """
        self._check_params()
        first = not self.__sklearn_is_fitted__()
        if classes is None:
            classes = self.classes
        X, codes = self._validate_training_data(X, y, reset=first, classes=classes)
        with self._seeded():
            if first:
                self.initialize()
            super().partial_fit(X, codes, **fit_params)
        return self

    # -------------------------------------------------------------- inference

    def _get_predict_nonlinearity(self):
        nonlin = super()._get_predict_nonlinearity()
        criterion = getattr(self.criterion_, "_orig_mod", self.criterion_)
        if self.predict_nonlinearity == "auto" and isinstance(
            criterion, torch.nn.CrossEntropyLoss
        ):
            return _softmax_float64
        return nonlin

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), dtype float64
            Columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        # Every DataLoader draws a base seed from the global torch RNG, even without
        # shuffling: fork it, so that predicting leaves the random state as it was.
        with torch.random.fork_rng(devices=[]):
            return super().predict_proba(X)

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)  # first: raises NotFittedError before fit
        return self.classes_[np.argmax(proba, axis=1)]

    # ----------------------------------------------------------- persistence

    def __setstate__(self, state):
        raw = state.get("device")
        auto = isinstance(raw, str) and raw == "auto"
        if auto:
            # Load onto this machine's device, like a fresh fit with "auto" would.
            state = {**state, "device": str(resolve_device("auto"))}
        super().__setstate__(state)
        final = self.__dict__["device"]  # skorch may have fallen back to the CPU
        if auto:
            self.__dict__["device"] = "auto"
        if "device_" in self.__dict__:
            self.__dict__["device_"] = None if final is None else str(final)
