"""``knn`` and ``centroid``: heads that score classes by cosine similarity to the training rows."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .base import Head
from .keras_layers import dense_layer


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


class _CosineVote(Head, ClassifierMixin, BaseEstimator):
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

    name = "knn"
    description = "k nearest neighbours by cosine similarity, weighted vote (k=20)"
    search = {"n_neighbors": [10, 20, 50]}
    marker = "v"
    rank = 4

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
            top = (
                np.argpartition(-sims, k - 1, axis=1)[:, :k]
                if k < sims.shape[1]
                else np.tile(np.arange(k), (len(sims), 1))
            )
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

    name = "centroid"
    description = "nearest class mean by cosine similarity"
    search = {"temperature": [0.03, 0.07, 0.2]}
    marker = "P"
    rank = 5

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
        return dense_layer(
            x, self.centroids_.T / self.temperature, np.zeros(len(self.classes_)), "probabilities", "softmax"
        )
