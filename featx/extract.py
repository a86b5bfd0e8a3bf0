"""Run a frozen backbone over a dataset once and cache the embeddings in HDF5."""

from __future__ import annotations

import logging
import platform
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from . import cache
from .backbones import build_extractor
from .data import Dataset, load_dataset
from .errors import SettingsError
from .spec import FeatureSpec, as_spec

logger = logging.getLogger(__name__)

def make_extractor(spec: FeatureSpec, *, seed: int = 0, data=None, cache_dir=None):
    """Build the frozen extraction model of ``spec`` and its cache-key settings.

    Returns ``(model, settings)``, where ``settings`` is
    ``spec.key_settings(weights identity)``. For the ``trunk`` with
    ``weights="trained"``, the trunk trained on ``data``'s source classes is
    loaded, or trained first.
    """
    trunk_model = None
    if spec.backbone == "trunk":
        trunk_model = load_trunk(spec.weights, data=data, seed=seed, cache_dir=cache_dir)
    wid = spec.weights_identity(seed, trunk_model)
    model = build_extractor(spec, seed=seed, trunk_model=trunk_model)
    return model, spec.key_settings(wid)


def load_trunk(weights: str, *, data=None, seed: int = 0, cache_dir=None):
    """The trunk classifier for ``weights``: "trained" (on ``data``'s source classes,
    loaded from the cache or trained now), "none" (seeded random init) or a saved file."""
    from .trunk import build_trunk_classifier, load_or_train_trunk, load_trunk_file

    if weights == "trained":
        source = data if isinstance(data, Dataset) and data.task == "source" else None
        if source is None:
            name = data.name if isinstance(data, Dataset) else data
            source = load_dataset(name, "source", cache_dir=cache_dir, seed=seed)
        return load_or_train_trunk(source, seed=seed, cache_dir=cache_dir)[0]
    if weights == "none":
        return build_trunk_classifier(5, seed)
    return load_trunk_file(weights)


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


def extract_features(
    spec: FeatureSpec | str | None = None,
    data=None,
    task: str = "full",
    *,
    batch_size: int | str = "auto",
    seed: int = 0,
    cache_dir=None,
    force: bool = False,
    progress: bool | None = None,
    lock_timeout: float | None = None,
    **settings,
) -> cache.FeatureSet:
    """Embed the train and test images of a dataset with a frozen backbone, cached in HDF5.

    Running it again with the same settings returns the cached features at
    once; any different setting makes a new cache file. An interrupted run
    resumes from its last complete batch.

    Parameters
    ----------
    spec : FeatureSpec or str, default="vgg19"
        What makes the features (see :class:`featx.spec.FeatureSpec`), or a
        backbone name ("trunk", "vgg19", "resnet50").
    data : str, path or Dataset
        See :func:`featx.data.load_dataset` ("sample" by default).
    task : {"full", "source", "target"}
    batch_size : int or "auto", default="auto"
        Images per forward pass. "auto": 32 on a CPU, on a GPU by its memory;
        a batch that does not fit is halved (saying so) and the run goes on.
    seed : int
        Seed of the data splits, of random weights and of the trunk's training.
    cache_dir : path, optional
        Cache folder (default ``./cache`` or ``$FEATX_CACHE_DIR``).
    force : bool
        Recompute even if a complete cache exists.
    progress : bool, optional
        Progress bar (default: when on a terminal).
    lock_timeout : float, optional
        Seconds to wait for another process extracting the same settings
        (default: wait until it is done).
    **settings
        Feature settings that build the spec or change it: ``weights``,
        ``size``, ``pooling``, ``interpolation``, ``dtype``, ``layers``,
        ``grid``, ``flip``, ``precision`` (see :class:`~featx.spec.FeatureSpec`).

    Returns
    -------
    FeatureSet
        ``.load()`` gives ``(X_train, y_train, X_test, y_test)``.

    Examples
    --------
    >>> fs = extract_features("vgg19", "sample", weights="none", size=32)  # doctest: +SKIP
    >>> X_train, y_train, X_test, y_test = fs.load()  # doctest: +SKIP
    """
    import keras

    spec = as_spec(spec, **settings)
    check_batch_size(batch_size)
    ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
    model, settings = make_extractor(spec, seed=seed, data=ds, cache_dir=cache_dir)
    settings.update(data=ds.name, task=ds.task, data_fingerprint=ds.fingerprint,
                    backend=keras.backend.backend(), format=cache.FORMAT_VERSION)  # fmt: skip
    path = cache.feature_path(settings, cache_dir)
    if not force:
        found = cache.find_features(settings, cache_dir)
        if found is not None:
            print(f"features already cached: {found.path}", flush=True)
            return found
    with cache.locked(path, lock_timeout):
        if force:
            path.unlink(missing_ok=True)
            cache.partial_path(path).unlink(missing_ok=True)
        else:  # another process may have finished it while we waited
            found = cache.find_features(settings, cache_dir)
            if found is not None:
                print(f"features already cached: {found.path}", flush=True)
                return found
        return _run(model, ds, spec, settings, path, batch_size, progress)


def _run(model, ds: Dataset, spec: FeatureSpec, settings: dict, path, batch_size, progress) -> cache.FeatureSet:
    import h5py
    import keras
    import sklearn

    from .overlap import BackgroundWriter
    from .runtime import describe_device

    adaptive = batch_size == "auto"
    batch_size = resolve_batch_size(batch_size, spec)
    print(f"{spec.backbone} on {describe_device()} ({keras.backend.backend()}): precision {spec.precision}, "
          f"batch {batch_size}{' (auto)' if adaptive else ''}", flush=True)  # fmt: skip

    dim = int(model.output.shape[-1])
    info = {
        "class_names": list(ds.class_names),
        "image_shape": list(ds.image_shape),
        "data_info": ds.info,
        "batch_size": batch_size,
        "device": describe_device(),
        "spec": spec.to_dict(),
        "versions": {"featx": _featx_version(), "keras": keras.__version__, "numpy": np.__version__,
                     "h5py": h5py.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},  # fmt: skip
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    sizes = {"train": len(ds.X_train), "test": len(ds.X_test)}
    fits = [batch_size]  # halved on out-of-memory ("auto"), for the rest of the run
    writer = cache.PartialWriter(path, settings, info, sizes, dim, spec.dtype)
    seconds = {}
    try:
        for split in cache.SPLITS:
            X, y = ds.split(split)
            done = writer.n_done(split)
            if done == len(X):
                continue
            if done:
                print(f"resuming {split} at image {done} of {len(X)}", flush=True)
            t0 = time.perf_counter()
            disable = None if progress is None else not progress
            with tqdm(total=len(X), initial=done, desc=f"{settings['backbone']} {split}", unit="img",
                      disable=disable, file=sys.stderr, dynamic_ncols=True) as bar, \
                    BackgroundWriter(writer.append) as background:  # fmt: skip
                # the model runs here; the next batch is read, and the last one written, in the background
                for start, feats in embed(model, X[done:], batch_size=fits[0], progress=bar, adaptive=adaptive,
                                          on_resize=lambda n: fits.__setitem__(0, n)):  # fmt: skip
                    background.put(split, feats, y[done + start : done + start + len(feats)])
            seconds[split] = round(time.perf_counter() - t0, 3)
        fs = writer.finalize({"seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        writer.close()
    print(f"features cached: {fs.path} (train {sizes['train']}x{dim}, test {sizes['test']}x{dim})", flush=True)
    return fs


def _featx_version() -> str:
    from . import __version__

    return __version__

