"""``dense``: the split-CIFAR softmax head, Dense(128, relu) -> Dropout -> Dense(softmax), in Keras; and
``linear``, the same with no hidden layer (multinomial logistic regression by SGD)."""

from __future__ import annotations

import os
import tempfile
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import DataError
from .base import Head
from .keras_layers import dense_layer, fold_scaler


class DenseClassifier(Head, ClassifierMixin, BaseEstimator):
    """Softmax head in Keras: Dense(hidden_units, relu) -> Dropout -> Dense(n_classes, softmax),
    ``n_members`` of them trained from different seeds, their probabilities averaged.

    Parameters
    ----------
    n_members : int, default=5
        Networks in the ensemble, each from its own seed (``random_state + i``). On
        the real CIFAR-10's frozen trunk features, 5 members scored 1.2-1.7 points
        above one on a validation split of the train images (BENCHMARKS.md).
    hidden_units : int, default=128
    dropout : float, default=0.42
        Dropout rate after the hidden layer (the split-CIFAR trunk's rate).
    epochs : int, default=10
    batch_size : int, default=256
        Rows per step: per-step overhead dominates a head this small, so larger
        batches fit faster (with ``learning_rate`` raised to match).
    learning_rate : float, default=2e-3
        Adam's learning rate.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training rows (stratified,
        seeded) and stop when validation loss has not improved for
        ``patience`` epochs, keeping the best weights.
    validation_fraction : float, default=0.1
    patience : int, default=3
    standardize : bool, default=True
        Scale features to zero mean and unit variance first.
    random_state : int or None, default=None
        Seeds weight init, shuffling and dropout.
    verbose : int, default=0
        Keras's ``fit`` verbosity.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    models_ : list of keras.Model
        The members.
    model_ : keras.Model
        The first member.
    scaler_ : StandardScaler or None
    history_ : dict
        Keras's training history of the first member.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.heads import DenseClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); y = np.where(X[:, 0] > 0, "yes", "no")
    >>> clf = DenseClassifier(n_members=2, epochs=50, learning_rate=0.01, random_state=0).fit(X, y)
    >>> clf.classes_
    array(['no', 'yes'], dtype='<U3')
    >>> bool(clf.score(X, y) > 0.9)
    True
    """

    name = "dense"
    description = "Keras softmax head, Dense(128, relu) + dropout, 5 networks averaged"
    search = {"epochs": [10, 20, 30], "dropout": [0.3, 0.5]}
    marker = "o"
    rank = 0
    in_process = True  # Keras keeps thread pools of its own
    defaults = {"random_state": 0}

    _parameter_constraints: dict = {
        "n_members": [Interval(Integral, 1, 100, closed="both")],
        "hidden_units": [Interval(Integral, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 0, None, closed="left")],
        "standardize": ["boolean"],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_members: int = 5,
        hidden_units: int = 128,
        dropout: float = 0.42,
        epochs: int = 10,
        batch_size: int = 256,
        learning_rate: float = 2e-3,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 3,
        standardize: bool = True,
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.n_members = n_members
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.standardize = standardize
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """The rows in float32, standardised, the part trained on, and Keras's copy of it."""
        return 16 * rows * width

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(
                f"DenseClassifier needs at least 2 classes in y; got 1 class: {self.classes_[0]!r}."
            )
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Xs = self._scale(X)
        seed = self.random_state if self.random_state is not None else int(np.random.randint(2**31 - 1))
        self.models_, histories = [], []
        for i in range(self.n_members):
            model, hist = self._fit_member(Xs, y_idx, seed + i)
            self.models_.append(model)
            histories.append(hist)
        self.model_ = self.models_[0]
        self.history_ = histories[0]
        return self

    def _fit_member(self, Xs, y_idx, seed: int):
        import keras


        model = self._build_member(Xs.shape[1], seed)
        kw = {}
        if self.early_stopping:
            from ..data import stratified_split

            tr, va = stratified_split(y_idx, self.validation_fraction, seed)
            kw["validation_data"] = (Xs[va], y_idx[va])
            kw["callbacks"] = [
                keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True)
            ]
            Xs, y_idx = Xs[tr], y_idx[tr]
        hist = model.fit(Xs, y_idx, epochs=self.epochs, batch_size=self.batch_size, shuffle=True,
                         verbose=self.verbose, **kw)  # fmt: skip
        return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}

    def _build_member(self, n_features: int, seed: int):
        """One network, compiled: Dense(hidden_units, relu) -> Dropout -> Dense(softmax), or the
        softmax layer alone with ``hidden_units=0`` (multinomial logistic regression)."""
        import keras

        from ..runtime import seeded_build

        with seeded_build(seed):
            hidden = [keras.layers.Dense(self.hidden_units, activation="relu"),
                      keras.layers.Dropout(self.dropout)] if self.hidden_units else []  # fmt: skip
            model = keras.Sequential([keras.Input(shape=(n_features,)), *hidden,
                                      keras.layers.Dense(len(self.classes_), activation="softmax")])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])  # fmt: skip
        return model

    def fit_blocks(self, X, y, *, block_rows: int = 65_536, progress: bool | None = None, mapper=None):
        """Fit on rows read a block at a time from ``X`` (an HDF5 dataset, a memmap or an array),
        never all of them in memory: the standardisation from one pass over the blocks, then each
        network trained batch by batch (:func:`featx.heads.sgd.train_batches`) from a generator of
        shuffled batches (:func:`featx.streaming.shuffled_batches`), one group of row blocks in
        memory at a time.

        The networks are independent: ``mapper(function, seeds)`` (default: ``map``) trains them,
        one call per network; :func:`featx.cluster_fit.fit_on_cluster` passes one that runs each
        on a Dask worker, which reads the cache itself. Same seeds, same networks."""
        from functools import partial

        from ..errors import SettingsError
        from ..streaming import scaler_in_blocks
        from .sgd import block_labels

        self._validate_params()
        if self.early_stopping:
            raise SettingsError("early_stopping holds out rows in memory: fit the dense head in blocks without it.")
        self.classes_, y_idx = block_labels(self, y)
        self.n_features_in_ = int(X.shape[1])
        self.scaler_ = scaler_in_blocks(X, block_rows=block_rows, progress=progress) if self.standardize else None
        seed = self.random_state if self.random_state is not None else int(np.random.randint(2**31 - 1))
        show = bool(self.verbose) if progress is None else bool(progress)  # Keras's verbose, by default
        seeds = [seed + i for i in range(self.n_members)]
        train = partial(_member_in_blocks, self, X, y_idx, block_rows=block_rows, show=show)
        self.models_, histories = [], []
        for s, (weights, history) in zip(seeds, (mapper or map)(train, seeds)):
            model = self._build_member(self.n_features_in_, s)
            model.set_weights(weights)
            self.models_.append(model)
            histories.append(history)
        self.model_, self.history_ = self.models_[0], histories[0]
        return self

    def _scale(self, X):
        return X if self.scaler_ is None else self.scaler_.transform(X).astype(np.float32)

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        Xs = self._scale(X)
        return np.mean([_dense_forward(m, Xs) for m in self._members()], axis=0)

    def _members(self) -> list:
        return getattr(self, "models_", None) or [self.model_]  # fitted by a featx of one member

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def to_keras(self, features):
        """The fitted head as Keras layers on ``features`` (a Keras tensor): its Dense layers, the
        scaler folded into the first, Dropout left out. Returns the probabilities tensor."""
        import keras

        check_is_fitted(self)
        outs = []
        for m, member in enumerate(self._members()):
            x = features
            dense = [layer for layer in member.layers if isinstance(layer, keras.layers.Dense)]
            for i, layer in enumerate(dense):
                kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
                if i == 0 and self.scaler_ is not None:
                    kernel, bias = fold_scaler(self.scaler_, kernel, bias)
                x = dense_layer(x, kernel, bias, f"head{m}_dense_{i}", layer.activation.__name__)
            outs.append(x)
        if len(outs) == 1:
            return keras.layers.Identity(name="probabilities")(outs[0])
        return keras.layers.Average(name="probabilities")(outs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # Keras models are saved in Keras's own format inside the pickle, never pickled directly.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("model_", None)
        members = state.pop("models_", None) or ([self.model_] if hasattr(self, "model_") else [])
        if members:
            blobs = []
            with tempfile.TemporaryDirectory() as tmp:
                for i, model in enumerate(members):
                    path = os.path.join(tmp, f"model{i}.keras")
                    model.save(path)
                    with open(path, "rb") as f:
                        blobs.append(f.read())
            state["_model_keras_bytes"] = blobs[0]  # the first member: what featx of one member reads
            state["_members_keras_bytes"] = blobs
        return state

    def __setstate__(self, state):
        blobs = state.pop("_members_keras_bytes", None)
        blob = state.pop("_model_keras_bytes", None)
        if blobs is None and blob is not None:
            blobs = [blob]  # saved by a featx of one member
        state.setdefault(
            "n_members", 1 if blobs is not None and len(blobs) == 1 else state.get("n_members", 5)
        )
        self.__dict__.update(state)
        if blobs:
            import keras

            models = []
            with tempfile.TemporaryDirectory() as tmp:
                for i, b in enumerate(blobs):
                    path = os.path.join(tmp, f"model{i}.keras")
                    with open(path, "wb") as f:
                        f.write(b)
                    models.append(keras.saving.load_model(path))
            self.models_ = models
            self.model_ = models[0]


class LinearSoftmaxHead(DenseClassifier):
    """Multinomial logistic regression trained by minibatch SGD (Adam) in Keras: the dense head with
    no hidden layer, one network. It trains the same from rows in memory or from a cache read a
    block at a time (:func:`featx.streaming.fit_in_blocks`): the linear probe of caches too large
    for memory, as linear probes on ImageNet-size features are trained.

    Parameters are :class:`DenseClassifier`'s, with ``hidden_units=0``, ``n_members=1`` and
    ``learning_rate=1e-2``.
    """

    name = "linear"
    description = "multinomial logistic regression by minibatch SGD (Keras); trains from a cache in blocks"
    search = {"epochs": [10, 30], "learning_rate": [1e-3, 1e-2]}
    marker = "X"
    rank = 2

    def __init__(
        self,
        n_members: int = 1,
        hidden_units: int = 0,
        dropout: float = 0.0,
        epochs: int = 10,
        batch_size: int = 256,
        learning_rate: float = 1e-2,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 3,
        standardize: bool = True,
        random_state: int | None = None,
        verbose: int = 0,
    ):
        super().__init__(n_members=n_members, hidden_units=hidden_units, dropout=dropout, epochs=epochs,
                         batch_size=batch_size, learning_rate=learning_rate, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, patience=patience, standardize=standardize,
                         random_state=random_state, verbose=verbose)  # fmt: skip


def _member_in_blocks(head: DenseClassifier, X, y_idx, seed: int, *, block_rows: int, show: bool):
    """One network of ``head`` (its scaler and classes set) trained from ``X`` read in blocks:
    ``(its weights, its history)``. A function of its own, so that a Dask worker can run it."""
    from ..streaming import shuffled_batches
    from .sgd import train_batches

    model = head._build_member(X.shape[1], seed)
    source, steps = shuffled_batches(X, y_idx, head._scale, batch_size=head.batch_size, block_rows=block_rows,
                                     seed=seed)  # fmt: skip
    try:
        history = train_batches(model, source, steps, head.epochs, f"{head.name} network (seed {seed})", show)
    finally:
        source.close()  # its group of rows goes now
    return model.get_weights(), history


def _dense_forward(model, X: np.ndarray) -> np.ndarray:
    """The head's forward pass at inference, in float64 numpy from its weights.

    Keras's float32 kernels pick their code path by batch size, so one row's
    probabilities would change in the last bits with the rows beside it; in
    float64 they do not (and a 3-layer head needs no framework to predict).
    """
    import keras

    x = np.asarray(X, dtype=np.float64)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            continue
        act = getattr(getattr(layer, "activation", None), "__name__", None)
        if not isinstance(layer, keras.layers.Dense) or act not in ("relu", "softmax", "linear"):
            return np.asarray(model.predict(X, batch_size=4096, verbose=0), dtype=np.float64)
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        x = x @ kernel + bias
        if act == "relu":
            x = np.maximum(x, 0.0)
        elif act == "softmax":
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
    return x
