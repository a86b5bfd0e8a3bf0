"""``logreg`` and ``svm``: standardisation, then a linear classifier."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import HeadError
from .calibration import PROBABILITY_DOC, OptionalProbability, calibrated_fit
from .keras_layers import calibrated_probabilities, dense_layer, fold_scaler, linear_decision


class _ScaledLinear(OptionalProbability):
    """Standardise, then a linear classifier; the fitted parts end in ``_``."""

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
