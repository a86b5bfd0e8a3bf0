"""Heads fitted on a feature cache a block of rows at a time, never all of it in memory.

A head that has scikit-learn's ``partial_fit`` (``centroid``: class sums; ``knn``: its bank, in
float16 if asked) learns from one block of rows after another. :func:`fit_in_blocks` reads the
rows of an array, a memmap or an HDF5 dataset (``FeatureSet.open()``) a block at a time, each
block converted to float32 on its own: a float16 cache is never copied whole to float32.
:func:`predict_proba_in_blocks` scores the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from .errors import HeadError

#: Rows per block: 65,536 rows of width 1,024 are 256 MiB of float32.
BLOCK_ROWS = 65_536


def blocks(X, y=None, *, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(rows as float32, their labels)`` of ``X`` (and ``y``), ``block_rows`` at a time, in order."""
    for start in range(0, len(X), block_rows):
        part = np.asarray(X[start : start + block_rows], dtype=np.float32)
        yield part, (None if y is None else np.asarray(y[start : start + block_rows]))


def fit_in_blocks(estimator, X, y, *, classes=None, block_rows: int = BLOCK_ROWS, progress: bool | None = None):
    """Fit ``estimator`` (a head with ``partial_fit``) on ``X``, ``y`` one block of rows at a time,
    in one pass; ``classes``: every class (default: those of ``y``, read once). Returns it."""
    if not hasattr(estimator, "partial_fit"):
        raise HeadError(f"{type(estimator).__name__} learns from all its rows at once (it has no partial_fit): "
                        "fit it on features held in memory, or use a head that streams (centroid, knn).")  # fmt: skip
    classes = np.unique(np.asarray(y)) if classes is None else np.asarray(classes)
    with tqdm(total=len(X), desc=f"fitting {type(estimator).__name__}", unit="row", leave=False,
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        for part, labels in blocks(X, y, block_rows=block_rows):
            estimator.partial_fit(part, labels, classes=classes)
            bar.update(len(part))
    return estimator


def predict_proba_in_blocks(estimator, X, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """``estimator.predict_proba`` of the rows of ``X``, a block at a time."""
    return np.concatenate([estimator.predict_proba(part) for part, _ in blocks(X, block_rows=block_rows)])
