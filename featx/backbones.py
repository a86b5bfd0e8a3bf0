"""Frozen backbones: one registry, models that take uint8 images as stored.

Every extraction model is ``uint8 (n, h, w, 3) -> resize -> preprocess ->
frozen backbone -> pooling -> (n, d) float``. Upscaling and preprocessing run
inside the model, batch by batch, so the upscaled dataset never exists in
memory. Only ``keras`` and ``keras.ops`` are used: the models run on every
Keras 3 backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SettingsError, WeightsError
from .layers import featx_layers

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
    build_base : callable or None
        ``(size, weights) -> keras.Model``; None for the trunk, whose layers come from
        its trained classifier.
    output_layer : str
        The layer whose pooled output is the backbone's classic embedding.
    default_layers : tuple of str
        The layers whose outputs make the embedding by default, each pooled to a grid.
    default_grid : int
        Cells per side each layer is pooled to by default.
    default_flip : bool
        Whether the embedding averages the image's and its mirror image's by default.
    flat_layers : tuple of str
        Layers whose output is already a vector (nothing to pool).
    """

    name: str
    default_size: int
    fixed_size: bool
    default_pooling: str
    default_weights: str
    description: str
    build_base: Callable | None
    output_layer: str
    default_layers: tuple[str, ...]
    default_grid: int
    default_flip: bool
    flat_layers: tuple[str, ...] = ()

    def layer_names(self) -> tuple[str, ...]:
        """Every layer whose output can be part of the embedding."""
        return _layer_names(self.name)


def _vgg19_base(size: int, weights):
    import keras

    return keras.applications.VGG19(include_top=False, weights=weights, input_shape=(size, size, 3))


def _resnet50_base(size: int, weights):
    import keras

    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(size, size, 3))


# Defaults measured on the trunk (BENCHMARKS.md, "Transfer"): its first convolution, the pool
# layer and the flatten output, each max-pooled to 4x4, mirror-averaged. The ImageNet
# backbones take the same idea (the outputs of three stages), pooled globally to keep them
# narrow; their ImageNet weights cannot be fetched here, so those choices are not measured.
#: The backbone registry.
BACKBONES: dict[str, BackboneSpec] = {
    "trunk": BackboneSpec(
        "trunk", 32, True, "max", "trained", "split-CIFAR CNN trained on the source classes", None,
        output_layer="flatten", default_layers=("conv1", "pool", "flatten"), default_grid=4,
        default_flip=True, flat_layers=("flatten",),
    ),
    "vgg19": BackboneSpec(
        "vgg19", 224, False, "avg", "imagenet", "keras.applications.VGG19", _vgg19_base,
        output_layer="block5_pool", default_layers=("block3_pool", "block4_pool", "block5_pool"),
        default_grid=1, default_flip=False,
    ),
    "resnet50": BackboneSpec(
        "resnet50", 224, False, "avg", "imagenet", "keras.applications.ResNet50", _resnet50_base,
        output_layer="conv5_block3_out",
        default_layers=("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        default_grid=1, default_flip=False,
    ),
}  # fmt: skip


@functools.cache
def _layer_names(backbone: str) -> tuple[str, ...]:
    if backbone == "trunk":
        from .trunk import EMBEDDING_LAYER_NAMES

        return EMBEDDING_LAYER_NAMES
    import keras

    # The architecture alone, small and without weights: only the names are wanted.
    with keras.device("cpu"):
        base = BACKBONES[backbone].build_base(32, None)
    names = tuple(layer.name for layer in base.layers[1:])
    del base
    return names


def get_backbone(name: str) -> BackboneSpec:
    """Look up a backbone by name; an unknown name lists the known ones."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise SettingsError(
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


def build_extractor(spec: FeatureSpec, *, seed: int = 0, trunk_model=None):
    """Build the frozen extraction model ``uint8 images -> (n, d) embeddings`` for ``spec``.

    ``uint8 (n, h, w, 3) -> float -> resize -> preprocess -> [with mirror images] ->
    frozen backbone -> each of spec.layers pooled to spec.grid x spec.grid ->
    concatenated -> [mean of image and mirror]``. ``spec.weights`` is "imagenet",
    "none" (random init seeded by ``seed``) or a file path. For the ``trunk``,
    ``trunk_model`` is the trained trunk classifier (see :mod:`featx.trunk`).
    """
    import keras

    from .runtime import dtype_policy

    with dtype_policy(spec.precision):  # float32, or Keras's mixed policy: float32 weights
        out, inputs = _extractor_graph(spec, seed, trunk_model)
    if spec.precision != "float32":
        out = keras.layers.Activation("linear", dtype="float32", name="to_float32")(out)
    model = keras.Model(inputs, out, name=f"featx_{spec.backbone}")
    model.trainable = False
    return model


def _extractor_graph(spec: FeatureSpec, seed: int, trunk_model):
    import keras

    L = featx_layers()
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
    x = L["ToFloat"](name="to_float")(inputs)
    x = keras.layers.Resizing(spec.size, spec.size, interpolation=spec.interpolation, name="resize")(x)
    if spec.backbone != "trunk":
        x = L["CaffePreprocess"](name="preprocess")(x)
    if spec.flip:
        x = L["WithMirror"](name="with_mirror")(x)
    if spec.backbone == "trunk":
        from .trunk import trunk_embedding_layers

        maps, wanted = {}, set(spec.layers)
        for layer in trunk_embedding_layers(trunk_model):
            x = layer(x)
            if layer.name in wanted:
                maps[layer.name] = x
            if len(maps) == len(wanted):
                break
    else:
        base = _load_base(spec.backbone, spec.size, spec.weights, seed)
        base.trainable = False
        if spec.classic:
            maps = {spec.layers[0]: base(x)}  # the classic embedding: the whole base, as it comes
        else:
            taps = keras.Model(base.inputs, [base.get_layer(n).output for n in spec.layers], name=base.name)
            maps = dict(zip(spec.layers, taps(x)))
    feats = [_pooled(spec, name, maps[name]) for name in spec.layers]
    out = feats[0] if len(feats) == 1 else keras.layers.Concatenate(name="concat")(feats)
    if spec.flip:
        out = L["MirrorMean"](name="mirror_mean")(out)
    return out, inputs


def _pooled(spec: FeatureSpec, name: str, t):
    """One layer's output as a vector: pooled to the spec's grid, or flattened. The classic
    embedding keeps the layer names of featx 0.1; other layers' get ``feat_<layer>``."""
    import keras

    classic = spec.classic
    if len(t.shape) == 2:
        return t if classic else keras.layers.Identity(name=f"feat_{name}")(t)
    tag = spec.pooling if classic else f"feat_{name}"
    if spec.pooling == "flatten":
        return keras.layers.Flatten(name="flatten" if classic else tag)(t)
    if spec.grid == 1:
        cls = keras.layers.GlobalAveragePooling2D if spec.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        return cls(name=f"{tag}_pool" if classic else tag)(t)
    return featx_layers()["GridPooling"](spec.grid, spec.pooling, name=f"{tag}_grid" if classic else tag)(t)


def feature_names(spec: FeatureSpec, model) -> list[str]:
    """Names of the embedding's columns: ``<backbone><i>`` for the classic embedding,
    else ``<backbone>_<layer>_<i>`` so that each column says which layer it comes from."""
    if spec.classic:
        return [f"{spec.backbone}{i}" for i in range(int(model.output.shape[-1]))]
    names = []
    for layer in spec.layers:
        width = int(model.get_layer(f"feat_{layer}").output.shape[-1])
        names += [f"{spec.backbone}_{layer}_{i}" for i in range(width)]
    return names


def _load_base(backbone: str, size: int, weights: str, seed: int):
    spec = get_backbone(backbone)
    if weights == "none":
        from .runtime import seeded_build

        with seeded_build(seed):
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
