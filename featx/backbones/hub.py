"""KerasHub image backbones as featx backbones, by preset.

``--backbone dinov2_small``, ``--backbone hf://timm/vit_small_patch16_224.augreg_in21k``,
``--backbone kaggle://keras/clip/keras/clip_vit_base_patch16/3`` or the path of a preset folder
(what ``backbone.save_to_preset(FOLDER)`` writes). Installed with ``pip install 'featx[hub]'``.

What featx knows about a preset is read from the model, not from a table of names:

- a model with an image tower (``get_vision_embeddings``: CLIP, SigLIP, MetaCLIP 2) gives
  the tower's pooled, projected embedding, the one its zero-shot use compares with text;
- a model whose output is a sequence of tokens (DINOv2/v3, ViT, DeiT) gives the class token
  and the mean of the patch tokens after the final norm, concatenated (the DINOv2 linear
  protocol); ``--layers`` names its blocks (``stage1`` ... ``stageN``, or ``last4`` for the last
  four), each normed as the output is; ``--grid`` pools the patch tokens to a grid;
- a model whose output is a map (ResNet, EfficientNet, ...) is tapped and pooled as a
  keras.applications model is.

The preprocessing (scale and offset: mean and std) and the native resolution come from the
preset's image converter and run inside the model. At another size the model is rebuilt at that
size and its position embeddings interpolated (bicubic) to the new grid of patches.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

from ..config import slug
from ..errors import SettingsError, WeightsError
from .base import Backbone, file_sha256, fresh_names, layer_info, load_weights_file, stage_ends

#: Prefixes of remote preset handles.
SCHEMES = ("hf://", "kaggle://", "modelscope://")
_INSTALL = "KerasHub backbones need the hub extra: pip install 'featx[hub]'"


def hub():
    """The ``keras_hub`` module, or one line saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise SettingsError(_INSTALL) from None
    return keras_hub


def is_preset_folder(name) -> bool:
    """Whether ``name`` is a folder holding a KerasHub preset (its ``config.json``)."""
    try:
        path = Path(name).expanduser()
        return path.is_dir() and (path / "config.json").is_file()
    except (OSError, ValueError):
        return False


def is_hub_name(name) -> bool:
    """Whether a backbone name is for this family: a remote handle, a preset folder, or a registry name."""
    if not isinstance(name, str):
        return False
    if name.startswith(SCHEMES) or os.path.isdir(os.path.expanduser(name)):
        return True  # a folder that is no preset is told so by KerasHubPreset
    try:
        return name in all_presets()
    except SettingsError:
        return False


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@functools.cache
def all_presets() -> dict:
    """``{name: registry entry}`` of every preset KerasHub knows (offline: its own registry)."""
    return dict(hub().models.Backbone.presets)


@functools.cache
def image_preset_classes() -> tuple:
    """Backbone classes that embed images: those with an image converter that an image classifier
    uses, or that have an image tower (image-text), or that no task of another kind uses (DINO)."""
    keras_hub = hub()
    from keras_hub.src.models.task import Task

    with_converter = {c.backbone_cls for c in _subclasses(keras_hub.layers.ImageConverter)
                      if getattr(c, "backbone_cls", None)}  # fmt: skip
    classifiers = {c.backbone_cls for c in _subclasses(keras_hub.models.ImageClassifier)
                   if getattr(c, "backbone_cls", None)}  # fmt: skip
    in_tasks = {c.backbone_cls for c in _subclasses(Task) if getattr(c, "backbone_cls", None)}
    keep = [c for c in with_converter
            if c in classifiers or hasattr(c, "get_vision_embeddings") or c not in in_tasks]  # fmt: skip
    keep = [c for c in keep if "video" not in (c.__doc__ or "").split("\n")[0].lower()]
    return tuple(sorted(keep, key=lambda c: c.__name__))


@functools.cache
def image_presets() -> dict:
    """``{name: (backbone class, registry entry)}`` of KerasHub's image presets."""
    out = {}
    for cls in image_preset_classes():
        for name, entry in cls.presets.items():
            out.setdefault(name, (cls, entry))
    return dict(sorted(out.items()))


def preset_rows() -> list[dict]:
    """What ``python cli.py backbones`` lists of KerasHub: every image preset, from the registry."""
    rows = []
    for name, (cls, entry) in image_presets().items():
        meta = entry.get("metadata", {})
        desc = meta.get("description", "")
        rows.append({"backbone": name, "family": f"keras-hub {meta.get('path', cls.__name__)}",
                     "size": _stated_size(name, desc), "params": meta.get("params"),
                     "description": desc})  # fmt: skip
    return rows


def _stated_size(name: str, description: str):
    """The input size the registry states for a preset (its description or name), else None."""
    for pattern, text in ((r"(\d{2,4})\s*x\s*\1", description), (r"(?:image size|resolution of)\s*(\d{2,4})", description),
                          (r"(?:patch\d+|p\d+)_(\d{2,4})(?:_|$)", name), (r"_(\d{3})(?:_|$)", name)):  # fmt: skip
        m = re.search(pattern, text)
        if m:
            return int(m.group(1))
    return None


def close_presets(name: str, n: int = 1) -> list[str]:
    """The image preset names closest to ``name`` (none where KerasHub is not installed)."""
    try:
        return difflib.get_close_matches(name.lower(), list(image_presets()), n=n)
    except SettingsError:
        return []


def _fetch_error(preset: str, exc: Exception) -> WeightsError:
    if is_preset_folder(preset):
        return WeightsError(f"Could not read the KerasHub preset folder '{preset}' ({exc.__class__.__name__}: "
                            f"{str(exc)[:200]}). Save it again with backbone.save_to_preset(FOLDER).")  # fmt: skip
    return WeightsError(
        f"Could not fetch the KerasHub preset {preset!r} ({exc.__class__.__name__}: {str(exc)[:100]}). It downloads "
        "once from Kaggle or Hugging Face: on a machine without network, fetch it where there is one "
        f"(keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset('FOLDER'), with the image converter: "
        f"keras_hub.layers.ImageConverter.from_preset({preset!r}).save_to_preset('FOLDER')), copy the folder "
        "here and pass --backbone FOLDER."
    )


class KerasHubPreset(Backbone):
    """A KerasHub backbone loaded from a preset: a registry name, an ``hf://``/``kaggle://`` handle or a folder."""

    family = "keras-hub"
    named_weights = ("preset",)  # the weights the preset ships

    def __init__(self, preset: str):
        if is_preset_folder(preset):
            preset = str(Path(preset).expanduser().resolve())
        elif os.path.isdir(os.path.expanduser(preset)):
            raise SettingsError(
                f"'{preset}' is a folder but no KerasHub preset (it has no config.json). Pass a folder written by "
                "backbone.save_to_preset(FOLDER), a preset name (`python cli.py backbones` lists them) or an "
                "hf:// or kaggle:// handle."
            )
        self.preset = self.name = preset
        model = self._native()
        self.kind = _kind(model)
        if self.kind is None:
            raise SettingsError(
                f"The KerasHub preset {preset!r} ({type(model).__name__}) takes no images: featx embeds "
                "images. Pick an image preset (`python cli.py backbones` lists them)."
            )
        self.description = f"KerasHub {type(model).__name__}"
        self.params = int(model.count_params())
        conv = _converter(preset)
        self._scale, self._offset = _affine(conv)
        native = _native_size(model, conv)
        self.default_size = native or 224
        self.fixed_size = False
        self.patch = _patch_size(model) if self.kind == "tokens" else None
        self.min_size = self.patch or 32
        self.preprocessing = "none"  # the converter's scale and offset run inside feature_maps
        self.flat_layers = ("embedding",) if self.kind == "image-text" else ()
        self._shapes = self._read_shapes(model)

    # ------------------------------------------------------------------ naming

    @property
    def label(self) -> str:
        name = self.preset.rstrip("/")
        return slug(Path(name).name if is_preset_folder(name) else name.split("://")[-1].replace("/", "-"))

    @property
    def key_name(self) -> str:
        return f"hub:{self.label}"  # the weights' content is in the weights identity

    def row(self) -> dict:
        return {**super().row(), "params": self.params,
                "preprocessing": f"scale {_fmt(self._scale)}, offset {_fmt(self._offset)}"}  # fmt: skip

    # ------------------------------------------------------------------ layers

    @property
    def output_layer(self) -> str:
        return "embedding" if self.kind == "image-text" else "output"

    def _read_shapes(self, model) -> tuple:
        """``(name, shape, kind)`` of what --layers can name: the embedding of an image-text model,
        the blocks of a token model (``2 d`` wide: class token and mean of patches), a CNN's layers."""
        if self.kind == "image-text":
            import keras

            x = keras.Input((self.default_size, self.default_size, 3))
            return (("embedding", tuple(model.get_vision_embeddings(x).shape[1:]), "Embedding"),)
        if self.kind == "tokens":
            blocks = {n: t for n, t in getattr(model, "pyramid_outputs", {}).items() if n != "stem"}
            blocks["output"] = model.output
            return tuple((n, (_token_width(t.shape),), "Block") for n, t in blocks.items())
        info = layer_info(model, self.default_size)
        return info + (("output", info[-1][1], info[-1][2]),)

    def layer_info(self):
        return self._shapes

    @property
    def default_layers(self) -> tuple[str, ...]:
        if self.kind != "maps":
            return (self.output_layer,)
        layers = stage_ends(self._shapes[:-1], self._shapes[-2][0])
        return (*layers[:-1], "output")  # the model's own output is its last layer

    def check_size(self, size) -> int:
        size = super().check_size(size)
        if self.patch and size % self.patch:
            raise SettingsError(
                f"{self.label} cuts images into {self.patch}x{self.patch} patches: size must be a multiple of "
                f"{self.patch} (e.g. {size - size % self.patch or self.patch} or {size - size % self.patch + self.patch}). "
                f"Received: size={size}"
            )
        return size

    def check_layers(self, layers, weights=None):
        """Also ``lastN`` (a token model's last N blocks, by name)."""
        if isinstance(layers, str) and re.fullmatch(r"last\d+", layers.strip()):
            blocks = [n for n, _, _ in self._shapes if n != "output"]
            k = int(layers.strip()[4:])
            if not blocks:
                raise SettingsError(f"{self.label} exposes no blocks: --layers takes {self.output_layer} only. "
                                    f"Received: layers={layers!r}")  # fmt: skip
            if not 1 <= k <= len(blocks):
                raise SettingsError(
                    f"{self.label} has {len(blocks)} blocks that --layers can name: last1 to last{len(blocks)}. "
                    f"Received: layers={layers!r}"
                )
            layers = blocks[-k:]
        return super().check_layers(layers, weights)

    # ------------------------------------------------------------------ weights

    def named_identity(self, weights: str) -> str:
        return f"keras-hub:{_preset_digest(self.preset)}"

    # ------------------------------------------------------------------ building

    def _native(self):
        return _load_native(self.preset)

    def build_base(self, size: int, weights: str, seed: int | None):
        """The backbone at ``size`` with ``weights`` ("preset", "none": a seeded random init, or a
        ``.weights.h5`` file saved from this architecture), under the current dtype policy."""
        import keras

        from ..runtime import seeded_build

        native = self._native()
        policy = keras.config.dtype_policy().name
        same = size == self.default_size or _size_free(native)
        if weights == "preset" and same and policy == "float32":
            return native
        if weights == "preset" and not same:
            own = _own_resize(self.preset, size, policy)
            if own is not None:
                return own
        config = keras.saving.serialize_keras_object(native)
        if not same:
            config = _with_image_shape(config, (size, size, 3))
        if policy != "float32":
            config = _with_dtype(config, policy)
        with fresh_names():
            if weights == "none" and seed is not None:
                with seeded_build(seed):
                    model = keras.saving.deserialize_keras_object(config)
            else:
                model = keras.saving.deserialize_keras_object(config)
        if weights == "preset":
            _transfer(native, model)
        elif weights != "none":
            load_weights_file(model, weights, self.label, "backbone (backbone.save_weights)")
        return model

    def feature_maps(self, x, layers: tuple, *, size: int, weights: str, grid: int, pooling: str, seed: int,
                     state: dict) -> dict:  # fmt: skip
        import keras

        from ..layers import featx_layers

        model = self.build_base(size, weights, seed)
        model.trainable = False
        x = featx_layers()["Affine"](self._scale, self._offset, name="preprocess")(x)
        if self.kind == "image-text":
            return {"embedding": model.get_vision_embeddings(x)}
        if self.kind == "maps":
            wanted = [model.output if n == "output" else model.get_layer(n).output for n in layers]
            out = keras.Model(model.inputs, wanted, name=f"{model.name}_taps")(x)
            return dict(zip(layers, out if isinstance(out, (list, tuple)) else [out]))
        norm = _final_norm(model)
        tensors = [model.output if n == "output" else model.pyramid_outputs[n] for n in layers]
        seqs = keras.Model(model.inputs, tensors, name=f"{model.name}_taps")(x)
        seqs = seqs if isinstance(seqs, (list, tuple)) else [seqs]
        Tokens = featx_layers()["TokenPooling"]
        out = {}
        for name, seq in zip(layers, seqs):
            if name != "output" and norm is not None:
                seq = norm(seq)
            # The patches are the largest square of tokens (the few others: class, registers,
            # distillation): so a model whose tokens are not one per input patch (Swin's last stage) too.
            g = math.isqrt(seq.shape[1] or 0)
            if not g:
                raise SettingsError(f"{self.label} gives {seq.shape[1]} tokens at size {size}: featx cannot "
                                    "find its patch tokens. Try another --size.")  # fmt: skip
            if grid > g:
                raise SettingsError(
                    f"grid {grid} is finer than the {g}x{g} patches of {self.label} at size {size}: "
                    f"use --grid {g} or less, or a larger --size."
                )
            out[name] = Tokens(g, grid, pooling, name=f"tokens_{name}")(seq)
        return out


def _token_width(shape) -> int:
    """Width of a sequence's embedding at grid 1: the class token (where there are tokens besides the
    largest square, the patches) and the mean of the patches, as :class:`TokenPooling` makes it."""
    tokens, d = shape[1], int(shape[-1])
    return d if tokens and math.isqrt(tokens) ** 2 == tokens else 2 * d


def _fmt(v) -> str:
    v = np.atleast_1d(np.asarray(v, dtype=float))
    return "/".join(f"{a:.4g}" for a in v)


def _kind(model) -> str | None:
    """"image-text" (an image tower), "tokens" (a sequence out), "maps" (a map out), or None (no image input)."""
    if hasattr(model, "get_vision_embeddings"):
        return "image-text"
    images = [i for i in model.inputs if len(i.shape) == 4]
    if len(model.inputs) != 1 or not images or isinstance(model.output, dict):
        return None
    return {3: "tokens", 4: "maps"}.get(len(model.output.shape))


def _patch_size(model) -> int | None:
    """The side of the model's input patches, where it says (None: any size)."""
    p = getattr(model, "patch_size", None)
    p = p[0] if isinstance(p, (list, tuple)) else p
    return int(p) if p else None


def _final_norm(model):
    """The normalisation layer that makes the model's output (applied to a block's tokens too), or None."""
    import keras

    op = getattr(getattr(model.output, "_keras_history", None), "operation", None)
    return op if isinstance(op, keras.layers.LayerNormalization) else None


def _size_free(model) -> bool:
    """Whether the model takes any input size as it is (its input shape leaves the size open)."""
    shape = model.inputs[0].shape
    return shape[1] is None and shape[2] is None


def _native_size(model, conv) -> int | None:
    size = getattr(conv, "image_size", None) if conv is not None else None
    if size and size[0]:
        return int(size[0])
    shape = getattr(model, "image_shape", None) or tuple(model.inputs[0].shape[1:])
    return int(shape[0]) if shape and shape[0] else None


def _affine(conv) -> tuple:
    """The converter's ``x * scale + offset`` (per channel or one number); identity where it has none."""
    scale = getattr(conv, "scale", None) if conv is not None else None
    offset = getattr(conv, "offset", None) if conv is not None else None
    as_list = lambda v, d: d if v is None else ([float(a) for a in v] if isinstance(v, (list, tuple)) else float(v))  # noqa: E731
    return as_list(scale, 1.0), as_list(offset, 0.0)


@functools.lru_cache(maxsize=4)
def _load_native(preset: str):
    keras_hub = hub()
    try:
        with fresh_names():
            return keras_hub.models.Backbone.from_preset(preset)
    except SettingsError:
        raise
    except Exception as exc:
        raise _fetch_error(preset, exc) from None


def _own_resize(preset: str, size: int, policy: str):
    """The preset at ``size`` by the model's own means (DINOv2 interpolates its position embeddings
    itself, from those it was trained with), or None for a model that cannot (then featx does)."""
    import warnings

    import keras

    keras_hub = hub()
    try:
        with fresh_names(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras_hub.models.Backbone.from_preset(preset, image_shape=(size, size, 3), dtype=policy)
            x = keras.Input((size, size, 3))
            model.get_vision_embeddings(x) if hasattr(model, "get_vision_embeddings") else model(x)
        return model  # it takes the size (an image_shape it was given may not reach its image tower)
    except Exception:
        return None


@functools.lru_cache(maxsize=8)
def _converter(preset: str):
    keras_hub = hub()
    from keras_hub.src.utils.preset_utils import check_file_exists

    try:
        if not check_file_exists(preset, "image_converter.json"):
            return None
    except Exception:
        return None
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as exc:
        raise _fetch_error(preset, exc) from None


def _preset_files(preset: str) -> list[Path]:
    """The files of a preset as they lie on this machine (downloaded once for a remote one)."""
    from keras_hub.src.utils.preset_utils import get_file

    if is_preset_folder(preset):
        folder = Path(preset)
    else:
        try:
            folder = Path(get_file(preset, "config.json")).parent
        except Exception as exc:
            raise _fetch_error(preset, exc) from None
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _preset_digest(preset: str) -> str:
    """sha256 over the preset's files (names and contents), once per version of each file."""
    h = hashlib.sha256()
    for p in _preset_files(preset):
        st = p.stat()
        h.update(f"{p.name}:{_file_digest(str(p), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per version of it (weights files run to gigabytes)."""
    return file_sha256(Path(path))


def _with_image_shape(config, shape):
    """The serialized model with every ``image_shape`` set to ``shape``."""
    if isinstance(config, dict):
        return {k: (list(shape) if k == "image_shape" and v is not None else _with_image_shape(v, shape))
                for k, v in config.items()}  # fmt: skip
    if isinstance(config, list):
        return [_with_image_shape(v, shape) for v in config]
    return config


def _with_dtype(config, policy: str):
    """The serialized model with its float dtype policies set to ``policy`` (weights stay float32)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith(
                ("float", "mixed")):  # fmt: skip
            return {**config, "config": {**config["config"], "name": policy}}
        return {k: _with_dtype(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [_with_dtype(v, policy) for v in config]
    return config


def _transfer(src, dst) -> None:
    """Copy ``src``'s weights into ``dst`` (the same architecture, maybe at another size): position
    embeddings of another number of patches are interpolated (bicubic) on their grid."""
    if len(src.weights) != len(dst.weights):
        raise SettingsError(f"{src.name} rebuilt at another size has other weights: it cannot change size.")
    for ws, wd in zip(src.weights, dst.weights):
        a = np.asarray(ws.numpy() if hasattr(ws, "numpy") else ws)
        if tuple(a.shape) == tuple(wd.shape):
            wd.assign(a)
        elif "int" in str(wd.dtype):
            continue  # position ids: the new model's own
        else:
            wd.assign(_interpolate_positions(a, tuple(wd.shape), ws.path))


def _interpolate_positions(a: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    """Position embeddings ``(..., tokens, d)`` of ``c + g*g`` tokens brought to the token count of ``shape``."""
    import keras

    t_src, t_dst = a.shape[-2], shape[-2]
    for c in (0, 1, 2):
        gs, gd = np.sqrt(t_src - c), np.sqrt(t_dst - c)
        if gs == int(gs) and gd == int(gd) and a.shape[-1] == shape[-1] and a.ndim == len(shape):
            break
    else:
        raise SettingsError(f"Weight {name} {a.shape} cannot be brought to {shape}: this model cannot change size.")
    lead = a.shape[:-2]
    flat = a.reshape(-1, t_src, a.shape[-1])
    gs, gd = int(gs), int(gd)
    head, grid = flat[:, :c], flat[:, c:].reshape(-1, gs, gs, a.shape[-1])
    grid = np.asarray(keras.ops.image.resize(grid.astype("float32"), (gd, gd), interpolation="bicubic",
                                             antialias=gd < gs))  # fmt: skip
    out = np.concatenate([head, grid.reshape(-1, gd * gd, a.shape[-1])], axis=1)
    return out.reshape(*lead, t_dst, a.shape[-1]).astype(a.dtype)
