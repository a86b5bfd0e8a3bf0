"""Classifier heads for cached features: one registry of scikit-learn estimators.

- ``dense``: the split-CIFAR softmax head, Dense(128, relu) -> Dropout -> Dense(softmax), in Keras.
- ``logreg``: standardisation + multinomial logistic regression.
- ``svm``: standardisation + linear SVM.
- ``svm-rbf``: standardisation + RBF SVM, exact up to ``max_exact_samples`` rows,
  Nystroem kernel approximation + linear SVM beyond.
- ``knn``: k nearest training rows by cosine similarity, a similarity-weighted vote (the
  k-NN evaluation of self-supervised features, as in DINO).
- ``centroid``: the nearest class mean by cosine similarity.
"""

from __future__ import annotations

import ast
import os
import tempfile
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import HeadError


class DenseClassifier(ClassifierMixin, BaseEstimator):
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

    _parameter_constraints: dict = {
        "n_members": [Interval(Integral, 1, 100, closed="both")],
        "hidden_units": [Interval(Integral, 1, None, closed="left")],
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

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
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

        from .runtime import seeded_build

        with seeded_build(seed):
            model = keras.Sequential(
                [
                    keras.Input(shape=(Xs.shape[1],)),
                    keras.layers.Dense(self.hidden_units, activation="relu"),
                    keras.layers.Dropout(self.dropout),
                    keras.layers.Dense(len(self.classes_), activation="softmax"),
                ]
            )
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        kw = {}
        if self.early_stopping:
            from .data import stratified_split

            tr, va = stratified_split(y_idx, self.validation_fraction, seed)
            kw["validation_data"] = (Xs[va], y_idx[va])
            kw["callbacks"] = [keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True)]
            Xs, y_idx = Xs[tr], y_idx[tr]
        hist = model.fit(Xs, y_idx, epochs=self.epochs, batch_size=self.batch_size, shuffle=True,
                         verbose=self.verbose, **kw)  # fmt: skip
        return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}

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
                    kernel, bias = _fold_scaler(self.scaler_, kernel, bias)
                x = _dense(x, kernel, bias, f"head{m}_dense_{i}", layer.activation.__name__)
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
        state.setdefault("n_members", 1 if blobs is not None and len(blobs) == 1 else state.get("n_members", 5))
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


_PROBABILITY_DOC = """probability : bool, default=False
        Also fit a probability calibration (scikit-learn's
        :class:`~sklearn.calibration.CalibratedClassifierCV`, sigmoid, 3 folds
        of the training rows), giving ``predict_proba``. The classifier that
        ``predict`` uses is the same as without it.
    """


def _calibrated_fit(classifier, X, y, probability: bool):
    """Fit ``classifier``; with ``probability``, also a sigmoid calibration on 3
    cross-validation folds of the same rows. Returns (fitted classifier, calibrator or None)."""
    if not probability:
        return classifier.fit(X, y), None
    # ensemble=False: out-of-fold decision values train the calibrator, and
    # the classifier is fitted once more on every row, exactly as without it.
    cal = CalibratedClassifierCV(classifier, method="sigmoid", cv=3, ensemble=False).fit(X, y)
    return cal.calibrated_classifiers_[0].estimator, cal


class _OptionalProbability(ClassifierMixin, BaseEstimator):
    """A head with a ``probability`` parameter gets ``predict_proba`` from its calibrator."""

    def _has_probability(self):
        return bool(getattr(self, "probability", False))

    @available_if(_has_probability)
    def predict_proba(self, X):
        check_is_fitted(self, "calibrator_")
        return self.calibrator_.predict_proba(self._transform(X))


class RBFSVMClassifier(_OptionalProbability):
    """RBF-kernel SVM that stays usable on tens of thousands of rows.

    Up to ``max_exact_samples`` training rows it fits an exact
    :class:`~sklearn.svm.SVC`; beyond, it maps the features with a
    :class:`~sklearn.kernel_approximation.Nystroem` approximation of the same
    kernel (``n_components`` landmarks) and fits a :class:`~sklearn.svm.LinearSVC`.
    ``solver_`` says which was used. Features are standardised first.

    Parameters
    ----------
    C : float, default=10.0
    gamma : "scale" or float, default="scale"
        As in SVC: "scale" is ``1 / (n_features * X.var())`` after standardisation.
    max_exact_samples : int, default=10000
    n_components : int, default=2000
    random_state : int or None, default=0
    %s
    Attributes
    ----------
    classes_ : ndarray
    n_features_in_ : int
    solver_ : str
        "exact SVC" or "Nystroem(n) + LinearSVC".
    pipeline_ : Pipeline
        The scaler and the rest (Nystroem map, then the classifier, when large).
    calibrator_ : CalibratedClassifierCV
        With ``probability=True`` only.
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0, None, closed="neither")],
        "max_exact_samples": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "probability": ["boolean"],
    }

    def __init__(self, C: float = 10.0, gamma="scale", max_exact_samples: int = 10000,
                 n_components: int = 2000, random_state: int | None = 0, probability: bool = False):  # fmt: skip
        self.C = C
        self.gamma = gamma
        self.max_exact_samples = max_exact_samples
        self.n_components = n_components
        self.random_state = random_state
        self.probability = probability

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        n, d = X.shape
        scaler = StandardScaler().fit(X)
        Xs = scaler.transform(X)
        if n <= self.max_exact_samples:
            steps = [SVC(C=self.C, gamma=self.gamma)]
            self.solver_ = "exact SVC"
        else:
            gamma = 1.0 / d if self.gamma == "scale" else self.gamma  # unit variance after scaling
            k = min(self.n_components, n)
            nys = Nystroem(gamma=gamma, n_components=k, random_state=self.random_state)
            Xs = nys.fit_transform(Xs)
            steps = [nys, LinearSVC(C=self.C / 10, random_state=self.random_state)]
            self.solver_ = f"Nystroem({k}) + LinearSVC"
        steps[-1], self.calibrator_ = _calibrated_fit(steps[-1], Xs, y, self.probability)
        self.pipeline_ = make_pipeline(scaler, *steps)
        return self

    def _transform(self, X):
        """The input of the classifier: scaled (and mapped, when large)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.pipeline_[:-1].transform(X)

    def decision_function(self, X):
        Xt = self._transform(X)
        return self.pipeline_[-1].decision_function(Xt)

    def predict(self, X):
        Xt = self._transform(X)
        return self.pipeline_[-1].predict(Xt)

    def to_keras(self, features):
        """The fitted head as Keras layers: standardisation, the Nystroem RBF map (exp of a
        distance made of two Dense layers), then the linear SVM and its sigmoid calibration as one
        Dense layer. Only the Nystroem solver, with ``probability=True``, can be exported."""
        import keras

        check_is_fitted(self)
        if self.solver_ == "exact SVC":
            raise HeadError(
                "This svm-rbf head was fitted with the exact SVC solver (one-vs-one votes over its support "
                "vectors), which featx does not export: fit it with max_exact_samples=1 (--param "
                "max_exact_samples=1: the Nystroem map) to export it, or export logreg, svm or dense."
            )
        scaler, nys, svm = self.pipeline_
        x = _standardize(features, scaler)
        gamma, c = float(nys.gamma), np.asarray(nys.components_, dtype=np.float64)
        # -gamma |x - c|^2 = 2 gamma x.c - gamma |c|^2 - gamma |x|^2
        cross = _dense(x, 2 * gamma * c.T, -gamma * (c**2).sum(1), "rbf_cross")
        sq = keras.layers.Dot(axes=1, name="rbf_norm")([x, x])
        norm = _dense(sq, np.full((1, len(c)), -gamma), np.zeros(len(c)), "rbf_norm_term")
        kernel = keras.layers.Activation("exponential", name="rbf_kernel")(keras.layers.Add(name="rbf_exponent")([cross, norm]))
        W, b = _linear_decision(svm)
        W = np.asarray(nys.normalization_, dtype=np.float64).T @ W  # the map's normalisation, folded in
        return _calibrated_probabilities(kernel, W, b, self._calibration(), len(self.classes_))

    def _calibration(self):
        if not self.probability:
            raise HeadError(
                "This head was fitted without probability=True: it has margins, not probabilities, to "
                "export. Fit it again with probability=True (featx fit does so)."
            )
        return self.calibrator_


RBFSVMClassifier.__doc__ %= _PROBABILITY_DOC


class _ScaledLinear(_OptionalProbability):
    """Standardise, then a linear classifier; the fitted parts end in ``_``."""

    def _classifier(self):
        raise NotImplementedError

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.classifier_, self.calibrator_ = _calibrated_fit(self._classifier(), Xs, y,
                                                             getattr(self, "probability", False))  # fmt: skip
        self.classes_ = self.classifier_.classes_
        self.n_iter_ = int(np.max(self.classifier_.n_iter_))
        return self

    def _transform(self, X):
        check_is_fitted(self)
        return self.scaler_.transform(validate_data(self, X, dtype=np.float64, reset=False))

    def decision_function(self, X):
        Xt = self._transform(X)
        return self.classifier_.decision_function(Xt)

    def predict(self, X):
        Xt = self._transform(X)
        return self.classifier_.predict(Xt)

    def to_keras(self, features):
        """The fitted head as one Dense layer (the scaler and, for the SVM, its sigmoid calibration
        folded in) and the activations that make its probabilities."""
        check_is_fitted(self)
        W, b = _fold_scaler(self.scaler_, *_linear_decision(self.classifier_))
        if isinstance(self.classifier_, LogisticRegression):
            if W.shape[1] == 1:  # binary: p = sigmoid(z) = softmax([0, z])
                W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
            return _dense(features, W, b, "probabilities", "softmax")
        if not getattr(self, "probability", False):
            raise HeadError(
                "This svm head was fitted without probability=True: it has margins, not probabilities, to "
                "export. Fit it again with probability=True (featx fit does so)."
            )
        return _calibrated_probabilities(features, W, b, self.calibrator_, len(self.classes_))


def _linear_decision(classifier) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel (d, k), bias (k,))`` of a fitted linear classifier's decision function."""
    return np.asarray(classifier.coef_, dtype=np.float64).T, np.asarray(classifier.intercept_, dtype=np.float64)


def _fold_scaler(scaler, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel, bias)`` acting on raw features as ``kernel``, ``bias`` act on standardised ones."""
    mean = scaler.mean_ if scaler.with_mean else np.zeros(kernel.shape[0])
    scale = scaler.scale_ if scaler.with_std else np.ones(kernel.shape[0])
    return kernel / scale[:, None], bias - (mean / scale) @ kernel


def _standardize(x, scaler):
    """``scaler`` as a layer: a BatchNormalization at inference, its statistics the scaler's (its
    weights are variables, which every export format keeps; Keras's Normalization holds constants
    that the ONNX export takes for inputs)."""
    import keras

    eps = 1e-12
    layer = keras.layers.BatchNormalization(epsilon=eps, name="standardize")
    y = layer(x)
    d = len(scaler.scale_)
    mean = scaler.mean_ if scaler.with_mean else np.zeros(d)
    var = np.maximum(np.asarray(scaler.scale_, dtype=np.float64) ** 2 - eps, 0.0)
    layer.set_weights([np.ones(d, np.float32), np.zeros(d, np.float32), mean.astype(np.float32), var.astype(np.float32)])
    return y


def _dense(x, kernel: np.ndarray, bias: np.ndarray, name: str, activation=None):
    """A Dense layer of fixed ``kernel`` and ``bias`` on ``x``, in float32."""
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    y = layer(x)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return y


def _calibrated_probabilities(x, W: np.ndarray, b: np.ndarray, calibrator, n_classes: int):
    """scikit-learn's sigmoid calibration of a one-vs-rest decision ``x @ W + b``, as layers.

    Each class's probability is ``sigmoid(-(a f + b'))`` of its decision ``f``, an affine map of
    ``x`` again (so one Dense layer holds both); the probabilities are then divided by their sum,
    which is the softmax of their logarithms. Binary: ``[1 - p, p]``, the same softmax of
    ``log_sigmoid(-z), log_sigmoid(z)``.
    """
    import keras

    cals = calibrator.calibrated_classifiers_[0].calibrators
    a = np.array([c.a_ for c in cals], dtype=np.float64)
    c0 = np.array([c.b_ for c in cals], dtype=np.float64)
    W, b = W * -a, -(a * b + c0)  # z = -(a f + b'): p = sigmoid(z)
    if n_classes == 2:
        W, b = np.hstack([-W, W]), np.concatenate([-b, b])
    z = _dense(x, W, b, "calibrated_logits", "log_sigmoid")
    return keras.layers.Activation("softmax", name="probabilities")(z)


_LINEAR_CONSTRAINTS: dict = {
    "C": [Interval(Real, 0, None, closed="neither")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
}


class LogisticRegressionHead(_ScaledLinear):
    """Standardisation + multinomial logistic regression (lbfgs).

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength.
    max_iter : int, default=1000
    random_state : int or None, default=None

    Attributes
    ----------
    classes_, n_features_in_, scaler_, classifier_
    """

    _parameter_constraints: dict = dict(_LINEAR_CONSTRAINTS)

    def __init__(self, C: float = 1.0, max_iter: int = 1000, random_state: int | None = None):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _classifier(self):
        return LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)

    def predict_proba(self, X):
        Xt = self._transform(X)
        return self.classifier_.predict_proba(Xt)


class LinearSVMHead(_ScaledLinear):
    """Standardisation + linear SVM (one-vs-rest, squared hinge).

    Parameters
    ----------
    C : float, default=0.01
        A small C suits thousands of dense, correlated embedding dimensions.
    max_iter : int, default=2000
    random_state : int or None, default=0
    %s
    Attributes
    ----------
    classes_, n_features_in_, scaler_, classifier_
    calibrator_ : CalibratedClassifierCV
        With ``probability=True`` only.
    """

    _parameter_constraints: dict = {**_LINEAR_CONSTRAINTS, "probability": ["boolean"]}

    def __init__(self, C: float = 0.01, max_iter: int = 2000, random_state: int | None = 0,
                 probability: bool = False):  # fmt: skip
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.probability = probability

    def _classifier(self):
        return LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)


LinearSVMHead.__doc__ %= _PROBABILITY_DOC


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


class _CosineVote(ClassifierMixin, BaseEstimator):
    """Classifiers that score classes by cosine similarity; ``predict`` is the argmax of ``predict_proba``."""

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class KNNClassifier(_CosineVote):
    """k nearest neighbours by cosine similarity, each voting with weight ``exp(similarity / temperature)``.

    The k-NN evaluation of frozen features (DINO's: k=20, temperature 0.07): no
    training beyond storing the L2-normalised training rows, and ``predict_proba``
    is the normalised vote.

    Parameters
    ----------
    n_neighbors : int, default=20
        Neighbours that vote (at most the training rows).
    temperature : float, default=0.07
        Sharpness of the similarity weights.
    batch_size : int, default=1024
        Query rows compared with the training rows at once (memory: batch x training rows).

    Attributes
    ----------
    classes_, n_features_in_
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, batch_size: int = 1024):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.batch_size = batch_size

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, self.labels_ = np.unique(y, return_inverse=True)
        self.train_ = _unit_rows(X.astype(np.float64))  # float64: a row's result never depends on its batch
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = _unit_rows(validate_data(self, X, dtype=[np.float32, np.float64], reset=False).astype(np.float64))
        k = min(self.n_neighbors, len(self.train_))
        out = np.zeros((len(X), len(self.classes_)))
        for start in range(0, len(X), self.batch_size):
            sims = X[start : start + self.batch_size] @ self.train_.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(k), (len(sims), 1))
            s = np.take_along_axis(sims, top, axis=1).astype(np.float64)
            w = np.exp((s - s.max(axis=1, keepdims=True)) / self.temperature)
            rows = np.repeat(np.arange(len(sims)), k)
            votes = np.zeros((len(sims), len(self.classes_)))
            np.add.at(votes, (rows, self.labels_[top].ravel()), w.ravel())
            out[start : start + len(sims)] = votes / votes.sum(axis=1, keepdims=True)
        return out


class NearestCentroidHead(_CosineVote):
    """The nearest class mean by cosine similarity: the prototype classifier of few-shot transfer.

    Each class is the mean of its L2-normalised training rows; ``predict_proba``
    is the softmax of the similarities divided by ``temperature``.

    Parameters
    ----------
    temperature : float, default=0.07

    Attributes
    ----------
    classes_, n_features_in_, centroids_ : ndarray of shape (n_classes, n_features)
    """

    _parameter_constraints: dict = {"temperature": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 0.07):
        self.temperature = temperature

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        X = _unit_rows(np.asarray(X, dtype=np.float64))
        means = np.stack([X[labels == i].mean(axis=0) for i in range(len(self.classes_))])
        self.centroids_ = _unit_rows(means)
        return self

    def similarities(self, X):
        """Cosine similarity of each row to each class's centroid, ``(n, n_classes)``."""
        check_is_fitted(self)
        X = _unit_rows(validate_data(self, X, dtype=[np.float64, np.float32], reset=False).astype(np.float64))
        return X @ self.centroids_.T

    def predict_proba(self, X):
        z = self.similarities(X) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def to_keras(self, features):
        """The fitted head as layers: the rows scaled to unit length, one Dense layer of the
        centroids over the temperature, a softmax."""
        import keras

        check_is_fitted(self)
        x = keras.layers.UnitNormalization(name="unit_rows")(features)
        return _dense(x, self.centroids_.T / self.temperature, np.zeros(len(self.classes_)), "probabilities", "softmax")


#: The head registry: name -> (factory, one-line description).
HEADS = {
    "dense": (lambda **p: DenseClassifier(**{"random_state": 0, **p}), "Keras softmax head (128 relu)"),
    "logreg": (LogisticRegressionHead, "standardise + multinomial logistic regression"),
    "svm": (LinearSVMHead, "standardise + linear SVM"),
    "svm-rbf": (lambda **p: RBFSVMClassifier(**p), "RBF SVM: exact SVC, Nystroem + linear SVM when large"),
    "knn": (KNNClassifier, "k nearest neighbours by cosine similarity, weighted vote (k=20)"),
    "centroid": (NearestCentroidHead, "nearest class mean by cosine similarity"),
}


def make_head(name: str, **params) -> BaseEstimator:
    """A fresh head by name, with ``params`` set on its classifier.

    Examples
    --------
    >>> make_head("logreg", C=0.1).C
    0.1
    """
    if name not in HEADS:
        raise HeadError(f"Unknown head. Known heads: {', '.join(HEADS)}. Received: head={name!r}")
    names = sorted(HEADS[name][0]().get_params())
    unknown = [k for k in params if k not in names]
    if unknown:
        raise HeadError(f"Unknown parameter {unknown[0]!r} for head {name!r}. Its parameters: {', '.join(names)}.")
    est = HEADS[name][0](**params)
    try:
        est._validate_params()  # scikit-learn's own checks, before any work rather than at fit
    except InvalidParameterError as exc:
        raise HeadError(f"Bad parameter for head {name!r}: {exc}") from None
    return est


def parse_params(items: list[str] | None) -> dict:
    """Parse ``["C=0.1", "epochs=20"]`` into ``{"C": 0.1, "epochs": 20}`` (Python literals, else strings)."""
    params = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise HeadError(f"A head parameter looks like NAME=VALUE, e.g. C=0.1. Received: {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            params[key.strip()] = raw.strip()
    return params
