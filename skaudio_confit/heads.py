"""Stage 2 of AudioConFit: a linear classification head on fixed-size embeddings.

:class:`LinearHeadClassifier` is a scikit-learn classifier that builds a skorch
:class:`~skorch.classifier.NeuralNetClassifier` in ``fit`` and keeps it as ``net_``.
Why composition rather than a skorch subclass: a ``NeuralNet`` breaks scikit-learn
conventions that ``check_estimator`` tests (state set in ``__init__``, parameters
added during ``fit``, integer targets only, ``X`` not validated); a subclass needed
about fifteen overrides of skorch internals to pass. Owning a net leaves skorch
untouched: the conventions hold for the outer estimator by construction, and the
net sees what it expects (float32 arrays and integer class codes), so skorch's
defaults (``valid_acc``, callbacks) work unchanged. The fitted state is plain
(``classes_``, ``n_features_in_``, ``device_``, the net), so the safe pipeline format
stores a head as parameters, classes and a ``state_dict``.
"""

from __future__ import annotations

import contextlib
import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNetClassifier
from skorch.dataset import Dataset
from torch.utils.data import DataLoader

from ._device import resolve_device
from ._labels import encode_labels
from ._random import forked_torch_rng

__all__ = ["LinearHead", "LinearHeadClassifier"]

# Keyword parameters routed to the parts of the skorch net, as skorch names them.
_ROUTED_PREFIXES = tuple(f"{part}__" for part in ("module", "criterion", "optimizer",
                                                  *NeuralNetClassifier.prefixes_))


# Parameters a warm start passes on to the fitted net (see _synced_net).
_TRAINING_SETTINGS = ("lr", "max_epochs", "batch_size", "verbose")
_TRAINING_PREFIXES = ("optimizer__", "iterator_train__", "iterator_valid__")


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


class LinearHeadClassifier(ClassifierMixin, BaseEstimator):
    """Linear classification head on fixed-size embeddings (AudioConFit stage 2).

    A single linear layer (:class:`LinearHead`) trained with softmax cross-entropy
    and Adam on the whole training set (no internal validation split), by a skorch
    :class:`~skorch.classifier.NeuralNetClassifier` that ``fit`` builds from these
    parameters and keeps as ``net_``. The input dimension (``module__in_features``)
    and the number of classes (``module__n_classes``) are taken from the data, and
    labels may be of any type (strings too): ``classes_`` holds the original labels
    and ``predict`` returns them.

    Every skorch parameter (``callbacks``, ``optimizer__weight_decay``,
    ``module__*``, ...) is accepted, passed on to the net and behaves as in skorch;
    the defaults below are the ones that differ from skorch's.

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
    iterator_train, iterator_valid, dataset, use_caching, torch_load_kwargs, compile
        As in skorch (defaults ``DataLoader``, ``DataLoader``, skorch's ``Dataset``,
        "auto", None, False).
    train_split : callable or None, default=None
        None trains on all of ``X``; pass e.g. ``skorch.dataset.ValidSplit(5)``
        to hold out a validation fold, whose ``valid_loss`` and ``valid_acc``
        are recorded in ``history_`` (e.g. for ``skorch.callbacks.EarlyStopping``).
    callbacks : list or None, default=None
        As in skorch. Callbacks see the net (``net_``), which is trained on the
        labels encoded as indices into ``classes_``.
    predict_nonlinearity : callable, "auto" or None, default="auto"
        "auto" applies a (float64) softmax to the logits in ``predict_proba`` when
        the criterion is a cross-entropy, else skorch's "auto".
    warm_start : bool, default=False
        If True, a second ``fit`` continues training the fitted head (same
        features and classes) instead of starting anew.
    verbose : int, default=0
        1 prints skorch's per-epoch table.
    device : str, torch.device or None, default="auto"
        "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N". "auto"
        is kept as is by ``get_params``/``clone`` and resolved at ``fit`` (see
        ``device_``) and again when a pickled head is loaded. None leaves tensors
        where they are (skorch semantics).
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
        ``iterator_valid__*``, ``callbacks__*``, ``dataset__*``, ``compile__*``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_features_in_ : int
        Embedding dimension seen at ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` at ``fit`` was a DataFrame with string names.
    net_ : skorch.classifier.NeuralNetClassifier
        The trained net, for skorch's own tools (``save_params``, ``forward``,
        ``optimizer_``, ...); it works on class codes, not labels.
    module_ : torch.nn.Module
        The trained head (``net_.module_``).
    history_ : skorch.history.History
        Per-epoch ``train_loss`` (and validation scores with a ``train_split``).
    device_ : str or None
        The device the head lives on ("cpu", "cuda", ...), resolved from ``device``.

    See Also
    --------
    skaudio_confit.PairTuneTransformer : Stage 1, whose embeddings this head classifies.

    Notes
    -----
    ``X`` is validated like any scikit-learn input (2-D, finite, numeric) and cast
    to float32; ``predict_proba`` returns float64. Before ``fit``, ``predict`` and
    ``predict_proba`` raise :class:`sklearn.exceptions.NotFittedError`.

    A pipeline ending in this head can be saved without pickle by
    :func:`~skaudio_confit.persistence.save_pipeline` when its parameters are JSON
    values and its classes the defaults (any ``torch.optim`` optimizer): the
    parameters, classes, history and weights are saved, the optimizer's moments
    are not (joblib keeps them).

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

    # The remaining (skorch) parameters are checked by skorch when fit builds the net.
    _parameter_constraints: dict = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "predict_nonlinearity": [callable, StrOptions({"auto"}), None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "device": [str, torch.device, None],
        "classes": ["array-like", None],
        "random_state": ["random_state"],
    }

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
        self.module = module
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.iterator_train = iterator_train
        self.iterator_valid = iterator_valid
        self.dataset = dataset
        self.train_split = train_split
        self.callbacks = callbacks
        self.predict_nonlinearity = predict_nonlinearity
        self.warm_start = warm_start
        self.verbose = verbose
        self.device = device
        self.compile = compile
        self.use_caching = use_caching
        self.torch_load_kwargs = torch_load_kwargs
        self.classes = classes
        self.random_state = random_state
        self.iterator_train__shuffle = iterator_train__shuffle
        vars(self).update(kwargs)

    # ------------------------------------------------------------------ params

    def _extra_params(self):
        """Keywords beyond the signature (skorch's prefixed ones), as given."""
        names = self._get_param_names()
        return {k: v for k, v in vars(self).items()
                if k not in names and not k.startswith("_") and not k.endswith("_")}

    def get_params(self, deep=True):
        """Parameters, including the prefixed skorch ones given as keywords.

        Returns
        -------
        params : dict
        """
        return {**super().get_params(deep=deep), **self._extra_params()}

    def set_params(self, **params):
        """Set parameters; prefixed skorch ones (``optimizer__*``, ...) are stored as given.

        Returns
        -------
        self : LinearHeadClassifier
        """
        # Before scikit-learn, which would read "module__x" as a parameter of `module`.
        vars(self).update({k: params.pop(k) for k in list(params)
                           if k.startswith(_ROUTED_PREFIXES)})
        return super().set_params(**params)

    # --------------------------------------------------------------- fitted state

    @property
    def module_(self):
        return self.net_.module_

    @property
    def history_(self):
        return self.net_.history_

    def _build_net(self, n_features, n_classes, device):
        """An uninitialised skorch net for ``n_classes`` codes on ``device``.

        Every parameter but ``random_state`` is skorch's and passed on, with the
        device resolved, the classes replaced by their codes (all skorch sees) and
        the input and output sizes filled in from the data unless given.
        """
        params = self.get_params(deep=False)
        del params["random_state"]
        if not isinstance(self.module, torch.nn.Module):  # an instance is used as given
            params.setdefault("module__in_features", n_features)
            params.setdefault("module__n_classes", n_classes)
        criterion = self.criterion if isinstance(self.criterion, type) else type(self.criterion)
        if self.predict_nonlinearity == "auto" and issubclass(criterion, torch.nn.CrossEntropyLoss):
            params["predict_nonlinearity"] = _softmax_float64
        params.update(device=device, classes=np.arange(n_classes))
        return NeuralNetClassifier(**params)

    @contextlib.contextmanager
    def _seeded(self, device):
        """Seed torch from ``random_state`` in a fork of the global random state."""
        if self.random_state is None:
            yield
            return
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        with forked_torch_rng(seed, device):
            yield

    def _encode(self, X, y, classes, reset):
        """Validated float32 ``X``, the class labels and the codes of ``y`` among them."""
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        labels = np.unique(y if classes is None else np.asarray(classes)) if reset else self.classes_
        if len(labels) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the "
                f"data, but the data contains only one class: {labels[0]!r}."
            )
        unseen = np.setdiff1d(y, labels)
        if unseen.size:
            raise ValueError(f"y contains labels not in classes_: {unseen.tolist()}")
        return X, labels, encode_labels(y, labels)[1]

    def _train(self, X, y, classes, reset, fit_params):
        """Validate, encode, (re)build the net if ``reset`` and train one round."""
        self._validate_params()
        # Keywords without a skorch prefix (typos) are kept by __init__, refused here.
        unexpected = sorted(k for k in self._extra_params() if not k.startswith(_ROUTED_PREFIXES))
        if unexpected:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {unexpected}; "
                f"extra keywords must start with one of {', '.join(_ROUTED_PREFIXES)}."
            )
        device = self.device_ if not reset else (
            None if self.device is None else str(resolve_device(self.device)))
        before = dict(vars(self))
        try:
            X, labels, codes = self._encode(X, y, classes, reset)
        except Exception:
            # validate_data records n_features_in_ before the checks that follow:
            # a refused call leaves a fitted head as it was.
            vars(self).clear()
            vars(self).update(before)
            raise
        net = self._build_net(X.shape[1], len(labels), device) if reset else self._synced_net()
        with self._seeded(device):
            if reset:
                net.initialize()
            net.partial_fit(X, codes, **fit_params)
        self.net_, self.classes_, self.device_ = net, labels, device
        return self

    def _synced_net(self):
        """The fitted net, given the training settings set since it was built.

        Warm-start ``fit`` and ``partial_fit`` go on with ``net_``, which holds its own
        copies of the parameters; skorch's ``set_params`` updates those (``lr`` in the
        optimizer too, keeping its moments). What shapes the net (module, criterion,
        optimizer class, device, classes) stays as fitted.
        """
        net = self.net_
        changed = {k: v for k, v in self.get_params(deep=False).items()
                   if (k in _TRAINING_SETTINGS or k.startswith(_TRAINING_PREFIXES))
                   and getattr(net, k, None) is not v}
        if changed:
            net.set_params(**changed)
        return net

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
        reset = not (self.warm_start and self.__sklearn_is_fitted__())
        return self._train(X, y, self.classes, reset, fit_params)

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
        classes = self.classes if classes is None else classes
        return self._train(X, y, classes, not self.__sklearn_is_fitted__(), fit_params)

    def __sklearn_is_fitted__(self):
        return "net_" in vars(self) and "classes_" in vars(self)

    # -------------------------------------------------------------- inference

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
        with forked_torch_rng():
            return self.net_.predict_proba(X)

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

    def __getstate__(self):
        state = super().__getstate__()
        if self.device == "auto" and "net_" in state:
            # Pickle the net for the CPU; loading moves it to that machine's "auto"
            # device (skorch alone would warn and fall back if CUDA were missing).
            # copy.copy goes through skorch's own pickling: cheap for one layer.
            state = {**state, "net_": copy.copy(state["net_"])}
            state["net_"].device = "cpu"
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.device == "auto" and "net_" in state:
            net, device = self.net_, resolve_device("auto")
            self.device_ = net.device = str(device)
            net.module_.to(device)
            net.criterion_.to(device)
            # Loading a state dict moves the optimizer's moments to its parameters.
            net.optimizer_.load_state_dict(net.optimizer_.state_dict())
