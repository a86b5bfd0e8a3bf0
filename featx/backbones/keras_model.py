"""A user's own Keras model as a backbone: a ``.keras`` file, or a ``keras.Model`` object.

The model gets the resized images as floats on the 0-255 scale (RGB), as
``keras.applications`` models with built-in preprocessing do: a model that
wants them scaled says so inside (a ``Rescaling`` layer, say). Its default
embedding is its output, globally average-pooled where it is a map, or, for a
classifier that ends in a softmax (or sigmoid) ``Dense`` layer, the input of
that layer. ``layers``, ``grid`` and ``flip`` apply to its layers as to any
backbone's.

A model object is saved once as a ``.keras`` file in ``<cache>/models/<hash>/``,
the hash of its architecture and weights, so that it can be rebuilt in another
process (a Dask worker, a joblib worker of a grid search) and keyed like a file.
The weights identity of a file is the sha256 of its content: a model trained
further and saved again never hits the cache of the old one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..config import cache_dir as resolve_cache_dir
from ..config import slug
from ..errors import SettingsError, WeightsError
from .base import Backbone, file_sha256, fresh_names, layer_info, load_weights_file


def is_model_file(name) -> bool:
    """Whether a backbone name names a saved Keras model (a ``.keras`` file)."""
    return isinstance(name, (str, os.PathLike)) and str(name).lower().endswith(".keras")


def is_keras_model(obj) -> bool:
    """Whether ``obj`` is a ``keras.Model`` (without importing Keras for a string)."""
    if isinstance(obj, (str, bytes, os.PathLike)) or obj is None:
        return False
    import keras

    return isinstance(obj, keras.Model)


class KerasModel(Backbone):
    """A saved Keras model: ``--backbone path/to/model.keras``, or ``FeatureExtractor(model)``."""

    family = "your model"
    named_weights = ("saved",)  # the weights saved in the file

    def __init__(self, path: str | os.PathLike):
        path = Path(path).expanduser()
        if not path.is_file():
            raise SettingsError(
                f"No Keras model file at '{path}'. Pass the path of a model saved with model.save('NAME.keras'). "
                f"Received: backbone={str(path)!r}"
            )
        self.path = path.resolve()
        self.name = str(self.path)
        self.description = f"Keras model {self.path.name}"
        model = self._load()
        check_built(model, self.path.name)
        shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
        if shape is None or len(shape) != 3 or shape[-1] not in (3, None):
            raise SettingsError(
                f"{self.path.name} cannot be a backbone: it must take one input of images (n, h, w, 3). "
                f"Its inputs: {[tuple(i.shape) for i in model.inputs]}"
            )
        h, w = shape[:2]
        if h is not None and (w is None or h != w):
            raise SettingsError(f"{self.path.name} takes {h}x{w} images: featx feeds square images only.")
        self.fixed_size = h is not None
        self.default_size = int(h) if h is not None else 224
        self.min_size = self.default_size if self.fixed_size else 32
        self._info = layer_info(model, self.default_size)
        self._output = _default_layer(model)

    @property
    def label(self) -> str:
        return slug(self.path.stem)

    @property
    def key_name(self) -> str:
        return f"model:{self.label}"  # the file's content is in the weights identity; where it lies is not

    @property
    def output_layer(self) -> str:
        return self._output

    def layer_info(self):
        return self._info

    def _load(self):
        return _load_model(str(self.path), *_stamp(self.path))

    def named_identity(self, weights: str) -> str:
        return f"file:{self.path.name}:sha256={_sha256(str(self.path), *_stamp(self.path))}"

    def verify(self, weights: str, seed: int, identity: str) -> None:
        if self.weights_identity(weights, seed) != identity:
            raise WeightsError(
                f"The model file '{self.path}' is not the one these features were keyed on (it changed "
                "since, or differs on this machine): its embeddings would differ. Use the same file "
                "everywhere, or run again to key the features on the new one."
            )

    def build_base(self, size: int, weights: str, seed: int | None):
        import keras

        from ..runtime import seeded_build

        model = self._load()
        policy = keras.config.dtype_policy().name
        if policy != "float32":
            model = with_policy(model, policy)
        if weights == "saved":
            return model
        with fresh_names():
            if weights == "none":
                if seed is None:
                    return keras.models.clone_model(model)
                with seeded_build(seed):
                    return keras.models.clone_model(model)  # the same layers, initialised afresh
            clone = keras.models.clone_model(model)
        load_weights_file(clone, weights, self.path.name, "model (model.save_weights)")
        return clone


def check_built(model, name: str) -> None:
    """One line for a model that does not know its input yet (a Sequential never built or called)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise SettingsError(
            f"{name} does not know its input yet (a Sequential model that was never built or called): give it a "
            "keras.Input((None, None, 3)) first, or call model.build((None, None, None, 3)), then pass it again."
        )


def with_policy(model, policy: str):
    """A copy of ``model`` whose layers compute under ``policy`` (a mixed policy: float32 weights,
    bfloat16 or float16 arithmetic), with the same weights: ``--precision`` for a saved model."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    with fresh_names():
        try:
            copy = keras.models.clone_model(model, clone_function=clone)
        except Exception as exc:
            raise SettingsError(
                f"{model.name} cannot be rebuilt under {policy} ({exc.__class__.__name__}: {str(exc)[:200]}): "
                "use --precision float32."
            ) from None
    copy.set_weights(model.get_weights())
    return copy


def _layers_of(model) -> list:
    """The layers whose outputs can be tapped (the input layer left out)."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _default_layer(model) -> str:
    """The model's last layer, or, where that is a softmax/sigmoid Dense (a classifier), the one before."""
    import keras

    layers = _layers_of(model)
    last = layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if isinstance(last, keras.layers.Dense) and activation in ("softmax", "sigmoid") and len(layers) > 1:
        return layers[-2].name
    return last.name


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _load_model(path: str, size: int, mtime_ns: int):
    """The model in ``path``, loaded once per version of the file (safe mode: no code runs)."""
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):
        raise WeightsError(f"'{path}' is not a Keras model file (a .keras file is a zip archive). Pass a model "
                           "saved with model.save('NAME.keras').")  # fmt: skip
    try:
        with fresh_names():
            return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise WeightsError(
            f"Could not load a Keras model from '{path}' ({exc.__class__.__name__}: {str(exc)[:300]}). "
            "Pass a model saved with model.save('NAME.keras')."
        ) from None


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def model_digest(model) -> str:
    """A hash of a model's architecture and weights (16 hex digits)."""
    h = hashlib.sha256(json.dumps(model.to_json(), sort_keys=True).encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).data)
    return h.hexdigest()[:16]


def save_model(model, cache_dir=None) -> Path:
    """Save a ``keras.Model`` once as ``<cache>/models/<digest>/<name>.keras`` and return the path."""
    folder = resolve_cache_dir(cache_dir) / "models" / model_digest(model)
    path = folder / f"{slug(model.name)}.keras"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            model.save(tmp)
            os.replace(tmp, path)  # a file with its final name is complete
        finally:
            tmp.unlink(missing_ok=True)
    return path
