"""Decoding folders of photos: pixel-cache size, peak memory and images/s, with and without draft decoding.

Writes photo-sized JPEGs (3000x2000 and, with --mixed, other aspects: 2000x3000, 4032x3024,
1920x1080) into class folders, then

1. loads folders of each --counts size with ``featx.data.load_dataset`` in a fresh process each
   (cold pixel cache): wall time, images/s, peak RSS of that process, pixel cache on disk;
2. decodes the same photos to 256x256 (crop) with and without JPEG draft decoding, in
   interleaved rounds in one process (A, B, A, B, ...), and prints the ratio.

Usage: python benchmarks/bench_decode.py [--counts 200,1000,2000,4000] [--distinct 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = [(2000, 3000), (3000, 2000), (3024, 4032), (1080, 1920)]  # (h, w)


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    keep = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return " ".join(f for f in keep if f in flags)


def photo(h: int, w: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth shapes plus sensor-like noise (JPEG sizes like a camera's)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h // 100 + 2, w // 100 + 2, 3), dtype=np.uint8))
    arr = np.asarray(base.resize((w, h), Image.BICUBIC), dtype=np.int16)
    arr = arr + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_pool(folder: Path, distinct: int, mixed: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(distinct):
        h, w = SHAPES[i % len(SHAPES)] if mixed else SHAPES[0]
        p = folder / f"p{i:03d}.jpg"
        photo(h, w, i).save(p, quality=90)
        out.append(p)
    return out


def make_folder(root: Path, pool: list[Path], n: int) -> Path:
    """``n`` photos in two class folders: real files, copies of the distinct pool."""
    for i in range(n):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pool[i % len(pool)], d / f"{i:05d}.jpg")
    return root


_CHILD = """
import json, resource, sys, time
from featx.data import load_dataset
from featx.data.pixel_cache import disk_bytes
t0 = time.perf_counter()
ds = load_dataset(sys.argv[1], cache_dir=sys.argv[2], progress=False)
seconds = time.perf_counter() - t0
entry = ds.pixel_cache
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cache_mb": disk_bytes(entry) / 1e6,
                  "stored": ds.info["stored"], "n": len(ds.X_train) + len(ds.X_test)}))
"""


def load_in_child(folder: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(cache)], env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_rate(files: list[Path], draft: bool, threads: int) -> float:
    from featx.images import load_image

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda p: load_image(p, (256, 256), "crop", draft=draft), files):
            pass
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="200,1000,2000,4000")
    ap.add_argument("--distinct", type=int, default=40, help="distinct photos written (the rest are copies)")
    ap.add_argument("--no-mixed", action="store_true", help="3000x2000 only (default: mixed aspects)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the draft comparison")
    ap.add_argument("--draft-images", type=int, default=120)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    threads = min(4, os.cpu_count() or 1)
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; decode threads {threads}")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        tmp = Path(tmp)
        pool = make_pool(tmp / "pool", args.distinct, not args.no_mixed)
        mean_kb = np.mean([p.stat().st_size for p in pool]) / 1e3
        shapes = "3000x2000" if args.no_mixed else "mixed " + ", ".join(f"{w}x{h}" for h, w in SHAPES)
        print(f"photos: {shapes}; JPEG quality 90, {mean_kb:.0f} KB each on average")
        print(f"\n{'photos':>7} {'stored':>8} {'seconds':>8} {'img/s':>7} {'peak RSS MiB':>13} {'pixel cache MB':>15}")
        for n in counts:
            folder = make_folder(tmp / f"set{n}", pool, n)
            r = load_in_child(folder, tmp / f"cache{n}")
            print(f"{r['n']:>7} {r['stored']:>8} {r['seconds']:>8.1f} {r['n'] / r['seconds']:>7.1f} "
                  f"{r['peak_mib']:>13.0f} {r['cache_mb']:>15.1f}")  # fmt: skip
            shutil.rmtree(folder)
            shutil.rmtree(tmp / f"cache{n}")
        files = [pool[i % len(pool)] for i in range(args.draft_images)]
        rates = {True: [], False: []}
        for _ in range(args.rounds):
            for draft in (True, False):
                rates[draft].append(decode_rate(files, draft, threads))
        on, off = np.array(rates[True]), np.array(rates[False])
        print(f"\ndecode to 256x256 (crop), {len(files)} photos per round, {args.rounds} interleaved rounds:")
        print(f"  draft   {', '.join(f'{r:.1f}' for r in on)} img/s")
        print(f"  full    {', '.join(f'{r:.1f}' for r in off)} img/s")
        print(f"  ratio draft/full: {', '.join(f'{a / b:.2f}x' for a, b in zip(on, off))}")


if __name__ == "__main__":
    main()
