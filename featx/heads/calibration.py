"""Probabilities for margin classifiers: a sigmoid calibration fitted beside the classifier."""

from __future__ import annotations

import numpy as np
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


#: Rows of the sample a head fitted in blocks calibrates its probabilities on.
CALIBRATION_ROWS = 20_000


def calibrate_sample(classifier, X, y, seed: int = 0):
    """A sigmoid calibration of a fitted ``classifier``'s decisions on a seeded sample of
    :data:`CALIBRATION_ROWS` of its training rows (``X`` transformed as the classifier takes them,
    read from a cache; ``y`` in memory): the probabilities of a head fitted in blocks, without
    holding every row. The classifier is left as it is (it is frozen)."""
    from sklearn.frozen import FrozenEstimator

    from ..streaming import sample_rows

    rows, Xs = sample_rows(X, CALIBRATION_ROWS, seed)
    return CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid").fit(Xs, np.asarray(y)[rows])


class OptionalProbability(Head, ClassifierMixin, BaseEstimator):
    """A head with a ``probability`` parameter gets ``predict_proba`` from its calibrator."""

    def _has_probability(self):
        return bool(getattr(self, "probability", False))

    @available_if(_has_probability)
    def predict_proba(self, X):
        check_is_fitted(self, "calibrator_")
        return self.calibrator_.predict_proba(self._transform(X))
