"""What makes the features: :class:`FeatureSpec`, one settings object every entry point shares.

``extract_features``, ``fit_head``, ``compare``, ``predict_files`` and the CLI
all take a ``FeatureSpec`` (or the keyword arguments that build one), and
``FeatureExtractor`` builds one in ``fit``. The spec is checked once, when it
is made, with each backbone's defaults filled in; its :meth:`~FeatureSpec.key_settings`
give the settings whose hash names every cache file.

Run options that do not change the features (batch size, progress bars, the
cache folder) are not part of it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import Backbone, get_backbone
from .errors import ArgumentError, FeatxError, SettingsError
from .images import DEFAULT_SIDE, MAX_SIDE, ImageOptions

#: Storage types of the features.
DTYPES = ("float32", "float16")
#: How each layer's maps are pooled into columns.
POOLINGS = ("avg", "max", "flatten")
#: How images are resized to the input size.
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")

@dataclass(frozen=True)
class FeatureSpec:
    """The settings that make a set of features, checked, with the backbone's defaults filled in.

    Frozen and hashable: two specs that make the same features compare equal,
    whether a default was named or left out. Make a changed copy with
    :meth:`replace`.

    Parameters
    ----------
    backbone : str, path or keras.Model, default="vgg19"
        "trunk", any ``keras.applications`` model by its lower-case name
        ("resnet50", "efficientnetv2b0", "convnexttiny", ...; see
        :mod:`featx.backbones`), a KerasHub preset (a registry name such as
        "dinov2_small", an ``hf://`` or ``kaggle://`` handle, or a preset folder;
        :mod:`featx.backbones.hub`), the path of a ``.keras`` model file, or a
        ``keras.Model`` (saved once into the cache folder's ``models/``; the
        spec then names that file).
    weights : str, path or None, default="pretrained"
        As in Keras: "imagenet" (keras.applications models; downloaded once by
        Keras), None (a random init, seeded by the caller's ``seed``) or the path
        of a weights file. featx's own names: "trained" (the trunk's weights,
        trained by featx on the source classes), "saved" (a model file's own
        weights), "pretrained" (the backbone's own: "imagenet", "trained" for the
        trunk, "saved" for a model file) and "none" (None, spelled for the command line).
    size : int, optional
        Side the images are resized to inside the model (default: the backbone's
        own, 224 for most; the trunk runs at 32).
    pooling : {"avg", "max", "flatten"}, optional
        How each layer's map is pooled to the grid; "flatten" keeps whole maps.
        Default "avg" (trunk: "max").
    interpolation : str, default="bilinear"
        Resize method (one of Keras's: bilinear, nearest, bicubic, lanczos3, lanczos5, area).
    dtype : {"float32", "float16"}, default="float32"
        Storage type of the features.
    layers : sequence of str, optional
        Layers of the backbone whose outputs, each pooled to ``grid`` x ``grid``
        cells (max or avg as ``pooling`` says; "flatten" keeps whole maps),
        are concatenated into the embedding. Default: the backbone's own (trunk:
        conv1, pool, flatten; a pretrained CNN: the ends of its last two stages
        and its last layer, :func:`featx.backbones.base.stage_ends`, 3 points
        better than the last layer alone on a real pretrained CNN; a random
        init: its last layer). "classic" is the backbone's last layer alone
        (``layers=["flatten"]`` for the trunk, the split-CIFAR protocol), the
        standard linear-probe feature.
    grid : int, optional
        Cells per side each layer's map is pooled to (default: trunk 4, others
        1, a global pooling).
    flip : bool, optional
        Average each image's embedding with its horizontal mirror image's, both
        run in the same batch (default: trunk True, others False).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        What the backbone computes in (Keras's mixed dtype policies: weights stay
        float32), apart from the storage ``dtype``. "auto" is resolved here, by
        the hardware (:func:`featx.runtime.auto_precision`): bfloat16 on GPUs that
        compute in it natively, float32 on every CPU (so that a CPU's features and
        cache keys are the same on every CPU). Every Keras backbone takes it (a
        user's model is rebuilt under the policy with the same weights); the
        trunk always runs in float32.
    aspect : {"crop", "pad", "squash"}, default="crop"
        How photos of a folder or archive of another shape than the stored one
        are brought to it when decoded (:class:`featx.images.ImageOptions`):
        the centre kept, letterboxed, or resized out of shape. Images of one
        size that fits (CIFAR tiles) are stored as they are, whatever it says.
    image_side : int, optional
        Side of the stored photos (default 256, or ``size`` where that is larger).

    Examples
    --------
    >>> from featx.spec import FeatureSpec
    >>> spec = FeatureSpec("vgg19", size=64, precision="float32")
    >>> spec.weights, spec.size, spec.pooling, spec.layers  # pretrained CNNs: the ends of the last stages
    ('imagenet', 64, 'avg', ('block4_conv4', 'block5_conv4', 'block5_pool'))
    >>> spec.replace(layers="classic").layers  # the classic embedding: the last layer alone
    ('block5_pool',)
    >>> spec == FeatureSpec("vgg19", weights="imagenet", size=64, pooling="avg", precision="float32")
    True
    >>> spec.replace(pooling="max", layers="classic").describe()
    'vgg19 64px max, imagenet'
    >>> spec.replace(layers=["block4_pool", "block5_pool"]).describe()
    'vgg19 64px avg, imagenet, layers block4_pool+block5_pool'
    >>> FeatureSpec("trunk").describe()
    'trunk 32px max, trained, layers conv1+pool+flatten, grid 4, flip'
    >>> FeatureSpec("trunk", layers=["flatten"], flip=False).describe()  # the split-CIFAR protocol
    'trunk 32px flatten, trained'
    """

    backbone: str = "vgg19"
    weights: str | None = "pretrained"
    size: int | None = None
    pooling: str | None = None
    interpolation: str = "bilinear"
    dtype: str = "float32"
    layers: tuple[str, ...] | None = field(default=None, metadata={"neutral": lambda b: (_output_layer(b),)})
    grid: int | None = field(default=None, metadata={"neutral": 1})
    flip: bool | None = field(default=None, metadata={"neutral": False})
    precision: str = field(default="auto", metadata={"neutral": "float32"})
    aspect: str = field(default="crop", metadata={"neutral": "crop"})
    image_side: int | None = field(default=None, metadata={"neutral": None})

    def __post_init__(self):
        bb = get_backbone(self.backbone)
        size = bb.check_size(self.size)
        pooling = bb.default_pooling if self.pooling is None else self.pooling
        if pooling not in POOLINGS:
            raise SettingsError(f"pooling must be one of {', '.join(POOLINGS)}. Received: pooling={pooling!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise SettingsError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}. "
                f"Received: interpolation={self.interpolation!r}"
            )
        weights = bb.check_weights(self.weights)
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}. Received: dtype={self.dtype!r}")
        layers = bb.check_layers(self.layers, weights)
        grid = bb.default_grid if self.grid is None else self.grid
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= 32:
            raise SettingsError(f"grid must be an integer from 1 to 32 (cells per side). Received: grid={grid!r}")
        flip = bb.default_flip if self.flip is None else self.flip
        if not isinstance(flip, (bool, np.bool_)):
            raise SettingsError(f"flip must be True or False. Received: flip={flip!r}")
        precision = bb.check_precision(self.precision)
        ImageOptions(side=DEFAULT_SIDE if self.image_side is None else self.image_side, aspect=self.aspect)
        if all(name in bb.flat_layers for name in layers):
            pooling = "flatten"  # vectors already: nothing to pool
        if pooling == "flatten":
            grid = 1
        values = {"backbone": bb.name, "size": size, "pooling": pooling, "weights": weights, "layers": layers,
                  "grid": int(grid), "flip": bool(flip), "precision": precision}  # fmt: skip
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def images(self) -> ImageOptions:
        """How a folder's or archive's images are stored for these features: ``aspect``, and
        ``image_side`` (default 256, or the input size where that is larger)."""
        side = self.image_side or min(MAX_SIDE, max(DEFAULT_SIDE, self.size))
        return ImageOptions(side=side, aspect=self.aspect)

    @property
    def backbone_(self) -> Backbone:
        """The :class:`~featx.backbones.Backbone` of this spec."""
        return get_backbone(self.backbone)

    def replace(self, **changes) -> FeatureSpec:
        """A copy with ``changes`` (checked again). To change the backbone, make a new spec:
        the filled-in defaults of one backbone may not suit another."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def key_settings(self, weights_id: str) -> dict:
        """The settings whose hash keys the caches, with ``weights_id`` (see
        :meth:`weights_identity`) in place of the weights' name.

        A setting added to the spec later enters the key only when it is not at its
        neutral value, so caches written before it existed keep their names.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = weights_id if f.name == "weights" else getattr(self, f.name)
            if f.name == "backbone":
                value = self.backbone_.key_name
            if "neutral" in f.metadata and value == _neutral(f, self.backbone):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict:
        """Plain values, for JSON records; ``FeatureSpec.from_dict`` reads them back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureSpec:
        """The spec recorded by :meth:`to_dict` (unknown keys are ignored).

        A record written before a later setting existed lacks it; that setting
        takes its neutral value, the one that made those features.
        """
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        backbone = values.get("backbone", cls.backbone)
        for f in fields:
            if f.name not in values and "neutral" in f.metadata:
                values[f.name] = _neutral(f, backbone)
        return cls(**values)

    def columns_in(self, other: FeatureSpec) -> slice | None:
        """Where this spec's features lie among ``other``'s columns, where they are a part of them
        (the same settings but layers, this spec's layers a run of ``other``'s), else None.

        >>> full = FeatureSpec("vgg19", size=64, precision="float32")
        >>> full.replace(layers="classic").columns_in(full)
        slice(1024, 1536, None)
        """
        mine, theirs = self.to_dict(), other.to_dict()
        if {k: v for k, v in mine.items() if k != "layers"} != {k: v for k, v in theirs.items() if k != "layers"}:
            return None
        n = len(self.layers)
        starts = [i for i in range(len(other.layers) - n + 1) if other.layers[i : i + n] == self.layers]
        if not starts:
            return None
        bb = self.backbone_
        widths = [bb.layer_width(name, other.grid, other.pooling) for name in other.layers]
        if None in widths:
            return None
        start = sum(widths[: starts[0]])
        return slice(start, start + sum(widths[starts[0] : starts[0] + n]))

    def reference(self) -> FeatureSpec | None:
        """The spec of ``compare``'s reference row for these features (the backbone says how it
        differs: :meth:`~featx.backbones.Backbone.reference_changes`), or None."""
        changes = self.backbone_.reference_changes(self.weights, self.layers)
        return None if changes is None else self.replace(**changes)

    def reference_note(self) -> str:
        """What ``compare``'s table says of this spec's reference row."""
        return self.backbone_.reference_note(self.weights)

    @property
    def classic(self) -> bool:
        """Whether this is the backbone's classic embedding: its last layer alone."""
        return self.layers == (self.backbone_.output_layer,)

    def describe(self) -> str:
        """One line: backbone, input size, pooling, weights, and what is not at its default."""
        return describe(self.to_dict())


def _output_layer(backbone: str) -> str | None:
    """The backbone's classic layer (None for one that cannot be looked up here: a model file
    recorded by a cache, which may lie elsewhere)."""
    try:
        return get_backbone(backbone).output_layer
    except FeatxError:
        return None


def _neutral(f: dataclasses.Field, backbone: str):
    """The value of a later setting that reproduces the features made before it existed."""
    neutral = f.metadata["neutral"]
    return neutral(backbone) if callable(neutral) else neutral


def _check_names(fields: Mapping) -> None:
    names = [f.name for f in dataclasses.fields(FeatureSpec)]
    unknown = [k for k in fields if k not in names]
    if unknown:
        raise ArgumentError(
            f"Unknown feature setting {unknown[0]!r}. The feature settings are: {', '.join(names)}. "
            f"Received: {unknown[0]}={fields[unknown[0]]!r}"
        )


def as_spec(spec: FeatureSpec | str | None = None, **fields) -> FeatureSpec:
    """The spec an entry point works with: ``spec`` itself, a backbone name with
    ``fields``, or ``fields`` alone; with a spec, ``fields`` change a copy of it.

    >>> as_spec("resnet50", size=64).size
    64
    >>> as_spec(FeatureSpec("vgg19", precision="float32"), pooling="max").pooling
    'max'
    """
    _check_names(fields)
    if isinstance(spec, FeatureSpec):
        return spec.replace(**fields) if fields else spec
    if spec is None:
        return FeatureSpec(**fields)
    if isinstance(spec, str):
        if "backbone" in fields:
            raise ArgumentError(
                f"The backbone is named twice: {spec!r} and backbone={fields['backbone']!r}. Name it once."
            )
        return FeatureSpec(backbone=spec, **fields)
    raise ArgumentError(f"spec must be a FeatureSpec or a backbone name. Received: {spec!r}")


def specs_for(backbones: Iterable[FeatureSpec | str], **fields) -> list[FeatureSpec]:
    """One spec per backbone, for commands that run several (``compare``).

    ``fields`` apply to every backbone named by a string that can take them;
    where one cannot, it keeps its own default: a ``size`` does not apply to a
    backbone of fixed size, named weights only to the backbones that take that
    name ("imagenet", "trained"). A weights file is the weights of one
    backbone: given with several, it is an error, since it cannot be the
    weights of each. Specs passed as objects are used as they are.

    >>> [s.describe() for s in specs_for(["trunk", "vgg19"], weights="none", size=64, precision="float32")]
    ['trunk 32px max, random init, layers conv1+pool+flatten, grid 4, flip', 'vgg19 64px avg, random init']
    """
    _check_names(fields)
    backbones = list(backbones)
    named = [b for b in backbones if not isinstance(b, FeatureSpec)]
    w = fields.get("weights")
    w = str(w) if isinstance(w, os.PathLike) else w
    if isinstance(w, str) and w.lower() not in ("none", "pretrained"):
        if Path(w).expanduser().is_file():
            if len(named) > 1:
                raise SettingsError(
                    f"One weights file cannot be the weights of {len(named)} backbones ({', '.join(map(str, named))}): "
                    f"compare them with it one at a time, or, from Python, pass FeatureSpec objects. Received: weights={w!r}"
                )
        elif named and not any(w in get_backbone(b).named_weights for b in named):
            get_backbone(named[0]).check_weights(w)  # says what the weights may be
    out = []
    for b in backbones:
        if isinstance(b, FeatureSpec):
            out.append(b)
            continue
        own = get_backbone(b).settings_for(fields)
        out.append(FeatureSpec(backbone=b, **own))
    return out


def _weights_label(w: str) -> str:
    """A short name for recorded weights (a name, a path, or a weights identity)."""
    if w == "none":
        return "random init"
    if w.startswith("imagenet:"):
        return "imagenet"
    if w.startswith("random-init-seed"):
        return f"random init (seed {w[len('random-init-seed'):]})"
    if w.startswith("trunk:sha256="):  # the hash of a trunk's weights: trained, or a seeded random init
        return f"trunk weights {w.split('=', 1)[1][:8]}"
    if w.startswith("file:"):
        return w.split(":")[1]
    return Path(w).name if ("/" in w or os.sep in w) else w


def describe(settings: Mapping) -> str:
    """One line for a spec (``to_dict()``) or for the settings a cache file records.

    Backbone, input size and pooling, then the weights, then whatever is not at
    its default (interpolation, storage type, and later settings).

    >>> describe({"backbone": "vgg19", "size": 224, "pooling": "avg", "weights": "random-init-seed0",
    ...           "interpolation": "bilinear", "dtype": "float16"})
    'vgg19 224px avg, random init (seed 0), float16'
    """
    name = str(settings.get("backbone", "?"))
    name = Path(name).name if ("/" in name or os.sep in name) else name
    parts = [f"{name} {settings.get('size', '?')}px {settings.get('pooling', '?')}"]
    if settings.get("weights"):
        parts.append(_weights_label(str(settings["weights"])))
    for f in dataclasses.fields(FeatureSpec):
        if f.name in ("backbone", "size", "pooling", "weights") or f.name not in settings:
            continue
        default = _neutral(f, settings.get("backbone", "")) if "neutral" in f.metadata else f.default
        value = settings[f.name]
        if isinstance(value, list):
            value = tuple(value)
        if value != default:
            parts.append(_format_value(f.name, value))
    return ", ".join(parts)


def _format_value(name: str, value) -> str:
    if name == "dtype":
        return str(value)
    if isinstance(value, bool):
        return name if value else f"no {name}"
    if isinstance(value, tuple):
        value = "+".join(map(str, value))
    return f"{name} {value}"

