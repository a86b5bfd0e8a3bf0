"""``knn`` and ``centroid``: heads that score classes by cosine similarity to the training rows."""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import DataError
from ..neighbors import NeighborSearch, nearest, unit_rows
from .base import Head
from .keras_layers import dense_layer

log = logging.getLogger(__name__)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


#: Bytes a knn head leaves free beside its bank when it chooses how to hold it (``storage``): the
#: search's blocks, the queries and their neighbours.
BANK_HEADROOM = 1 << 30


def _same_classes(head, other) -> None:
    """Two parts of one fit share their classes (each was given every class)."""
    if not np.array_equal(head.classes_, other.classes_) or head.n_features_in_ != other.n_features_in_:
        raise DataError(f"These two {type(head).__name__} parts were fitted with different classes or widths: pass "
                        "every class (classes=) to each part's partial_fit.")  # fmt: skip


#: Rows that ``fit`` takes at a time from rows in memory: the float64 copy is one block's, not all of them.
FIT_BLOCK_ROWS = 16_384


class _CosineVote(Head, ClassifierMixin, BaseEstimator):
    def _fit_in_blocks(self, X, y):
        """Fit on all of ``X``, ``y`` (checked whole, as scikit-learn's ``fit`` does, and not copied)
        through :meth:`partial_fit` a block of :data:`FIT_BLOCK_ROWS` at a time."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=None, accept_large_sparse=False)
        check_classification_targets(y)
        classes = np.unique(y)
        if hasattr(self, "reserve"):
            self.reserve(len(X))
        for start in range(0, max(1, len(X)), FIT_BLOCK_ROWS):
            self.partial_fit(X[start : start + FIT_BLOCK_ROWS], y[start : start + FIT_BLOCK_ROWS], classes=classes)
        return self

    def _labels(self, y, classes, first: bool) -> np.ndarray:
        """Indices into ``classes_`` of the labels ``y`` of a :meth:`partial_fit` block; at the first
        block, ``classes_`` is set from ``classes`` (every class) and ``y``."""
        y = np.asarray(y)
        if first:
            self.classes_ = np.unique(y if classes is None else np.concatenate([np.unique(classes), np.unique(y)]))
        labels = np.searchsorted(self.classes_, y)
        if np.any(labels >= len(self.classes_)) or np.any(self.classes_[np.minimum(labels, len(self.classes_) - 1)] != y):
            raise DataError(f"y holds classes not given at the first partial_fit (classes: {list(self.classes_)}).")
        return labels

    """Classifiers that score classes by cosine similarity; ``predict`` is the argmax of ``predict_proba``."""

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class KNNClassifier(_CosineVote):
    """k nearest neighbours by cosine similarity, each voting with weight ``exp(similarity / temperature)``.

    The k-NN evaluation of frozen features (DINO's: k=20, temperature 0.07): no
    training beyond storing the L2-normalised training rows, and ``predict_proba``
    is the normalised vote. The neighbours are found by :func:`featx.neighbors.nearest`
    (a block of queries against a block of the training rows at a time, never a
    queries x rows matrix; FAISS where installed), and their similarities computed again
    in float64, so that a row's vote never depends on the rows beside it.

    Parameters
    ----------
    n_neighbors : int, default=20
        Neighbours that vote (at most the training rows).
    temperature : float, default=0.07
        Sharpness of the similarity weights.
    batch_size : int, default=1024
        Rows per block of the search (the working set is about ``batch_size**2`` similarities).
    method : {"exact", "approximate"}, default="exact"
        "approximate": FAISS's inverted-file index, faster on large banks at a recall below 1
        (:func:`featx.neighbors.recall` measures it).
    engine : {"auto", "numpy", "faiss"}, default="auto"
        "auto": FAISS where installed, else NumPy.
    storage : {"auto", "float32", "float16"}, default="auto"
        How the training rows are held: float16 takes half the memory. "auto": float32 where the
        bank fits in the memory available with :data:`BANK_HEADROOM` to spare, else float16.
        A bank that does not fit so even in its storage is kept in a memory-mapped temporary file
        (the search reads it a block at a time; the system keeps what it can of it in memory):
        never a crash for want of memory, at the speed of the disk where memory is short.

    Attributes
    ----------
    classes_, n_features_in_
    train_ : ndarray of shape (n_train, n_features)
        The unit-length training rows, in ``storage_``.
    storage_ : str
        The storage chosen ("float32" or "float16").
    """

    name = "knn"
    description = "k nearest neighbours by cosine similarity, weighted vote (k=20)"
    search = {"n_neighbors": [10, 20, 50]}
    marker = "v"
    rank = 5

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "method": [StrOptions({"exact", "approximate"})],
        "engine": [StrOptions({"auto", "numpy", "faiss"})],
        "storage": [StrOptions({"auto", "float32", "float16"})],
    }

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, batch_size: int = 1024,
                 method: str = "exact", engine: str = "auto", storage: str = "auto"):  # fmt: skip
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.batch_size = batch_size
        self.method = method
        self.engine = engine
        self.storage = storage

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """The bank (float16 at least), a block of rows in float32, and the search's blocks of
        similarities (``batch_size`` squared)."""
        return 2 * rows * width + 8 * min(rows, FIT_BLOCK_ROWS) * width + 8 * 1024 * min(rows, 1024)

    def fit(self, X, y):
        for attr in ("train_", "labels_", "classes_", "_buffer", "_reserved", "storage_"):
            self.__dict__.pop(attr, None)
        return self._fit_in_blocks(X, y)

    def partial_fit(self, X, y, classes=None):
        """Add the rows ``X`` of classes ``y`` to the bank (in ``storage``: a float16 bank takes half
        the memory, whatever the cache holds). ``classes``: every class, at the first call."""
        first = not hasattr(self, "train_")
        if first:
            self._validate_params()
            self._search().resolved_engine()  # an engine this machine lacks fails now, not at predict
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], reset=first)
        check_classification_targets(y)
        labels = self._labels(y, classes, first)
        if first:
            room = max(self.__dict__.pop("_reserved", 0), len(X))
            self._buffer = self._new_bank(room, X.shape[1])
            self.train_ = self._buffer[:0]
            self.labels_ = np.empty(0, dtype=np.int64)
        self._append(unit_rows(X, dtype=np.dtype(self.storage_)), labels)
        return self

    def _storage(self) -> str:
        # heads saved before the option existed hold float32; those before "auto", what they were given
        chosen = getattr(self, "storage_", None) or getattr(self, "storage", "float32")
        return "float32" if chosen == "auto" else chosen  # not chosen yet (no bank)

    def _new_bank(self, rows: int, width: int) -> np.ndarray:
        """Room for a bank of ``rows`` x ``width``: ``storage_`` chosen (see ``storage``), in memory
        where it fits with :data:`BANK_HEADROOM` to spare, else in a memory-mapped temporary file."""
        import tempfile

        from ..streaming import available_memory

        free = available_memory()
        fits = lambda itemsize: free is None or rows * width * itemsize + BANK_HEADROOM <= free  # noqa: E731
        self.storage_ = self.storage if self.storage != "auto" else ("float32" if fits(4) else "float16")
        dtype = np.dtype(self.storage_)
        if fits(dtype.itemsize):
            return np.empty((rows, width), dtype)
        log.warning("knn: a bank of %s rows x %s in %s (%.1f GiB) does not fit in the memory available (%.1f GiB): "
                    "it is kept in a memory-mapped temporary file.", f"{rows:,}", width, self.storage_,
                    rows * width * dtype.itemsize / 2**30, free / 2**30)  # fmt: skip
        with tempfile.TemporaryFile(prefix="featx-knn-bank-") as f:  # the name goes at once; the mapping keeps it
            return np.memmap(f, dtype=dtype, mode="w+", shape=(rows, width))

    def _append(self, rows: np.ndarray, labels: np.ndarray) -> None:
        n = len(self.train_)
        if getattr(self, "_buffer", None) is not None and n + len(rows) <= len(self._buffer):
            self._buffer[n : n + len(rows)] = rows  # room reserved: no copy of the bank
            self.train_ = self._buffer[: n + len(rows)]
        else:
            self._buffer = None
            self.train_ = np.concatenate([self.train_, rows])
        self.labels_ = np.concatenate([self.labels_, labels])

    def merge(self, other: KNNClassifier) -> KNNClassifier:
        """Add the bank of ``other``, this head fitted on other rows (with the same ``classes``): the
        same as one head given both sets of rows, these first. Where :meth:`reserve` made room, the
        bank is filled in place."""
        if not hasattr(self, "train_"):
            self._validate_params()
            self.classes_, self.n_features_in_ = other.classes_, other.n_features_in_
            room = max(self.__dict__.pop("_reserved", 0), len(other.train_))
            self._buffer = self._new_bank(room, other.train_.shape[1])
            self.train_, self.labels_ = self._buffer[:0], np.empty(0, dtype=np.int64)
        _same_classes(self, other)
        self._append(np.asarray(other.train_, dtype=np.dtype(self.storage_)), other.labels_)
        return self

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` training rows, taken at the first :meth:`partial_fit`: the bank is
        then filled in place, never copied as it grows (:func:`featx.streaming.fit_in_blocks` says
        how many rows are coming)."""
        self._reserved = int(rows)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_reserved", None)  # room asked for and not yet taken
        if state.pop("_buffer", None) is not None:
            state["train_"] = np.asarray(self.train_)  # the rows filled, not the room left (a view: no copy)
        return state

    def _search(self) -> NeighborSearch:
        # heads saved before the search options existed have none: the exact search, as then
        return NeighborSearch(method=getattr(self, "method", "exact"), engine=getattr(self, "engine", "auto"),
                              block_rows=self.batch_size, storage=self._storage(),
                              progress=False)  # fmt: skip

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        k = min(self.n_neighbors, len(self.train_))
        _, idx = nearest(self.train_, k, X, search=self._search())
        Xu = _unit_rows(np.asarray(X, dtype=np.float64))
        out = np.zeros((len(X), len(self.classes_)))
        step = max(1, (32 << 20) // (8 * k * max(1, X.shape[1])))  # about 32 MiB of neighbour rows at a time
        for start in range(0, len(X), step):
            i = idx[start : start + step]
            found = i >= 0
            rows = _unit_rows(np.asarray(self.train_[np.where(found, i, 0).ravel()], dtype=np.float64))
            s = np.einsum("nd,nkd->nk", Xu[start : start + step], rows.reshape(len(i), k, -1))
            s = np.where(found, s, -np.inf)
            w = np.exp((s - s.max(axis=1, keepdims=True)) / self.temperature)
            votes = np.zeros((len(i), len(self.classes_)))
            np.add.at(votes, (np.repeat(np.arange(len(i)), k), self.labels_[np.where(found, i, 0)].ravel()), w.ravel())
            out[start : start + len(i)] = votes / votes.sum(axis=1, keepdims=True)
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
    rank = 6

    _parameter_constraints: dict = {"temperature": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 0.07):
        self.temperature = temperature

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """The class sums, and a block of rows in float64 with its unit-length copy."""
        return 8 * n_classes * width + 16 * min(rows, FIT_BLOCK_ROWS) * width

    def fit(self, X, y):
        for attr in ("sums_", "counts_", "classes_"):
            self.__dict__.pop(attr, None)
        return self._fit_in_blocks(X, y)

    def partial_fit(self, X, y, classes=None):
        """Add the rows ``X`` of classes ``y`` to the class sums (a cache read a block at a time
        gives the same centroids as :meth:`fit` on all of it). ``classes``: every class, at the
        first call, where a block may lack some."""
        first = not hasattr(self, "sums_")
        if first:
            self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=first)
        check_classification_targets(y)
        labels = self._labels(y, classes, first)
        if first:
            self.sums_ = np.zeros((len(self.classes_), X.shape[1]))
            self.counts_ = np.zeros(len(self.classes_), dtype=np.int64)
        np.add.at(self.sums_, labels, _unit_rows(np.asarray(X, dtype=np.float64)))
        self.counts_ += np.bincount(labels, minlength=len(self.classes_))
        self.centroids_ = _unit_rows(self.sums_ / np.maximum(self.counts_, 1)[:, None])
        return self

    def merge(self, other: NearestCentroidHead) -> NearestCentroidHead:
        """Add the class sums of ``other``, this head fitted on other rows (with the same
        ``classes``): the same centroids as one head given both sets of rows."""
        if not hasattr(self, "sums_"):
            self._validate_params()
            self.classes_, self.n_features_in_ = other.classes_, other.n_features_in_
            self.sums_, self.counts_ = np.zeros_like(other.sums_), np.zeros_like(other.counts_)
        _same_classes(self, other)
        self.sums_ = self.sums_ + other.sums_
        self.counts_ = self.counts_ + other.counts_
        self.centroids_ = _unit_rows(self.sums_ / np.maximum(self.counts_, 1)[:, None])
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
