"""Tune a head on cached features: a small grid per head, cross-validated on the train split.

The features are cached, so a search over a head's parameters costs seconds to
minutes, not re-runs of the backbone. :func:`tune_head` runs scikit-learn's
``GridSearchCV`` (stratified, shuffled, seeded folds) on the rows it is given,
which are the train split's only, then refits the best candidate on all of
them. The test split is never seen until the refitted head is scored.

The grids are small on purpose: a few values around each head's default, along
the parameters that mattered in featx's measurements. Each head class holds its
own (:attr:`featx.heads.Head.search`).
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from .errors import HeadError

#: Folds of the cross-validation that ``tune`` runs on the train split.
CV_FOLDS = 3


def search_grid(estimator: BaseEstimator) -> dict:
    """The grid that ``tune`` searches for ``estimator``: its head class's ``search``."""
    grid = getattr(type(estimator), "search", None)
    if not grid:
        raise HeadError(
            f"No search is defined for {type(estimator).__name__}: give its parameters instead of tuning."
        )
    return dict(grid)


def tune_head(
    estimator: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = CV_FOLDS,
    random_state: int = 0,
    n_jobs: int | None = None,
) -> tuple[BaseEstimator, dict, float, float]:
    """Grid-search ``estimator`` (a featx head) on ``X, y`` over its class's grid and refit the best.

    Parameters
    ----------
    estimator : estimator
        The head with its other parameters set; it is cloned, not changed.
    X, y : arrays
        The training rows only.
    cv : int, default=3
        Stratified folds, shuffled with ``random_state``.
    n_jobs : int, optional
        Parallel fits (joblib).

    Returns
    -------
    (fitted best estimator, best parameters, mean cross-validated accuracy, seconds)

    Examples
    --------
    >>> import numpy as np
    >>> from featx.heads import make_head
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(90, 5)); y = (X[:, 0] > 0).astype(int)
    >>> best, params, score, _ = tune_head(make_head("logreg"), X, y)
    >>> sorted(params), bool(score > 0.8)
    (['C'], True)
    """
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    search = GridSearchCV(clone(estimator), search_grid(estimator), cv=folds, scoring="accuracy", n_jobs=n_jobs,
                          refit=True, error_score="raise")  # fmt: skip
    t0 = time.perf_counter()
    search.fit(X, y)
    return (
        search.best_estimator_,
        dict(search.best_params_),
        float(search.best_score_),
        time.perf_counter() - t0,
    )
