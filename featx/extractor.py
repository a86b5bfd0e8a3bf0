"""One :class:`Extractor`: a feature spec resolved once, its frozen model built once per process.

Every extraction path uses it: :func:`featx.extract.extract_features` (one
process), the shard workers of :mod:`featx.shards`, the scikit-learn step
:class:`featx.FeatureExtractor` and :func:`featx.predict.predict_files`.

An extractor resolves the spec's weights when it is made (the trained trunk is
loaded, or trained first; the identity of a weights file is hashed) and keeps
what rebuilds its model elsewhere: the spec, the seed, the backbone's small
state (the trunk's weights) and the weights identity. It pickles in a few
kilobytes; the Keras model itself is never pickled, but built on first use in
each process and kept in a small per-process table shared by every extractor
with the same settings (so the clones of a grid search build it once).

The model is ``uint8 (n, h, w, 3) -> float -> resize -> preprocess -> [with
mirror images] -> frozen backbone -> each of spec.layers pooled to a grid ->
concatenated -> [mean of image and mirror]``: upscaling and preprocessing run
inside it, batch by batch, so the upscaled dataset never exists in memory.
"""

from __future__ import annotations

import json
import random
import threading
from collections import OrderedDict

import numpy as np

from . import cache
from .errors import SettingsError
from .spec import FeatureSpec

_MODELS: OrderedDict = OrderedDict()  # settings JSON -> live Keras model, most recent last
_MODELS_LOCK = threading.Lock()
_MAX_MODELS = 3
#: The widest embedding featx makes (floats per image): past it, a setting is a mistake, not a feature.
MAX_WIDTH = 500_000


class Extractor:
    """A :class:`~featx.spec.FeatureSpec` resolved once, with its model built lazily.

    Parameters
    ----------
    spec : FeatureSpec
    seed : int
        Seed of a random init and of the trunk's training.
    data : str, path or Dataset, optional
        The dataset whose source classes the trunk is trained on (``weights="trained"``).
    cache_dir : path, optional
        Where the trained trunk (and a model object saved as a file) is kept.
    progress : bool, optional
        Progress bars of what resolving the weights runs (the trunk's training, the decoding of its
        data); default: on a terminal.

    Examples
    --------
    >>> import numpy as np
    >>> ex = Extractor(FeatureSpec("vgg19", weights=None, size=32, precision="float32"))
    >>> ex.settings["backbone"], ex.settings["weights"]
    ('vgg19', 'random-init-seed0')
    >>> images = np.zeros((2, 32, 32, 3), np.uint8)
    >>> ex.transform(images).shape, ex.feature_names()[0]
    ((2, 512), 'vgg190')
    """

    def __init__(self, spec: FeatureSpec, *, seed: int = 0, data=None, cache_dir=None, progress: bool | None = None):
        import keras

        self.spec = spec
        self.seed = int(seed)
        with kept_global_rng():
            self.state, self.weights_id = spec.backbone_.resolve(spec.weights, seed=self.seed, data=data,
                                                                 cache_dir=cache_dir, progress=progress)  # fmt: skip
        self.backend = keras.backend.backend()

    @property
    def settings(self) -> dict:
        """The cache-key settings: the spec's (weights identity in place of the weights' name),
        the Keras backend and the cache format."""
        return {**self.spec.key_settings(self.weights_id), "backend": self.backend, "format": cache.FORMAT_VERSION}

    def settings_here(self) -> dict:
        """:attr:`settings` under this process's Keras backend: an extractor resolved under
        TensorFlow runs under JAX too, unless its weights are a random init of that backend."""
        import keras

        here = keras.backend.backend()
        if here == self.backend:
            return self.settings
        if self.weights_id.startswith("random-init"):
            raise SettingsError(
                f"These features were set up under the {self.backend} Keras backend with random weights, "
                f"and this process runs {here}: the same seed gives other weights here. Set them up again "
                f"in this process, or set KERAS_BACKEND={self.backend}."
            )
        return {**self.settings, "backend": here}

    @property
    def model(self):
        """The frozen Keras model, built once per process (and per backend)."""
        settings = self.settings_here()
        key = json.dumps(settings, sort_keys=True)
        with _MODELS_LOCK:
            if key in _MODELS:
                _MODELS.move_to_end(key)
                return _MODELS[key]
            self.spec.backbone_.verify(self.spec.weights, self.seed, self.weights_id)
            with kept_global_rng():
                model = build_extractor(self.spec, seed=self.seed, state=self.state)
            _MODELS[key] = model
            while len(_MODELS) > _MAX_MODELS:
                _MODELS.popitem(last=False)
            return model

    @property
    def dim(self) -> int:
        """Width of the embedding."""
        return int(self.model.output.shape[-1])

    def embed(self, images: np.ndarray, *, batch_size="auto", progress=None, adaptive=None, on_resize=None):
        """Yield ``(start, features)`` for consecutive batches of ``images`` (uint8, one size):
        :func:`featx.embed.embed` with this extractor's model. A batch that does not fit in
        memory is halved where ``adaptive`` (default: where ``batch_size`` is "auto")."""
        from .embed import embed, resolve_batch_size

        adaptive = batch_size == "auto" if adaptive is None else adaptive
        yield from embed(self.model, images, batch_size=resolve_batch_size(batch_size, self.spec),
                         progress=progress, adaptive=adaptive, on_resize=on_resize)  # fmt: skip

    def transform(self, images: np.ndarray, *, batch_size="auto") -> np.ndarray:
        """The embeddings of ``images`` (uint8 ``(n, h, w, 3)``), ``(n, dim)`` float32."""
        out = [f for _, f in self.embed(images, batch_size=batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.dim), np.float32)

    def feature_names(self) -> list[str]:
        """Names of the embedding's columns (see :func:`feature_names`)."""
        return feature_names(self.spec, self.model)

    def __repr__(self) -> str:
        return f"Extractor({self.spec.describe()!r}, seed={self.seed})"


class kept_global_rng:
    """Keras's seeding also seeds Python's and NumPy's global generators; restore them after."""

    def __enter__(self):
        self._py, self._np = random.getstate(), np.random.get_state()

    def __exit__(self, *exc):
        random.setstate(self._py)
        np.random.set_state(self._np)


def clear_models() -> None:
    """Forget the models built in this process (they are built again on next use)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def build_extractor(spec: FeatureSpec, *, seed: int = 0, state: dict | None = None):
    """Build the frozen extraction model ``uint8 images -> (n, d) embeddings`` for ``spec``.

    ``state`` is what the backbone resolved for the spec's weights
    (:meth:`featx.backbones.Backbone.resolve`; for the trunk, its weights).
    Most callers want :class:`Extractor`, which resolves it and keeps the model.
    """
    import keras

    from .runtime import dtype_policy

    if state is None:
        state = spec.backbone_.resolve(spec.weights, seed=seed)[0]
    with dtype_policy(spec.precision):  # float32, or Keras's mixed policy: float32 weights
        out, inputs = _extractor_graph(spec, seed, state)
    if spec.precision != "float32":
        out = keras.layers.Activation("linear", dtype="float32", name="to_float32")(out)
    model = keras.Model(inputs, out, name=f"featx_{spec.backbone_.label}")
    model.trainable = False
    return model


def _extractor_graph(spec: FeatureSpec, seed: int, state: dict):
    import keras

    from .layers import featx_layers

    L = featx_layers()
    bb = spec.backbone_
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="images")
    x = L["ToFloat"](name="to_float")(inputs)
    x = keras.layers.Resizing(spec.size, spec.size, interpolation=spec.interpolation, name="resize")(x)
    if bb.preprocessing != "none":
        x = L["Preprocess"](bb.preprocessing, name="preprocess")(x)
    if spec.flip:
        x = L["WithMirror"](name="with_mirror")(x)
    maps = bb.feature_maps(x, spec.layers, size=spec.size, weights=spec.weights, grid=spec.grid,
                           pooling=spec.pooling, seed=seed, state=state)
    feats = [_pooled(spec, name, maps[name]) for name in spec.layers]
    width = sum(int(f.shape[-1]) for f in feats)
    if width > MAX_WIDTH:
        raise SettingsError(
            f"These settings make embeddings {width:,} wide ({width * 4 / 2**20:,.1f} MiB per image), more than "
            f"featx takes ({MAX_WIDTH:,}): use a smaller --grid, --pooling avg or max rather than flatten, or "
            "fewer --layers."
        )
    out = feats[0] if len(feats) == 1 else keras.layers.Concatenate(name="concat")(feats)
    if spec.flip:
        out = L["MirrorMean"](name="mirror_mean")(out)
    return out, inputs


def _pooled(spec: FeatureSpec, name: str, t):
    """One layer's output as a vector: pooled to the spec's grid, or flattened. The classic
    embedding keeps the layer names of featx 0.1; other layers' get ``feat_<layer>``."""
    import keras

    from .layers import featx_layers

    classic = spec.classic
    if len(t.shape) == 2:
        return t if classic else keras.layers.Identity(name=f"feat_{name}")(t)
    if len(t.shape) != 4:
        raise SettingsError(
            f"Layer {name!r} of {spec.backbone_.label} outputs shape {tuple(t.shape)}: featx pools maps "
            "(n, h, w, c) and takes vectors (n, d). Pick another layer with --layers."
        )
    tag = spec.pooling if classic else f"feat_{name}"
    h, w = t.shape[1], t.shape[2]
    if spec.pooling != "flatten" and h is not None and w is not None and spec.grid > min(h, w):
        raise SettingsError(
            f"grid {spec.grid} is finer than layer {name!r} of {spec.backbone_.label}, whose map is {h}x{w} at size "
            f"{spec.size}: use --grid {min(h, w)} or less there, or a larger --size."
        )
    if spec.pooling == "flatten":
        return keras.layers.Flatten(name="flatten" if classic else tag)(t)
    if spec.grid == 1:
        cls = keras.layers.GlobalAveragePooling2D if spec.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        return cls(name=f"{tag}_pool" if classic else tag)(t)
    return featx_layers()["GridPooling"](spec.grid, spec.pooling, name=f"{tag}_grid" if classic else tag)(t)


def feature_names(spec: FeatureSpec, model) -> list[str]:
    """Names of the embedding's columns: ``<backbone><i>`` for the classic embedding,
    else ``<backbone>_<layer>_<i>`` so that each column says which layer it comes from."""
    label = spec.backbone_.label
    if spec.classic:
        return [f"{label}{i}" for i in range(int(model.output.shape[-1]))]
    names = []
    for layer in spec.layers:
        width = int(model.get_layer(f"feat_{layer}").output.shape[-1])
        names += [f"{label}_{layer}_{i}" for i in range(width)]
    return names
