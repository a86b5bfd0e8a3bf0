"""featx as a scikit-learn step: :class:`FeatureExtractor` turns images into embeddings.

``FeatureExtractor`` builds its frozen backbone in ``fit`` and embeds images in
``transform``; with ``cache_dir`` set, every image's embedding is kept in HDF5,
keyed by the image's content, so cross-validation folds, grid searches over the
head and later predictions on images seen before never run the backbone twice.

The live Keras model is never pickled. A fitted extractor holds what rebuilds
it (the resolved settings, and for the small trunk its weights); the model
itself is kept in a per-process table shared by every extractor with the same
settings, so the clones of a grid search build it once per process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from . import cache
from .embed import check_batch_size, embed, resolve_batch_size
from .errors import ArgumentError, DataError
from .extractor import Extractor
from .images import decode_image, image_digest
from .overlap import decode_pool, prefetch
from .spec import FeatureSpec

logger = logging.getLogger(__name__)

class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Embed images with a frozen backbone: a scikit-learn transformer.

    ``fit`` builds the backbone (for the ``trunk``, loads it from the cache or
    trains it first); ``transform`` resizes the images inside the model, batch
    by batch, and returns one embedding per image.

    Parameters
    ----------
    backbone : str, path or keras.Model, default="vgg19"
        "trunk", any ``keras.applications`` model by its lower-case name
        ("resnet50", "efficientnetv2b0", ...), the path of a ``.keras`` file,
        or a ``keras.Model`` (saved once into ``cache_dir``'s ``models/``, or
        the default cache folder, so that clones and pickles rebuild it).
    weights : str, path or None, default="pretrained"
        The same values as everywhere in featx (:class:`~featx.spec.FeatureSpec`):
        "imagenet", None (a random init seeded by ``random_state``) or a weights
        file, as in Keras; "trained" (the trunk, trained on the source classes
        of ``trunk_data``), "saved" (a model's own), "pretrained" (the
        backbone's own) and "none".
    size : int, optional
        Side the images are resized to inside the model (default: the backbone's, 224 for
        most; the trunk runs at 32).
    pooling : {"avg", "max", "flatten"}, optional
        How each layer's map is pooled to the grid; "flatten" keeps whole maps.
        Default "avg" (trunk: "max").
    interpolation : str, default="bilinear"
        Resize method.
    layers : list of str, optional
        Layers whose outputs, pooled to ``grid`` x ``grid``, make the embedding
        (default: the backbone's own set; see :class:`featx.FeatureSpec`).
        ``["flatten"]`` for the trunk, or the last layer of the others
        (``["block5_pool"]``, ``["conv5_block3_out"]``), gives the classic embedding.
    grid : int, optional
        Cells per side each layer is pooled to (default: trunk 4, others 1).
    flip : bool, optional
        Average with the mirror image's embedding (default: trunk True, others False).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        What the backbone computes in (see :class:`featx.FeatureSpec`).
    batch_size : int or "auto", default="auto"
        Images per forward pass ("auto": 32 on a CPU, by memory on a GPU, halved
        when a batch does not fit).
    dtype : {"float32", "float16"}, default="float32"
        Precision the embeddings are kept at (in the cache too); ``transform``
        always returns float32.
    cache_dir : path, optional
        Keep each image's embedding in ``<cache_dir>/embeddings/``, keyed by the
        backbone settings and the image's content; None (default) caches nothing.
    trunk_data : str or path, default="sample"
        Dataset whose source classes the trunk is trained on (``weights="trained"`` only).
    random_state : int, RandomState or None, default=0
        Seeds random weights and the trunk's training.
    progress : bool, optional
        Progress bar while embedding (default: when on a terminal).

    Attributes
    ----------
    spec_ : FeatureSpec
        What makes the embeddings, checked, with the backbone's defaults filled in.
    settings_ : dict
        ``spec_``'s cache-key settings (weights identity in place of the
        weights' name) plus the Keras backend.
    n_features_out_ : int
        Embedding width.
    extractor_ : featx.extractor.Extractor
        The spec resolved (weights identity; the trunk's weights): what rebuilds
        the model in another process.
    model_ : keras.Model
        The frozen model ``uint8 (n, h, w, 3) -> (n, n_features_out_)``; built
        on first use in each process, never pickled.

    Examples
    --------
    >>> import numpy as np
    >>> from featx import FeatureExtractor
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> fx = FeatureExtractor("vgg19", weights=None, size=32, precision="float32").fit(images)
    >>> fx.transform(images).shape
    (4, 512)
    >>> fx = FeatureExtractor("vgg19", weights=None, size=32, layers=["block4_pool", "block5_pool"]).fit(images)
    >>> fx.get_feature_names_out()[[0, 512]].tolist()
    ['vgg19_block4_pool_0', 'vgg19_block5_pool_0']
    """

    def __init__(
        self,
        backbone="vgg19",
        *,
        weights="pretrained",
        size: int | None = None,
        pooling: str | None = None,
        interpolation: str = "bilinear",
        layers=None,
        grid: int | None = None,
        flip: bool | None = None,
        precision: str = "auto",
        batch_size: int | str = "auto",
        dtype: str = "float32",
        cache_dir: str | os.PathLike | None = None,
        trunk_data="sample",
        random_state=0,
        progress: bool | None = None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.size = size
        self.pooling = pooling
        self.interpolation = interpolation
        self.layers = layers
        self.grid = grid
        self.flip = flip
        self.precision = precision
        self.batch_size = batch_size
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.trunk_data = trunk_data
        self.random_state = random_state
        self.progress = progress

    def fit(self, X, y=None):
        """Resolve the backbone and its weights; ``X`` is only checked (the backbone is frozen).

        Parameters
        ----------
        X : array of shape (n, h, w, 3), or list of image paths or arrays
        y : ignored

        Returns
        -------
        self
        """
        _Images(X)
        check_batch_size(self.batch_size)
        self.spec_ = self._make_spec()
        rs = self.random_state
        seed = (
            int(rs) if isinstance(rs, (int, np.integer)) else int(check_random_state(rs).randint(2**31 - 1))
        )
        self.extractor_ = Extractor(self.spec_, seed=seed, data=self.trunk_data, cache_dir=self.cache_dir)
        self.settings_ = self.extractor_.settings
        self.n_features_out_ = self.extractor_.dim
        return self

    def _make_spec(self) -> FeatureSpec:
        """The spec of this extractor's parameters (a model object is saved once into the cache folder)."""
        from .backbones.keras_model import is_keras_model, save_model

        names = {f.name for f in dataclasses.fields(FeatureSpec)}
        params = {k: v for k, v in self.get_params().items() if k in names}
        if is_keras_model(self.backbone):
            params["backbone"] = str(save_model(self.backbone, self.cache_dir))
        return FeatureSpec(**params)

    @property
    def model_(self):
        check_is_fitted(self, "extractor_")
        return self.extractor_.model

    def __setstate__(self, state):
        if "_rebuild" in state:  # pickled by an earlier featx: the same extractor, from what it kept
            state = dict(state)
            rebuild = state.pop("_rebuild")
            spec = FeatureSpec.from_dict(rebuild["spec"]) if "spec" in rebuild else FeatureSpec.from_dict(
                {**state["settings_"], "weights": rebuild["weights"]})  # fmt: skip
            ex = Extractor.__new__(Extractor)
            ex.spec, ex.seed, ex.weights_id = spec, int(rebuild["seed"]), state["settings_"]["weights"]
            ex.state = {"trunk_weights": rebuild["trunk_weights"]} if rebuild.get("trunk_weights") else {}
            ex.backend = state["settings_"]["backend"]
            state["extractor_"] = ex
        self.__dict__.update(state)

    def transform(self, X) -> np.ndarray:
        """Embed images.

        Parameters
        ----------
        X : array of shape (n, h, w, 3), or list of image paths or arrays
            uint8 pixels, or floats on the same 0-255 scale (rounded to
            uint8). Images of different sizes are embedded in groups of equal
            size; each is resized to ``size`` inside the model. (Under JAX each
            new size compiles the model once: resize many odd sizes beforehand.)

        Returns
        -------
        ndarray of shape (n, n_features_out_), float32
        """
        check_is_fitted(self, "extractor_")
        settings = self.extractor_.settings_here()
        images = _Images(X)
        n, dim = len(images), self.n_features_out_
        out = np.empty((n, dim), np.float32)
        store = (
            None
            if self.cache_dir is None
            else cache.EmbeddingCache(settings, dim, settings["dtype"], self.cache_dir)
        )
        model = self.extractor_.model
        hits = 0
        disable = None if self.progress is None else not self.progress
        with tqdm(total=n, desc=self.spec_.backbone_.label, unit="img", disable=disable, file=sys.stderr,
                  dynamic_ncols=True, leave=False) as bar:  # fmt: skip
            batch = resolve_batch_size(self.batch_size, self.spec_)
            # the next chunk is decoded (on a pool of threads) while this one is embedded
            for start, chunk in prefetch(images.chunks(max(1024, 8 * batch)), depth=1):
                todo = np.arange(len(chunk))
                if store is not None:
                    digests = [image_digest(im) for im in chunk]
                    found, rows = store.get(digests)
                    out[start + found] = rows
                    hits += len(found)
                    bar.update(len(found))
                    todo = np.setdiff1d(todo, found, assume_unique=True)
                if not len(todo):
                    continue
                feats = self._embed(model, chunk, todo, bar, batch)
                out[start + todo] = feats
                if store is not None:
                    store.put([digests[i] for i in todo], feats)
        if store is not None:
            logger.debug("%s embeddings: %d images, %d cache hits, %d misses (%s)",
                         self.spec_.backbone_.label, n, hits, n - hits, store.path)  # fmt: skip
        return out

    def _embed(self, model, chunk, todo: np.ndarray, bar, batch_size: int) -> np.ndarray:
        """Embeddings of ``chunk[todo]``, in groups of equal image size, at the storage precision."""
        feats = np.empty((len(todo), self.n_features_out_), np.float32)
        if isinstance(chunk, np.ndarray):  # one array: one size
            groups = [(np.arange(len(todo)), chunk if len(todo) == len(chunk) else chunk[todo])]
        else:
            by_shape: dict[tuple, list[int]] = {}
            for k, i in enumerate(todo):
                by_shape.setdefault(chunk[i].shape, []).append(k)
            groups = [(np.array(ks), np.stack([chunk[todo[k]] for k in ks])) for ks in by_shape.values()]
        for ks, batch in groups:
            for s, f in embed(model, batch, batch_size=batch_size, progress=bar, adaptive=self.batch_size == "auto"):
                # Rounded to the storage dtype, so that a cache hit later returns exactly this.
                feats[ks[s : s + len(f)]] = f.astype(self.settings_["dtype"]).astype(np.float32)
        return feats

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``<backbone>_<layer>_<i>`` (``<backbone><i>`` for a backbone's classic embedding, its
        last layer alone); ``input_features`` is ignored (images have no feature names)."""
        check_is_fitted(self, "extractor_")
        return np.asarray(self.extractor_.feature_names(), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # two_d_array stays True only so that scikit-learn's checks run at all: with False they
        # are all skipped. The checks that feed 2-D tables are listed as expected failures.
        tags.input_tags.string = True  # lists of image paths
        tags.transformer_tags.preserves_dtype = []  # always float32
        return tags


class _Images:
    """The images handed to ``fit``/``transform``, checked, served in uint8 chunks.

    Either one numeric array (n, h, w, 3), or a sequence whose items are image
    file paths or (h, w, 3) arrays (decoded or converted chunk by chunk).
    """

    def __init__(self, X):
        self.array = None
        self.items = None
        if X is None or isinstance(X, (str, bytes, os.PathLike)):
            hint = " To embed one file, pass a list: [path]." if X is not None else ""
            raise DataError(
                "X must be images: an array of shape (n, h, w, 3), or a list of image file paths or "
                f"(h, w, 3) arrays. Received: {_describe(X)}.{hint}"
            )
        if hasattr(X, "tocsr") or hasattr(X, "todense"):  # scipy.sparse
            raise ArgumentError(
                f"Sparse input is not supported: FeatureExtractor takes dense images. Received: {type(X).__name__} "
                f"of shape {getattr(X, 'shape', '?')}."
            )
        if hasattr(X, "columns") and hasattr(X, "iloc"):  # a DataFrame
            raise DataError(
                "X must be images: an array of shape (n, h, w, 3), or a list of image file paths. Received "
                f"a DataFrame with columns {list(X.columns)[:5]}; pass the column of paths, e.g. df['path']."
            )
        if isinstance(X, (list, tuple)) or (hasattr(X, "__array__") and np.asarray(X).dtype.kind in "OUS"):
            self.items = list(X.tolist() if hasattr(X, "tolist") and not isinstance(X, list) else X)
            if not self.items:
                raise DataError("X holds no images (an empty list). Pass at least one image.")
            for i, item in enumerate(self.items):
                if isinstance(item, np.ndarray) or (hasattr(item, "__array__") and not isinstance(item, str)):
                    self.items[i] = _check_array(np.asarray(item), single=True, where=f"X[{i}]")
                elif not isinstance(item, (str, os.PathLike)):
                    raise DataError(
                        f"X[{i}] is {_describe(item)}; each item of a list must be an image file path or an "
                        "(h, w, 3) array."
                    )
        else:
            self.array = _check_array(np.asarray(X), single=False, where="X")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.items)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray | list[np.ndarray]]]:
        if self.array is not None:
            for start in range(0, len(self), size):
                yield start, _to_uint8(self.array[start : start + size])
            return
        with decode_pool() as pool:
            for start in range(0, len(self), size):
                yield start, list(pool.map(_decoded, self.items[start : start + size]))


def _decoded(item) -> np.ndarray:
    return _to_uint8(item) if isinstance(item, np.ndarray) else decode_image(item)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def _check_array(arr: np.ndarray, *, single: bool, where: str) -> np.ndarray:
    """Check an image array: shape (n, h, w, 3) (one image: (h, w, 3)), pixels 0-255, no NaN."""
    want, rank = ("(h, w, 3)", 3) if single else ("(n, h, w, 3)", 4)
    if arr.dtype.kind == "c":
        raise DataError(f"Complex data not supported: {where} must hold real pixel values 0-255.")
    if arr.dtype.kind not in "uif":
        raise DataError(
            f"{where} must hold numbers (uint8 pixels, or floats on the 0-255 scale). Received: {_describe(arr)}."
        )
    if arr.ndim != rank:
        hint = ""
        if not single and arr.ndim == 3 and arr.shape[-1] == 3:
            hint = " It looks like one image: pass X[np.newaxis] (or [X])."
        elif arr.ndim == rank - 1:
            hint = " Grayscale images? Give them 3 channels: np.repeat(X[..., np.newaxis], 3, axis=-1)."
        elif arr.ndim == 2 and not single:
            hint = (" FeatureExtractor takes images, not feature tables; to fit a head on features "
                    "already extracted, leave the FeatureExtractor out.")  # fmt: skip
        raise DataError(f"{where} must be images of shape {want}. Received: {_describe(arr)}.{hint}")
    if arr.shape[-1] != 3:
        hint = {1: " Grayscale: np.repeat(X, 3, axis=-1) makes it RGB.",
                4: " RGBA: drop the alpha channel with X[..., :3]."}.get(arr.shape[-1], "")  # fmt: skip
        raise DataError(
            f"{where} must have 3 (RGB) channels in its last axis. Received: {_describe(arr)}.{hint}"
        )
    if arr.size == 0:
        raise DataError(
            f"{where} holds no images (shape {arr.shape}). Pass at least one image of at least 1x1."
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise DataError(
                f"{where} holds {int(bad.sum())} NaN or infinite values (first at index {tuple(first.tolist())}). "
                "Images must be finite pixel values 0-255."
            )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -0.5 or hi > 255.5:
        raise DataError(
            f"{where} pixel values must lie in 0-255. Received values from {lo:g} to {hi:g}"
            + (" (images normalised for some other network? pass the raw 0-255 pixels)." if lo < 0 else ".")
        )
    if arr.dtype.kind == "f" and 0 < hi <= 1.0:
        raise DataError(
            f"{where} is float with every value in [0, 1] (max {hi:g}): images scaled to 0-1. featx takes "
            "the 0-255 scale (as Keras applications do): pass X * 255, or the uint8 pixels."
        )
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return np.rint(arr).clip(0, 255).astype(np.uint8)
