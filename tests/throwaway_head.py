"""A head family that featx does not ship, in one module of its own: tests/test_heads.py imports
it and finds it in fit, compare, tune, the report, trusted loading and the CLI's help."""

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads import Head


class ShrunkCentroidHead(Head, ClassifierMixin, BaseEstimator):
    """The nearest class mean in Euclidean distance, each mean shrunk towards the overall mean."""

    name = "shrunk-centroid"
    description = "nearest class mean, shrunk towards the overall mean"
    search = {"shrink": [0.0, 0.5]}
    marker = "X"

    _parameter_constraints: dict = {"shrink": [Interval(Real, 0, 1, closed="both")]}

    def __init__(self, shrink: float = 0.1):
        self.shrink = shrink

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_, labels = np.unique(y, return_inverse=True)
        means = np.stack([X[labels == i].mean(axis=0) for i in range(len(self.classes_))])
        self.means_ = (1 - self.shrink) * means + self.shrink * X.mean(axis=0)
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        d = -((X[:, None, :] - self.means_[None]) ** 2).sum(-1)
        z = np.exp(d - d.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def fit_note(self) -> str:
        return f"shrunk by {self.shrink}"
