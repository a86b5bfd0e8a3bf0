"""Every model of ``keras.applications`` as a backbone, by its lower-case name.

``vgg19`` is ``keras.applications.VGG19``, ``efficientnetv2b0`` is
``EfficientNetV2B0``, and so on: the list is read from Keras itself, so a model
that a later Keras adds is a backbone too. What featx needs to know about each
is read from Keras as well, not copied by hand:

- its default and minimum input size, from the arguments its constructor
  passes to ``imagenet_utils.obtain_input_shape``;
- its preprocessing mode (caffe, tf, torch, or none where the model has its
  own inside), from what its module's ``preprocess_input`` does to a probe pixel;
- the identity of its ImageNet weights for the cache key: the name of the file
  Keras keeps for it and the md5 of that file's content.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import numpy as np

from ..errors import SettingsError, WeightsError
from .base import Backbone, file_md5, fresh_names, keras_models_dir


class _Stop(Exception):
    """Raised by the probes below to stop a constructor once they have what they want."""


@functools.cache
def constructors() -> dict:
    """``{lower-case name: keras.applications constructor}``, as this Keras has them."""
    import keras

    return {n.lower(): f for n, f in sorted(vars(keras.applications).items()) if n[:1].isupper() and callable(f)}


class KerasApplication(Backbone):
    """A ``keras.applications`` model with ``include_top=False``; ImageNet weights by default."""

    family = "keras.applications"
    named_weights = ("imagenet",)

    def __init__(self, name: str):
        self.name = name
        self._constructor = constructors()[name]
        self.description = f"keras.applications.{self._constructor.__name__}"
        self.default_size, self.min_size = _input_sizes(self._constructor)
        self.preprocessing = _preprocessing(self._constructor)

    def build_base(self, size: int, weights: str, seed: int | None):
        from ..runtime import seeded_build

        shape = (size, size, 3)
        if weights == "none":
            with fresh_names(), seeded_build(seed) if seed is not None else contextlib.nullcontext():
                return self._constructor(include_top=False, weights=None, input_shape=shape)
        if weights == "imagenet":
            try:
                with fresh_names():
                    return self._constructor(include_top=False, weights="imagenet", input_shape=shape)
            except ValueError as exc:  # Keras's own rule on the sizes its ImageNet weights take
                raise SettingsError(f"{self.label} with ImageNet weights: {exc}") from None
            except Exception as exc:
                raise self._download_error(exc) from None
        try:
            with fresh_names():
                return self._constructor(include_top=False, weights=str(Path(weights).expanduser()), input_shape=shape)
        except Exception as exc:
            raise WeightsError(
                f"Could not load {self.label} weights from '{weights}' ({exc.__class__.__name__}: "
                f"{str(exc)[:300]}). Pass a Keras weights file made for {self.description} with include_top=False."
            ) from None

    def named_identity(self, weights: str) -> str:
        """``imagenet:<file>:md5=<md5 of its content>``: the file Keras keeps for these weights (it
        downloads it first, once, where it is missing)."""
        path = self.imagenet_file()
        stat = path.stat()
        return f"imagenet:{path.name}:md5={_md5(path, stat.st_size, stat.st_mtime_ns)}"

    def imagenet_file(self) -> Path:
        """The ImageNet weights file of this model (include_top=False), downloaded by Keras if missing."""
        try:
            return _imagenet_file(self._constructor, self.default_size)
        except _Missing as exc:
            raise self._download_error(exc.cause, exc.fname) from None

    def _download_error(self, exc, fname: str | None = None) -> WeightsError:
        where = keras_models_dir() / fname if fname else keras_models_dir()
        return WeightsError(
            f"Could not get the ImageNet weights of {self.label} ({exc.__class__.__name__}: {str(exc)[:200]}). "
            f"Keras downloads them once to {where}; on a machine without network, copy "
            f"{repr(fname) if fname else 'the file'} there, or pass --weights PATH (weights=PATH) with a local "
            "copy, or --weights none (weights='none') for a seeded random network."
        )


@functools.lru_cache(maxsize=64)
def _md5(path: Path, size: int, mtime_ns: int) -> str:
    return file_md5(path)  # once per version of the file (weights files are 10-500 MB)


class _Missing(Exception):
    def __init__(self, fname, cause):
        super().__init__(str(cause))
        self.fname, self.cause = fname, cause


@functools.cache
def _input_sizes(constructor) -> tuple[int, int]:
    """``(default size, minimum size)`` the constructor gives Keras's input-shape check."""
    from keras.src.applications import imagenet_utils

    seen = {}
    real = imagenet_utils.obtain_input_shape

    def spy(input_shape, default_size, min_size, *args, **kwargs):
        seen.update(default=default_size, min=min_size)
        raise _Stop

    imagenet_utils.obtain_input_shape = spy
    try:
        with fresh_names():
            constructor(include_top=False, weights=None, input_shape=(1, 1, 3))
    except _Stop:
        pass
    except ValueError:  # a constructor that checks sizes itself (MobileNetV3): Keras's usual 224 / 32
        pass
    finally:
        imagenet_utils.obtain_input_shape = real
    return int(seen.get("default") or 224), int(seen.get("min") or 32)


#: What each preprocessing mode makes of the probe pixel (R, G, B) = (10, 100, 200).
_PROBE = np.array([[[[10.0, 100.0, 200.0]]]], dtype="float32")


@functools.cache
def _preprocessing(constructor) -> str:
    """The mode of the constructor's module's ``preprocess_input``, told by what it does to a probe pixel."""
    from ..layers import PREPROCESSING, featx_layers

    got = np.asarray(sys.modules[constructor.__module__].preprocess_input(_PROBE.copy()), dtype="float32")
    Preprocess = featx_layers()["Preprocess"]
    for mode in PREPROCESSING:
        if np.allclose(np.asarray(Preprocess(mode)(_PROBE)), got, atol=1e-4):
            return mode
    raise SettingsError(f"{constructor.__name__}'s preprocess_input is none of featx's modes: it cannot be a backbone yet.")


_IMAGENET_FILES: dict = {}  # constructor name -> path of its weights file, once found


def _imagenet_file(constructor, size: int) -> Path:
    """The weights file Keras keeps for ``constructor`` (found once per process while it exists)."""
    path = _IMAGENET_FILES.get(constructor.__name__)
    if path is None or not path.exists():
        path = _IMAGENET_FILES[constructor.__name__] = _fetch_imagenet_file(constructor, size)
    return path


def _fetch_imagenet_file(constructor, size: int) -> Path:
    """Build the architecture and stop where Keras has fetched its weights file: its path."""
    from keras.src.utils import file_utils

    real = file_utils.get_file
    found = {}

    def spy(fname=None, origin=None, *args, **kwargs):
        found["fname"] = fname or Path(origin).name
        try:
            found["path"] = real(fname, origin, *args, **kwargs)
        except Exception as exc:
            raise _Missing(found["fname"], exc) from None
        raise _Stop

    file_utils.get_file = spy
    try:
        with fresh_names():
            constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
    except _Stop:
        pass
    finally:
        file_utils.get_file = real
    if "path" not in found:
        raise _Missing(None, RuntimeError(f"{constructor.__name__} named no weights file"))
    return Path(found["path"])
