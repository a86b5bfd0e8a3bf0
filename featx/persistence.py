"""Saved heads: skops files, loaded with an explicit list of trusted types, never pickles unasked.

Loading a pickle runs whatever code the file names (scikit-learn's model
persistence guide says so, and points to skops and ONNX). :func:`save_head`
writes a fitted head and its record with ``skops.io``, which stores the
estimator's state as data; :func:`load_head` reads it back allowing only the
types featx's heads are made of (scikit-learn's own, which skops trusts, and
the registered head classes, :func:`featx.heads.trusted_types`). A file that names any other type is refused,
naming it. The Keras head keeps its model in Keras's own ``.keras`` format
inside, as bytes.

Heads saved by earlier versions of featx are joblib pickles: they load only
with ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CacheError
from .heads import trusted_types

#: File name endings of saved heads: skops now, joblib pickles from earlier versions.
SUFFIX, PICKLE_SUFFIX = ".skops", ".joblib"


def save_head(path: Path, estimator, record: dict) -> Path:
    """Write ``estimator`` and its ``record`` to ``path`` (a ``.skops`` file), complete or not at all."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sio.dump({"estimator": estimator, "record": record}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    return saved["estimator"], saved["record"]
