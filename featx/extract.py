"""Run a frozen backbone over a dataset once and cache the embeddings in HDF5."""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import cache
from .cluster import is_client
from .data import Dataset, load_dataset
from .embed import embed  # noqa: F401 (featx.extract.embed)
from .errors import CacheError
from .extractor import Extractor
from .options import RunOptions, as_options, split_kwargs
from .spec import FeatureSpec, as_spec

logger = logging.getLogger(__name__)


def extract_features(
    spec: FeatureSpec | str | None = None,
    data=None,
    task: str = "full",
    *,
    options: RunOptions | None = None,
    **kwargs,
) -> cache.FeatureSet:
    """Embed the train and test images of a dataset with a frozen backbone, cached in HDF5.

    Running it again with the same settings returns the cached features at
    once; any different setting makes a new cache file. An interrupted run
    resumes from its last complete batch.

    Parameters
    ----------
    spec : FeatureSpec, str, path or keras.Model, default="vgg19"
        What makes the features (see :class:`featx.spec.FeatureSpec`), or a
        backbone: a name ("trunk", "resnet50", "efficientnetv2b0", ...), a
        ``.keras`` file, a ``keras.Model``.
    data : str, path or Dataset
        See :func:`featx.data.load_dataset` ("sample" by default).
    task : {"full", "source", "target"}
    options : RunOptions, optional
        How and where to run (:class:`featx.options.RunOptions`): ``batch_size``,
        ``seed``, ``cache_dir``, ``force``, ``progress``, ``lock_timeout``,
        ``cluster``, ``workers``, ``shard_size``. With ``cluster``, the rows
        are embedded in shards on Dask workers and assembled into the same
        file a single process writes (:mod:`featx.shards`); workers must see
        the cache folder at the same path.
    **kwargs
        Run options by name (they change a copy of ``options``), and feature
        settings that build the spec or change it: ``weights``, ``size``,
        ``pooling``, ``interpolation``, ``dtype``, ``layers``, ``grid``,
        ``flip``, ``precision`` (see :class:`~featx.spec.FeatureSpec`).

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

    settings, run = split_kwargs(kwargs)
    spec = as_spec(spec, **settings)
    opts = as_options(options, **run)
    if opts.cluster is not None and opts.cluster != "local" and not is_client(opts.cluster):
        with connect(opts.cluster, opts.workers) as client:  # an address is tried before any work: a bad one fails at once
            return extract_features(spec, data, task, options=opts.replace(cluster=client, workers=None))
    ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=opts.cache_dir, seed=opts.seed,
                                                             images=spec.images, progress=opts.progress)  # fmt: skip
    extractor = Extractor(spec, seed=opts.seed, data=ds, cache_dir=opts.cache_dir, progress=opts.progress)
    settings = feature_settings(extractor, ds)
    path = cache.feature_path(settings, opts.cache_dir)
    if not opts.force and (found := _cached(settings, opts.cache_dir)) is not None:
        return found
    # "local" starts its cluster only now that there is work (5-6 s)
    with connect(opts.cluster, opts.workers) as client, cache.locked(path, opts.lock_timeout):
        if opts.force:
            # start afresh beside the complete file, which the new one replaces only once complete:
            # an interrupted forced run leaves the old features in place
            cache.partial_path(path).unlink(missing_ok=True)
        elif (found := _cached(settings, opts.cache_dir)) is not None:  # another process finished it while we waited
            return found
        if client is None:
            return _run(extractor, ds, settings, path, opts)
        from .config import cache_dir as resolve_cache_dir
        from .shards import run_sharded, shard_dir

        if opts.force:
            shutil.rmtree(shard_dir(path), ignore_errors=True)
        return run_sharded(client, ds=ds, extractor=extractor, settings=settings, path=path,
                           info=run_info(ds, spec, opts.batch_size, "cluster"),
                           cache_dir=resolve_cache_dir(opts.cache_dir).resolve(), options=opts)  # fmt: skip


def _cached(settings: dict, cache_dir) -> cache.FeatureSet | None:
    """The complete feature file of ``settings``, saying so, or None."""
    found = cache.find_features(settings, cache_dir)
    if found is not None:
        logger.info(f"features already cached: {found.path}")
    return found


def feature_settings(extractor: Extractor, ds: Dataset) -> dict:
    """The cache key of ``extractor``'s features of ``ds``: its settings, and the data's name,
    task and fingerprint."""
    return {**extractor.settings, "data": ds.name, "task": ds.task, "data_fingerprint": ds.fingerprint}


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


def _run(extractor: Extractor, ds: Dataset, settings: dict, path, opts: RunOptions) -> cache.FeatureSet:
    import keras

    from .embed import check_memory, resolve_batch_size
    from .overlap import BackgroundWriter
    from .runtime import compilation, describe_device

    spec, model = extractor.spec, extractor.model
    adaptive = opts.batch_size == "auto"
    batch_size = resolve_batch_size(opts.batch_size, spec)
    check_memory(model, min(batch_size, max(len(ds.X_train), len(ds.X_test), 1)))  # before any file is written
    compiled = compilation(model)
    logger.info(f"{spec.backbone_.label} on {describe_device()} ({keras.backend.backend()}, {compiled}): precision "
                f"{spec.precision}, batch {batch_size}{' (auto)' if adaptive else ''}")  # fmt: skip

    dim = int(model.output.shape[-1])
    info = {**run_info(ds, spec, batch_size, describe_device()), "compiled": compiled}
    sizes = {"train": len(ds.X_train), "test": len(ds.X_test)}
    fits = [batch_size]  # halved on out-of-memory ("auto"), for the rest of the run
    writer = cache.PartialWriter(path, settings, info, sizes, dim, spec.dtype)
    seconds = {}
    row_bytes = dim * np.dtype(spec.dtype).itemsize
    try:
        left = sum(sizes[s] - writer.n_done(s) for s in cache.SPLITS)
        _check_space(Path(path).parent, left * row_bytes, left)
        for split in cache.SPLITS:
            X, y = ds.split(split)
            done = writer.n_done(split)
            if done == len(X):
                continue
            if done:
                logger.info(f"resuming {split} at image {done} of {len(X)}")
            t0 = time.perf_counter()
            disable = None if opts.progress is None else not opts.progress
            with tqdm(total=len(X), initial=done, desc=f"{spec.backbone_.label} {split}", unit="img",
                      disable=disable, file=sys.stderr, dynamic_ncols=True) as bar, \
                    BackgroundWriter(writer.append) as background:  # fmt: skip
                # the model runs here; the next batch is read, and the last one written, in the background
                for start, feats in embed(model, X[done:], batch_size=fits[0], progress=bar, adaptive=adaptive,
                                          on_resize=lambda n: fits.__setitem__(0, n)):  # fmt: skip
                    _check_space(Path(path).parent, 2 * len(feats) * row_bytes, len(X) - done - start)
                    background.put(split, feats, y[done + start : done + start + len(feats)])
            seconds[split] = round(time.perf_counter() - t0, 3)
        fs = writer.finalize({"seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        writer.close()
    logger.info(f"features cached: {fs.path} (train {sizes['train']}x{dim}, test {sizes['test']}x{dim})")
    return fs


#: Room kept free besides the rows themselves (HDF5 chunks, checksums, the file's metadata).
_SPACE_MARGIN = 4 * 2**20


def _check_space(folder: Path, need: int, rows_left: int) -> None:
    """Stop in one line before the disk fills: HDF5 does not survive a write that finds no space
    (it can take the process down), while the partial file as it stands resumes on the next run."""
    free = shutil.disk_usage(folder).free
    if free < need + _SPACE_MARGIN:
        raise CacheError(
            f"No space left on device for the features in {folder}: {free / 2**20:,.1f} MiB free, about "
            f"{(need + _SPACE_MARGIN) / 2**20:,.1f} MiB needed for the next {rows_left:,} rows. Free some space or "
            "pass another --cache-dir; a run with the same settings goes on from the images done."
        )


def _featx_version() -> str:
    from . import __version__

    return __version__

