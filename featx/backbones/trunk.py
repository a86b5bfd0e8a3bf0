"""The split-CIFAR trunk: a small CNN trained on the source classes, reused frozen.

Architecture (as in the split-CIFAR transfer-learning protocol)::

    Conv2D 32 5x5 relu  -> 28x28x32
    Conv2D 16 5x5 relu  -> 24x24x16
    MaxPool 2x2         -> 12x12x16
    Conv2D 8 3x3 relu   -> 10x10x8
    Flatten             -> 800
    Dropout 0.42                      (the embedding: the first six layers)
    Dense 128 relu
    Dense n_classes softmax           (used for training only)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config import cache_dir as resolve_cache_dir
from ..config import slug
from ..data import Dataset, load_dataset, make_task
from ..errors import SettingsError, WeightsError
from .base import Backbone

logger = logging.getLogger(__name__)

#: Number of layers (after the input scaling) that form the frozen embedding.
N_EMBEDDING_LAYERS = 6
EMBEDDING_DIM = 800


def build_trunk_classifier(n_classes: int = 5, seed: int = 0):
    """The trunk with its training head; takes uint8 32x32 RGB images."""
    from ..runtime import seeded_build

    with seeded_build(seed):
        return _trunk_layers(n_classes)


def _trunk_layers(n_classes: int):
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            layers.Rescaling(1.0 / 255, name="scale"),
            layers.Conv2D(32, 5, activation="relu", name="conv1"),
            layers.Conv2D(16, 5, activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Conv2D(8, 3, activation="relu", name="conv3"),
            layers.Flatten(name="flatten"),
            layers.Dropout(0.42, name="dropout"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dense(n_classes, activation="softmax", name="softmax"),
        ],
        name="trunk",
    )


def trunk_embedding_layers(model) -> list:
    """The frozen layers of a trunk classifier that make its 800-d embedding (scaling included)."""
    layers = model.layers[: N_EMBEDDING_LAYERS + 1]
    for layer in layers:
        layer.trainable = False
    return layers


def embedding_weights(model) -> list:
    """The weights of a trunk classifier's embedding layers, as numpy arrays (small: ~16k floats),
    so that :func:`trunk_from_weights` rebuilds the same embedding in another process."""
    import numpy as np

    return [[np.asarray(w) for w in layer.get_weights()] for layer in trunk_embedding_layers(model)]


def trunk_from_weights(weights: list, seed: int = 0):
    """A trunk classifier whose embedding layers hold ``weights`` (from :func:`embedding_weights`)."""
    model = build_trunk_classifier(5, seed)
    for layer, w in zip(trunk_embedding_layers(model), weights):
        layer.set_weights(w)
    return model


#: How the trunk that ``weights="trained"`` means is trained (the split-CIFAR protocol's 10 epochs).
EPOCHS, BATCH_SIZE = 10, 100


def trunk_path(ds: Dataset, seed: int, cache_dir=None, *, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE) -> Path:
    """Where the trunk trained on ``ds`` (a source task) with ``seed`` (and ``epochs`` and
    ``batch_size``, named in the file where they are not the default's) is saved."""
    folder = resolve_cache_dir(cache_dir) / "trunk"
    other = "" if (epochs, batch_size) == (EPOCHS, BATCH_SIZE) else f"-epochs{epochs}-batch{batch_size}"
    path = folder / f"trunk-{slug(ds.name)}-{ds.fingerprint}-seed{seed}{other}.keras"
    if not path.exists() and not other:  # saved under an earlier naming rule: the fingerprint and seed count
        earlier = sorted(folder.glob(f"trunk-*-{ds.fingerprint}-seed{seed}.keras"))
        if earlier:
            return earlier[0]
    return path


def pretrain_trunk(
    data=None,
    *,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    cache_dir=None,
    force: bool = False,
    verbose: int | str = "auto",
) -> tuple[Path, dict]:
    """Train the trunk on the source task of ``data`` and save it in the cache.

    Trains on the source task's train split and reports accuracy on its test
    split (the split-CIFAR 80/20 protocol, seeded). Returns the path of the
    saved model and its training record (also saved beside it as JSON).

    A trunk trained with other ``epochs`` or ``batch_size`` than the default is
    another trunk, saved under its own name: it never replaces the one that
    ``weights="trained"`` uses (pass its path as weights to use it). A trunk
    already trained with the same settings is reused, unless ``force``.

    Examples
    --------
    >>> path, record = pretrain_trunk("sample", epochs=1, verbose=0)  # doctest: +SKIP
    """
    import keras

    ds = data if isinstance(data, Dataset) else load_dataset(data, "source", cache_dir=cache_dir, seed=seed)
    if ds.task != "source":
        raise SettingsError(f"The trunk trains on the 'source' task. Received a dataset with task={ds.task!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{name} must be a positive integer. Received: {name}={value!r}")
    path = trunk_path(ds, seed, cache_dir, epochs=epochs, batch_size=batch_size)
    if path.exists() and not force:
        logger.info(f"trunk already trained with these settings: {path} (--force trains it again)")
        record = path.with_suffix(".json")
        return path, json.loads(record.read_text()) if record.exists() else {}
    model = build_trunk_classifier(ds.n_classes, seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    logger.info(f"training the trunk on {ds.name} classes {', '.join(ds.class_names)} "
                f"({len(ds.X_train)} images, {epochs} epochs)")  # fmt: skip
    t0 = time.perf_counter()
    hist = model.fit(
        np.asarray(ds.X_train), ds.y_train, validation_data=(np.asarray(ds.X_test), ds.y_test),
        epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    record = {
        "data": ds.name,
        "task": ds.task,
        "classes": list(ds.class_names),
        "data_fingerprint": ds.fingerprint,
        "n_train": len(ds.X_train),
        "n_val": len(ds.X_test),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_accuracy": float(hist.history["val_accuracy"][-1]),
        "val_accuracy_per_epoch": [round(float(a), 4) for a in hist.history["val_accuracy"]],
        "train_seconds": round(seconds, 2),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written trunk behind
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    logger.info(f"trunk: validation accuracy {record['val_accuracy']:.2%} after {epochs} epochs "
                f"({seconds:.1f} s), saved to {path}")  # fmt: skip
    if (epochs, batch_size) != (EPOCHS, BATCH_SIZE):
        logger.info(f"this is not the trunk that --weights trained uses ({EPOCHS} epochs, batch {BATCH_SIZE}); "
                    f"use it with --weights {path}")  # fmt: skip
    return path, record


def load_or_train_trunk(data=None, *, seed: int = 0, cache_dir=None, progress: bool | None = None):
    """The trunk trained on ``data``'s source classes with the default settings: loaded if saved,
    else trained now (saying so; ``progress``: Keras's bar of the training, default on a terminal)."""
    import keras

    ds = data if isinstance(data, Dataset) else load_dataset(data, "source", cache_dir=cache_dir, seed=seed,
                                                             progress=progress)  # fmt: skip
    path = trunk_path(ds, seed, cache_dir)
    if not path.exists():
        logger.info(f"no trunk trained on {ds.name} yet: training it now (python cli.py pretrain "
                    "--backbone trunk does this ahead of time)")
        pretrain_trunk(ds, seed=seed, cache_dir=cache_dir, verbose="auto" if progress is None else int(progress))
    return keras.saving.load_model(path), path


def trunk_weights_id(model) -> str:
    """Hash of the trunk's embedding weights: changes whenever the trunk is retrained."""
    import hashlib

    h = hashlib.sha256()
    for layer in trunk_embedding_layers(model):
        for w in layer.get_weights():
            h.update(np.ascontiguousarray(w, dtype=np.float32).data)
    return "trunk:sha256=" + h.hexdigest()[:16]


def load_trunk_file(path) -> object:
    """Load a trunk classifier saved by :func:`pretrain_trunk` (or any model of the same layers)."""
    import keras

    try:
        model = keras.saving.load_model(Path(path).expanduser())
    except Exception as exc:
        raise WeightsError(f"Could not load a trunk from '{path}' ({exc.__class__.__name__}: {exc}).") from None
    if model.layers[N_EMBEDDING_LAYERS - 1].output.shape[-1] != EMBEDDING_DIM:
        raise WeightsError(f"'{path}' is not a featx trunk: its layer 6 is not the 800-d flatten.")
    return model


def load_trunk(weights: str, *, data=None, seed: int = 0, cache_dir=None, progress: bool | None = None):
    """The trunk classifier for ``weights``: "trained" (on ``data``'s source classes,
    loaded from the cache or trained now), "none" (seeded random init) or a saved file."""
    if weights == "trained":
        source = data if isinstance(data, Dataset) and data.task == "source" else None
        if source is None:
            name = data.name if isinstance(data, Dataset) else data
            full = data if isinstance(data, Dataset) and data.task == "full" else None
            full = full or load_dataset(name, "full", cache_dir=cache_dir, seed=seed, progress=progress)
            if full.n_classes < 4:
                raise SettingsError(
                    f"The trunk's 'trained' weights are trained on the first half of the classes of the data, and "
                    f"{full.name} has {full.n_classes}, too few (at least 4). Pass --weights none (a random trunk), "
                    "--weights PATH (a trunk saved by pretrain on other data), or another backbone "
                    "(--backbone resnet50, say)."
                )
            source = make_task(full, "source", seed=seed)
        return load_or_train_trunk(source, seed=seed, cache_dir=cache_dir, progress=progress)[0]
    if weights == "none":
        return build_trunk_classifier(5, seed)
    return load_trunk_file(weights)


class Trunk(Backbone):
    """The split-CIFAR trunk as a backbone: 32x32 only, float32 only, weights trained by featx.

    Its default embedding was measured (BENCHMARKS.md, "Transfer"): the outputs of its first
    convolution, its pool layer and its flatten layer, each max-pooled to 4x4, averaged with
    the mirror image's. ``layers=["flatten"], flip=False`` is the split-CIFAR protocol's 800-d
    embedding, which ``compare`` adds as a reference row. Its weights identity is the hash of
    the trained weights, so a retrained trunk never hits an old cache.
    """

    name = "trunk"
    family = "featx"
    description = "split-CIFAR CNN trained on the source classes"
    default_size = min_size = 32
    fixed_size = True
    preprocessing = "none"  # its first layer scales the pixels
    named_weights = ("trained",)
    default_pooling = "max"
    default_grid = 4
    default_flip = True
    default_task = "target"
    flat_layers = ("flatten",)
    classic_when_random = False  # its default was chosen on its own architecture, whatever its weights

    @property
    def output_layer(self) -> str:
        return "flatten"

    @property
    def default_layers(self) -> tuple[str, ...]:
        return ("conv1", "pool", "flatten")

    def layer_info(self):
        return (("conv1", (28, 28, 32), "Conv2D"), ("conv2", (24, 24, 16), "Conv2D"), ("pool", (12, 12, 16), "MaxPooling2D"),
                ("conv3", (10, 10, 8), "Conv2D"), ("flatten", (EMBEDDING_DIM,), "Flatten"))  # fmt: skip

    def check_precision(self, precision: str) -> str:
        if precision not in ("auto", "float32"):
            from ..runtime import PRECISIONS

            if precision not in PRECISIONS:
                raise SettingsError(
                    f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}"
                )
            raise SettingsError(
                f"The trunk runs in float32 only: it is bounded by per-batch overhead, not arithmetic, so "
                f"{precision} would change its features without making it faster. Leave precision at auto."
            )
        return "float32"

    def settings_for(self, fields: dict) -> dict:
        own = super().settings_for(fields)
        own.pop("precision", None)  # float32 only
        return own

    def reference_changes(self, weights: str, layers: tuple) -> dict | None:
        return {"layers": ["flatten"], "flip": False}

    def reference_note(self, weights: str) -> str:
        if weights == "trained":
            return "reference: split-CIFAR protocol"
        what = "random init" if weights == "none" else Path(weights).name
        return f"reference: the trunk's 800-d flatten output ({what})"

    def resolve(self, weights: str, *, seed: int = 0, data=None, cache_dir=None, progress=None) -> tuple[dict, str]:
        """The trunk's embedding weights (a few thousand floats: they travel to workers) and their hash."""
        model = load_trunk(weights, data=data, seed=seed, cache_dir=cache_dir, progress=progress)
        return {"trunk_weights": embedding_weights(model)}, trunk_weights_id(model)

    def verify(self, weights: str, seed: int, identity: str) -> None:
        pass  # the weights travel in the state: nothing to look up again

    def feature_maps(self, x, layers: tuple, *, size: int, weights: str, grid: int, pooling: str, seed: int,
                     state: dict) -> dict:  # fmt: skip
        model = trunk_from_weights(state["trunk_weights"], seed)
        maps, wanted = {}, set(layers)
        for layer in trunk_embedding_layers(model):
            x = layer(x)
            if layer.name in wanted:
                maps[layer.name] = x
            if len(maps) == len(wanted):
                break
        return maps
