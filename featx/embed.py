"""Batches through a frozen model: the one forward loop of featx.

:func:`embed` runs a built model over uint8 images, batch by batch, with the
next batch prepared in the background; every extraction path (a single
process, a shard on a Dask worker, the Pipeline step, ``predict``) uses it.
"""

from __future__ import annotations

import sys

import numpy as np

from .errors import SettingsError
from .spec import FeatureSpec


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
    while start < n:
        batches = prefetch(_padded_batches(X, start, batch_size))
        try:
            for s, batch, m in batches:
                try:
                    out = np.asarray(model.predict_on_batch(batch))[:m]
                except Exception as exc:
                    if not (adaptive and batch_size > 1 and is_out_of_memory(exc)):
                        raise
                    print(f"a batch of {batch_size} images did not fit in device memory: going on with "
                          f"{batch_size // 2}", file=sys.stderr, flush=True)  # fmt: skip
                    batch_size //= 2
                    start = s
                    if on_resize is not None:
                        on_resize(batch_size)
                    break
                if progress is not None:
                    progress.update(m)
                yield s, out
            else:
                start = n
        finally:
            batches.close()


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
