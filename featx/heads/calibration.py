"""Probabilities for margin classifiers: a sigmoid calibration fitted beside the classifier."""

from __future__ import annotations

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .base import Head

PROBABILITY_DOC = """probability : bool, default=False
        Also fit a probability calibration (scikit-learn's
        :class:`~sklearn.calibration.CalibratedClassifierCV`, sigmoid, 3 folds
        of the training rows), giving ``predict_proba``. The classifier that
        ``predict`` uses is the same as without it.
    """


def calibrated_fit(classifier, X, y, probability: bool):
    """Fit ``classifier``; with ``probability``, also a sigmoid calibration on 3
    cross-validation folds of the same rows. Returns (fitted classifier, calibrator or None)."""
    if not probability:
        return classifier.fit(X, y), None
    # ensemble=False: out-of-fold decision values train the calibrator, and
    # the classifier is fitted once more on every row, exactly as without it.
    cal = CalibratedClassifierCV(classifier, method="sigmoid", cv=3, ensemble=False).fit(X, y)
    return cal.calibrated_classifiers_[0].estimator, cal


class OptionalProbability(Head, ClassifierMixin, BaseEstimator):
    """A head with a ``probability`` parameter gets ``predict_proba`` from its calibrator."""

    def _has_probability(self):
        return bool(getattr(self, "probability", False))

    @available_if(_has_probability)
    def predict_proba(self, X):
        check_is_fitted(self, "calibrator_")
        return self.calibrator_.predict_proba(self._transform(X))
