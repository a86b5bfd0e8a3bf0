"""``logreg`` and ``svm``: standardisation, then a linear classifier."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import HeadError
from .calibration import PROBABILITY_DOC, OptionalProbability, calibrated_fit
from .keras_layers import calibrated_probabilities, dense_layer, fold_scaler, linear_decision
from .sgd import Minibatch


class _ScaledLinear(OptionalProbability):
    """Standardise, then a linear classifier; the fitted parts end in ``_``."""

    #: The loss :meth:`fit_blocks` minimises (:data:`featx.heads.sgd.LOSSES`).
    LOSS = "softmax"
    #: How :meth:`fit_blocks` trains: the linear head's settings.
    MINIBATCH = Minibatch()

    def _classifier(self):
        raise NotImplementedError

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.classifier_, self.calibrator_ = calibrated_fit(self._classifier(), Xs, y,
                                                             getattr(self, "probability", False))  # fmt: skip
        self.classes_ = self.classifier_.classes_
        self.n_iter_ = int(np.max(self.classifier_.n_iter_))
        return self

    def fit_blocks(self, X, y, *, block_rows: int = 65_536, progress: bool | None = None, mapper=None):
        """Fit on rows read a block at a time from ``X`` (an HDF5 dataset, a memmap or an array),
        never all in memory: the standardisation from one pass, then the same objective as
        :meth:`fit` (the loss plus the L2 penalty of ``C``) minimised by minibatch
        (:func:`featx.heads.sgd.fit_linear_in_blocks`, :attr:`MINIBATCH`) instead of solved on
        every row; with ``probability``, a sigmoid calibration on a sample of 20,000 training rows.
        ``mapper``: Dask workers' (:func:`featx.cluster_fit.fit_on_cluster`), which train on
        their shares of the file at once, averaged each epoch.
        The fitted parts are the same kinds as :meth:`fit`'s (``classifier_`` a scikit-learn
        classifier with its ``coef_``), so predicting and exporting do not change."""
        from ..streaming import Transformed, scaler_in_blocks
        from .calibration import calibrate_sample
        from .sgd import block_labels, fit_linear_in_blocks

        self._validate_params()
        classes, y_idx = block_labels(self, y)
        self.n_features_in_ = int(X.shape[1])
        self.scaler_ = scaler_in_blocks(X, block_rows=block_rows, progress=progress)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))  # None: a fresh seed, as scikit-learn
        settings = replace(self.MINIBATCH, seed=seed)
        W, b, epochs = fit_linear_in_blocks(X, y_idx, len(classes), self._scale32, loss=self.LOSS, C=self.C, settings=settings,
                                    block_rows=block_rows, label=self.name, progress=progress, mapper=mapper)  # fmt: skip
        if len(classes) == 2:  # scikit-learn's binary form: one column, for the second class
            W, b = (W[:, 1:] - W[:, :1], b[1:] - b[:1]) if self.LOSS == "softmax" else (W[:, 1:], b[1:])
        self.classifier_ = self._classifier()
        self.classifier_.classes_, self.classifier_.coef_, self.classifier_.intercept_ = classes, W.T, b
        self.classifier_.n_features_in_ = self.n_features_in_
        self.classifier_.n_iter_ = np.array([epochs])
        self.classes_, self.n_iter_ = classes, epochs
        self.calibrator_ = None
        if getattr(self, "probability", False):
            self.calibrator_ = calibrate_sample(self.classifier_, Transformed(X, self._scale32), classes[y_idx], seed)
        self.solver_ = f"minibatch SGD, {epochs} epochs, in blocks"
        return self

    def fit_note(self) -> str:
        return getattr(self, "solver_", "")

    def _scale32(self, X):
        return self.scaler_.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)

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
        W, b = fold_scaler(self.scaler_, *linear_decision(self.classifier_))
        if isinstance(self.classifier_, LogisticRegression):
            if W.shape[1] == 1:  # binary: p = sigmoid(z) = softmax([0, z])
                W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
            return dense_layer(features, W, b, "probabilities", "softmax")
        if not getattr(self, "probability", False):
            raise HeadError(
                "This svm head was fitted without probability=True: it has margins, not probabilities, to "
                "export. Fit it again with probability=True (featx fit does so)."
            )
        return calibrated_probabilities(features, W, b, self.calibrator_, len(self.classes_))


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

    name = "logreg"
    description = "standardise + multinomial logistic regression"
    search = {"C": [0.01, 0.1, 1.0]}
    marker = "s"
    rank = 1
    defaults = {"random_state": 0}  # the order of the minibatches, read in blocks: the same each run

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

    name = "svm"
    description = "standardise + linear SVM"
    search = {"C": [0.001, 0.01, 0.1]}
    marker = "^"
    rank = 3
    LOSS = "squared_hinge"

    _parameter_constraints: dict = {**_LINEAR_CONSTRAINTS, "probability": ["boolean"]}

    def __init__(self, C: float = 0.01, max_iter: int = 2000, random_state: int | None = 0,
                 probability: bool = False):  # fmt: skip
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.probability = probability

    def _classifier(self):
        return LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)


LinearSVMHead.__doc__ %= PROBABILITY_DOC
