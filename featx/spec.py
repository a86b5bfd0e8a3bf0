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

from .backbones import INTERPOLATIONS, POOLINGS, get_backbone, weights_identity
from .errors import SettingsError, WeightsError

#: Storage types of the features.
DTYPES = ("float32", "float16")

# Weights each backbone takes by name; anything else must be a file.
_NAMED_WEIGHTS = {"trunk": ("trained", "none"), "vgg19": ("imagenet", "none"), "resnet50": ("imagenet", "none")}


@dataclass(frozen=True)
class FeatureSpec:
    """The settings that make a set of features, checked, with the backbone's defaults filled in.

    Frozen and hashable: two specs that make the same features compare equal,
    whether a default was named or left out. Make a changed copy with
    :meth:`replace`.

    Parameters
    ----------
    backbone : {"vgg19", "resnet50", "trunk"}, default="vgg19"
    weights : str, path or None, default="pretrained"
        As in Keras: "imagenet" (vgg19/resnet50; downloaded once by Keras),
        None (a random init, seeded by the caller's ``seed``) or the path of
        a weights file. featx's own names: "trained" (the trunk's weights,
        trained by featx on the source classes), "pretrained" (the
        backbone's own: "imagenet", or "trained" for the trunk) and "none"
        (None, spelled for the command line).
    size : int, optional
        Side the images are resized to inside the model (default 224; the trunk runs at 32).
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
        are concatenated into the embedding. Default: the backbone's own set
        (trunk: conv1, pool, flatten; vgg19: block3/4/5_pool; resnet50: the last
        block of stages 3, 4 and 5). The backbone's last layer alone
        (``layers=["flatten"]`` for the trunk, the split-CIFAR protocol) is its
        classic embedding.
    grid : int, optional
        Cells per side each layer's map is pooled to (default: trunk 4, vgg19
        and resnet50 1, a global pooling).
    flip : bool, optional
        Average each image's embedding with its horizontal mirror image's, both
        run in the same batch (default: trunk True, vgg19 and resnet50 False).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        What the backbone computes in (Keras's mixed dtype policies: weights stay
        float32), apart from the storage ``dtype``. "auto" is resolved here, by
        the hardware (:func:`featx.runtime.auto_precision`): bfloat16 on GPUs and
        CPUs that compute in it natively, float32 otherwise. The trunk always
        runs in float32: it is bounded by per-batch overhead, not by arithmetic.

    Examples
    --------
    >>> from featx.spec import FeatureSpec
    >>> spec = FeatureSpec("vgg19", size=64)
    >>> spec.weights, spec.size, spec.pooling
    ('imagenet', 64, 'avg')
    >>> spec == FeatureSpec("vgg19", weights="imagenet", size=64, pooling="avg")
    True
    >>> spec.replace(pooling="max").describe()
    'vgg19 64px max, imagenet, layers block3_pool+block4_pool+block5_pool'
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

    def __post_init__(self):
        bb = get_backbone(self.backbone)
        size = bb.default_size if self.size is None else self.size
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 32:
            raise SettingsError(f"size must be an integer of at least 32. Received: size={size!r}")
        if bb.fixed_size and size != bb.default_size:
            raise SettingsError(
                f"The {bb.name} backbone only runs at {bb.default_size}x{bb.default_size}. Received: size={size}"
            )
        pooling = bb.default_pooling if self.pooling is None else self.pooling
        if pooling not in POOLINGS:
            raise SettingsError(f"pooling must be one of {', '.join(POOLINGS)}. Received: pooling={pooling!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise SettingsError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}. "
                f"Received: interpolation={self.interpolation!r}"
            )
        weights = _check_weights(bb.name, self.weights, bb.default_weights)
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}. Received: dtype={self.dtype!r}")
        layers = _check_layers(bb, self.layers)
        grid = bb.default_grid if self.grid is None else self.grid
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= 32:
            raise SettingsError(f"grid must be an integer from 1 to 32 (cells per side). Received: grid={grid!r}")
        flip = bb.default_flip if self.flip is None else self.flip
        if not isinstance(flip, (bool, np.bool_)):
            raise SettingsError(f"flip must be True or False. Received: flip={flip!r}")
        precision = _check_precision(bb.name, self.precision)
        if all(name in bb.flat_layers for name in layers):
            pooling = "flatten"  # vectors already: nothing to pool
        if pooling == "flatten":
            grid = 1
        values = {"size": int(size), "pooling": pooling, "weights": weights, "layers": layers, "grid": int(grid),
                  "flip": bool(flip), "precision": precision}  # fmt: skip
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> FeatureSpec:
        """A copy with ``changes`` (checked again). To change the backbone, make a new spec:
        the filled-in defaults of one backbone may not suit another."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def weights_identity(self, seed: int = 0, trunk_model=None) -> str:
        """A string that changes whenever the weights do: the ImageNet file and its md5, a
        file's sha256, the seed of a random init, or the hash of a trained trunk's weights
        (pass the trunk classifier as ``trunk_model``)."""
        if self.backbone == "trunk":
            if trunk_model is None:
                raise ValueError("The trunk's weights identity is the hash of its weights: pass trunk_model.")
            from .trunk import trunk_weights_id

            return trunk_weights_id(trunk_model)
        return weights_identity(self.backbone, self.weights, seed)

    def key_settings(self, weights_id: str) -> dict:
        """The settings whose hash keys the caches, with ``weights_id`` (see
        :meth:`weights_identity`) in place of the weights' name.

        A setting added to the spec later enters the key only when it is not at its
        neutral value, so caches written before it existed keep their names.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = weights_id if f.name == "weights" else getattr(self, f.name)
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

    @property
    def classic(self) -> bool:
        """Whether this is the backbone's classic embedding: its last layer alone."""
        return self.layers == (_output_layer(self.backbone),)

    def describe(self) -> str:
        """One line: backbone, input size, pooling, weights, and what is not at its default."""
        return describe(self.to_dict())


def _output_layer(backbone: str) -> str:
    return get_backbone(backbone).output_layer


def _neutral(f: dataclasses.Field, backbone: str):
    """The value of a later setting that reproduces the features made before it existed."""
    neutral = f.metadata["neutral"]
    return neutral(backbone) if callable(neutral) else neutral


def _check_layers(bb, layers) -> tuple[str, ...]:
    if layers is None:
        return bb.default_layers
    if isinstance(layers, str):
        layers = [p.strip() for p in layers.split(",")]
    if isinstance(layers, np.ndarray):
        layers = layers.tolist()
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) and n for n in layers):
        raise SettingsError(
            f"layers must be a non-empty list of layer names of {bb.name} (e.g. {list(bb.default_layers)}). "
            f"Received: layers={layers!r}"
        )
    if len(set(layers)) != len(layers):
        raise SettingsError(f"layers names a layer twice. Received: layers={list(layers)!r}")
    known = set(bb.default_layers) | {bb.output_layer}
    if not set(layers) <= known:
        names = bb.layer_names()
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SettingsError(
                f"Unknown layer {unknown[0]!r} for {bb.name}. Its layers: {', '.join(names)}. "
                f"Received: layers={list(layers)!r}"
            )
    return tuple(layers)


def _check_weights(backbone: str, weights, default: str) -> str:
    if weights is None:
        return "none"
    if weights == "pretrained":
        return default
    if isinstance(weights, os.PathLike):
        weights = str(weights)
    if not isinstance(weights, str):
        raise SettingsError(f"weights must be a name or a file path. Received: weights={weights!r}")
    if weights.lower() == "none":
        return "none"
    allowed = _NAMED_WEIGHTS[backbone]
    if weights not in allowed and not Path(weights).expanduser().is_file():
        raise WeightsError(
            f"weights for {backbone} must be {allowed[0]!r}, None (a random init; 'none' on the command line), "
            f"'pretrained' (= {allowed[0]!r}) or the path of a weights file that exists. Received: weights={weights!r}"
        )
    return weights


def _check_precision(backbone: str, precision) -> str:
    from .runtime import PRECISIONS, auto_precision, this_machine

    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if backbone == "trunk":
        if precision not in ("auto", "float32"):
            raise SettingsError(
                f"The trunk runs in float32 only: it is bounded by per-batch overhead, not arithmetic, so "
                f"{precision} would change its features without making it faster. Leave precision at auto."
            )
        return "float32"
    return auto_precision(this_machine())[0] if precision == "auto" else precision


def _check_names(fields: Mapping) -> None:
    names = [f.name for f in dataclasses.fields(FeatureSpec)]
    unknown = [k for k in fields if k not in names]
    if unknown:
        raise TypeError(
            f"Unknown feature setting {unknown[0]!r}. The feature settings are: {', '.join(names)}. "
            f"Received: {unknown[0]}={fields[unknown[0]]!r}"
        )


def as_spec(spec: FeatureSpec | str | None = None, **fields) -> FeatureSpec:
    """The spec an entry point works with: ``spec`` itself, a backbone name with
    ``fields``, or ``fields`` alone; with a spec, ``fields`` change a copy of it.

    >>> as_spec("resnet50", size=64).size
    64
    >>> as_spec(FeatureSpec("vgg19"), pooling="max").pooling
    'max'
    """
    _check_names(fields)
    if isinstance(spec, FeatureSpec):
        return spec.replace(**fields) if fields else spec
    if spec is None:
        return FeatureSpec(**fields)
    if isinstance(spec, str):
        if "backbone" in fields:
            raise TypeError(
                f"The backbone is named twice: {spec!r} and backbone={fields['backbone']!r}. Name it once."
            )
        return FeatureSpec(backbone=spec, **fields)
    raise TypeError(f"spec must be a FeatureSpec or a backbone name. Received: {spec!r}")


def specs_for(backbones: Iterable[FeatureSpec | str], **fields) -> list[FeatureSpec]:
    """One spec per backbone, for commands that run several (``compare``).

    ``fields`` apply to every backbone named by a string that can take them;
    where one cannot, it keeps its own default: a ``size`` does not apply to a
    backbone of fixed size, named weights other than "none" (and weight
    files) only to the ImageNet backbones. Specs passed as objects are used
    as they are.

    >>> [s.describe() for s in specs_for(["trunk", "vgg19"], weights="none", size=64)]
    ['trunk 32px max, random init, layers conv1+pool+flatten, grid 4, flip', 'vgg19 64px avg, random init, layers block3_pool+block4_pool+block5_pool']
    """
    _check_names(fields)
    out = []
    for b in backbones:
        if isinstance(b, FeatureSpec):
            out.append(b)
            continue
        bb = get_backbone(b)
        own = dict(fields)
        if bb.fixed_size:
            own.pop("size", None)
        if bb.name == "trunk":
            own.pop("precision", None)  # float32 only
        w = own.get("weights")
        w = str(w) if isinstance(w, os.PathLike) else w
        if isinstance(w, str) and w.lower() not in ("none", "pretrained"):
            named = {n for names in _NAMED_WEIGHTS.values() for n in names}
            # another backbone's named weights, or a weights file (for the ImageNet backbones)
            if (w in named and w not in _NAMED_WEIGHTS[bb.name]) or (w not in named and bb.name == "trunk"):
                own.pop("weights")
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
    if w.startswith("trunk:sha256="):
        return f"trained trunk {w.split('=', 1)[1][:8]}"
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
    parts = [f"{settings.get('backbone', '?')} {settings.get('size', '?')}px {settings.get('pooling', '?')}"]
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

