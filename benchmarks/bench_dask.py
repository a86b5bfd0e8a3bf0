"""Sharded extraction on Dask against a single process: rate, speed-up, assembly cost.

Run:  python benchmarks/bench_dask.py [--backbone trunk] [--workers 1,2] [--images 12000]
      python benchmarks/bench_dask.py --backbone resnet50 --size 64 --images 2000

The same extraction (random weights: the arithmetic is that of ImageNet
weights) runs once in this process and once on a LocalCluster of each number
of workers, every run into an empty feature cache. The cluster is started and
warmed (featx and the Keras backend imported on every worker) before its run is
timed, as a running cluster would be; its start time is printed apart. Each
run's wall time includes building the model (on every worker for the cluster)
and, for the cluster, assembling the shard files into the one feature file;
the assembly's share is printed. On a machine with N cores a local cluster
gives each of its W workers N/W threads, so 1 worker against no cluster
measures the overhead of the cluster itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="trunk")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--data", default="sample", help="dataset (default: the shipped sample, 12,000 images)")
    p.add_argument("--images", type=int, default=None, help="use the first N images (train and test alike)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--shard-size", default="auto")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest is kept")
    p.add_argument("--assembly", default=None, metavar="ROWSxDIM",
                   help="only time the assembly of ROWS rows of DIM float32 from shard files, e.g. 200000x2048")
    args = p.parse_args()
    if args.assembly:
        return assembly_rate(*(int(x) for x in args.assembly.lower().split("x")))

    # isort: off
    import featx  # noqa: F401  (before Keras: its backend's start-up lines stay quiet)
    import keras

    # isort: on
    from featx.cluster import connect
    from featx.data import Dataset, load_dataset
    from featx.extract import extract_features
    from featx.runtime import cpu_flags

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU flags "
          f"{' '.join(sorted(cpu_flags() & {'avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16'})) or 'none'}; "
          f"Keras {keras.__version__} ({keras.backend.backend()})")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    ds = load_dataset(args.data, "full", cache_dir=root)
    if args.images:
        n = args.images
        k = max(1, round(n * len(ds.X_test) / (len(ds.X_train) + len(ds.X_test))))
        rng = np.random.default_rng(0)
        tr = np.sort(rng.permutation(len(ds.X_train))[: n - k])
        te = np.sort(rng.permutation(len(ds.X_test))[:k])
        ds = Dataset(f"{ds.name}-{n}", ds.X_train[tr], ds.y_train[tr], ds.X_test[te], ds.y_test[te], ds.class_names,
                     fingerprint=f"{ds.fingerprint}-{n}")  # fmt: skip
    n = len(ds.X_train) + len(ds.X_test)
    shard = args.shard_size if args.shard_size == "auto" else int(args.shard_size)
    settings = dict(weights="none", progress=False, **({"size": args.size} if args.size else {}))
    print(f"{args.backbone}{f'@{args.size}' if args.size else ''}, {n} images of {ds.name}, shard size {shard}\n")

    def fresh() -> Path:
        shutil.rmtree(root / "features", ignore_errors=True)
        return root

    def quiet(fn, *a, **k):
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*a, **k)

    rows = []
    best = min((_timed(lambda: quiet(extract_features, args.backbone, ds, cache_dir=fresh(), **settings))
                for _ in range(args.repeat)), key=lambda r: r[0])  # fmt: skip
    rows.append(("no cluster", best[0], None, None, None))
    for w in [int(x) for x in args.workers.split(",")]:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), connect("local", w) as client:
            client.run(_warm)
            start = time.perf_counter() - t0
            runs = [_timed(lambda: quiet(extract_features, args.backbone, ds, cache_dir=fresh(), cluster=client,
                                         shard_size=shard, **settings)) for _ in range(args.repeat)]  # fmt: skip
            wall, fs = min(runs, key=lambda r: r[0])
            rows.append((f"{w} worker{'s' if w > 1 else ''}", wall, fs.info["seconds"]["assemble"],
                         fs.info["cluster"]["shards"], start))  # fmt: skip

    single = rows[0][1]
    print(f"{'run':<12} {'wall s':>8} {'img/s':>8} {'speed-up':>9} {'shards':>7} {'assembly s':>11} "
          f"{'of wall':>8} {'cluster start s':>16}")  # fmt: skip
    for name, wall, asm, shards, start in rows:
        extra = (f"{shards:>7} {asm:>11.2f} {asm / wall:>8.1%} {start:>16.1f}" if asm is not None
                 else f"{'':>7} {'':>11} {'':>8} {'':>16}")  # fmt: skip
        print(f"{name:<12} {wall:>8.2f} {n / wall:>8.1f} {single / wall:>8.2f}x {extra}")
    shutil.rmtree(root, ignore_errors=True)


def assembly_rate(rows: int, dim: int, shard: int = 10_000) -> None:
    """Time :func:`featx.shards.assemble` alone: shard files of random float32 in, one feature file out."""
    import h5py

    from featx import cache, shards

    root = Path(tempfile.mkdtemp(prefix="bench-assembly-"))
    settings = {"backbone": "bench", "rows": rows, "dim": dim}
    path = cache.feature_path(settings, root)
    folder = shards.shard_dir(path)
    folder.mkdir(parents=True)
    key = cache.feature_key(settings)
    sizes = {"train": rows - rows // 6, "test": rows // 6}
    plan = shards.plan(sizes, shard)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((shard, dim), dtype=np.float32)
    for split, a, b in plan:
        with h5py.File(shards.shard_path(folder, split, a, b), "w") as f:
            f["X"], f["y"] = block[: b - a], np.zeros(b - a, np.int64)
            f.attrs.update(key=key, complete=True)
    t0 = time.perf_counter()
    shards.assemble(path, settings, {}, sizes, folder, plan, key, "float32")
    sec = time.perf_counter() - t0
    gb = rows * dim * 4 / 1e9
    print(f"assembly of {rows} rows x {dim} float32 ({gb:.2f} GB) from {len(plan)} shard files: {sec:.2f} s, "
          f"{gb / sec:.2f} GB/s, {rows / sec:,.0f} rows/s")  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _warm():
    # isort: off
    import featx  # noqa: F401
    import keras

    # isort: on

    keras.ops.zeros(1)
    return True


if __name__ == "__main__":
    sys.exit(main())
