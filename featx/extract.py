"""Run a frozen backbone over a dataset once and cache the embeddings in HDF5."""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from . import cache
from .backbones import build_extractor
from .cluster import is_client
from .data import Dataset, load_dataset
from .embed import check_batch_size, embed, resolve_batch_size  # noqa: F401 (embed: featx.extract.embed)
from .spec import FeatureSpec, as_spec

logger = logging.getLogger(__name__)

def make_extractor(spec: FeatureSpec, *, seed: int = 0, data=None, cache_dir=None):
    """Build the frozen extraction model of ``spec`` and its cache-key settings.

    Returns ``(model, settings)``, where ``settings`` is
    ``spec.key_settings(weights identity)``. For the ``trunk`` with
    ``weights="trained"``, the trunk trained on ``data``'s source classes is
    loaded, or trained first.
    """
    settings, trunk_model = extractor_settings(spec, seed=seed, data=data, cache_dir=cache_dir)
    return build_extractor(spec, seed=seed, trunk_model=trunk_model), settings


def extractor_settings(spec: FeatureSpec, *, seed: int = 0, data=None, cache_dir=None):
    """The cache-key settings of ``spec``, without building its model: ``(settings, trunk_model)``.

    ``trunk_model`` is the trunk classifier whose layers make the trunk's
    features (None for the other backbones); see :func:`make_extractor`.
    """
    trunk_model = None
    if spec.backbone == "trunk":
        trunk_model = load_trunk(spec.weights, data=data, seed=seed, cache_dir=cache_dir)
    return spec.key_settings(spec.weights_identity(seed, trunk_model)), trunk_model


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
    cluster=None,
    workers: int | None = None,
    shard_size: int | str = "auto",
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
    cluster : "local", str or distributed.Client, optional
        Run on a Dask cluster (:mod:`featx.cluster`): "local" starts one here
        (``workers`` processes; one per GPU where there are GPUs), an address
        such as "tcp://host:8786" connects to a running scheduler. The rows are
        embedded in shards on the workers and assembled into the same file a
        single process writes (:mod:`featx.shards`). Workers must see
        ``cache_dir`` at the same path.
    workers : int, optional
        Worker processes of ``cluster="local"`` (default: one per core).
    shard_size : int or "auto", default="auto"
        Images per Dask task ("auto": about 4 shards per worker, 256 to 10,000).
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
    from .cluster import connect

    spec = as_spec(spec, **settings)
    check_batch_size(batch_size)
    check_run_options(cluster, workers, shard_size)
    if cluster is not None and cluster != "local" and not is_client(cluster):
        with connect(cluster, workers) as client:  # an address is tried before any work: a bad one fails at once
            return extract_features(spec, data, task, batch_size=batch_size, seed=seed, cache_dir=cache_dir,
                                    force=force, progress=progress, lock_timeout=lock_timeout, cluster=client,
                                    shard_size=shard_size)  # fmt: skip
    ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
    settings, trunk_model = _settings(spec, ds, seed, cache_dir)
    path = cache.feature_path(settings, cache_dir)
    if not force and (found := _cached(settings, cache_dir)) is not None:
        return found
    # "local" starts its cluster only now that there is work (5-6 s)
    with connect(cluster, workers) as client, cache.locked(path, lock_timeout):
        if force:
            path.unlink(missing_ok=True)
            cache.partial_path(path).unlink(missing_ok=True)
        elif (found := _cached(settings, cache_dir)) is not None:  # another process finished it while we waited
            return found
        if client is None:
            model = build_extractor(spec, seed=seed, trunk_model=trunk_model)
            return _run(model, ds, spec, settings, path, batch_size, progress)
        from .config import cache_dir as resolve_cache_dir
        from .shards import run_sharded, shard_dir

        if force:
            shutil.rmtree(shard_dir(path), ignore_errors=True)
        return run_sharded(client, ds=ds, spec=spec, settings=settings, path=path, seed=seed,
                           info=run_info(ds, spec, batch_size, "cluster"), trunk_model=trunk_model,
                           cache_dir=resolve_cache_dir(cache_dir).resolve(), batch_size=batch_size,
                           shard_size=shard_size, progress=progress)  # fmt: skip


def _cached(settings: dict, cache_dir) -> cache.FeatureSet | None:
    """The complete feature file of ``settings``, saying so, or None."""
    found = cache.find_features(settings, cache_dir)
    if found is not None:
        print(f"features already cached: {found.path}", flush=True)
    return found


def _settings(spec: FeatureSpec, ds: Dataset, seed: int, cache_dir):
    """``(settings, trunk_model)``: the cache key of ``spec``'s features of ``ds`` on this backend."""
    import keras

    settings, trunk_model = extractor_settings(spec, seed=seed, data=ds, cache_dir=cache_dir)
    settings.update(data=ds.name, task=ds.task, data_fingerprint=ds.fingerprint,
                    backend=keras.backend.backend(), format=cache.FORMAT_VERSION)  # fmt: skip
    return settings, trunk_model


def check_run_options(cluster, workers, shard_size) -> None:
    """Check the cluster options of a run (without importing dask when there is no cluster)."""
    if cluster is None and workers is None:
        return
    from .cluster import check_cluster
    from .shards import check_shard_size

    check_cluster(cluster, workers)
    check_shard_size(shard_size)


def run_info(ds: Dataset, spec: FeatureSpec, batch_size, device: str) -> dict:
    """What a feature file records besides its settings: classes, shapes, spec, device, versions."""
    import h5py
    import keras
    import sklearn

    return {
        "class_names": list(ds.class_names),
        "image_shape": list(ds.image_shape),
        "data_info": ds.info,
        "batch_size": batch_size,
        "device": device,
        "spec": spec.to_dict(),
        "versions": {"featx": _featx_version(), "keras": keras.__version__, "numpy": np.__version__,
                     "h5py": h5py.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},  # fmt: skip
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _run(model, ds: Dataset, spec: FeatureSpec, settings: dict, path, batch_size, progress) -> cache.FeatureSet:
    import keras

    from .overlap import BackgroundWriter
    from .runtime import compilation, describe_device

    adaptive = batch_size == "auto"
    batch_size = resolve_batch_size(batch_size, spec)
    compiled = compilation(model)
    print(f"{spec.backbone} on {describe_device()} ({keras.backend.backend()}, {compiled}): precision "
          f"{spec.precision}, batch {batch_size}{' (auto)' if adaptive else ''}", flush=True)  # fmt: skip

    dim = int(model.output.shape[-1])
    info = {**run_info(ds, spec, batch_size, describe_device()), "compiled": compiled}
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

