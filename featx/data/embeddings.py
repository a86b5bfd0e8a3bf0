"""Embeddings made by another tool (``compare --features``, ``audit --features``): an ``.npz`` or
``.h5`` file of ``X_train``, ``y_train``, ``X_test``, ``y_test``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset, hash_strings, source_stamp

EMBEDDING_KEYS = ("X_train", "y_train", "X_test", "y_test")


def _text(v) -> str:
    """A label or class name as text: HDF5 gives strings as bytes."""
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def load_embeddings(path, *, on_disk=None, files=None) -> tuple[Dataset, tuple]:
    """Embeddings made by another tool, for ``compare --features``: an ``.npz`` or ``.h5`` file
    holding ``X_train``, ``y_train``, ``X_test``, ``y_test`` (labels as integers or strings) and
    optionally ``class_names``.

    Labels are classes by their values: integers index ``class_names`` where it is given, else
    each distinct value is a class named by it (1-based or sparse labels make no empty classes);
    strings (bytes, as HDF5 stores them, are decoded) name classes. Both splits' labels are of one
    kind, and every class name is given once.

    Returns a :class:`Dataset` that describes them (no images: its arrays have no pixels) and the
    four arrays, labels as integers into its class names. Every problem is one
    :class:`~featx.errors.DataError` naming the file.

    ``on_disk(rows, width, itemsize) -> bool`` and ``files`` (a :class:`contextlib.ExitStack`): an ``.h5``
    file whose rows ``on_disk`` says to leave on disk is kept open in ``files`` and its
    ``X_train`` and ``X_test`` are returned as HDF5 datasets (checked a block at a time), to be
    read in blocks (:mod:`featx.streaming`).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Embeddings file not found: {p}. Pass an .npz or .h5 file with {', '.join(EMBEDDING_KEYS)}.")
    arrays: dict = {}
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif p.suffix in (".h5", ".hdf5"):
            import h5py

            f, keep = h5py.File(p, "r"), False
            try:
                keep = on_disk is not None and files is not None and {"X_train", "X_test"} <= set(f.keys()) and \
                    getattr(f["X_train"], "ndim", 0) == 2 and on_disk(len(f["X_train"]) + len(f["X_test"]),
                                                                     f["X_train"].shape[1],
                                                                     f["X_train"].dtype.itemsize)  # fmt: skip
                arrays = {k: (f[k] if keep and k in ("X_train", "X_test") else f[k][()])
                          for k in f.keys() if isinstance(f[k], h5py.Dataset)}  # fmt: skip
            finally:
                if keep:
                    files.enter_context(f)  # open while its rows are read in blocks
                else:
                    f.close()
        else:
            raise DataError(f"{p}: embeddings must be an .npz or .h5 file. Received a {p.suffix or 'nameless'} file.")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(f"Cannot read embeddings from {p} ({exc.__class__.__name__}: {exc}).") from None
    missing = [k for k in EMBEDDING_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{p} lacks {', '.join(missing)}: it must hold {', '.join(EMBEDDING_KEYS)} "
                        f"(and may hold class_names). It holds: {', '.join(sorted(arrays)) or 'nothing'}.")  # fmt: skip
    lazy = not isinstance(arrays["X_train"], np.ndarray)
    X_train, X_test = (arrays[k] if lazy else np.asarray(arrays[k]) for k in ("X_train", "X_test"))
    y_train, y_test = (np.asarray(arrays[k]).reshape(-1) for k in ("y_train", "y_test"))
    for X, y, split in ((X_train, y_train, "train"), (X_test, y_test, "test")):
        if X.ndim != 2 or X.dtype.kind not in "fiu":
            raise DataError(f"{p}: X_{split} must be a 2-D array of numbers (rows x features). Received shape "
                            f"{X.shape}, dtype {X.dtype}.")  # fmt: skip
        if len(X) != len(y):
            raise DataError(f"{p}: X_{split} has {len(X)} rows but y_{split} {len(y)} labels: they must match.")
        if len(X) == 0:
            raise DataError(f"{p}: the {split} split is empty.")
        if not all(np.isfinite(X[a : a + 65_536]).all() for a in range(0, len(X), 65_536)):
            raise DataError(f"{p}: X_{split} holds NaN or infinite values.")
    if X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"{p}: X_train has {X_train.shape[1]} features and X_test {X_test.shape[1]}: they must match.")
    names = [_text(c) for c in np.asarray(arrays["class_names"]).reshape(-1)] if "class_names" in arrays else None
    if names is not None and len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise DataError(f"{p}: class_names names {', '.join(map(repr, twice[:3]))} more than once: each class once.")
    kinds = {split: ("number" if y.dtype.kind in "iub" else "text" if y.dtype.kind in "SUO" else y.dtype.kind)
             for split, y in (("train", y_train), ("test", y_test))}  # fmt: skip
    if len(set(kinds.values())) > 1 or not set(kinds.values()) <= {"number", "text"}:
        raise DataError(f"{p}: y_train holds {kinds['train']} labels and y_test {kinds['test']} labels: both must be "
                        "integers, or both class names (text).")  # fmt: skip
    if kinds["train"] == "number":
        values = np.unique(np.concatenate([y_train, y_test])).astype(np.int64)
        if names is not None:  # integers index the names given
            if values.min() < 0 or values.max() >= len(names):
                raise DataError(f"{p}: integer labels must index class_names (0 to {len(names) - 1}); they run from "
                                f"{values.min()} to {values.max()}.")  # fmt: skip
            y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
        else:  # classes by their values, whatever they are (1-based, sparse): no class that no label has
            names = [str(v) for v in values]
            y_train, y_test = (np.searchsorted(values, y.astype(np.int64)) for y in (y_train, y_test))
    else:
        y_train = np.array([_text(v) for v in y_train], dtype=object)
        y_test = np.array([_text(v) for v in y_test], dtype=object)
        labels = sorted(set(y_train) | set(y_test))
        names = names or labels
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{p}: labels {', '.join(map(repr, unknown[:3]))} are not in class_names "
                            f"({', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''}).")  # fmt: skip
        y_train = np.array([index[v] for v in y_train], dtype=np.int64)
        y_test = np.array([index[v] for v in y_test], dtype=np.int64)
    no_pixels = np.zeros((0, 0, 0, 3), np.uint8)
    ds = Dataset(str(p), no_pixels, y_train, no_pixels, y_test, tuple(names),
                 hash_strings(str(p), source_stamp(p)), info={"embeddings": f"{X_train.shape[1]}-d, from {p.name}"})  # fmt: skip
    if lazy:
        return ds, (X_train, y_train, X_test, y_test)
    # held as stored where a float (a float16 file stays float16: each head converts what it needs)
    as_held = lambda X: X if X.dtype.kind == "f" else X.astype(np.float32)  # noqa: E731
    return ds, (as_held(X_train), y_train, as_held(X_test), y_test)
