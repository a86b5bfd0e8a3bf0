"""The dataset: images, labels, class names and a train/test split (:class:`Dataset`), and the
hashes that key every cache made of them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..images import ImageOptions


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and class names with a train/test split.

    Attributes
    ----------
    name : str
        Where the images came from ("sample", "cifar10" or a path).
    X_train, X_test : ndarray of uint8, shape (n, h, w, 3)
        RGB images.
    y_train, y_test : ndarray of int64, shape (n,)
        Labels, indices into ``class_names``.
    class_names : tuple of str
        Class names in label order.
    task : str
        "full", "source" or "target" (see :func:`make_task`).
    fingerprint : str
        Hash of the pixels, labels and class names; it keys every cache.
    info : dict
        How the data was read: split, sizes found and stored, resized images,
        skipped files, the pixel cache.
    images : ImageOptions or None
        How the images of a folder or archive were brought to the stored size
        (None for data that came as arrays).
    pixel_cache : Path or None
        The folder of the pixel cache that holds these images (None for data
        that came as arrays).
    files : (train names, test names) or None
        The file of every image, in row order, relative to the folder or
        archive it was read from (None for data that came as arrays).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    task: str = "full"
    info: dict = field(default_factory=dict)
    images: ImageOptions | None = None
    pixel_cache: Path | None = None
    files: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.X_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(X, y)`` of the "train" or "test" split."""
        if which not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test'. Received: split={which!r}")
        return (self.X_train, self.y_train) if which == "train" else (self.X_test, self.y_test)

    def describe(self) -> str:
        """A short human-readable summary: sizes, classes, image shape."""
        lines = [
            f"dataset      {self.name}",
            f"task         {self.task}",
            f"images       {len(self.X_train)} train, {len(self.X_test)} test, "
            f"shape {'x'.join(map(str, self.image_shape))} uint8 RGB",
            f"fingerprint  {self.fingerprint}",
            f"classes      {self.n_classes}",
        ]
        tr, te = np.bincount(self.y_train, minlength=self.n_classes), np.bincount(
            self.y_test, minlength=self.n_classes
        )
        width = max(len(c) for c in self.class_names)
        for i, c in enumerate(self.class_names):
            lines.append(f"  {i:>2} {c:<{width}}  {tr[i]:>6} train {te[i]:>6} test")
        for k, v in self.info.items():
            lines.append(f"{k:<12} {v}")
        if self.pixel_cache is not None:
            try:
                lines.append(f"pixel cache  {disk_bytes(self.pixel_cache) / 1e6:,.1f} MB in {self.pixel_cache}")
            except OSError:
                pass
        return "\n".join(lines)


def fingerprint_arrays(X_train, y_train, X_test, y_test, classes) -> str:
    h = hashlib.sha256()
    for a in (X_train, y_train, X_test, y_test):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update("\0".join(classes).encode())
    return h.hexdigest()[:16]


def hash_strings(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def source_stamp(path: Path) -> str:
    """Changes whenever the source changes: sizes and mtimes of every file."""
    if path.is_dir():
        stats = [
            f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}"
            for p in sorted(path.rglob("*"))
            if p.is_file() and (st := p.stat())
        ]
        return hash_strings(*stats)
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def disk_bytes(entry: Path) -> int:
    """What an entry of the pixel cache (a folder of arrays) takes on disk."""
    return sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
