"""Heads on large caches: wall time, peak RSS and accuracy of `compare --features FILE --heads H`, one
fresh process per head, on synthetic 10-class embeddings of width 1,024 (test rows = train rows / 5).

    python benchmarks/bench_heads_scale.py make --rows 20000 --out /tmp/emb-20000.h5
    python benchmarks/bench_heads_scale.py run --features /tmp/emb-20000.h5 --heads knn,centroid [--featx-root DIR]
    python benchmarks/bench_heads_scale.py real --cache cache/features/FILE.h5 --seeds 0,1,2
    python benchmarks/bench_heads_scale.py path --rows 65536 --rounds 3   # C="auto"'s side-by-side layer

``real``: on a real feature cache, each streaming head fitted from memory and from the file in
blocks (``featx.streaming.fit_in_blocks``), interleaved, per seed: test accuracy and seconds.

``--featx-root`` runs another checkout of featx (its cli.py, with it first on the path), so that two
versions are measured on the same file, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make(rows: int, out: Path, width: int = 1024, classes: int = 10, dtype: str = "float32", seed: int = 0,
         test_rows: int | None = None) -> None:  # fmt: skip
    """``rows`` train and ``test_rows`` (default ``rows // 5``) test rows: class centres plus noise,
    written in blocks."""
    import h5py

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, width)).astype(np.float32)
    with h5py.File(out, "w") as f:
        for split, n in (("train", rows), ("test", rows // 5 if test_rows is None else test_rows)):
            X = f.create_dataset(f"X_{split}", (n, width), dtype=dtype)
            y = rng.integers(0, classes, n)
            f[f"y_{split}"] = y
            for a in range(0, n, 50_000):
                b = min(n, a + 50_000)
                X[a:b] = (centers[y[a:b]] + rng.normal(scale=4.0, size=(b - a, width))).astype(dtype)
        f["class_names"] = np.array([f"c{i}" for i in range(classes)], dtype="S")


def run(features: Path, head: str, root: Path, extra: list[str] = (), cgroup: Path | None = None) -> dict:
    """One head in a fresh process: seconds, peak RSS (GNU time) and accuracy. ``cgroup``: a
    memory cgroup (v1) folder the process joins first, whose limit it then runs under."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(root))
        cmd = ["/usr/bin/time", "-v", sys.executable, str(root / "cli.py"), "compare", "--features", str(features),
               "--heads", head, "--reports-dir", tmp, "--n-jobs", "1", *extra]  # fmt: skip
        if cgroup is not None:
            cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return {"head": head, "error": res.stderr[-600:]}
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) / 1024
    acc = re.search(rf"\s{re.escape(head)}\s+(\d+\.\d+)%", res.stdout)
    return {"head": head, "seconds": round(seconds, 1), "peak_rss_mib": round(rss),
            "accuracy": float(acc.group(1)) / 100 if acc else None}  # fmt: skip


def real(cache: Path, seeds: list[int], heads: list[str], block_rows: int) -> None:
    from featx.cache import read_features
    from featx.heads import make_head
    from featx.streaming import fit_in_blocks, predict_in_blocks

    fs = read_features(cache, check=False)
    X_train, y_train, X_test, y_test = fs.load()
    for seed in seeds:
        for head in heads:
            params = {"random_state": seed} if "random_state" in make_head(head).get_params() else {}
            for mode in ("memory", "blocks"):
                t0 = time.perf_counter()
                if mode == "memory":
                    est = make_head(head, **params).fit(X_train, y_train)
                    pred = est.predict(X_test)
                else:
                    with fs.open() as (Xtr, ytr, Xte, _):
                        est = fit_in_blocks(make_head(head, **params), Xtr, ytr, block_rows=block_rows)
                        pred = predict_in_blocks(est, Xte, block_rows=block_rows)
                acc = float(np.mean(pred == y_test))
                print(json.dumps({"head": head, "seed": seed, "mode": mode, "accuracy": round(acc, 4),
                                  "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip


def path(rows: int, width: int, rounds: int) -> None:
    """One linear layer against the 15 values of ``C="auto"``'s path side by side, trained by
    minibatch on the same random float16 rows in memory (2 epochs), interleaved: seconds."""
    from featx.heads.regularisation import PATH
    from featx.heads.sgd import Minibatch, fit_linear_in_blocks

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, rows)
    X = (rng.normal(size=(rows, width)) + np.eye(10, width)[y]).astype(np.float16)
    settings = Minibatch(epochs=2, min_steps=0)
    for r in range(rounds):
        for C in (1.0, PATH):
            t0 = time.perf_counter()
            fit_linear_in_blocks(X, y, 10, lambda a: a, loss="softmax", C=C, settings=settings, block_rows=65_536,
                                 progress=False)  # fmt: skip
            what = "one C" if np.ndim(C) == 0 else f"{len(C)} values of C"
            print(json.dumps({"round": r, "layers": what, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--rows", type=int, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    m.add_argument("--test-rows", type=int, default=None, help="default: a fifth of --rows")
    r = sub.add_parser("run")
    r.add_argument("--features", type=Path, required=True)
    r.add_argument("--heads", default="knn,centroid,logreg,dense")
    r.add_argument("--featx-root", type=Path, default=ROOT)
    r.add_argument("--cgroup", type=Path, default=None, help="a memory cgroup (v1) folder to run in")
    r.add_argument("--extra", default="", help="more compare arguments, e.g. '--stream --param knn:storage=float16'")
    q = sub.add_parser("real")
    q.add_argument("--cache", type=Path, required=True)
    q.add_argument("--seeds", default="0,1,2")
    q.add_argument("--heads", default="linear,centroid")
    q.add_argument("--block-rows", type=int, default=65_536)
    w = sub.add_parser("path")
    w.add_argument("--rows", type=int, default=65_536)
    w.add_argument("--width", type=int, default=1024)
    w.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if args.cmd == "path":
        path(args.rows, args.width, args.rounds)
        return
    if args.cmd == "real":
        real(args.cache, [int(s) for s in args.seeds.split(",")], args.heads.split(","), args.block_rows)
        return
    if args.cmd == "make":
        make(args.rows, args.out, dtype=args.dtype, test_rows=args.test_rows)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:,.0f} MB)")
        return
    for head in args.heads.split(","):
        out = run(args.features, head, args.featx_root, args.extra.split(), args.cgroup)
        print(json.dumps({"features": args.features.name, "featx": str(args.featx_root), "extra": args.extra, **out}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
