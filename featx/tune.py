"""Tune a head on cached features: a small grid per head, cross-validated on the train split.

The features are cached, so a search over a head's parameters costs seconds to
minutes, not re-runs of the backbone. :func:`tune_head` runs scikit-learn's
``GridSearchCV`` (stratified, shuffled, seeded folds) on the rows it is given,
which are the train split's only, then refits the best candidate on all of
them. The test split is never seen until the refitted head is scored.

The grids (:data:`SEARCHES`) are small on purpose: a few values around each
head's default, along the parameters that mattered in featx's measurements.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

#: What ``--tune`` searches, per head.
SEARCHES: dict[str, dict[str, list]] = {
    "dense": {"epochs": [10, 20, 30], "dropout": [0.3, 0.5]},
    "logreg": {"C": [0.01, 0.1, 1.0]},
    "svm": {"C": [0.001, 0.01, 0.1]},
    "svm-rbf": {"C": [1.0, 10.0], "gamma": ["scale"]},
    "knn": {"n_neighbors": [10, 20, 50]},
    "centroid": {"temperature": [0.03, 0.07, 0.2]},
}


#: Folds of the cross-validation that ``tune`` runs on the train split.
CV_FOLDS = 3


def tune_head(
    head: str,
    estimator: BaseEstimator,
    X: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = CV_FOLDS,
    random_state: int = 0,
    n_jobs: int | None = None,
) -> tuple[BaseEstimator, dict, float, float]:
    """Grid-search ``estimator`` (a head named ``head``) on ``X, y`` and refit the best.

    Parameters
    ----------
    head : str
        Registry name of the head; its grid is ``SEARCHES[head]``.
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
    >>> best, params, score, _ = tune_head("logreg", make_head("logreg"), X, y)
    >>> sorted(params), bool(score > 0.8)
    (['C'], True)
    """
    if head not in SEARCHES:
        raise ValueError(f"No search is defined for head {head!r}. Heads with one: {', '.join(SEARCHES)}.")
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    search = GridSearchCV(clone(estimator), SEARCHES[head], cv=folds, scoring="accuracy", n_jobs=n_jobs,
                          refit=True, error_score="raise")  # fmt: skip
    t0 = time.perf_counter()
    search.fit(X, y)
    return search.best_estimator_, dict(search.best_params_), float(search.best_score_), time.perf_counter() - t0
