"""Saved heads: skops files, loaded with an explicit list of trusted types, never pickles unasked.

Loading a pickle runs whatever code the file names (scikit-learn's model
persistence guide says so, and points to skops and ONNX). :func:`save_head`
writes a fitted head and its record with ``skops.io``, which stores the
estimator's state as data; :func:`load_head` reads it back allowing only the
types featx's heads are made of (scikit-learn's own, which skops trusts, and
the registered head classes, :func:`featx.heads.trusted_types`). A file that names any other type is refused,
naming it. The Keras head keeps its model in Keras's own ``.keras`` format
inside, as bytes.

The head's large arrays (:data:`LARGE_ARRAY_BYTES` and up: ``knn``'s bank) are written beside
skops's state in the same zip file, as ``.npy`` entries streamed a piece at a time, and read
back so: skops would hold each in memory twice more while it writes (a bank of 781 MiB took a
peak of 3.1 GiB more to save, ``benchmarks/bench_save_head.py``). They are plain arrays (no
pickle), checked against the zip's CRC as they are read.

Heads saved by earlier versions of featx are joblib pickles: they load only
with ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import CacheError
from .heads import trusted_types

#: File name endings of saved heads: skops now, joblib pickles from earlier versions.
SUFFIX, PICKLE_SUFFIX = ".skops", ".joblib"

#: Arrays of a head at least this large are written beside skops's state, a piece at a time.
LARGE_ARRAY_BYTES = 16 << 20
#: Where in the file those arrays go.
ARRAYS_FOLDER = "featx-arrays/"


def save_head(path: Path, estimator, record: dict) -> Path:
    """Write ``estimator`` and its ``record`` to ``path`` (a ``.skops`` file), complete or not at all."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    large = _large_arrays(estimator)
    entries = {name: f"{ARRAYS_FOLDER}{name}.npy" for name in large}
    try:
        with _set_aside(estimator, large):
            sio.dump({"estimator": estimator, "record": record, "arrays": entries}, tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            for name, value in large.items():
                with zf.open(entries[name], "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, value, allow_pickle=False)  # 16 MiB at a time
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _large_arrays(estimator) -> dict[str, np.ndarray]:
    """The estimator's public arrays (its fitted attributes) of :data:`LARGE_ARRAY_BYTES` and up, as
    plain arrays (a memory-mapped one included: read as it is written). Private ones are the
    estimator's to save or drop (``knn``'s room for rows to come)."""
    return {name: np.asarray(value) for name, value in vars(estimator).items()
            if not name.startswith("_") and isinstance(value, np.ndarray) and value.dtype != object
            and value.nbytes >= LARGE_ARRAY_BYTES}  # fmt: skip


@contextmanager
def _set_aside(estimator, large: dict[str, np.ndarray]):
    """While skops writes the estimator: each large array replaced by an empty one of its dtype
    and row width (what :func:`load_head` checks the array read against)."""
    kept = {name: getattr(estimator, name) for name in large}
    try:
        for name, value in large.items():
            setattr(estimator, name, np.empty((0, *value.shape[1:]), value.dtype))
        yield
    finally:
        for name, value in kept.items():
            setattr(estimator, name, value)


def load_head(path: Path, *, trust_pickle: bool = False) -> tuple[object, dict]:
    """``(estimator, record)`` of a saved head.

    A ``.skops`` file is loaded with the trusted types alone; one that names another type is a
    :class:`~featx.errors.CacheError` naming it. A pickle (``.joblib``, earlier versions) is
    loaded only with ``trust_pickle``.
    """
    path = Path(path)
    if path.suffix == PICKLE_SUFFIX:
        if not trust_pickle:
            raise CacheError(
                f"{path.name} is a pickle (a head saved by an earlier featx): loading it can run any code it "
                "holds. If you made it yourself and trust it, run again with --trust-pickle "
                "(Python: trust_pickle=True), or fit the head again to save it without pickle."
            )
        import joblib

        saved = joblib.load(path)
        return saved["estimator"], saved["record"]
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001 - a damaged file is one line, whatever skops raised
        raise CacheError(f"Cannot read saved head {path} ({exc.__class__.__name__}: {exc}): fit it again.") from None
    trusted = set(trusted_types())
    unknown = sorted(t for t in untrusted if t not in trusted)
    if unknown:
        raise CacheError(
            f"Saved head {path} holds a type featx does not trust: {unknown[0]}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ". It was not made by featx, or was altered: do not load it; fit the head again."
        )
    try:
        saved = sio.load(path, trusted=list(untrusted))
    except Exception as exc:  # noqa: BLE001
        raise CacheError(f"Cannot read saved head {path} ({exc.__class__.__name__}: {exc}): fit it again.") from None
    if not isinstance(saved, dict) or not {"estimator", "record"} <= set(saved):
        raise CacheError(f"{path} is not a head saved by featx (no estimator and record in it): fit the head again.")
    _read_arrays(path, saved["estimator"], saved.get("arrays") or {})
    return saved["estimator"], saved["record"]


def _read_arrays(path: Path, estimator, entries: dict) -> None:
    """Put back the large arrays :func:`save_head` wrote beside skops's state, each read a piece at
    a time; one that is not the array set aside (its dtype, its row width) or is damaged is a
    :class:`~featx.errors.CacheError`."""
    if not entries:
        return
    try:
        if not isinstance(entries, dict):
            raise ValueError(f"its arrays are listed as a {type(entries).__name__}, not by name")
        with zipfile.ZipFile(path) as zf:
            for name, entry in entries.items():
                placeholder = getattr(estimator, name, None) if isinstance(name, str) and name.isidentifier() else None
                if not (isinstance(entry, str) and entry.startswith(ARRAYS_FOLDER) and isinstance(placeholder, np.ndarray)
                        and len(placeholder) == 0):  # fmt: skip
                    raise ValueError(f"{entry!r} does not belong to the head's {name!r}")
                with zf.open(entry) as fh:
                    value = np.lib.format.read_array(fh, allow_pickle=False)
                if value.dtype != placeholder.dtype or value.shape[1:] != placeholder.shape[1:]:
                    raise ValueError(f"{entry} holds {value.dtype} {value.shape}, not the head's {name}")
                setattr(estimator, name, value)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheError(f"Cannot read saved head {path} ({exc.__class__.__name__}: {exc}): fit it again.") from None
