"""Heads refitted on the cache: repeated splits and learning curves, with no backbone run again.

- :func:`repeat_accuracies`: a head fitted on ``repeats`` seeded splits of the
  same cached features (the split given, then train and test pooled and split
  again, stratified, with the next seeds; the head's own seed follows), for a
  mean and a standard deviation that say how much a number moves between runs.
- :func:`learning_curve`: a head fitted on seeded, class-balanced subsets of
  the train rows (``n`` images per class, for each ``n`` of ``train_sizes``),
  each scored on the whole test split: how many labelled images are needed.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from .data import stratified_split
from .errors import SettingsError


def _seeded(estimator, seed: int):
    est = clone(estimator)
    if "random_state" in est.get_params():
        est.set_params(random_state=seed)
    return est


def repeat_accuracies(estimator, data, repeats: int, seed: int, first: float) -> list[float]:
    """Accuracy on ``repeats`` seeded splits of ``data`` (a :class:`~featx.evaluation.LabelledFeatures`):
    ``first``, measured on the split given, then train and test pooled and split again
    (stratified, the same test share) with seeds ``seed + 1, seed + 2, ...``; the head's
    ``random_state`` is the split's seed."""
    out = [first]
    X = np.concatenate([np.asarray(data.X_train), np.asarray(data.X_test)])
    y = np.concatenate([np.asarray(data.y_train), np.asarray(data.y_test)])
    share = len(data.y_test) / len(y)
    for i in range(1, repeats):
        tr, te = stratified_split(y, share, seed + i)
        est = _seeded(estimator, seed + i).fit(X[tr], y[tr])
        out.append(float(np.mean(est.predict(X[te]) == y[te])))
    return out


def parse_train_sizes(text: str) -> list[int | str]:
    """``"1,5,10,all"`` -> ``[1, 5, 10, "all"]`` (images per class; ``all``: the whole train split)."""
    out: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            out.append("all")
            continue
        try:
            n = int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise SettingsError(f"train sizes are images per class (positive integers) or 'all'. Received: {part!r}")
        out.append(n)
    if not out:
        raise SettingsError("train sizes: name at least one, e.g. 5,50,all.")
    return sorted(set(out), key=lambda v: (v == "all", v if v != "all" else 0))


def balanced_subset(y: np.ndarray, per_class: int | str, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` rows of each class of ``y`` (all of a class that has fewer),
    drawn with ``seed``; ``"all"``: every row."""
    y = np.asarray(y)
    if per_class == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def learning_curve(estimator, data, train_sizes, repeats: int = 1, seed: int = 0) -> list[dict]:
    """One row per size and repeat: ``{"per_class", "n_train", "repeat", "accuracy"}``, the
    head fitted on subsets of ``data``'s train rows (a :class:`~featx.evaluation.LabelledFeatures`)
    and scored on all of its test rows.

    Each repeat draws its own subset (seed ``seed + repeat``) and seeds the head alike; "all"
    is fitted once per repeat too (the head's own seed is what varies there)."""
    rows = []
    X_train, y_train, X_test, y_test = data.X_train, np.asarray(data.y_train), data.X_test, data.y_test
    for size in train_sizes:
        for r in range(max(1, repeats)):
            idx = balanced_subset(y_train, size, seed + r)
            est = _seeded(estimator, seed + r).fit(np.asarray(X_train)[idx], y_train[idx])
            acc = float(np.mean(est.predict(X_test) == np.asarray(y_test)))
            rows.append({"per_class": size, "n_train": int(len(idx)), "repeat": r, "accuracy": round(acc, 4)})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of :func:`learning_curve` rows, per size (and whatever other
    keys the rows share, such as features and head)."""
    groups: dict = {}
    for row in rows:
        key = tuple((k, v) for k, v in row.items() if k not in ("repeat", "accuracy", "n_train"))
        groups.setdefault(key, []).append(row)
    out = []
    for key, rs in groups.items():
        accs = np.array([r["accuracy"] for r in rs])
        out.append({**dict(key), "n_train": int(np.mean([r["n_train"] for r in rs])), "repeats": len(rs),
                    "accuracy_mean": round(float(accs.mean()), 4),
                    "accuracy_std": round(float(accs.std(ddof=1)), 4) if len(accs) > 1 else 0.0})  # fmt: skip
    return out
