"""Frozen backbones: what featx knows about each, one class per family.

- :class:`~featx.backbones.trunk.Trunk`: ``trunk``, the split-CIFAR CNN that featx trains.
- :class:`~featx.backbones.applications.KerasApplication`: every model of
  ``keras.applications`` by its lower-case name (``vgg19``, ``resnet50``,
  ``efficientnetv2b0``, ``convnexttiny``, ``mobilenetv3small``, ...).
- :class:`~featx.backbones.keras_model.KerasModel`: a user's own model, a
  ``.keras`` file or a ``keras.Model`` object.
- :class:`~featx.backbones.hub.KerasHubPreset`: a KerasHub preset (DINOv2, CLIP,
  SigLIP, ViT, ...) by registry name, ``hf://`` or ``kaggle://`` handle, or folder
  (the ``hub`` extra).

:func:`get_backbone` turns a name, a path or a model into one of them.

>>> get_backbone("trunk").default_size, get_backbone("trunk").default_layers
(32, ('conv1', 'pool', 'flatten'))
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

from ..errors import SettingsError
from .base import Backbone, file_sha256, keras_models_dir

__all__ = ["Backbone", "backbone_names", "file_sha256", "get_backbone",
           "keras_models_dir"]  # fmt: skip


def backbone_names() -> list[str]:
    """The backbones known by name: the trunk, then every keras.applications model."""
    from .applications import constructors

    return ["trunk", *constructors()]


def get_backbone(backbone) -> Backbone:
    """The backbone named ``backbone`` (a registry name, the path of a ``.keras`` file, a
    ``keras.Model``, or a :class:`Backbone`); an unknown name lists the known ones."""
    if isinstance(backbone, Backbone):
        return backbone
    from .keras_model import check_built, is_keras_model, is_model_file, save_model

    if is_keras_model(backbone):
        check_built(backbone, backbone.name)
        return _model_file(str(save_model(backbone)))
    if isinstance(backbone, os.PathLike):
        backbone = str(backbone)
    if not isinstance(backbone, str):
        raise SettingsError(
            f"backbone must be a name, the path of a .keras model file, or a keras.Model. Received: {backbone!r}"
        )
    if is_model_file(backbone):
        return _model_file(os.path.abspath(os.path.expanduser(backbone)))
    return _named(backbone)


@functools.cache
def _named(name: str) -> Backbone:
    if name == "trunk":
        from .trunk import Trunk

        return Trunk()
    from .applications import KerasApplication, constructors

    if name in constructors():
        return KerasApplication(name)
    from .hub import KerasHubPreset, close_presets, is_hub_name

    if is_hub_name(name):
        return KerasHubPreset(name)
    names = ["trunk", *constructors()]
    if name.lower() in names:
        hint = f" (names are lower case: {name.lower()!r})"
    else:
        close = difflib.get_close_matches(name.lower(), names, n=1) or close_presets(name)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    examples = [n for n in ("vgg19", "resnet50", "efficientnetv2b0", "convnexttiny", "mobilenetv3small") if n in names]
    raise SettingsError(
        f"Unknown backbone{hint}. Known: trunk and the {len(names) - 1} keras.applications models by their "
        f"lower-case names ({', '.join(examples)}, ...: `python cli.py backbones` lists them), a KerasHub "
        f"preset (a name, an hf:// or kaggle:// handle or a preset folder; pip install 'featx[hub]'), or the path "
        f"of a .keras model file. Received: backbone={name!r}"
    )


def _model_file(path: str) -> Backbone:
    """One :class:`KerasModel` per version of the file (a file saved again is read again)."""
    from .keras_model import KerasModel, _stamp

    try:
        stamp = _stamp(Path(path))
    except OSError:
        return KerasModel(path)  # says that there is no such file
    return _model_file_at(path, stamp)


@functools.lru_cache(maxsize=16)
def _model_file_at(path: str, stamp) -> Backbone:
    from .keras_model import KerasModel

    return KerasModel(path)
