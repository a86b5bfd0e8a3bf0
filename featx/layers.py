"""The Keras layers featx puts around a frozen backbone.

Preprocessing (uint8 to float, the ImageNet preprocessing of keras.applications), pooling a
feature map to a fixed spatial grid, and the horizontal mirror: the batch and
its mirror image run through the backbone together and their embeddings are
averaged. Only ``keras`` and ``keras.ops``: they run on every Keras 3 backend.
Registered once, so saved models load anywhere.
"""

from __future__ import annotations

import numpy as np

from .errors import SettingsError

_LAYERS: dict | None = None

#: The preprocessing modes of keras.applications (see :class:`Preprocess`).
PREPROCESSING = ("caffe", "tf", "torch", "none")


def _register() -> dict:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="featx")
    class ToFloat(keras.layers.Layer):
        """Cast stored uint8 pixels to float (0..255)."""

        def call(self, x):
            return ops.cast(x, self.compute_dtype)

    @keras.saving.register_keras_serializable(package="featx")
    class Preprocess(keras.layers.Layer):
        """The ``preprocess_input`` of a ``keras.applications`` model, as a layer (0-255 RGB in).

        ``mode``: "caffe" (RGB to BGR, minus the ImageNet mean; VGG, ResNet), "tf" (to -1..1;
        Inception, MobileNet, the v2 ResNets), "torch" (to 0-1, minus the ImageNet mean, over its
        standard deviation; DenseNet), or "none" (the model preprocesses inside).
        """

        def __init__(self, mode: str = "caffe", **kwargs):
            super().__init__(**kwargs)
            if mode not in PREPROCESSING:
                raise SettingsError(f"mode must be one of {', '.join(PREPROCESSING)}. Received: mode={mode!r}")
            self.mode = mode

        def call(self, x):
            if self.mode == "caffe":
                x = ops.flip(x, axis=-1)
                return x - ops.convert_to_tensor(np.array([103.939, 116.779, 123.68]), dtype=x.dtype)
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "torch":
                mean = ops.convert_to_tensor(np.array([0.485, 0.456, 0.406]), dtype=x.dtype)
                std = ops.convert_to_tensor(np.array([0.229, 0.224, 0.225]), dtype=x.dtype)
                return (x / 255.0 - mean) / std
            return x

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable(package="featx")
    class WithMirror(keras.layers.Layer):
        """``(n, h, w, c) -> (2n, h, w, c)``: the batch, then its horizontal mirror image."""

        def call(self, x):
            return ops.concatenate([x, ops.flip(x, axis=2)], axis=0)

        def compute_output_shape(self, shape):
            return (None if shape[0] is None else 2 * shape[0], *shape[1:])

    @keras.saving.register_keras_serializable(package="featx")
    class MirrorMean(keras.layers.Layer):
        """``(2n, d) -> (n, d)``: the mean of each image's embedding and its mirror's."""

        def call(self, x):
            n = ops.shape(x)[0] // 2
            return (x[:n] + x[n:]) / 2

        def compute_output_shape(self, shape):
            return (None if shape[0] is None else shape[0] // 2, *shape[1:])

    def grid_pool(x, grid, mode):
        """``(n, h, w, c) -> (n, grid * grid * c)``, as :class:`GridPooling` says."""
        h, w = x.shape[1], x.shape[2]
        if h % grid == 0 and w % grid == 0:  # equal windows: one pooling op
            pool = ops.max_pool if mode == "max" else ops.average_pool
            size = (h // grid, w // grid)
            y = pool(x, pool_size=size, strides=size, padding="valid")
            return ops.reshape(y, (-1, grid * grid * x.shape[-1]))
        reduce = ops.max if mode == "max" else ops.mean
        cells = []
        for i in range(grid):
            r0, r1 = (i * h) // grid, -((-(i + 1) * h) // grid)
            for j in range(grid):
                c0, c1 = (j * w) // grid, -((-(j + 1) * w) // grid)
                cells.append(reduce(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        return ops.concatenate(cells, axis=-1)

    @keras.saving.register_keras_serializable(package="featx")
    class GridPooling(keras.layers.Layer):
        """Pool a feature map ``(n, h, w, c)`` to ``(n, grid * grid * c)``.

        Cell ``(i, j)`` covers rows ``floor(i h / grid) .. ceil((i + 1) h / grid)`` (and
        likewise columns), as adaptive pooling does: on a map whose side divides by
        ``grid`` the cells are the plain ``h / grid`` windows; on a smaller map cells
        overlap rather than come out empty. Flattened cell by cell, channels last.
        """

        def __init__(self, grid: int = 4, mode: str = "max", **kwargs):
            super().__init__(**kwargs)
            self.grid, self.mode = int(grid), mode

        def call(self, x):
            return grid_pool(x, self.grid, self.mode)

        def compute_output_shape(self, shape):
            return (shape[0], self.grid * self.grid * shape[-1])

        def get_config(self):
            return {**super().get_config(), "grid": self.grid, "mode": self.mode}

    @keras.saving.register_keras_serializable(package="featx")
    class Affine(keras.layers.Layer):
        """``x * scale + offset``, per channel or one number: a KerasHub image converter's preprocessing."""

        def __init__(self, scale=1.0, offset=0.0, **kwargs):
            super().__init__(**kwargs)
            self.scale, self.offset = scale, offset

        def call(self, x):
            scale = ops.convert_to_tensor(np.asarray(self.scale, dtype="float32"), dtype=x.dtype)
            offset = ops.convert_to_tensor(np.asarray(self.offset, dtype="float32"), dtype=x.dtype)
            return x * scale + offset

        def get_config(self):
            return {**super().get_config(), "scale": self.scale, "offset": self.offset}

    @keras.saving.register_keras_serializable(package="featx")
    class TokenPooling(keras.layers.Layer):
        """A transformer's tokens ``(n, extra + g*g, d)`` to one vector: the class token (the first,
        where there are tokens besides the patches: class, registers, distillation) and the patch
        tokens, the last ``g*g``, pooled to ``grid`` x ``grid`` cells (``mode`` "avg" or "max", as
        :class:`GridPooling`; "flatten" keeps them all). With ``grid`` 1 and "avg": the class token and
        the mean of the patch tokens, the DINOv2 linear protocol."""

        def __init__(self, patches: int, grid: int = 1, mode: str = "avg", **kwargs):
            super().__init__(**kwargs)
            self.patches, self.grid, self.mode = int(patches), int(grid), mode

        def call(self, x):
            g, d = self.patches, x.shape[-1]
            extra = x.shape[1] - g * g
            if extra < 0:
                raise SettingsError(f"{x.shape[1]} tokens cannot hold {g}x{g} patches")
            patches = ops.reshape(x[:, extra:, :], (-1, g, g, d))
            if self.mode == "flatten":
                pooled = ops.reshape(patches, (-1, g * g * d))
            elif self.grid == 1:
                pooled = ops.mean(patches, axis=(1, 2)) if self.mode == "avg" else ops.max(patches, axis=(1, 2))
            else:
                pooled = grid_pool(patches, self.grid, "max" if self.mode == "max" else "avg")
            return ops.concatenate([x[:, 0, :], pooled], axis=-1) if extra else pooled

        def compute_output_shape(self, shape):
            cells = self.patches**2 if self.mode == "flatten" else self.grid**2
            extra = shape[1] is None or shape[1] > self.patches**2
            return (shape[0], (cells + int(extra)) * shape[-1])

        def get_config(self):
            return {**super().get_config(), "patches": self.patches, "grid": self.grid, "mode": self.mode}

    return {c.__name__: c for c in (ToFloat, Preprocess, WithMirror, MirrorMean, GridPooling, Affine, TokenPooling)}


def featx_layers() -> dict:
    """The layer classes by name (registered with Keras on first use)."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _register()
    return _LAYERS
