"""Sharded extraction on a Dask cluster, with the cache contract of a single process.

The rows of each split are cut into shards; each shard is one Dask task. The
worker builds the model once per process (kept, keyed by the settings), embeds
its rows with :func:`featx.embed.embed` and writes a shard file next to the
feature file, in ``<name>.shards/``: first under a temporary name, renamed when
complete, so a shard file that has its final name is complete. When every shard
is there, the driver assembles the one feature file a single-process run writes
(same name, key, attrs and layout) and removes the shards.

Faults: a worker lost mid-shard has its task run again elsewhere by Dask (its
temporary file is left behind and ignored); a driver stopped part-way leaves
the complete shards, which the next run with the same settings reuses; two
drivers on one key take turns on the feature file's lock. Workers must see the
cache folder at the same path (one machine, or a shared filesystem): each task
first reads a token the driver wrote there, and fails with a clear error if it
cannot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from . import cache
from .errors import CacheError, ClusterError, FeatxError, SettingsError

log = logging.getLogger(__name__)

_PROBE = "driver-token.txt"
#: Shard size "auto": about this many shards per worker, within these bounds (images).
SHARDS_PER_WORKER = 4
MIN_SHARD, MAX_SHARD = 256, 10_000


def shard_dir(path: Path) -> Path:
    """The folder of the shard files of the feature file ``path``."""
    return path.with_name(path.stem + ".shards")


def auto_shard_size(n_images: int, n_workers: int) -> int:
    """About :data:`SHARDS_PER_WORKER` shards per worker, in multiples of 256 images, 256 to 10,000."""
    size = math.ceil(n_images / max(1, SHARDS_PER_WORKER * n_workers) / 256) * 256
    return int(min(MAX_SHARD, max(MIN_SHARD, size)))


def check_shard_size(shard_size) -> None:
    if shard_size == "auto":
        return
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise SettingsError(f"shard_size must be a positive integer or 'auto'. Received: shard_size={shard_size!r}")


def plan(sizes: dict[str, int], shard_size: int) -> list[tuple[str, int, int]]:
    """``(split, start, stop)`` of every shard, in file order."""
    return [(s, a, min(a + shard_size, n)) for s, n in sizes.items() for a in range(0, n, shard_size)]


def shard_path(folder: Path, split: str, start: int, stop: int) -> Path:
    return folder / f"{split}-{start:010d}-{stop:010d}.h5"


def read_shard(path: Path, key: str, rows: int) -> dict | None:
    """The attrs of a complete, sound shard file for ``key`` with ``rows`` rows, else None."""
    try:
        with h5py.File(path, "r") as f:
            ok = (f.attrs.get("key") == key and bool(f.attrs.get("complete"))
                  and f["X"].shape[0] == rows and f["y"].shape[0] == rows)  # fmt: skip
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()} if ok else None
    except (OSError, KeyError, ValueError):
        return None


# ---------------------------------------------------------------- on the worker

_BATCH: dict = {}  # feature key -> batch size that fits, once "auto" had to halve
_DATA: dict = {}  # data reference -> Dataset, per worker process (the last two)


def where() -> str:
    """This worker's address (or host name outside a Dask worker)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return socket.gethostname()


def embed_shard(job: dict, split: str, start: int, stop: int, rows=None) -> dict:
    """A Dask task: embed rows ``start:stop`` of ``split`` into a shard file; returns what it did.

    ``rows`` is ``(X, y)`` when the driver sends the images; else the worker
    loads the dataset named in ``job`` from the shared cache folder.
    """
    try:
        return _embed_shard(job, split, start, stop, rows)
    except FeatxError as exc:
        raise ClusterError(f"on worker {where()} ({socket.gethostname()}): {exc}") from None
    except Exception as exc:
        raise ClusterError(f"on worker {where()} ({socket.gethostname()}): "
                           f"{exc.__class__.__name__}: {exc}") from exc  # fmt: skip


def _embed_shard(job: dict, split: str, start: int, stop: int, rows) -> dict:
    from .runtime import compilation, describe_device

    folder = Path(job["shard_dir"])
    try:
        token = (folder / _PROBE).read_text()
    except OSError:
        token = None
    if token != job["token"]:
        raise CacheError(
            f"this worker cannot see the cache folder {job['cache_dir']} (the driver's token is not in "
            f"{folder}). Workers must share the cache folder at the same path: run them on this machine, "
            "mount a shared filesystem there, or pass --cache-dir on one they all see."
        )
    out = shard_path(folder, split, start, stop)
    done = read_shard(out, job["key"], stop - start)
    if done is not None:
        return {**done, "reused": True}
    extractor = job["extractor"]
    _check_backend(extractor)
    model = extractor.model
    X, y = rows if rows is not None else _rows(job["data"], split, start, stop)
    settings_key = job["key"]
    batch = _BATCH.get(settings_key, job["batch_size"])
    t0 = time.perf_counter()
    tmp = out.with_name(f"{out.stem}.{uuid.uuid4().hex[:8]}.partial.h5")
    try:
        with h5py.File(tmp, "w") as f:
            dim = int(model.output.shape[-1])
            Xd = f.create_dataset("X", shape=(len(X), dim), dtype=np.dtype(extractor.spec.dtype))
            for s, feats in extractor.embed(X, batch_size=batch, adaptive=job["batch_size"] == "auto",
                                            on_resize=lambda n: _BATCH.__setitem__(settings_key, n)):  # fmt: skip
                Xd[s : s + len(feats)] = feats.astype(Xd.dtype, copy=False)  # as numpy rounds, like a single process
            f.create_dataset("y", data=np.asarray(y, dtype=np.int64))
            attrs = {"key": job["key"], "split": split, "start": start, "stop": stop, "worker": where(),
                     "host": socket.gethostname(), "device": describe_device(),
                     "compiled": compilation(model),
                     "batch_size": _BATCH.get(settings_key, job["batch_size"]), "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
            f.attrs.update(attrs)
            f.flush()
            f.attrs["complete"] = True  # after the rows it vouches for
        os.replace(tmp, out)  # atomic: a shard with its final name is complete
    finally:
        tmp.unlink(missing_ok=True)
    return {**attrs, "complete": True, "reused": False}


def _check_backend(extractor) -> None:
    """The features are keyed on the driver's Keras backend: the workers must run the same."""
    import keras

    if keras.backend.backend() != extractor.backend:
        raise SettingsError(
            f"this worker runs the Keras backend {keras.backend.backend()!r}, the driver "
            f"{extractor.backend!r}: set KERAS_BACKEND={extractor.backend} for the workers too."
        )


def _rows(ref: dict, split: str, start: int, stop: int):
    from .data import load_dataset

    key = json.dumps(ref, sort_keys=True)
    if key not in _DATA:
        from .images import ImageOptions

        images = ImageOptions(**ref["images"]) if ref.get("images") else None
        ds = load_dataset(ref["name"], ref["task"], cache_dir=ref["cache_dir"], seed=ref["seed"], progress=False,
                          images=images)  # fmt: skip
        if ds.fingerprint != ref["fingerprint"]:
            raise CacheError(f"the dataset {ref['name']!r} reads differently on this worker (fingerprint "
                             f"{ds.fingerprint}, the driver's {ref['fingerprint']}): give the workers the same "
                             "files at the same path.")  # fmt: skip
        while len(_DATA) >= 2:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = ds
    X, y = _DATA[key].split(split)
    return np.ascontiguousarray(X[start:stop]), np.asarray(y[start:stop])


# ---------------------------------------------------------------- on the driver


def data_reference(ds, cache_dir: Path, seed: int) -> dict | None:
    """How workers can load ``ds`` themselves (the shipped sample, or a folder or archive, whose
    decoded pixels are cached in the shared cache folder), or None: the driver sends the images."""
    from .data import load_dataset

    name = str(ds.name)
    if name != "sample" and not Path(name).exists():
        return None
    images = {"side": ds.images.side, "aspect": ds.images.aspect} if ds.images is not None else None
    try:
        again = load_dataset(name, ds.task, cache_dir=cache_dir, seed=seed, progress=False, images=ds.images)
    except FeatxError:
        return None
    if again.fingerprint != ds.fingerprint:
        return None
    return {"name": name, "task": ds.task, "seed": seed, "cache_dir": str(cache_dir), "fingerprint": ds.fingerprint,
            "images": images}  # fmt: skip


def run_sharded(client, *, ds, extractor, settings: dict, path: Path, info: dict, cache_dir: Path,
                options) -> cache.FeatureSet:  # fmt: skip
    """Embed ``ds`` on the cluster of ``client`` and assemble the feature file ``path``.

    The caller holds the feature file's lock. See the module's doc.
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    from .cluster import n_workers

    spec, shard_size, seed = extractor.spec, options.shard_size, options.seed
    sizes = {"train": len(ds.X_train), "test": len(ds.X_test)}
    workers = n_workers(client)
    size = auto_shard_size(sum(sizes.values()), workers) if shard_size == "auto" else int(shard_size)
    folder = shard_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    (folder / _PROBE).write_text(token)
    key = cache.feature_key(settings)
    shards = plan(sizes, size)
    todo = [s for s in shards if read_shard(shard_path(folder, *s), key, s[2] - s[1]) is None]
    ref = data_reference(ds, cache_dir, seed)
    # the extractor travels as its small state (the trunk's weights at most); each worker builds the model once
    job = {"extractor": extractor, "key": key, "batch_size": options.batch_size, "shard_dir": str(folder),
           "cache_dir": str(cache_dir), "token": token, "data": ref}  # fmt: skip
    reused = len(shards) - len(todo)
    log.info(f"{spec.backbone_.label}: {len(shards)} shards of up to {size} images on {workers} worker"
             f"{'s' if workers > 1 else ''}" + (f"; {reused} already done" if reused else ""))  # fmt: skip
    t0 = time.perf_counter()
    futures = []
    for split, a, b in todo:
        # the images travel inside the task (not scattered to one worker), so a lost worker loses nothing
        X, y = ds.split(split)
        rows = None if ref is not None else (np.ascontiguousarray(X[a:b]), np.asarray(y[a:b]))
        futures.append(client.submit(embed_shard, job, split, a, b, rows, pure=False,
                                     key=f"featx-shard-{key}-{split}-{a}-{uuid.uuid4().hex[:6]}"))  # fmt: skip
    ran, devices, compiled = 0, set(), set()
    disable = None if options.progress is None else not options.progress
    try:
        with tqdm(total=sum(b - a for _, a, b in todo), desc=f"{spec.backbone_.label} shards", unit="img",
                  disable=disable, file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
            for fut in as_completed(futures):
                try:
                    done = fut.result()
                except FutureCancelledError:
                    raise ClusterError("the cluster cancelled the extraction (was it closed?); run again: "
                                       "the complete shards are kept") from None  # fmt: skip
                except ClusterError:
                    raise
                except Exception as exc:  # KilledWorker and other scheduler errors
                    raise ClusterError(f"a shard could not be run on the cluster: {exc.__class__.__name__}: {exc}. "
                                       "The complete shards are kept; run again to go on.") from None  # fmt: skip
                ran += not done.get("reused")
                devices.add(str(done.get("device")))
                compiled.add(str(done.get("compiled")))
                bar.update(int(done["stop"]) - int(done["start"]))
    finally:
        client.cancel(futures)
    extra = {"seconds": {"shards": round(time.perf_counter() - t0, 3)},
             "cluster": {"workers": workers, "shard_size": size, "shards": len(shards), "shards_run": ran,
                         "shards_reused": len(shards) - ran, "data_from": "workers" if ref else "driver"}}  # fmt: skip
    info = {**info, "device": ", ".join(sorted(devices)) or info.get("device"),
            "compiled": ", ".join(sorted(compiled - {"None"})) or None}  # fmt: skip
    fs = assemble(path, settings, info, sizes, folder, shards, key, spec.dtype, extra)
    assemble_s = fs.info["seconds"]["assemble"]
    remove_shards(folder)
    log.info(f"features cached: {fs.path} (train {sizes['train']}, test {sizes['test']}; {ran} shards run, "
             f"{len(shards) - ran} reused; assembled in {assemble_s:.2f} s)")  # fmt: skip
    return fs


def assemble(path: Path, settings: dict, info: dict, sizes: dict, folder: Path, shards, key: str,
             dtype: str, extra: dict | None = None) -> cache.FeatureSet:  # fmt: skip
    """Write the feature file ``path`` from complete shard files, in row order, through the same
    partial-then-rename writer as a single-process run. ``extra`` joins the file's ``info``, with the
    assembly's seconds in ``extra["seconds"]["assemble"]``."""
    t0 = time.perf_counter()
    extra = dict(extra or {})
    first = shard_path(folder, *shards[0])
    with h5py.File(first, "r") as f:
        dim = int(f["X"].shape[1])
    cache.partial_path(path).unlink(missing_ok=True)  # rows of an earlier single-process run: not ours
    writer = cache.PartialWriter(path, settings, info, sizes, dim, dtype)
    try:
        for split, a, b in shards:
            p = shard_path(folder, split, a, b)
            if read_shard(p, key, b - a) is None:
                raise CacheError(f"shard {p.name} is missing or incomplete; run again to embed it")
            with h5py.File(p, "r") as f:
                writer.append(split, f["X"][:], f["y"][:])
        extra["seconds"] = {**extra.get("seconds", {}), "assemble": round(time.perf_counter() - t0, 3)}
        return writer.finalize({**extra, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        writer.close()


def remove_shards(folder: Path) -> None:
    """Delete the shard files once the feature file holds their rows."""
    shutil.rmtree(folder, ignore_errors=True)
