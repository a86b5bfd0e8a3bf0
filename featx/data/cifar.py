"""CIFAR-10: through ``keras.datasets``, or its ``cifar-10-batches-py`` batches from a folder or archive."""

from __future__ import annotations

import os
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from .dataset import Dataset, fingerprint_arrays

#: CIFAR-10 class names in label order.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def load_keras_cifar10() -> Dataset:
    import keras

    try:
        (X_train, y_train), (X_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # the download raises various network errors
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
        raise DataError(
            f"Could not load CIFAR-10 through keras.datasets ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}). It is downloaded once into {cache}; offline, point featx at "
            "a local copy instead: --data PATH, where PATH is the 'cifar-10-python.tar.gz' "
            "archive, its extracted 'cifar-10-batches-py' folder, or a folder/archive of class "
            "folders."
        ) from None
    X_train, X_test = _nhwc(X_train), _nhwc(X_test)
    y_train, y_test = y_train.reshape(-1).astype(np.int64), y_test.reshape(-1).astype(np.int64)
    return Dataset(
        "cifar10", X_train, y_train, X_test, y_test, CIFAR10_CLASSES,
        fingerprint_arrays(X_train, y_train, X_test, y_test, CIFAR10_CLASSES),
        info={"split": "official"},
    )  # fmt: skip


def _nhwc(X: np.ndarray) -> np.ndarray:
    # keras returns channels-last unless its image_data_format says otherwise
    return np.ascontiguousarray(X.transpose(0, 2, 3, 1) if X.shape[1] == 3 else X)


def cifar_batches(blobs: dict[str, bytes], where: str) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if n not in blobs]
    if missing:
        raise DataError(f"'{where}' looks like cifar-10-batches-py but lacks {', '.join(missing)}.")

    def unpack(blob: bytes, name: str):
        try:
            d = pickle.loads(blob, encoding="bytes")
            X = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            return X, np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as exc:
            raise DataError(
                f"Cannot read CIFAR-10 batch '{name}' in '{where}' ({exc}). Download the archive again."
            ) from None

    parts = [unpack(blobs[n], n) for n in names]
    X_test, y_test = unpack(blobs["test_batch"], "test_batch")
    X_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    classes = CIFAR10_CLASSES
    if "batches.meta" in blobs:
        meta = pickle.loads(blobs["batches.meta"], encoding="bytes")
        classes = tuple(c.decode() for c in meta[b"label_names"])
    X_test = np.ascontiguousarray(X_test)
    X_train = np.ascontiguousarray(X_train)
    return Dataset(
        where, X_train, y_train, X_test, y_test, classes,
        fingerprint_arrays(X_train, y_train, X_test, y_test, classes), info={"split": "official"},
    )  # fmt: skip


def is_cifar_batches(files) -> bool:
    return any(PurePosixPath(k).name == "data_batch_1" for k in files) and any(
        PurePosixPath(k).name == "test_batch" for k in files
    )


def cifar_prefix(files) -> str:
    k = next(k for k in files if PurePosixPath(k).name == "data_batch_1")
    return k[: -len("data_batch_1")]
