"""What featx knows about a backbone: the :class:`Backbone` base class.

A backbone says which input sizes it takes, how its input is preprocessed,
which weights it takes by name and what identifies them in a cache key, how
its network is built, which layers it has, and which embedding it makes by
default. Each family is one subclass in a module of its own
(:mod:`~featx.backbones.trunk`, :mod:`~featx.backbones.applications`,
:mod:`~featx.backbones.keras_model`); nothing outside a family's module tests a
backbone's name. Only ``keras`` and ``keras.ops`` are used: every Keras 3 backend.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import SettingsError, WeightsError


class Backbone:
    """A frozen network whose layers' outputs make embeddings.

    Subclasses set the class attributes and implement :meth:`build_base` (or
    :meth:`feature_maps`). The defaults below are those of a pretrained
    network whose weights featx cannot measure: its last layer, globally
    average-pooled, the standard linear-probe feature.
    """

    #: Name in the registry (``--backbone``), and in cache keys.
    name: str = ""
    #: Family, for listings.
    family: str = ""
    #: One line for listings.
    description: str = ""
    #: Side of the square input it runs at by default; the smallest it takes; whether only the default.
    default_size: int = 224
    min_size: int = 32
    fixed_size: bool = False
    #: keras.applications preprocessing mode (:data:`featx.layers.PREPROCESSING`).
    preprocessing: str = "none"
    #: Weights it takes by name (besides "none" and a file), the first being its own ("pretrained").
    named_weights: tuple[str, ...] = ("imagenet",)
    default_pooling: str = "avg"
    default_grid: int = 1
    default_flip: bool = False
    #: The task whose features it is meant for by default (the trunk: the classes it did not see).
    default_task: str = "full"
    #: Layers whose output is already a vector (nothing to pool).
    flat_layers: tuple[str, ...] = ()
    #: Whether a random init (weights "none") defaults to the classic embedding rather than
    #: :attr:`default_layers` (which were chosen for pretrained weights).
    classic_when_random: bool = True

    # ------------------------------------------------------------------ naming

    @property
    def label(self) -> str:
        """Short name for one-line descriptions, feature names and file names."""
        return self.name

    @property
    def key_name(self) -> str:
        """The backbone's name in cache keys."""
        return self.name

    @property
    def default_weights(self) -> str:
        return self.named_weights[0]

    # ------------------------------------------------------------------ layers

    @property
    def output_layer(self) -> str:
        """The layer whose output alone is the backbone's classic embedding (its last)."""
        return self.layer_names()[-1]

    @property
    def default_layers(self) -> tuple[str, ...]:
        """The default embedding's layers for pretrained weights: :func:`stage_ends` (the ends of the
        last two stages and the classic layer), which beat the classic layer alone by 3 points on a
        real pretrained CNN (BENCHMARKS.md, "A real pretrained CNN"); the classic layer where there
        are no stages to find."""
        return stage_ends(self.layer_info(), self.output_layer)

    def layer_names(self) -> tuple[str, ...]:
        """Every layer whose output can be part of the embedding, input to output."""
        return tuple(name for name, _ in self.layer_shapes())

    @functools.cached_property
    def _layer_info(self) -> tuple[tuple[str, tuple, str], ...]:
        import keras

        # The architecture alone, without weights: only names, shapes and kinds are wanted.
        with keras.device("cpu"):
            base = self.build_base(self.default_size, "none", None)
        out = layer_info(base, self.default_size)
        del base
        return out

    def layer_info(self) -> tuple[tuple[str, tuple, str], ...]:
        """``(name, output shape at the default size, layer class name)`` of every layer, input to output."""
        return self._layer_info

    def layer_shapes(self) -> tuple[tuple[str, tuple], ...]:
        """``(name, output shape at the default size)`` of every layer of :meth:`layer_names`."""
        return tuple((name, shape) for name, shape, _ in self.layer_info())

    def forget_layers(self) -> None:
        """Drop what :meth:`layer_shapes` built (and the backend's memory of it)."""
        import keras

        self.__dict__.pop("_layer_info", None)
        keras.backend.clear_session(free_memory=True)

    # ------------------------------------------------------------------ checks

    def check_size(self, size) -> int:
        size = self.default_size if size is None else size
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < self.min_size:
            raise SettingsError(
                f"size must be an integer of at least {self.min_size}. Received: size={size!r}"
            )
        if self.fixed_size and size != self.default_size:
            raise SettingsError(
                f"The {self.label} backbone only runs at {self.default_size}x{self.default_size}. Received: size={size}"
            )
        return int(size)

    def check_weights(self, weights) -> str:
        """The weights' canonical value: a name of :attr:`named_weights`, "none", or a file path."""
        if weights is None:
            return "none"
        if weights == "pretrained":
            return self.default_weights
        if isinstance(weights, os.PathLike):
            weights = str(weights)
        if not isinstance(weights, str):
            raise SettingsError(f"weights must be a name or a file path. Received: weights={weights!r}")
        if weights.lower() == "none":
            return "none"
        if weights not in self.named_weights and not Path(weights).expanduser().is_file():
            own = self.default_weights
            raise WeightsError(
                f"weights for {self.label} must be {own!r}, None (a random init; 'none' on the command line), "
                f"'pretrained' (= {own!r}) or the path of a weights file that exists. Received: weights={weights!r}"
            )
        return weights

    def check_precision(self, precision: str) -> str:
        """The precision the backbone computes in ("auto" resolved by the hardware)."""
        from ..runtime import PRECISIONS, auto_precision, this_machine

        if precision not in PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
        return auto_precision(this_machine())[0] if precision == "auto" else precision

    def check_layers(self, layers, weights: str | None = None) -> tuple[str, ...]:
        """The layers' canonical value: ``None`` is the default (:attr:`default_layers`, or the classic
        layer for a random init where :attr:`classic_when_random`), "classic" the classic layer alone."""
        if layers is None:
            if weights == "none" and self.classic_when_random:
                return (self.output_layer,)
            return self.default_layers
        if isinstance(layers, str) and layers.strip() == "classic":
            return (self.output_layer,)
        if isinstance(layers, str):
            layers = [p.strip() for p in layers.split(",")]
        if isinstance(layers, np.ndarray):
            layers = layers.tolist()
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) and n for n in layers):
            raise SettingsError(
                f"layers must be a non-empty list of layer names of {self.label} (e.g. {list(self.default_layers)}). "
                f"Received: layers={layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise SettingsError(f"layers names a layer twice. Received: layers={list(layers)!r}")
        names = self.layer_names()
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SettingsError(
                f"Unknown layer {unknown[0]!r} for {self.label}. Its layers: {', '.join(names)} "
                f"(`python cli.py layers --backbone {self.label}` lists them with their shapes). "
                f"Received: layers={list(layers)!r}"
            )
        return tuple(layers)

    def settings_for(self, fields: dict) -> dict:
        """Of settings given for several backbones at once (``compare``), those that apply to this one:
        no size for a backbone of fixed size, no weights named for another backbone (a weights
        file applies to every backbone named: :func:`featx.spec.specs_for` allows one only)."""
        own = dict(fields)
        if self.fixed_size:
            own.pop("size", None)
        w = own.get("weights")
        w = str(w) if isinstance(w, os.PathLike) else w
        if isinstance(w, str) and w.lower() not in ("none", "pretrained") and w not in self.named_weights:
            if not Path(w).expanduser().is_file():
                own.pop("weights")
        return own

    def reference_changes(self, weights: str, layers: tuple) -> dict | None:
        """How the features of ``compare``'s reference row differ from features of these
        ``weights`` and ``layers`` (settings to change), or None for no reference row: for
        pretrained weights at the default layers, the classic layer alone (the standard linear
        probe), whose columns are part of the default's (``compare`` takes them, no second pass)."""
        if weights == "none" or layers == (self.output_layer,) or layers != self.default_layers:
            return None
        return {"layers": "classic"}

    def reference_note(self, weights: str) -> str:
        """What ``compare``'s table says of the reference row (:meth:`reference_changes`)."""
        return "reference: linear probe (last layer)"

    def layer_width(self, name: str, grid: int, pooling: str) -> int | None:
        """Columns that layer ``name`` adds to an embedding (None where that depends on the input size)."""
        shape = dict(self.layer_shapes())[name]
        if len(shape) == 1:
            return int(shape[0])
        if pooling == "flatten" or shape[-1] is None:
            return None
        return int(shape[-1]) * grid * grid

    # ------------------------------------------------------------------ weights

    def resolve(self, weights: str, *, seed: int = 0, data=None, cache_dir=None, progress=None) -> tuple[dict, str]:
        """``(state, weights identity)`` of ``weights`` (``progress``: bars of what that runs).

        ``state`` is what :meth:`feature_maps` needs besides the settings (small and
        picklable: it travels to other processes); the identity is a string that
        changes whenever the weights do, part of every cache key.
        """
        return {}, self.weights_identity(weights, seed)

    def weights_identity(self, weights: str, seed: int) -> str:
        if weights == "none":
            return f"random-init-seed{seed}"
        if weights in self.named_weights:
            return self.named_identity(weights)
        path = Path(weights).expanduser()
        return f"file:{path.name}:sha256={file_sha256(path)}"

    def named_identity(self, weights: str) -> str:
        """The identity of weights named ``weights`` (see :meth:`resolve`)."""
        raise NotImplementedError

    def verify(self, weights: str, seed: int, identity: str) -> None:
        """Check, in the process that builds the model, that ``weights`` are still those of
        ``identity`` (a weights file may have changed since, or differ on another machine)."""
        if weights not in self.named_weights and weights != "none":
            if self.weights_identity(weights, seed) != identity:
                raise WeightsError(
                    f"The weights file '{weights}' is not the one these features were keyed on (it "
                    "changed since, or differs on this machine): its embeddings would differ. Use the same "
                    "file everywhere, or run again to key the features on the new one."
                )

    # ------------------------------------------------------------------ building

    def build_base(self, size: int, weights: str, seed: int):
        """The network ``(n, size, size, 3) preprocessed floats -> maps``, with ``weights``
        ("none" is a random init seeded by ``seed``; unseeded where ``seed`` is None)."""
        raise NotImplementedError

    def feature_maps(self, x, layers: tuple, *, size: int, weights: str, grid: int, pooling: str, seed: int,
                     state: dict) -> dict:  # fmt: skip
        """``{layer name: tensor}`` for every one of ``layers``, applied to ``x`` (the preprocessed
        batch, resized to ``size``), from the network of ``weights``. ``grid`` and ``pooling`` are
        for backbones that pool their own outputs (tokens); maps are pooled after."""
        import keras

        base = self.build_base(size, weights, seed)
        base.trainable = False
        if layers == (base.layers[-1].name,) and len(base.outputs) == 1:
            return {layers[0]: base(x)}  # the network's own output: the whole base, as it comes
        try:
            taps = keras.Model(base.inputs, [base.get_layer(n).output for n in layers], name=base.name)
        except (AttributeError, ValueError) as exc:
            raise SettingsError(
                f"The layers of {self.label} cannot be tapped ({exc.__class__.__name__}: {str(exc)[:200]}): "
                "--layers needs a functional or Sequential model."
            ) from None
        out = taps(x)
        return dict(zip(layers, out if isinstance(out, (list, tuple)) else [out]))

    # ------------------------------------------------------------------ listing

    def embedding_width(self) -> int:
        """Width of the default embedding (pooled globally, one grid cell)."""
        shapes = dict(self.layer_shapes())
        width = 0
        for name in self.default_layers:
            shape = shapes[name]
            cells = 1 if len(shape) == 1 else self.default_grid**2
            width += int(shape[-1]) * cells
        return width

    def row(self) -> dict:
        """What ``python cli.py backbones`` lists."""
        return {"backbone": self.label, "family": self.family, "size": self.default_size,
                "min size": self.min_size, "preprocessing": self.preprocessing,
                "weights": self.default_weights, "description": self.description}  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def load_weights_file(model, weights: str, name: str, saved_from: str) -> None:
    """Load the weights file ``weights`` into ``model``, or one line naming the file and the backbone."""
    try:
        model.load_weights(str(Path(weights).expanduser()))
    except Exception as exc:
        raise WeightsError(
            f"Could not load weights from '{weights}' into {name} ({exc.__class__.__name__}: {str(exc)[:300]}). "
            f"Pass a weights file saved from this {saved_from}."
        ) from None


def layer_info(model, size: int) -> tuple[tuple[str, tuple, str], ...]:
    """``(name, output shape for size x size inputs, class name)`` of every layer of ``model`` but its
    inputs; shapes are traced symbolically (nothing is computed), so that a model of open input
    size says the size of each map too. Layers before the first one with trainable weights (its
    preprocessing: rescaling, normalisation) have their class name prefixed with ``pre:``."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    shapes = [tuple(layer.output.shape[1:]) for layer in layers]
    if any(None in sh for sh in shapes) and len(model.inputs) == 1:
        try:
            taps = keras.Model(model.inputs, [layer.output for layer in layers])
            specs = taps.compute_output_spec(keras.KerasTensor((1, size, size, model.inputs[0].shape[-1] or 3)))
            shapes = [tuple(sp.shape[1:]) for sp in specs]
        except Exception:  # a model that cannot be traced at that size keeps its open shapes
            pass
    first = next((i for i, layer in enumerate(layers) if layer.trainable_weights), len(layers))
    return tuple((layer.name, sh, type(layer).__name__ if i >= first else f"pre:{type(layer).__name__}")
                 for i, (layer, sh) in enumerate(zip(layers, shapes)))  # fmt: skip


def stage_ends(info, output_layer: str) -> tuple[str, ...]:
    """The layers of featx's default embedding for a pretrained CNN: the ends of the last two
    stages, and ``output_layer`` (the classic layer).

    A stage is the run of layers at one spatial resolution (padding and squeeze-excite maps left
    out, and the preprocessing layers before the first weights); its end is its last residual
    merge (``Add``) where the network has any, else its last layer, other than the classic layer
    and the map that the classic layer pools (nothing the classic layer lacks). EfficientNet: ``block5c_add``, ``block6d_add`` and the pooled
    top; ResNet50: ``conv4_block6_add``, ``conv5_block3_add`` and ``conv5_block3_out``; VGG19:
    ``block4_conv4``, ``block5_conv4`` and ``block5_pool``. A network with no maps before its
    classic layer (or none of known size) keeps the classic layer alone.

    >>> info = [("c1", (16, 16, 8), "Conv2D"), ("a1", (16, 16, 8), "Add"), ("c2", (8, 8, 16), "Conv2D"),
    ...         ("a2", (8, 8, 16), "Add"), ("c3", (8, 8, 32), "Conv2D"), ("gap", (32,), "GlobalAveragePooling2D")]
    >>> stage_ends(info, "gap")
    ('a1', 'a2', 'gap')
    """
    names = [n for n, _, _ in info]
    if output_layer not in names:
        return (output_layer,)
    upto = info[: names.index(output_layer) + 1]
    maps = [(n, sh[:2], kind) for n, sh, kind in upto
            if len(sh) == 3 and None not in sh[:2] and "Padding" not in kind and not kind.startswith("pre:")]  # fmt: skip
    if not maps:
        return (output_layer,)
    feeds_output = maps[-1][0]  # the map the classic layer pools: nothing the classic layer lacks
    last = maps[-1][1][0] * maps[-1][1][1]
    maps = [m for m in maps if m[1][0] * m[1][1] >= last]  # the main path (not squeeze-excite's 1x1 maps)
    merges = any(kind == "Add" for _, _, kind in maps)
    resolutions = list(dict.fromkeys(res for _, res, _ in maps))
    picks = []
    for res in reversed(resolutions):
        at = [n for n, r, kind in maps
              if r == res and n not in (output_layer, feeds_output) and (kind == "Add" or not merges)]  # fmt: skip
        if at:
            picks.insert(0, at[-1])
        if len(picks) == 2:
            break
    return tuple(dict.fromkeys([*picks, output_layer]))


@contextlib.contextmanager
def fresh_names():
    """Keras names layers it is not given names for by a per-process counter (``dense``,
    ``dense_1``, ...): build a network inside this block and its layers get the names they
    get in a fresh process, so that layer names (``--layers``) mean the same everywhere."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # another Keras layout: names as Keras gives them
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, else ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"
