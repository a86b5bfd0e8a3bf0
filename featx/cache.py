"""The feature cache: every HDF5 read and write in featx lives here.

One file per feature set, ``<cache_dir>/features/<backbone>-<data>-<task>-<key>.h5``,
and one file of per-image embeddings per backbone setting,
``<cache_dir>/embeddings/<backbone>-<key>.h5`` (see :class:`EmbeddingCache`).
The key is a hash of every setting that made the features; the settings are
stored as the file's attrs, and a file whose attrs do not hash to its name is
never reused.

Crash safety: features are written to ``<name>.partial.h5`` and the file is
renamed to ``<name>.h5`` only once both splits are complete, so a ``.h5`` file
is complete by construction. In the partial file each split's ``n_done`` attr
is updated (and the file flushed) after each batch; a later run resumes from
there. A partial file that cannot be read is started again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .config import cache_dir as resolve_cache_dir
from .config import slug
from .errors import CacheError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "test")
# Chunks of about 256 KiB: row-aligned, within HDF5's sweet spot of 10 KiB to 1 MiB.
_CHUNK_BYTES = 256 * 1024


def feature_key(settings: dict) -> str:
    """Hash of the settings that made a feature set (canonical JSON, sha256, 16 hex digits)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def feature_path(settings: dict, cache_dir=None) -> Path:
    """Path of the complete feature file for ``settings``."""
    name = "-".join(slug(str(settings.get(k, ""))) for k in ("backbone", "data", "task"))
    return resolve_cache_dir(cache_dir) / "features" / f"{name}-{feature_key(settings)}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.stem + ".partial.h5")


def lock_path(path: Path) -> Path:
    return path.with_name(path.stem + ".lock")


@dataclass
class FeatureSet:
    """A complete cached feature set.

    Attributes
    ----------
    path : Path
        The HDF5 file.
    settings : dict
        What made the features (the cache key is their hash).
    info : dict
        Everything else recorded: class names, library versions, times, sizes.
    """

    path: Path
    settings: dict
    info: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"])

    @property
    def key(self) -> str:
        return feature_key(self.settings)

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read ``(X_train, y_train, X_test, y_test)`` into memory (checked against the file's
        per-chunk checksums: a damaged file raises :class:`CacheError`, never returns)."""
        with _reading(self.path), h5py.File(self.path, "r") as f:
            return f["train/X"][:], f["train/y"][:], f["test/X"][:], f["test/y"][:]

    @contextmanager
    def open(self):
        """Memory-light access: yields ``(X_train, y_train, X_test, y_test)`` as h5py datasets.

        Slicing a dataset reads only those rows; they are valid inside the ``with`` block.
        """
        with h5py.File(self.path, "r") as f:
            yield f["train/X"], f["train/y"], f["test/X"], f["test/y"]


@contextmanager
def _reading(path: Path):
    """Reads of a feature file: a checksum that fails (or any read error) is a :class:`CacheError`."""
    try:
        yield
    except OSError as exc:
        raise CacheError(
            f"corrupt cache file {path} ({' '.join(str(exc).split())[:160]}): run again with --force "
            "(force=True) to recompute it."
        ) from None


def verify(path: str | os.PathLike) -> None:
    """Read every row of a feature file, so that HDF5 checks every chunk's checksum (fletcher32);
    raises :class:`CacheError` on the first damaged one."""
    with _reading(Path(path)), h5py.File(path, "r") as f:
        for s in SPLITS:
            for name in ("X", "y"):
                ds = f[f"{s}/{name}"]
                step = ds.chunks[0] * 16 if ds.chunks else len(ds)
                for start in range(0, len(ds), max(1, step)):
                    ds[start : start + step]


def read_features(path: str | os.PathLike, *, check: bool = True) -> FeatureSet:
    """Open a complete feature file and check it; raises :class:`CacheError` if it is not sound.

    With ``check``, every row is read once so that the file's per-chunk checksums are checked:
    a file damaged in place (same size, bytes overwritten) is found here, not used.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"No feature cache at '{path}'. Run `python cli.py extract` first.")
    try:
        with h5py.File(path, "r") as f:
            settings = json.loads(f.attrs["settings"])
            info = json.loads(f.attrs["info"])
            complete = bool(f.attrs.get("complete", False))
            shapes = {s: (f[f"{s}/X"].shape, f[f"{s}/y"].shape, int(f[s].attrs["n_total"])) for s in SPLITS}
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"Feature cache '{path}' is unreadable or incomplete ({exc}).") from None
    if not complete:
        raise CacheError(f"Feature cache '{path}' is not marked complete.")
    if not path.name.endswith(f"-{feature_key(settings)}.h5"):
        raise CacheError(f"Feature cache '{path}': its recorded settings do not match its key.")
    for s, (xs, ys, n) in shapes.items():
        if xs[0] != n or ys[0] != n:
            raise CacheError(f"Feature cache '{path}': split {s} holds {xs[0]} rows, expected {n}.")
    if check:
        verify(path)
    return FeatureSet(path, settings, info)


def find_features(settings: dict, cache_dir=None) -> FeatureSet | None:
    """The complete, sound feature set for ``settings``, or None.

    A file that exists but is unsound (truncated, corrupt, mismatched) is
    deleted with a warning, so that it is rebuilt.
    """
    path = feature_path(settings, cache_dir)
    if not path.exists():
        # named by an earlier file-naming rule: the key is what counts
        named = sorted(path.parent.glob(f"*-{feature_key(settings)}.h5"))
        if not named:
            return None
        named[0].replace(path)
    try:
        fs = read_features(path)
    except CacheError as exc:
        logger.warning(f"feature cache {path.name} is damaged ({exc}); rebuilding it")
        path.unlink(missing_ok=True)
        return None
    if fs.settings != json.loads(json.dumps(settings, default=str)):
        logger.warning(f"feature cache {path.name} records other settings; rebuilding it")
        path.unlink(missing_ok=True)
        return None
    return fs


class PartialWriter:
    """Appends feature batches to a partial file; resumable, finished by :meth:`finalize`."""

    def __init__(self, path: Path, settings: dict, info: dict, sizes: dict[str, int], dim: int, dtype: str):
        self.path = path
        self.partial = partial_path(path)
        self.settings, self.sizes, self.dim, self.dtype = settings, sizes, dim, np.dtype(dtype)
        self.file = self._open_or_create(info)

    def _open_or_create(self, info: dict) -> h5py.File:
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                ok = (
                    f.attrs.get("key") == feature_key(self.settings)
                    and all(f[f"{s}/X"].shape[1] == self.dim for s in SPLITS)
                    and all(int(f[s].attrs["n_total"]) == self.sizes[s] for s in SPLITS)
                )
                if ok:
                    for s in SPLITS:  # drop rows written after the last recorded batch
                        n = int(f[s].attrs["n_done"])
                        if f[f"{s}/X"].shape[0] != n:
                            f[f"{s}/X"].resize(n, axis=0)
                            f[f"{s}/y"].resize(n, axis=0)
                    return f
                f.close()
                logger.warning(f"partial cache {self.partial.name} does not match; starting again")
            except (OSError, KeyError, ValueError) as exc:
                logger.warning(f"partial cache {self.partial.name} is unreadable ({exc.__class__.__name__}); "
                               "starting again")  # fmt: skip
            self.partial.unlink(missing_ok=True)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.partial, "w")
        f.attrs["key"] = feature_key(self.settings)
        f.attrs["settings"] = json.dumps(self.settings, sort_keys=True, default=str)
        f.attrs["info"] = json.dumps(info, sort_keys=True, default=str)
        f.attrs["complete"] = False
        for k, v in self.settings.items():  # also one attr each, for h5dump and HDFView
            f.attrs[f"setting_{k}"] = str(v)
        rows = int(max(1, min(4096, _CHUNK_BYTES // max(1, self.dim * self.dtype.itemsize))))
        for s in SPLITS:
            g = f.create_group(s)
            # fletcher32: a checksum per chunk, checked by HDF5 on every read
            g.create_dataset("X", shape=(0, self.dim), maxshape=(None, self.dim), dtype=self.dtype,
                             chunks=(rows, self.dim), fletcher32=True)  # fmt: skip
            g.create_dataset("y", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(max(rows, 1024),),
                             fletcher32=True)  # fmt: skip
            g.attrs["n_total"] = self.sizes[s]
            g.attrs["n_done"] = 0
        f.flush()
        return f

    def n_done(self, split: str) -> int:
        return int(self.file[split].attrs["n_done"])

    def append(self, split: str, X: np.ndarray, y: np.ndarray) -> None:
        g = self.file[split]
        n = int(g.attrs["n_done"])
        m = n + len(X)
        g["X"].resize(m, axis=0)
        g["y"].resize(m, axis=0)
        g["X"][n:m] = X.astype(self.dtype, copy=False)
        g["y"][n:m] = y
        # Rows first, then the count that vouches for them.
        self.file.flush()
        g.attrs["n_done"] = m
        self.file.flush()

    def finalize(self, extra_info: dict) -> FeatureSet:
        for s in SPLITS:
            if self.n_done(s) != self.sizes[s]:
                raise CacheError(f"split {s} has {self.n_done(s)} of {self.sizes[s]} rows; cannot finalize")
        info = json.loads(self.file.attrs["info"])
        info.update(extra_info)
        self.file.attrs["info"] = json.dumps(info, sort_keys=True, default=str)
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.partial, self.path)  # atomic: only complete files carry the final name
        return read_features(self.path)

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


@contextmanager
def locked(path: Path, timeout: float | None = None):
    """Hold the lock of a feature file: a second writer waits, or fails after ``timeout`` s."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info(f"another featx process is extracting {path.name}; waiting for it")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise CacheError(
                f"{path.name} is being written by another featx process (lock {lock_path(path)}). "
                "Wait for it to finish and run again; the lock is released when that process ends."
            ) from None
    try:
        yield
    finally:
        lock.release()


def embedding_path(settings: dict, cache_dir=None) -> Path:
    """Path of the per-image embedding file for ``settings``."""
    name = slug(str(settings.get("backbone", "")))
    return resolve_cache_dir(cache_dir) / "embeddings" / f"{name}-{feature_key(settings)}.h5"


class EmbeddingCache:
    """Embeddings of single images for one backbone setting, looked up by image content.

    One HDF5 file per setting holds ``keys`` (n, 16) uint8, the content digests
    of the images (:func:`featx.images.image_digest`), and ``X`` (n, d), their
    embeddings; its attrs record the settings. Rows are appended, and the
    ``n`` attr that vouches for them is written after them, so rows of an
    interrupted write are never read. Every open of the file happens under a
    file lock held only for that read or write, so processes that share the
    cache take turns. A file that cannot be read is started again.

    Parameters
    ----------
    settings : dict
        What makes the embeddings (backbone, weights identity, size,
        interpolation, pooling, dtype, Keras backend); their hash names the file.
    dim : int
        Embedding width.
    dtype : str
        Storage type, "float32" or "float16".
    cache_dir : path, optional
    lock_timeout : float
        Seconds to wait for another process's read or write.
    """

    # Per process: path -> (file id, rows indexed, {digest: row}), so a lookup reads only new keys.
    _indexes: dict = {}
    _guard = threading.Lock()

    def __init__(
        self, settings: dict, dim: int, dtype: str = "float32", cache_dir=None, lock_timeout: float = 600
    ):
        self.settings = settings
        self.dim, self.dtype = int(dim), np.dtype(dtype)
        self.path = embedding_path(settings, cache_dir)
        self.lock_timeout = lock_timeout

    @contextmanager
    def _locked(self):
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_path(self.path)), timeout=self.lock_timeout):
                yield
        except Timeout:
            raise CacheError(
                f"Waited {self.lock_timeout} s for the embedding cache {self.path} (lock "
                f"{lock_path(self.path)}); another process holds it. Run again when it is done."
            ) from None

    def _sound(self, f: h5py.File) -> bool:
        return (
            f.attrs.get("key") == feature_key(self.settings)
            and f["X"].shape[1] == self.dim
            and f["X"].dtype == self.dtype
            and f["keys"].shape[1] == 16
            and 0 <= int(f.attrs["n"]) <= min(f["X"].shape[0], f["keys"].shape[0])
        )

    def _discard(self, why: str) -> None:
        logger.warning("embedding cache %s %s; starting it again", self.path, why)
        self.path.unlink(missing_ok=True)

    def _open(self, mode: str) -> h5py.File | None:
        """Open the file (under the lock); None if there is none, or it was unsound and is now gone."""
        if not self.path.exists():
            return None
        try:
            f = h5py.File(self.path, mode)
        except (OSError, ValueError) as exc:
            self._discard(f"is unreadable ({exc.__class__.__name__})")
            return None
        try:
            ok = self._sound(f)
        except (OSError, KeyError, ValueError):
            ok = False
        if not ok:
            f.close()
            self._discard("does not match its settings or is damaged")
            return None
        return f

    def _index(self, f: h5py.File) -> dict:
        """This process's digest -> row map for the open file, brought up to its ``n`` rows."""
        n = int(f.attrs["n"])
        fid = str(f.attrs["id"])
        with self._guard:
            known_id, done, index = self._indexes.get(str(self.path), (None, 0, {}))
            if known_id != fid or done > n:
                done, index = 0, {}
            if n > done:
                keys = f["keys"][done:n]
                index = dict(index)
                index.update(zip((k.tobytes() for k in keys), range(done, n)))
                self._indexes[str(self.path)] = (fid, n, index)
            return index

    def get(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Look up images by digest: returns ``(positions, rows)``.

        ``positions`` are the indices into ``digests`` that were found and
        ``rows`` (len(positions), dim) their embeddings, in the storage dtype.
        """
        with self._locked():
            f = self._open("r")
            if f is None:
                return np.zeros(0, np.intp), np.zeros((0, self.dim), self.dtype)
            with f:
                index = self._index(f)
                rows = np.array([index.get(d, -1) for d in digests], dtype=np.intp)
                positions = np.flatnonzero(rows >= 0)
                return positions, _read_rows(f["X"], rows[positions])

    def put(self, digests: list[bytes], X: np.ndarray) -> int:
        """Add embeddings; digests already stored are skipped. Returns how many rows were added."""
        if len(digests) != len(X):
            raise ValueError(f"{len(digests)} digests for {len(X)} embeddings")
        with self._locked():
            f = self._open("r+")
            if f is None:
                f = self._create()
            with f:
                index = self._index(f)
                new, seen = [], set()
                for i, d in enumerate(digests):
                    if d not in index and d not in seen:
                        seen.add(d)
                        new.append(i)
                if not new:
                    return 0
                n = int(f.attrs["n"])
                m = n + len(new)
                for name, rows in (("keys", np.frombuffer(b"".join(digests[i] for i in new), np.uint8)
                                    .reshape(-1, 16)), ("X", np.asarray(X)[new].astype(self.dtype, copy=False))):  # fmt: skip
                    f[name].resize(m, axis=0)  # also drops rows of an interrupted write past n
                    f[name][n:m] = rows
                # Rows first, then the count that vouches for them.
                f.flush()
                f.attrs["n"] = m
                f.flush()
                return len(new)

    def _create(self) -> h5py.File:
        f = h5py.File(self.path, "w")
        f.attrs["key"] = feature_key(self.settings)
        f.attrs["settings"] = json.dumps(self.settings, sort_keys=True, default=str)
        f.attrs["id"] = uuid.uuid4().hex
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for k, v in self.settings.items():
            f.attrs[f"setting_{k}"] = str(v)
        rows = int(max(1, min(4096, _CHUNK_BYTES // max(1, self.dim * self.dtype.itemsize))))
        f.create_dataset("keys", shape=(0, 16), maxshape=(None, 16), dtype=np.uint8, chunks=(4096, 16))
        f.create_dataset("X", shape=(0, self.dim), maxshape=(None, self.dim), dtype=self.dtype,
                         chunks=(rows, self.dim))  # fmt: skip
        f.attrs["n"] = 0
        f.flush()
        return f

    def __len__(self) -> int:
        with self._locked():
            f = self._open("r")
            if f is None:
                return 0
            with f:
                return int(f.attrs["n"])


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for any row order, read as a few contiguous slices (h5py's fancy indexing is slow)."""
    out = np.empty((len(rows), ds.shape[1]), ds.dtype)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    block = max(1, (8 << 20) // (ds.shape[1] * ds.dtype.itemsize))  # read at most ~8 MiB at a time
    i = 0
    while i < len(srt):
        lo = srt[i]
        j = int(np.searchsorted(srt, lo + block, side="left"))
        part = ds[lo : srt[j - 1] + 1]
        out[order[i:j]] = part[srt[i:j] - lo]
        i = j
    return out


def list_embeddings(cache_dir=None) -> list[dict]:
    """Every per-image embedding file in the cache: settings, images, size, date."""

    def describe(f: h5py.File) -> dict:
        return {"status": "ok", "images": int(f.attrs["n"]), "dim": int(f["X"].shape[1])}

    return _list_files(resolve_cache_dir(cache_dir) / "embeddings", describe)


def list_features(cache_dir=None) -> list[dict]:
    """Every feature file in the cache: settings, rows, size, date; partial files too."""

    def describe(f: h5py.File) -> dict:
        row = {
            "status": "complete" if f.attrs.get("complete") else "partial",
            "dim": int(f["train/X"].shape[1]),
        }
        for s in SPLITS:
            row[s] = f"{int(f[s].attrs['n_done'])}/{int(f[s].attrs['n_total'])}"
        try:  # the key holds the weights' hash alone; the record says a random init made them (the trunk's)
            if json.loads(f.attrs["info"]).get("spec", {}).get("weights") == "none":
                row["weights"] = "none"
        except (KeyError, ValueError, AttributeError):
            pass
        return row

    return _list_files(resolve_cache_dir(cache_dir) / "features", describe)


def _list_files(root: Path, describe) -> list[dict]:
    rows = []
    for p in sorted(root.glob("*.h5")) if root.exists() else []:
        st = p.stat()
        row = {"file": p.name, "bytes": st.st_size,
               "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))}  # fmt: skip
        try:
            with h5py.File(p, "r") as f:
                row.update(json.loads(f.attrs["settings"]))
                row.update(describe(f))
        except (OSError, KeyError, ValueError):
            row["status"] = "unreadable"
        rows.append(row)
    return rows
