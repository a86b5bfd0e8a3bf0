"""Extraction throughput, peak memory and efficiency against the machine's matmul ceiling.

Run:  python benchmarks/bench_extract.py [--quick]

For each backbone, size and batch size it builds the featx extraction model
(random weights: the arithmetic is the same as with ImageNet weights), runs
uint8 CIFAR-sized images through it, and prints images/s and achieved GFLOP/s
as a fraction of the single-precision matmul GFLOP/s that numpy reaches on
this machine in the same run. It then runs the whole `extract_features` path
on 1x and 4x the images in fresh processes and prints peak RSS for each
(memory must not grow with the number of images).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def sgemm_ceiling(n: int = 2048, reps: int = 10) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def flops_per_image(model) -> float:
    """Multiply-adds x 2 of every Conv2D and Dense layer, nested models included."""
    import keras

    total = 0.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            h, w, cout = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += 2 * h * w * cout * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def measure(backbone: str, size: int, batch: int, n_images: int) -> tuple[float, float]:
    import keras

    from featx.backbones import build_extractor
    from featx.spec import FeatureSpec
    from featx.trunk import build_trunk_classifier

    trunk = build_trunk_classifier(5) if backbone == "trunk" else None
    model = build_extractor(FeatureSpec(backbone, weights="none", size=size), trunk_model=trunk)
    base = model if backbone == "trunk" else model.get_layer(backbone if backbone == "vgg19" else "resnet50")
    if backbone == "trunk":
        flops = flops_per_image(trunk) - 2 * 800 * 128 - 2 * 128 * 5  # embedding layers only
    else:
        flops = flops_per_image(base)
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    model.predict_on_batch(x)  # compile
    model.predict_on_batch(x)
    n_batches = max(2, n_images // batch)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model.predict_on_batch(x)
    dt = time.perf_counter() - t0
    keras.backend.clear_session()
    return n_batches * batch / dt, flops


RSS_CHILD = """
import os, resource, sys, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from featx.data import Dataset
from featx.extract import extract_features
n = int(sys.argv[1])
rng = np.random.default_rng(0)
X = np.lib.format.open_memmap(sys.argv[2] + "/X.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
for i in range(0, n, 4096):
    X[i:i + 4096] = rng.integers(0, 256, X[i:i + 4096].shape, dtype=np.uint8)
X.flush(); del X
X = np.load(sys.argv[2] + "/X.npy", mmap_mode="r")
y = np.arange(n) % 10
ds = Dataset("synthetic", X, y, X[:64], y[:64], tuple("abcdefghij"), f"rss{n}")
extract_features("resnet50", ds, weights="none", size=64, batch_size=64, cache_dir=sys.argv[2], progress=False)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
"""


def peak_rss(n: int) -> float:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(n), tmp], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS runs")
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    ceiling = sgemm_ceiling()
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cpus  keras {keras.__version__} ({keras.backend.backend()}) tf {tf.__version__}")
    print(f"numpy sgemm ceiling: {ceiling:.1f} GFLOP/s (2048x2048 float32 matmul)")
    configs = [("trunk", 32, 256, 8192), ("vgg19", 224, 32, 64), ("resnet50", 224, 32, 192)]
    if not args.quick:
        configs += [("vgg19", 224, 16, 64), ("vgg19", 224, 64, 128), ("vgg19", 112, 32, 256),
                    ("vgg19", 64, 64, 1024), ("resnet50", 224, 16, 192), ("resnet50", 224, 64, 256),
                    ("resnet50", 112, 32, 512), ("resnet50", 64, 64, 1024)]  # fmt: skip
    print(f"{'backbone':<9} {'size':>4} {'batch':>5} {'img/s':>9} {'GFLOP/img':>9} {'GFLOP/s':>8} {'of ceiling':>10}")
    for backbone, size, batch, n in [] if args.memory_only else configs:
        ips, flops = measure(backbone, size, batch, n)
        gf = ips * flops / 1e9
        print(f"{backbone:<9} {size:>4} {batch:>5} {ips:>9.1f} {flops / 1e9:>9.3f} {gf:>8.1f} {gf / ceiling:>10.0%}",
              flush=True)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for n in (2000, 8000, 32000):
        print(f"extract_features resnet50@64, {n} images: peak RSS {peak_rss(n):.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
