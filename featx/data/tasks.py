"""Tasks and splits: the split-CIFAR source and target tasks of a dataset, and seeded stratified splits."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .dataset import Dataset, hash_strings

#: Tasks accepted by :func:`make_task`.
TASKS = ("full", "source", "target")


def make_task(ds: Dataset, task: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Select the classes of a task.

    - "full": all classes, the dataset's own train/test split.
    - "source": the first half of the classes (CIFAR-10: 0-4), the images the
      ``trunk`` backbone learns from.
    - "target": the second half (CIFAR-10: 5-9), relabelled from 0, the
      classes transferred to.

    As in the split-CIFAR protocol, "source" and "target" pool the train and
    test images of their classes and split them 80/20 again, stratified and
    seeded (``test_fraction``, ``seed``).
    """
    if task not in TASKS:
        raise DataError(f"Unknown task. Expected one of {', '.join(TASKS)}. Received: task={task!r}")
    if task == "full" or ds.task == task:
        return ds
    if ds.task != "full":
        raise DataError(f"Cannot make task {task!r} from a dataset that is already {ds.task!r}.")
    n = ds.n_classes
    if n < 4:
        raise DataError(
            f"The '{task}' task splits the classes in two halves and needs at least 4 classes; "
            f"'{ds.name}' has {n}. Use task='full'."
        )
    lo, hi = (0, n // 2) if task == "source" else (n // 2, n)
    X = np.concatenate([ds.X_train, ds.X_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    keep = (y >= lo) & (y < hi)
    X, y = X[keep], y[keep] - lo
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    files = None
    if ds.files is not None:
        names = np.array(ds.files[0] + ds.files[1], dtype=object)[keep]
        files = (tuple(names[train_idx]), tuple(names[test_idx]))
    fp = hash_strings(ds.fingerprint, task, str(seed), str(test_fraction))
    info = dict(ds.info, split=f"pooled train+test, stratified {1 - test_fraction:.0%}/"
                f"{test_fraction:.0%}, seed {seed}", classes_from=f"{lo}-{hi - 1} of {ds.name}")
    return Dataset(
        name=ds.name,
        X_train=X[train_idx],
        y_train=y[train_idx],
        X_test=X[test_idx],
        y_test=y[test_idx],
        class_names=tuple(ds.class_names[lo:hi]),
        fingerprint=fp,
        task=task,
        info=info,
        images=ds.images,
        pixel_cache=ds.pixel_cache,
        files=files,
    )


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices ``0..len(y)-1`` into (train, test), each sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
