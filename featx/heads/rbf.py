"""``svm-rbf``: an RBF-kernel SVM, exact up to ``max_exact_samples`` rows, a Nystroem kernel
approximation + linear SVM beyond."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import HeadError
from .calibration import PROBABILITY_DOC, OptionalProbability, calibrated_fit
from .keras_layers import calibrated_probabilities, dense_layer, linear_decision, standardize
from .sgd import Minibatch

#: Rows mapped at a time when the head predicts.
CHUNK_ROWS = 4096


class RBFSVMClassifier(OptionalProbability):
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

    name = "svm-rbf"
    description = "standardise + RBF SVM: exact SVC, Nystroem + linear SVM when large"
    search = {"C": [1.0, 10.0], "gamma": ["scale"]}
    marker = "D"
    rank = 4

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

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """The rows in float64 and standardised, and their Nystroem map (2,000 columns by default)."""
        return 16 * rows * width + 8 * rows * 2000

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
        steps[-1], self.calibrator_ = calibrated_fit(steps[-1], Xs, y, self.probability)
        self.pipeline_ = make_pipeline(scaler, *steps)
        return self

    #: How :meth:`fit_blocks` trains its linear SVM: 5 epochs (each maps every row again).
    MINIBATCH = Minibatch(epochs=5)

    def fit_blocks(self, X, y, *, block_rows: int = 65_536, progress: bool | None = None, mapper=None):
        """Fit on rows read a block at a time from ``X``, never all in memory: the standardisation
        from one pass; the Nystroem map of the kernel on ``n_components`` rows drawn from all over
        ``X``; its linear SVM (``C / 10``, as :meth:`fit` beyond ``max_exact_samples``) trained
        by minibatch on the mapped rows, mapped batch by batch (:func:`featx.heads.sgd.
        fit_linear_in_blocks`, :attr:`MINIBATCH`); with ``probability``, a sigmoid calibration on
        a sample of 20,000 training rows. The exact SVC, which needs every row at once, is never
        used here. ``mapper``: as the linear heads' ``fit_blocks``."""
        from ..streaming import Transformed, sample_rows, scaler_in_blocks
        from .calibration import calibrate_sample
        from .sgd import block_labels, fit_linear_in_blocks

        self._validate_params()
        classes, y_idx = block_labels(self, y)
        n, d = X.shape
        self.n_features_in_, self.classes_ = int(d), classes
        scaler = scaler_in_blocks(X, block_rows=block_rows, progress=progress)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))  # None: a fresh seed, as scikit-learn
        k = min(self.n_components, n)
        _, landmarks = sample_rows(X, k, seed)  # Nystroem picks its k components among these k rows: all
        gamma = 1.0 / d if self.gamma == "scale" else self.gamma  # unit variance after scaling
        nys = Nystroem(gamma=gamma, n_components=k, random_state=self.random_state).fit(scaler.transform(landmarks))

        mapped = _NystroemMap(scaler, nys)
        settings = replace(self.MINIBATCH, seed=seed)
        group = max(4096, block_rows * d // max(d, k))  # a group of mapped rows holds no more than of raw ones
        W, b, epochs = fit_linear_in_blocks(X, y_idx, len(classes), mapped, loss="squared_hinge", C=self.C / 10,
                                    settings=settings, block_rows=group, width=k, label=self.name, progress=progress,
                                    mapper=mapper)  # fmt: skip
        if len(classes) == 2:
            W, b = W[:, 1:], b[1:]
        svm = LinearSVC(C=self.C / 10, random_state=self.random_state)
        svm.classes_, svm.coef_, svm.intercept_, svm.n_features_in_ = classes, W.T, b, k
        svm.n_iter_ = epochs
        self.calibrator_ = calibrate_sample(svm, Transformed(X, mapped, k), classes[y_idx], seed) if self.probability else None
        self.pipeline_ = make_pipeline(scaler, nys, svm)
        self.solver_ = f"Nystroem({k}) + linear SVM by minibatch SGD, {epochs} epochs, in blocks"
        return self

    def fit_note(self) -> str:
        return getattr(self, "solver_", "")

    def _transform(self, X):
        """The input of the classifier: scaled (and mapped, when large)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.pipeline_[:-1].transform(X)

    def _by_chunks(self, X, method):
        """``method`` of the classifier on the mapped rows of ``X``, :data:`CHUNK_ROWS` at a time: the
        Nystroem map of many rows at once would hold a float64 kernel of rows x ``n_components``
        (65,536 rows: 1 GiB) and its mapped copy."""
        check_is_fitted(self)
        if not (hasattr(X, "shape") and hasattr(X, "__getitem__")):
            X = np.asarray(X)  # a list, or an array-like that cannot be sliced
        if X.shape[0] <= CHUNK_ROWS:
            return method(self._transform(X))
        return np.concatenate([method(self._transform(X[i : i + CHUNK_ROWS])) for i in range(0, X.shape[0], CHUNK_ROWS)])

    def decision_function(self, X):
        return self._by_chunks(X, lambda Z: self.pipeline_[-1].decision_function(Z))

    def predict(self, X):
        return self._by_chunks(X, lambda Z: self.pipeline_[-1].predict(Z))

    @available_if(OptionalProbability._has_probability)
    def predict_proba(self, X):
        check_is_fitted(self, "calibrator_")
        return self._by_chunks(X, lambda Z: self.calibrator_.predict_proba(Z))

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
        x = standardize(features, scaler)
        gamma, c = float(nys.gamma), np.asarray(nys.components_, dtype=np.float64)
        # -gamma |x - c|^2 = 2 gamma x.c - gamma |c|^2 - gamma |x|^2
        cross = dense_layer(x, 2 * gamma * c.T, -gamma * (c**2).sum(1), "rbf_cross")
        sq = keras.layers.Dot(axes=1, name="rbf_norm")([x, x])
        norm = dense_layer(sq, np.full((1, len(c)), -gamma), np.zeros(len(c)), "rbf_norm_term")
        kernel = keras.layers.Activation("exponential", name="rbf_kernel")(
            keras.layers.Add(name="rbf_exponent")([cross, norm])
        )
        W, b = linear_decision(svm)
        W = np.asarray(nys.normalization_, dtype=np.float64).T @ W  # the map's normalisation, folded in
        return calibrated_probabilities(kernel, W, b, self._calibration(), len(self.classes_))

    def _calibration(self):
        if not self.probability:
            raise HeadError(
                "This head was fitted without probability=True: it has margins, not probabilities, to "
                "export. Fit it again with probability=True (featx fit does so)."
            )
        return self.calibrator_


RBFSVMClassifier.__doc__ %= PROBABILITY_DOC


class _NystroemMap:
    """Rows standardised, then mapped by the Nystroem map, 4,096 at a time, as float32 (a class, so
    that a Dask worker can be sent it)."""

    def __init__(self, scaler, nys):
        self.scaler, self.nys = scaler, nys

    def __call__(self, part):
        k = len(self.nys.components_)
        if not len(part):
            return np.zeros((0, k), np.float32)
        return np.concatenate([self.nys.transform(self.scaler.transform(part[i : i + 4096])).astype(np.float32)
                               for i in range(0, len(part), 4096)])  # fmt: skip
