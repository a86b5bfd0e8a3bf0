"""Batches through a frozen model: the one forward loop of featx.

:func:`embed` runs a built model over uint8 images, batch by batch, with the
next batch prepared in the background; every extraction path (a single
process, a shard on a Dask worker, the Pipeline step, ``predict``) uses it.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import OutputError, ResourceError, SettingsError
from .spec import FeatureSpec
from .streaming import physical_memory

log = logging.getLogger(__name__)


def layer_columns(model) -> list[tuple[str, int, int]]:
    """``(backbone layer, first column, end column)`` of each part of a featx extraction model's output."""
    try:
        parts = model.get_layer("concat").input
    except ValueError:
        return [("its output", 0, int(model.output.shape[-1]))]
    out, start = [], 0
    for t in parts:
        name = t._keras_history.operation.name
        width = int(t.shape[-1])
        out.append((name.removeprefix("feat_"), start, start + width))
        start += width
    return out


def nonfinite_error(model, out: np.ndarray, start: int) -> OutputError:
    """One line on features that hold NaN or inf: how many, where, from which layer."""
    bad_cols = np.flatnonzero(~np.isfinite(out).all(axis=0))
    layers = [name for name, a, b in layer_columns(model) if ((bad_cols >= a) & (bad_cols < b)).any()]
    row = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0]) + start
    nan, inf = np.isnan(out).mean(), np.isinf(out).mean()
    backbone = model.name.removeprefix("featx_")
    return OutputError(
        f"{backbone} gave features that are not numbers ({nan:.0%} NaN, {inf:.0%} inf in this batch; first at "
        f"image {row}, layer {', '.join(layers)}): its arithmetic overflows. Nothing of them was cached. Check the "
        "model on these images (its own preprocessing, --precision float32), or pick other --layers."
    )


def _padded_batches(X: np.ndarray, start: int, batch_size: int):
    """``(start, batch, m)``: consecutive slices of ``X`` from ``start``, read into memory and
    padded to ``batch_size`` rows (``m`` of them real), so compiled backends see one shape."""
    for s in range(start, len(X), batch_size):
        batch = np.ascontiguousarray(X[s : s + batch_size])
        m = len(batch)
        if m < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - m, *batch.shape[1:]), batch.dtype)])
        yield s, batch, m


def embed(model, X: np.ndarray, *, batch_size: int = 32, progress=None, desc: str = "embedding",
          adaptive: bool = False, on_resize=None):  # fmt: skip
    """Yield ``(start, features)`` for consecutive batches of ``X`` (uint8 images).

    The next batch is read and padded in a background thread while the model runs
    this one (:func:`featx.overlap.prefetch`). The last batch is padded to
    ``batch_size`` so that compiled backends see one shape only. ``progress``
    is a tqdm bar to update, or None. With ``adaptive`` (batch size "auto"), a
    batch that does not fit in the device's memory is run again at half the
    size, and so on, saying so; ``on_resize(new_size)`` is called each time,
    so that later calls can start at the size that fits.
    """
    from .overlap import prefetch
    from .runtime import is_out_of_memory

    start, n = 0, len(X)
    batch_size = max(1, min(batch_size, n))  # never padded beyond the images at hand
    check_memory(model, batch_size)
    while start < n:
        batches = prefetch(_padded_batches(X, start, batch_size))
        try:
            for s, batch, m in batches:
                try:
                    out = np.asarray(model.predict_on_batch(batch))[:m]
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    if not (adaptive and batch_size > 1):
                        raise ResourceError(
                            f"a batch of {batch_size} images did not fit in memory ({type(exc).__name__}): "
                            "pass a smaller --batch-size (batch_size=), or auto, which halves it until it fits."
                        ) from None
                    log.warning(f"a batch of {batch_size} images did not fit in device memory: going on with "
                                f"{batch_size // 2}")  # fmt: skip
                    batch_size //= 2
                    start = s
                    if on_resize is not None:
                        on_resize(batch_size)
                    break
                if not np.isfinite(out).all():
                    raise nonfinite_error(model, out, s)
                if progress is not None:
                    progress.update(m)
                yield s, out
            else:
                start = n
        finally:
            batches.close()


def bytes_per_image(model) -> int:
    """A lower bound of the memory one image takes in a forward pass of ``model``: the largest
    input plus output of any of its layers (nested models' included), in float32."""
    largest = 0
    for layer in model._flatten_layers(include_self=False):
        try:
            shapes = [layer.output.shape, layer.input.shape]
        except (AttributeError, ValueError):  # a layer called more than once, or not at all
            continue
        elems = 0
        for shape in shapes:
            if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
                continue  # several tensors: skip rather than guess
            dims = [d for d in shape[1:]]
            if dims and all(isinstance(d, int) for d in dims):
                elems += int(np.prod(dims))
        largest = max(largest, elems)
    mirrored = any(layer.name == "with_mirror" for layer in model.layers)
    return 4 * largest * (2 if mirrored else 1)


def check_memory(model, batch_size: int) -> None:
    """Refuse, before running, a batch whose forward pass cannot fit in this machine's memory
    (on a GPU, its memory): a value that cannot work is one line, not a crash."""
    from .runtime import this_machine

    report = this_machine()
    memory = report.get("memory_bytes") if report.get("device") == "gpu" else physical_memory()
    per_image = bytes_per_image(model)
    need = per_image * batch_size
    if memory and need > memory // 2:
        fits = (memory // 2) // max(1, per_image)
        where = "GPU" if report.get("device") == "gpu" else "machine"
        if fits < 1:
            raise ResourceError(
                f"one image needs at least {per_image / 2**30:.1f} GiB in the forward pass at this input size and "
                f"this {where} has {memory / 2**30:.1f} GiB: pass a smaller --size (size=)."
            )
        raise ResourceError(
            f"a batch of {batch_size} images needs at least {need / 2**30:.1f} GiB in the forward pass and this "
            f"{'GPU' if report.get('device') == 'gpu' else 'machine'} has {memory / 2**30:.1f} GiB: pass "
            f"--batch-size {min(fits, 1024)} or less (batch_size=), or auto."
        )




def check_batch_size(batch_size) -> None:
    """Check the batch size of ``extract_features`` and ``FeatureExtractor``: a positive integer or "auto"."""
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SettingsError(f"batch_size must be a positive integer or 'auto'. Received: batch_size={batch_size!r}")


def resolve_batch_size(batch_size, spec: FeatureSpec) -> int:
    """The images per forward pass for ``batch_size`` ("auto": :func:`featx.runtime.auto_batch_size`)."""
    from .runtime import auto_batch_size

    check_batch_size(batch_size)
    return auto_batch_size(spec.size) if batch_size == "auto" else int(batch_size)
