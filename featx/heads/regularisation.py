"""How ``logreg`` and ``svm`` choose their regularisation ``C``: as the standard linear probe does.

The linear probe that papers report (DINOv2's ``eval/log_regression.py``, CLIP's) is not one fixed
``C``: the penalty is swept on a held-out part of the train rows, and the best value refitted on all
of them. featx does the same by default (``C="auto"``):

- :func:`validation_rows` holds out :data:`VALIDATION_FRACTION` of the train rows (at most
  :data:`MAX_VALIDATION_ROWS`), stratified and seeded; the test split is never read;
- in memory, :func:`sweep` fits the classifier along :data:`PATH`, from the strongest penalty up,
  each fit warm-started from the last where the solver can (lbfgs, to the head's ``PATH_TOL``), and stops once
  :data:`PATIENCE` values in a row score below the best so far (the weakly penalised fits are the
  slow ones, and past the best they only overfit);
- read in blocks, every value of :data:`PATH` is trained at once, one layer each, on the same
  batches (:func:`featx.heads.sgd.fit_linear_in_blocks` with several ``C``), and scored on the
  held-out rows;
- then the chosen ``C`` is fitted on every train row. The head keeps it (``C_``) and the path
  (``C_path_``), so the table shows it and a saved head holds it.

``C`` given by hand (``--param logreg:C=0.1``) is used as it is. Too few rows for a validation
split (a class under :data:`MIN_ROWS_PER_CLASS`, or under :data:`MIN_HELD_OUT` rows held out): the
head's ``FALLBACK_C``, and its note says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: The values of ``C`` tried, from the strongest penalty up: half a decade apart, 1e-5 to 1e2.
PATH = tuple(float(f"{c:.3g}") for c in np.logspace(-5, 2, 15))
#: The share of the train rows held out to score each value (stratified, seeded).
VALIDATION_FRACTION = 0.2
#: At most this many held-out rows (50,000: an accuracy's standard error of 0.2 points).
MAX_VALIDATION_ROWS = 50_000
#: The sweep in memory stops after this many values in a row that score below the best so far.
PATIENCE = 2
#: The fewest train rows of every class for a validation split.
MIN_ROWS_PER_CLASS = 5
#: The fewest held-out rows that choose ``C`` (fewer tell one accuracy from the next by chance alone).
MIN_HELD_OUT = 50


@dataclass(frozen=True)
class RegularisationPath:
    """The values of ``C`` tried, each one's accuracy on the held-out rows, the one chosen (the
    best; on a tie, the strongest penalty) and how many rows scored them."""

    values: tuple
    scores: tuple
    chosen: float
    rows: int

    def as_dict(self) -> dict:
        return {"C": list(self.values), "accuracy": [round(s, 6) for s in self.scores], "rows": self.rows}


def validation_rows(y, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows to fit, rows held out)`` of the train labels ``y``, stratified and seeded; None where
    some class has fewer than :data:`MIN_ROWS_PER_CLASS` rows, or fewer than :data:`MIN_HELD_OUT`
    rows would be held out (too few to choose on)."""
    from ..data import stratified_split

    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < MIN_ROWS_PER_CLASS or VALIDATION_FRACTION * len(y) < MIN_HELD_OUT:
        return None
    fraction = min(VALIDATION_FRACTION, MAX_VALIDATION_ROWS / len(y))
    return stratified_split(y, fraction, seed)


def choose(values, scores, rows: int) -> RegularisationPath:
    """The path of ``values`` and their ``scores``: the best chosen, the first (strongest penalty) of ties."""
    scores = [float(s) for s in scores]
    best = int(np.argmax(scores))
    return RegularisationPath(tuple(values[: len(scores)]), tuple(scores), float(values[best]), rows)


def sweep(
    fit_score: Callable[[float], float], rows: int, values=PATH, patience: int = PATIENCE
) -> RegularisationPath:
    """``fit_score(C)`` (a fit on the rows kept, its accuracy on the held-out ones) along ``values``
    in order, until ``patience`` values in a row score below the best so far."""
    scores: list[float] = []
    for c in values:
        scores.append(float(fit_score(c)))
        if len(scores) - 1 - int(np.argmax(scores)) >= patience:
            break
    return choose(values, scores, rows)


def held_out_accuracy(X, y_idx, held: np.ndarray, W: np.ndarray, b: np.ndarray, transform,
                      block_rows: int) -> np.ndarray:  # fmt: skip
    """The accuracy of each of the linear layers ``W`` ``(values, width, classes)``, ``b`` on the
    rows ``held`` (increasing row numbers) of ``X``, read a block at a time and ``transform``-ed."""
    from ..streaming import read_rows

    correct = np.zeros(len(W), dtype=np.int64)
    y_idx, held = np.asarray(y_idx), np.asarray(held)
    W32, b32 = np.asarray(W, dtype=np.float32), np.asarray(b, dtype=np.float32)
    for start in range(0, len(X), block_rows):
        mine = held[(held >= start) & (held < start + block_rows)]
        if not len(mine):
            continue
        part = np.asarray(
            transform(read_rows(X, slice(start, start + block_rows))[mine - start]), dtype=np.float32
        )
        scores = np.einsum("nw,kwc->knc", part, W32) + b32[:, None, :]
        correct += np.sum(scores.argmax(axis=-1) == y_idx[mine][None, :], axis=1)
    return correct / max(1, len(held))
