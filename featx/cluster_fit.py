"""Heads fitted from a cache on Dask workers, each worker reading its own blocks of the file.

:func:`fit_on_cluster` is :func:`featx.streaming.fit_in_blocks` on a cluster. The workers are
sent the file's path and the dataset's name (:class:`featx.streaming.HDF5Rows`), never its rows,
so the file must be where the workers can read it (the same machine, or a shared disk). How a
head's fit is shared out is the head's own:

- a head with ``merge`` (``centroid``: class sums; ``knn``: its bank) is fitted on every block
  of rows as a task (``partial_fit``, every class given), and the parts are merged here in the
  order of the rows: the same head as one fitted in one process;
- a head whose ``fit_blocks`` takes a ``mapper`` has its pieces run as tasks: ``dense``'s
  networks are independent (same seeds, same networks: ``linear``'s one network is one task);
  ``logreg``, ``svm`` and ``svm-rbf`` train one model on every worker at once, each on its
  share of the file, averaged each epoch (:func:`featx.heads.sgd.fit_linear_in_blocks`): equal to
  one process's within the noise of SGD;
- any other head that learns in blocks is fitted whole by one task on a worker.

A worker lost during the fit (killed, out of memory) costs only its task: Dask runs it again on
a worker alive, and the head is the same. A task that loses every worker it is given (Dask's
``allowed-failures``) ends the fit with a one-line :class:`~featx.errors.ClusterError`.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager

import numpy as np
from sklearn.base import clone
from tqdm.auto import tqdm

from .errors import ClusterError, HeadError
from .streaming import BLOCK_ROWS, HDF5Rows, fit_in_blocks

log = logging.getLogger(__name__)


def _part(estimator, X: HDF5Rows, y: np.ndarray, classes: np.ndarray, start: int, stop: int):
    """A task: ``estimator`` fitted on rows ``start:stop`` of ``X`` (read here, on the worker)."""
    try:
        return estimator.partial_fit(np.asarray(X[start:stop], dtype=np.float32), y, classes=classes)
    finally:
        X.close()


def _whole(estimator, X: HDF5Rows, y: np.ndarray, block_rows: int):
    """A task: ``estimator`` fitted on every row of ``X``, read a block at a time on the worker."""
    try:
        return fit_in_blocks(estimator, X, y, block_rows=block_rows, progress=False)
    finally:
        X.close()


def _map_on(client):
    """A ``mapper`` that runs each call as a task on ``client``'s workers, results in order."""

    from .cluster import n_workers

    def mapper(function, items):
        return client.gather(client.map(function, list(items), pure=False))

    mapper.parts = n_workers(client)  # a fit that can split its rows takes one share per worker
    return mapper


def fit_on_cluster(estimator, X, y, client, *, classes=None, block_rows: int = BLOCK_ROWS,
                   progress: bool | None = None):  # fmt: skip
    """Fit ``estimator`` on the rows of ``X`` (an HDF5 dataset, or columns of one) and labels ``y``
    on the workers of ``client`` (a :class:`distributed.Client`), each worker reading its blocks of
    the file (see the module's docstring). Returns it, fitted."""
    ref = HDF5Rows.of(X)
    if ref is None:
        raise HeadError("Fitting on a cluster reads the features from their HDF5 file on the workers: these rows "
                        "are held in memory. Fit here, or pass the cache's datasets.")  # fmt: skip
    try:
        with _cluster_failures(type(estimator).__name__):
            return _fit(estimator, ref, np.asarray(y[:]), client, classes, block_rows, progress)
    finally:
        ref.close()  # the file as this process opened it to read (the standardisation's pass)


@contextmanager
def _cluster_failures(what: str):
    """The cluster's own failures (workers lost past Dask's retries, a closed cluster) as one
    line; an error raised by a task itself (a damaged file, a bug) stays what it is."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    try:
        yield
    except KilledWorker as exc:
        raise ClusterError(f"fitting {what} on the cluster: a task lost every worker that ran it ({exc}); a worker "
                           "may run out of memory: give workers more, or fit here without --cluster.") from None  # fmt: skip
    except (FutureCancelledError, CommClosedError) as exc:
        raise ClusterError(f"fitting {what} on the cluster: the cluster went away ({exc.__class__.__name__}); "
                           "nothing was saved: run again.") from None  # fmt: skip


def _fit(estimator, ref: HDF5Rows, y: np.ndarray, client, classes, block_rows: int, progress):
    if hasattr(estimator, "merge") and hasattr(estimator, "partial_fit"):
        classes = np.unique(y) if classes is None else np.asarray(classes)
        starts = range(0, len(ref), block_rows)
        futures = [client.submit(_part, clone(estimator), ref, y[s : s + block_rows], classes, s, min(s + block_rows, len(ref)),
                                 pure=False) for s in starts]  # fmt: skip
        if hasattr(estimator, "reserve"):
            estimator.reserve(len(ref))
        with tqdm(total=len(ref), desc=f"fitting {type(estimator).__name__} on the cluster", unit="row", leave=False,
                  disable=None if progress is None else not progress) as bar:  # fmt: skip
            for s, future in zip(starts, futures):  # merged in the order of the rows, each part let go once merged
                estimator.merge(future.result())
                future.release()
                bar.update(min(block_rows, len(ref) - s))
        return estimator
    fit_blocks = getattr(estimator, "fit_blocks", None)
    if fit_blocks is not None and "mapper" in inspect.signature(fit_blocks).parameters:
        return fit_blocks(ref, y, block_rows=block_rows, progress=progress, mapper=_map_on(client))
    if fit_blocks is None and not hasattr(estimator, "partial_fit"):
        return fit_in_blocks(estimator, ref, y)  # the one-line refusal
    return client.submit(_whole, clone(estimator), ref, y, block_rows, pure=False).result()
