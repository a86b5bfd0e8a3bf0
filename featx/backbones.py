"""Frozen backbones: one registry, models that take uint8 images as stored.

Every extraction model is ``uint8 (n, h, w, 3) -> resize -> preprocess ->
frozen backbone -> pooling -> (n, d) float``. Upscaling and preprocessing run
inside the model, batch by batch, so the upscaled dataset never exists in
memory. Only ``keras`` and ``keras.ops`` are used: the models run on every
Keras 3 backend.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import WeightsError

if TYPE_CHECKING:  # the spec is built above this module, from its registry
    from .spec import FeatureSpec

POOLINGS = ("avg", "max", "flatten")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")
# The ImageNet files keras.applications downloads for include_top=False.
_IMAGENET_FILES = {
    "vgg19": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
}


@dataclass(frozen=True)
class BackboneSpec:
    """What featx knows about a backbone.

    Attributes
    ----------
    name : str
        Registry name.
    default_size : int
        Side of the square input the backbone runs at by default.
    fixed_size : bool
        Whether the backbone only runs at ``default_size``.
    default_pooling : str
        Pooling of the embedding by default.
    default_weights : str
        Weights used when none are named.
    description : str
        One line for listings.
    """

    name: str
    default_size: int
    fixed_size: bool
    default_pooling: str
    default_weights: str
    description: str
    build_base: Callable | None  # None for the trunk: its layers come from its trained classifier


def _vgg19_base(size: int, weights):
    import keras

    return keras.applications.VGG19(include_top=False, weights=weights, input_shape=(size, size, 3))


def _resnet50_base(size: int, weights):
    import keras

    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(size, size, 3))


#: The backbone registry.
BACKBONES: dict[str, BackboneSpec] = {
    "trunk": BackboneSpec("trunk", 32, True, "flatten", "trained",
                          "split-CIFAR CNN trained on the source classes, 800-d", None),
    "vgg19": BackboneSpec("vgg19", 224, False, "avg", "imagenet",
                          "keras.applications.VGG19, 512-d (avg/max)", _vgg19_base),
    "resnet50": BackboneSpec("resnet50", 224, False, "avg", "imagenet",
                             "keras.applications.ResNet50, 2048-d (avg/max)", _resnet50_base),
}  # fmt: skip


def get_backbone(name: str) -> BackboneSpec:
    """Look up a backbone by name; an unknown name lists the known ones."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown backbone. Known backbones: {', '.join(BACKBONES)}. Received: backbone={name!r}"
        ) from None


def weights_identity(backbone: str, weights: str, seed: int) -> str:
    """A string that changes whenever the weights do; part of every cache key."""
    if weights == "none":
        return f"random-init-seed{seed}"
    if weights == "imagenet":
        fname, md5 = _IMAGENET_FILES[backbone]
        return f"imagenet:{fname}:md5={md5}"
    path = Path(weights).expanduser()
    return f"file:{path.name}:sha256={file_sha256(path)}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, else ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _register():
    """Preprocessing layers, registered once so saved models load anywhere."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="featx")
    class ToFloat(keras.layers.Layer):
        """Cast stored uint8 pixels to float (0..255)."""

        def call(self, x):
            return ops.cast(x, self.compute_dtype)

    @keras.saving.register_keras_serializable(package="featx")
    class CaffePreprocess(keras.layers.Layer):
        """VGG/ResNet ``preprocess_input`` ("caffe" mode): RGB to BGR, minus the ImageNet mean."""

        def call(self, x):
            x = ops.flip(x, axis=-1)
            mean = ops.convert_to_tensor(np.array([103.939, 116.779, 123.68]), dtype=x.dtype)
            return x - mean

    return ToFloat, CaffePreprocess


_LAYERS: tuple | None = None


def preprocessing_layers():
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _register()
    return _LAYERS


def build_extractor(spec: FeatureSpec, *, seed: int = 0, trunk_model=None):
    """Build the frozen extraction model ``uint8 images -> (n, d) embeddings`` for ``spec``.

    ``spec.weights`` is "imagenet", "none" (random init seeded by ``seed``) or
    a file path. For the ``trunk``, ``trunk_model`` is the trained trunk
    classifier (see :mod:`featx.trunk`).
    """
    import keras

    ToFloat, CaffePreprocess = preprocessing_layers()
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
    x = ToFloat(name="to_float")(inputs)
    backbone, size, pooling = spec.backbone, spec.size, spec.pooling
    x = keras.layers.Resizing(size, size, interpolation=spec.interpolation, name="resize")(x)
    if backbone == "trunk":
        from .trunk import trunk_embedding_layers

        for layer in trunk_embedding_layers(trunk_model):
            x = layer(x)
        base_out = x
    else:
        x = CaffePreprocess(name="preprocess")(x)
        base = _load_base(backbone, size, spec.weights, seed)
        base.trainable = False
        base_out = base(x)
        if pooling == "avg":
            base_out = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base_out)
        elif pooling == "max":
            base_out = keras.layers.GlobalMaxPooling2D(name="max_pool")(base_out)
        else:
            base_out = keras.layers.Flatten(name="flatten")(base_out)
    model = keras.Model(inputs, base_out, name=f"featx_{backbone}")
    model.trainable = False
    return model


def _load_base(backbone: str, size: int, weights: str, seed: int):
    import keras

    spec = get_backbone(backbone)
    if weights == "none":
        keras.utils.set_random_seed(seed)
        return spec.build_base(size, None)
    if weights == "imagenet":
        fname = _IMAGENET_FILES[backbone][0]
        try:
            return spec.build_base(size, "imagenet")
        except Exception as exc:
            local = keras_models_dir() / fname
            raise WeightsError(
                f"Could not get the ImageNet weights of {backbone} ({exc.__class__.__name__}: "
                f"{str(exc)[:200]}). Keras downloads them once to {local}; on a machine without "
                f"network, copy '{fname}' there, or pass --weights PATH (weights=PATH) with a local "
                "copy, or --weights none (weights='none') for a seeded random network."
            ) from None
    try:
        return spec.build_base(size, str(Path(weights).expanduser()))
    except Exception as exc:
        raise WeightsError(
            f"Could not load {backbone} weights from '{weights}' ({exc.__class__.__name__}: "
            f"{str(exc)[:300]}). Pass a Keras weights file made for {backbone} with include_top=False."
        ) from None
