"""Nearest neighbours by cosine similarity, in bounded memory: never an N x N matrix.

:func:`nearest` finds, for every query row, the ``k`` rows of a bank with the
highest cosine similarity. How it searches is one :class:`NeighborSearch`:

- ``method="exact"`` (default): every query is compared with every bank row,
  a block of queries against a block of the bank at a time (one matrix product
  each, the best ``k`` kept), so the working set is ``block_rows`` x
  ``block_rows`` similarities whatever the number of rows. With FAISS installed
  (``pip install 'featx[faiss]'``) the same exact search runs in FAISS
  (``faiss.knn``, the brute-force search of ``IndexFlatIP`` without its copy of
  the bank: 16,384 queries against 256 MiB of bank rows at a time); without
  it, in NumPy. Both give the same neighbours (up to ties). Time grows with
  queries x bank rows: quadratic for a search of a set against itself.
- ``method="approximate"``: a FAISS inverted-file index (``IndexIVFFlat``,
  ``nlist`` cells, ``nprobe`` of them visited per query): with the default
  2 x sqrt(rows) cells, time grows as rows^1.5 rather than rows^2, at a recall
  below 1 that :func:`recall` measures against exact (BENCHMARKS.md: a million
  rows of width 1,024 in 20 minutes on 2 cores).
  It needs FAISS.

``storage="float16"`` keeps the normalised bank in half the memory (the
similarities are still summed in float32): the NumPy search's bank where it
holds one, the approximate index. The exact FAISS search reads the bank as it
is given, a block at a time.

Rows are compared after ``center`` is subtracted (optional) and they are scaled
to unit length; a zero row is similar to nothing (similarity 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .errors import SettingsError
from .streaming import sample_rows, take_rows

METHODS = ("exact", "approximate")
ENGINES = ("auto", "numpy", "faiss")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class NeighborSearch:
    """How a nearest-neighbour search runs (see the module's docstring).

    Parameters
    ----------
    method : {"exact", "approximate"}
    engine : {"auto", "numpy", "faiss"}
        "auto": FAISS where installed, else NumPy (exact only).
    block_rows : int
        Rows per block: the working set is about ``block_rows**2`` similarities
        (4,096: 64 MiB) plus one block of each input.
    storage : {"float32", "float16"}
        How the normalised bank is held.
    nlist, nprobe : int
        Cells of the approximate index (default: about 2 x sqrt(rows)), and
        cells visited per query.
    progress : bool or None
        A progress bar over the query blocks (default: on a terminal).
    """

    method: str = "exact"
    engine: str = "auto"
    block_rows: int = 4096
    storage: str = "float32"
    nlist: int | None = None
    nprobe: int = 16
    progress: bool | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise SettingsError(f"The neighbour search method is one of {', '.join(METHODS)}. "
                                f"Received: method={self.method!r}")  # fmt: skip
        if self.engine not in ENGINES:
            raise SettingsError(f"The neighbour search engine is one of {', '.join(ENGINES)}. "
                                f"Received: engine={self.engine!r}")  # fmt: skip
        if self.storage not in ("float32", "float16"):
            raise SettingsError(f"storage is float32 or float16. Received: storage={self.storage!r}")
        for name in ("block_rows", "nprobe", "nlist"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise SettingsError(f"{name} must be a positive integer. Received: {name}={v!r}")

    def resolved_engine(self) -> str:
        """The engine this search uses on this machine: "faiss" or "numpy"."""
        if self.engine == "numpy" and self.method == "approximate":
            raise SettingsError("The approximate search runs in FAISS: use engine='faiss' or 'auto', "
                                "or method='exact'.")  # fmt: skip
        if self.engine == "faiss" or self.method == "approximate":
            if not faiss_available():
                raise SettingsError("This search needs FAISS, which is not installed: pip install 'featx[faiss]' "
                                    "(or search exactly, in NumPy).")  # fmt: skip
            return "faiss"
        if self.engine == "auto":
            return "faiss" if faiss_available() else "numpy"
        return "numpy"

    def describe(self, n_bank: int | None = None) -> str:
        """One line: what ran, e.g. "exact, FAISS knn in blocks, float32"."""
        engine = self.resolved_engine()
        if self.method == "approximate":
            nlist = self.nlist or (default_nlist(n_bank) if n_bank else "auto")
            return f"approximate, FAISS IndexIVFFlat (nlist {nlist}, nprobe {self.nprobe}), {self.storage}"
        kind = "FAISS knn in blocks" if engine == "faiss" else f"NumPy blocks of {self.block_rows} rows"
        return f"exact, {kind}, {self.storage}"


def default_nlist(n: int) -> int:
    """Cells of the approximate index for ``n`` bank rows: about 2 x sqrt(n) (2,000 at a million),
    at least 1, and at least 39 rows per cell (FAISS's own floor for training k-means)."""
    return int(max(1, min(2 * np.sqrt(n), n // 39)))


def unit_rows(X, center: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """``X`` minus ``center``, each row scaled to unit length (a zero row stays zero), as ``dtype``."""
    X = np.asarray(X, dtype=np.float32)
    if center is not None:
        X = X - np.asarray(center, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms > 0, norms, 1.0)).astype(dtype, copy=False)


class Stacked:
    """The rows of several arrays one after another, as one bank, without copying them.

    Slices and integer arrays of rows read from the parts; ``np.asarray`` joins them.
    """

    def __init__(self, *parts):
        self.parts = [p for p in parts if len(p)] or list(parts[:1])
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = [p[max(start - o, 0) : max(min(stop - o, len(p)), 0)]
                      for p, o in zip(self.parts, self.offsets[:-1])]  # fmt: skip
            return np.concatenate([np.asarray(x) for x in pieces])
        rows = np.asarray(key)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k, p in enumerate(self.parts):
            hit = np.flatnonzero(part == k)
            if len(hit):
                out[hit] = take_rows(p, rows[hit] - self.offsets[k], dtype=None) if np.all(np.diff(rows[hit]) > 0) else \
                    np.asarray(p[rows[hit] - self.offsets[k]])  # fmt: skip
        return out


def _blocks(X, rows: int, center, dtype):
    for start in range(0, len(X), rows):
        yield start, unit_rows(X[start : start + rows], center, dtype)


def nearest(bank, k: int, queries=None, *, search: NeighborSearch | None = None, center=None,
            desc: str = "neighbours") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The ``k`` most similar bank rows of every query row, by cosine similarity.

    Parameters
    ----------
    bank : array-like of shape (n, d)
        An array, memmap or HDF5 dataset: it is read a block at a time.
    k : int
        Neighbours per query (at most the bank rows; fewer columns then).
    queries : array-like of shape (m, d), optional
        Default: the bank itself, each row's own match left out.
    search : NeighborSearch, optional
    center : array of shape (d,), optional
        Subtracted from every row before the rows are scaled to unit length.

    Returns
    -------
    similarities : ndarray of float32, shape (m, k)
        Best first.
    indices : ndarray of int64, shape (m, k)
        Rows of the bank; -1 where fewer than ``k`` exist.
    """
    search = search or NeighborSearch()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SettingsError(f"k must be a positive integer. Received: k={k!r}")
    self_search = queries is None
    queries = bank if self_search else queries
    n, m = len(bank), len(queries)
    if n and m and bank.shape[1] != queries.shape[1]:
        raise SettingsError(f"The queries have {queries.shape[1]} columns and the bank {bank.shape[1]}: "
                            "they must come from the same features.")  # fmt: skip
    kk = min(k, n - 1 if self_search else n)
    sims = np.full((m, k), -np.inf, dtype=np.float32)
    idx = np.full((m, k), -1, dtype=np.int64)
    if kk <= 0 or m == 0:
        return sims, idx
    engine = search.resolved_engine()
    bar = tqdm(total=m, desc=desc, unit="row", disable=_quiet(search.progress), leave=False)
    try:
        if engine == "faiss":
            _faiss_search(bank, queries, kk + self_search, search, center, sims, idx, bar, self_search)
        else:
            _numpy_search(bank, queries, kk + self_search, search, center, sims, idx, bar, self_search)
    finally:
        bar.close()
    return sims, idx


def _quiet(progress) -> bool:
    if progress is None:
        import sys

        return not sys.stderr.isatty()
    return not progress


def _store(sims, idx, start, s, i, self_search: bool):
    """Write a query block's results, best first, dropping each row's own match in a self-search."""
    if self_search:
        rows = np.arange(start, start + len(s))[:, None]
        own = i == rows
        # each row's own index goes last (a duplicate of it may have taken its place: keep that)
        s = np.where(own, -np.inf, s)
        i = np.where(own, -1, i)
        order = np.argsort(-s, axis=1, kind="stable")
        s, i = np.take_along_axis(s, order, axis=1)[:, :-1], np.take_along_axis(i, order, axis=1)[:, :-1]
    kk = s.shape[1]
    sims[start : start + len(s), :kk] = s
    idx[start : start + len(s), :kk] = np.where(np.isfinite(s), i, -1)


def _numpy_search(bank, queries, k, search, center, sims, idx, bar, self_search):
    dtype = np.float16 if search.storage == "float16" else np.float32
    rows = search.block_rows
    held = None
    if hasattr(bank, "__array__") and not hasattr(bank, "id"):  # arrays (not HDF5): normalised once, held
        held = unit_rows(bank, center, dtype) if len(bank) * bank.shape[1] * 4 <= 2 << 30 else None
    for qs, q in _blocks(queries, rows, center, np.float32):
        best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(q), k), -1, dtype=np.int64)
        for bs, b in ((s, held[s : s + rows]) for s in range(0, len(bank), rows)) if held is not None else \
                _blocks(bank, rows, center, dtype):  # fmt: skip
            s = q @ b.astype(np.float32, copy=False).T
            if self_search and bs < qs + len(q) and qs < bs + len(b):  # this row's own match never competes
                own = np.arange(qs, qs + len(q))
                inside = (own >= bs) & (own < bs + len(b))
                s[np.flatnonzero(inside), own[inside] - bs] = -np.inf
            best_s, best_i = _merge(best_s, best_i, s, np.broadcast_to(np.arange(bs, bs + len(b)), s.shape), k)
        order = np.argsort(-best_s, axis=1, kind="stable")
        best_s, best_i = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)
        if self_search:  # own match was never a candidate: the extra column is the (k+1)-th best, dropped
            best_s, best_i = best_s[:, :-1], best_i[:, :-1]
        kk = best_s.shape[1]
        sims[qs : qs + len(q), :kk] = best_s
        idx[qs : qs + len(q), :kk] = np.where(np.isfinite(best_s), best_i, -1)
        bar.update(len(q))


def _faiss_index(bank, search, center, d: int):
    """The approximate search's inverted-file index of the bank (it holds a copy, in ``storage``)."""
    import faiss

    nlist = search.nlist or default_nlist(len(bank))
    quantizer = faiss.IndexFlatIP(d)
    if search.storage == "float16":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means on a seeded sample of 64 rows per cell (FAISS's floor is 39; more costs time, not recall)
    index.train(unit_rows(sample_rows(bank, 64 * nlist, seed=0)[1], center))
    index.nprobe = min(search.nprobe, nlist)
    for _, b in _blocks(bank, search.block_rows, center, np.float32):
        index.add(b)
    return index, quantizer  # the index uses the quantizer: it lives as long as the index


#: Bytes of bank rows (as float32) that FAISS's exact search holds at a time.
FAISS_BANK_BYTES = 256 << 20
#: Query rows FAISS's exact search takes at a time, at least (FAISS tiles its own work inside).
FAISS_QUERY_ROWS = 16_384


def _faiss_search(bank, queries, k, search, center, sims, idx, bar, self_search):
    if search.method == "exact":
        return _faiss_exact(bank, queries, k, search, center, sims, idx, bar, self_search)
    index, _quantizer = _faiss_index(bank, search, center, bank.shape[1])
    for qs, q in _blocks(queries, search.block_rows, center, np.float32):
        s, i = index.search(q, k)
        s = np.where(i < 0, -np.inf, s).astype(np.float32)
        _store(sims, idx, qs, s, i.astype(np.int64), self_search)
        bar.update(len(q))


def _faiss_exact(bank, queries, k, search, center, sims, idx, bar, self_search):
    """FAISS's exact inner-product search (``faiss.knn``: BLAS and a heap per query) of a block of
    queries against one block of the bank at a time, the best ``k`` kept: never a copy of the whole
    bank (an ``IndexFlatIP`` holds one), whatever its storage. With the bank in one block (up to
    :data:`FAISS_BANK_BYTES` as float32), it is normalised once."""
    import faiss

    bank_rows = max(search.block_rows, FAISS_BANK_BYTES // (4 * max(1, bank.shape[1])))
    one_block = len(bank) <= bank_rows
    held = unit_rows(bank[:], center) if one_block else None
    for qs, q in _blocks(queries, max(search.block_rows, FAISS_QUERY_ROWS), center, np.float32):
        best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(q), k), -1, dtype=np.int64)
        for bs, b in [(0, held)] if one_block else _blocks(bank, bank_rows, center, np.float32):
            s, i = faiss.knn(q, b, min(k, len(b)), faiss.METRIC_INNER_PRODUCT)
            s = np.where(i < 0, -np.inf, s).astype(np.float32)
            best_s, best_i = _merge(best_s, best_i, s, np.where(i < 0, -1, i + bs), k)
        order = np.argsort(-best_s, axis=1, kind="stable")
        _store(sims, idx, qs, np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1),
               self_search)  # fmt: skip
        bar.update(len(q))


def _merge(best_s, best_i, s, i, k: int):
    """The best ``k`` of two sets of candidates per row (similarities and indices)."""
    cand_s, cand_i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i], axis=1)
    if cand_s.shape[1] <= k:
        return cand_s, cand_i
    top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(cand_s, top, axis=1), np.take_along_axis(cand_i, top, axis=1)


def recall(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Share of the exact ``k`` neighbours that the approximate search found (recall@k)."""
    hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_idx, exact_idx))
    total = int((exact_idx >= 0).sum())
    return hits / total if total else 1.0
