"""Heads fitted on a feature cache a block of rows at a time, never all of it in memory.

A head that has scikit-learn's ``partial_fit`` (``centroid``: class sums; ``knn``: its bank)
learns from one block of rows after another; the others (``dense``, ``linear``, ``logreg``,
``svm``, ``svm-rbf``) have a ``fit_blocks`` that trains by minibatch on :func:`shuffled_batches`,
which holds one group of rows at a time. :func:`fit_in_blocks` reads the rows of an array, a memmap or an HDF5 dataset
(``FeatureSet.open()``) a block at a time, each block converted to float32 on its own: a float16
cache is never copied whole to float32. :func:`predict_proba_in_blocks` scores the same way.

How much memory a fit may take is set by its work, not by the machine: ``compare`` and ``fit``
hold a cache's rows in memory (as stored: a float16 cache stays float16) only where they fit in
:data:`MEMORY_FRACTION` of the memory available (the process's cgroup limit counted), and fit a
head from rows in memory only where the rows and the head's own working set
(:meth:`featx.heads.Head.working_set`) fit there too (:func:`fits_in_memory`); a head that can
learn a block at a time does so otherwise, whatever the machine has to spare.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from .errors import CacheError, HeadError

#: Rows per block: 65,536 rows of width 1,024 are 256 MiB of float32.
BLOCK_ROWS = 65_536
#: The share of the memory available that featx's arrays of one fit may take (the rows held and the
#: head's working set): a quarter, so that a fit leaves a shared machine to its other users.
MEMORY_FRACTION = 0.25


def available_memory() -> int | None:
    """Bytes of memory this process can still take now: Linux's MemAvailable, or less where its
    cgroup (a container, a job's limit) allows less (its limit minus its use, the page cache of
    files not counted: the kernel takes it back); else the physical memory; None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    left = _cgroup_room()
    if left is not None:
        found.append(left)
    if not found and (total := physical_memory()) is not None:
        found.append(total)
    return min(found) if found else None


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None if it cannot say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Limit minus use of this process's memory cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``),
    or None where there is no limit or no cgroup to read."""
    try:
        with open(proc) as f:
            lines = [line.strip().split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, path in lines:
        if controllers == "":  # cgroup v2
            base, limit, used = f"{root}{path}", "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit, used = f"{root}/memory{path}", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        try:
            with open(f"{base}/{limit}") as f:
                cap = f.read().strip()
            with open(f"{base}/{used}") as f:
                now = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if cap != "max" and int(cap) < 1 << 60:
            return max(0, int(cap) - now + _file_cache(f"{base}/memory.stat"))
    return None


def _file_cache(stat: str) -> int:
    """Bytes of file pages that a cgroup's use counts and the kernel takes back when memory is
    needed (the page cache of files read, such as a cache's blocks): active and inactive file
    pages of ``memory.stat`` (v1's ``total_`` lines where there are), 0 if unreadable."""
    try:
        with open(stat) as f:
            values = dict(line.split() for line in f if line.count(" ") == 1)
    except (OSError, ValueError):
        return 0
    prefix = "total_" if "total_active_file" in values else ""
    try:
        return sum(int(values.get(f"{prefix}{k}", 0)) for k in ("active_file", "inactive_file"))
    except ValueError:
        return 0


def memory_budget(available: int | None = None) -> int | None:
    """Bytes that one fit's arrays may take: :data:`MEMORY_FRACTION` of the memory available
    (None: unknown, no limit)."""
    available = available_memory() if available is None else available
    return None if available is None else int(MEMORY_FRACTION * available)


def fits_in_memory(nbytes: int, available: int | None = None) -> bool:
    """Whether arrays of ``nbytes`` fit in the :func:`memory_budget` (unknown memory: they fit)."""
    budget = memory_budget(available)
    return budget is None or nbytes <= budget


class Columns:
    """Columns ``cols`` of a 2-D array or HDF5 dataset, read with the rows asked for (a part of a
    cache's features, such as the last layer of a multi-layer embedding)."""

    def __init__(self, X, cols: slice):
        self.X, self.cols = X, cols
        self.shape = (X.shape[0], len(range(*cols.indices(X.shape[1]))))
        self.dtype = X.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        return np.asarray(self.X[rows])[..., self.cols]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class HDF5Rows:
    """The rows of one dataset of an HDF5 file (columns ``cols`` of it, optionally), by path and
    name: what a Dask worker is sent to read a cache's rows itself (an open ``h5py`` dataset cannot
    be sent). The file is opened read-only at the first read, in the process that reads."""

    def __init__(self, path: str, name: str, shape: tuple, dtype, cols: slice | None = None):
        self.path, self.name, self.cols, self.dtype = str(path), name, cols, np.dtype(dtype)
        width = shape[1] if cols is None else len(range(*cols.indices(shape[1])))
        self.shape, self._file = (int(shape[0]), int(width)), None

    @classmethod
    def of(cls, X) -> HDF5Rows | None:
        """The reference of ``X`` (an h5py dataset, or :class:`Columns` of one), or None for rows
        held in memory."""
        if isinstance(X, HDF5Rows):
            return X
        cols = None
        if isinstance(X, Columns):
            X, cols = X.X, X.cols
        if not hasattr(X, "id") or not hasattr(X, "file"):
            return None
        return cls(X.file.filename, X.name, X.shape, X.dtype, cols)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        out = self._file[self.name][rows]
        return out if self.cols is None else np.asarray(out)[..., self.cols]

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Transformed:
    """The rows of ``X`` passed through ``transform`` (float32 in, float32 out) as they are read:
    a cache's rows as a head's classifier takes them (scaled, mapped), never all computed at once."""

    def __init__(self, X, transform, width: int | None = None):
        self.X, self.transform = X, transform
        self.shape, self.dtype = (len(X), int(width or X.shape[1])), np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        return np.asarray(self.transform(np.asarray(self.X[rows], dtype=np.float32)), dtype=np.float32)


def read_rows(X, rows, dtype=np.float32) -> np.ndarray:
    """Rows ``rows`` of ``X`` as ``dtype`` (None: as stored). A cache file that cannot be read there
    (damaged after it was checked, or taken away) is a :class:`~featx.errors.CacheError` naming it,
    not a crash."""
    try:
        return np.asarray(X[rows], dtype=dtype)
    except OSError as exc:
        inner = X.X if isinstance(X, Columns) else X
        source = getattr(getattr(inner, "file", None), "filename", None) or getattr(inner, "path", None) or "the features"
        raise CacheError(f"Could not read rows of {source} ({exc}): the file is damaged or was removed while it was "
                         "read. Delete it and extract the features again.") from exc


def blocks(X, y=None, *, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(rows as float32, their labels)`` of ``X`` (and ``y``), ``block_rows`` at a time, in order."""
    for start in range(0, len(X), block_rows):
        part = read_rows(X, slice(start, start + block_rows))
        yield part, (None if y is None else np.asarray(y[start : start + block_rows]))


#: Rows read together, one contiguous piece of the file, when batches are drawn in a shuffled order.
CHUNK_ROWS = 256


def shuffled_batches(X, y, transform=None, *, batch_size: int, block_rows: int = BLOCK_ROWS, seed: int = 0,
                     part: tuple[int, int] = (0, 1), keep: np.ndarray | None = None,
                     ) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], int]:  # fmt: skip
    """A Keras data source of the rows of ``X`` (labels ``y``, in memory), never all in memory:
    ``(an endless generator of (X, y) batches, the batches of one epoch)``.

    Each epoch the rows are cut into chunks of :data:`CHUNK_ROWS`, the chunks shuffled and read
    in groups of about ``block_rows`` rows (chunks from all over the file, so that a cache sorted
    by class still gives batches of every class), each group's rows shuffled, passed through
    ``transform`` (as float32) and cut into batches of ``batch_size``.

    ``part=(k, parts)``: the rows of every ``parts``-th chunk from the ``k``-th only (a Dask
    worker's share of the file, from all over it). ``keep``: a boolean per row, the rows to train
    on (the others, held out, are read with their chunk and left out of every batch).
    """
    y = np.asarray(y)
    n, per_group = len(X), max(1, block_rows // CHUNK_ROWS)
    sizes = [min(CHUNK_ROWS, n - c * CHUNK_ROWS) for c in range(-(-n // CHUNK_ROWS))]
    kept = sizes if keep is None else np.add.reduceat(np.asarray(keep, dtype=np.int64), np.arange(0, n, CHUNK_ROWS))
    mine = np.arange(part[0], len(sizes), part[1])
    if keep is not None:
        mine = mine[np.asarray(kept)[mine] > 0]
    n_chunks = len(mine)
    rng = np.random.default_rng(seed)

    plan = mine[rng.permutation(n_chunks)]
    # batches of the first epoch: the others differ by a batch at most (the endless stream goes on)
    steps = sum(-(-sum(kept[c] for c in plan[i : i + per_group]) // batch_size) for i in range(0, n_chunks, per_group))

    def generate():
        order = plan
        while True:
            for i in range(0, len(order), per_group):
                group = np.sort(order[i : i + per_group])
                rows = np.concatenate([np.arange(c * CHUNK_ROWS, c * CHUNK_ROWS + sizes[c]) for c in group])
                Xg = np.concatenate([read_rows(X, slice(c * CHUNK_ROWS, c * CHUNK_ROWS + sizes[c])) for c in group])
                if keep is not None:
                    Xg, rows = Xg[keep[rows]], rows[keep[rows]]
                mix = rng.permutation(len(rows))
                Xg, yg = Xg.take(mix, axis=0), y[rows[mix]]
                if transform is not None:
                    Xg = np.asarray(transform(Xg), dtype=np.float32)
                Xg = np.ascontiguousarray(Xg)
                for b in range(0, len(rows), batch_size):
                    yield Xg[b : b + batch_size], yg[b : b + batch_size]
            order = mine[rng.permutation(n_chunks)]

    return generate(), steps


def scaler_in_blocks(X, *, block_rows: int = BLOCK_ROWS, progress: bool | None = None):
    """A :class:`~sklearn.preprocessing.StandardScaler` of the rows of ``X``, from one pass over
    its blocks (``partial_fit``: the same mean and variance as from all rows at once)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    with tqdm(total=len(X), desc="standardisation", unit="row", leave=False,
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        for part, _ in blocks(X, block_rows=block_rows):
            scaler.partial_fit(part)
            bar.update(len(part))
    return scaler


def sample_rows(X, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(row numbers, rows as float32)`` of ``rows`` rows of ``X`` drawn at random (seeded), in
    file order: a sample from all over a cache, read without reading it all."""
    pick = np.sort(np.random.default_rng(seed).choice(len(X), min(rows, len(X)), replace=False))
    return pick, take_rows(X, pick)


def take_rows(X, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows ``rows`` (increasing row numbers) of ``X`` as ``dtype`` (None: as stored): from a file,
    4,096 at a time (HDF5 reads a list of rows in increasing order, and slowly when it is long)."""
    if not hasattr(X, "id") and not isinstance(X, (Columns, HDF5Rows)):
        return read_rows(X, rows, dtype)
    if not len(rows):
        return read_rows(X, slice(0, 0), dtype)
    return np.concatenate([read_rows(X, rows[i : i + 4096], dtype) for i in range(0, len(rows), 4096)])


def fit_in_blocks(estimator, X, y, *, classes=None, block_rows: int = BLOCK_ROWS, progress: bool | None = None):
    """Fit ``estimator`` on ``X``, ``y`` a block of rows at a time, never all in memory: through its
    ``fit_blocks`` where it has one (the Keras heads: several passes), else its ``partial_fit``, in
    one pass; ``classes``: every class (default: those of ``y``, read once). Returns it."""
    if hasattr(estimator, "fit_blocks"):
        return estimator.fit_blocks(X, y, block_rows=block_rows, progress=progress)
    if not hasattr(estimator, "partial_fit"):
        raise HeadError(f"{type(estimator).__name__} learns from all its rows at once (it has no partial_fit or "
                        "fit_blocks): fit it on features held in memory, or use a head that learns a block at a time.")  # fmt: skip
    classes = np.unique(np.asarray(y)) if classes is None else np.asarray(classes)
    if hasattr(estimator, "reserve"):
        estimator.reserve(len(X))  # a head that keeps rows fills them in place
    with tqdm(total=len(X), desc=f"fitting {type(estimator).__name__}", unit="row", leave=False,
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        for part, labels in blocks(X, y, block_rows=block_rows):
            estimator.partial_fit(part, labels, classes=classes)
            bar.update(len(part))
    return estimator


def predict_in_blocks(estimator, X, *, block_rows: int = BLOCK_ROWS, progress: bool | None = None) -> np.ndarray:
    """``estimator.predict`` of the rows of ``X``, a block at a time (a progress bar: ``progress``,
    None for a terminal)."""
    return _each_block(estimator.predict, X, block_rows, progress, type(estimator).__name__)


def predict_proba_in_blocks(estimator, X, *, block_rows: int = BLOCK_ROWS, progress: bool | None = None) -> np.ndarray:
    """``estimator.predict_proba`` of the rows of ``X``, a block at a time."""
    return _each_block(estimator.predict_proba, X, block_rows, progress, type(estimator).__name__)


def _each_block(method, X, block_rows: int, progress, name: str) -> np.ndarray:
    out = []
    with tqdm(total=len(X), desc=f"scoring with {name}", unit="row", leave=False,
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        for part, _ in blocks(X, block_rows=block_rows):
            out.append(method(part))
            bar.update(len(part))
    return np.concatenate(out)
