"""Extraction throughput, peak memory and efficiency against the machine's matmul ceiling.

Run:  python benchmarks/bench_extract.py [--quick] [--precisions float32,bfloat16] [--compile]
      [--only resnet50@224:32,vgg19@64] [--e2e-scale 5] [--no-memory | --memory-only]
      (any Keras backend: KERAS_BACKEND=jax on a machine without TensorFlow)

For each backbone, size, batch size and precision it builds the featx extraction
model (random weights: the arithmetic is the same as with ImageNet weights) and
prints two rates: model-only (the compiled model, warm, batches already on the
host) and end-to-end (`extract_features` on --e2e-scale times as many images:
dataset in, HDF5 file out, with the overlapped prefetch and writer, building
the model and its first traced call included; "extra s" is the time it took
beyond what the model-only rate needs for the same images),
their ratio, and the achieved GFLOP/s as a fraction of the single-precision
matmul GFLOP/s that numpy reaches on this machine in the same run. With
--compile (TensorFlow), each row is also run with XLA (`jit_compile=True`),
model-only, to compare with Keras's choice. It then runs `extract_features` on
2k, 8k and 32k images in fresh processes and prints peak RSS for each (memory
must not grow with the number of images).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


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


def measure(backbone: str, size: int, batch: int, n_images: int, precision: str = "float32",
            n_e2e: int = 0, xla: bool = False):  # fmt: skip
    """(model-only img/s, how it was compiled, (end-to-end img/s, seconds, images) or None, FLOP per image).
    ``xla``: run the model with ``jit_compile=True`` (TensorFlow's XLA) instead of Keras's choice."""
    import keras

    from featx.backbones.trunk import build_trunk_classifier, embedding_weights
    from featx.extractor import build_extractor
    from featx.runtime import compilation
    from featx.spec import FeatureSpec

    trunk = build_trunk_classifier(5) if backbone == "trunk" else None
    spec = FeatureSpec(backbone, weights="none", size=size, precision=precision)
    model = build_extractor(spec, state={"trunk_weights": embedding_weights(trunk)} if trunk else None)
    base = model if backbone == "trunk" else next(la for la in model.layers if isinstance(la, keras.Model))
    if backbone == "trunk":
        flops = flops_per_image(trunk) - 2 * 800 * 128 - 2 * 128 * 5  # embedding layers only
    else:
        flops = flops_per_image(base)
    if xla:
        model.jit_compile = True
    compiled = compilation(model)
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    model.predict_on_batch(x)  # compile
    model.predict_on_batch(x)
    n_batches = max(2, n_images // batch)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model.predict_on_batch(x)
    dt = time.perf_counter() - t0
    model_rate = n_batches * batch / dt
    keras.backend.clear_session()
    e2e = end_to_end(spec, batch, max(n_e2e // batch, 1) * batch) if n_e2e else None
    return model_rate, compiled, e2e, flops


def end_to_end(spec, batch: int, n: int) -> tuple[float, float, int]:
    """(img/s, seconds, images) of extract_features over n in-memory images (train) + one batch
    (test), HDF5 out."""
    import tempfile

    from featx import extract
    from featx.data import Dataset

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 5
    with tempfile.TemporaryDirectory() as tmp:
        ds = Dataset("synthetic", X[:batch], y[:batch], X[:batch], y[:batch], tuple("abcde"), f"warm{n}")
        extract.extract_features(spec, ds, batch_size=batch, cache_dir=tmp, progress=False)  # build + compile
        ds = Dataset("synthetic", X, y, X[:batch], y[:batch], tuple("abcde"), f"bench{n}")
        t0 = time.perf_counter()
        extract.extract_features(spec, ds, batch_size=batch, cache_dir=tmp, progress=False)
        total = time.perf_counter() - t0
        return (n + batch) / total, total, n + batch


RSS_CHILD = """
import os, resource, sys, numpy as np
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
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--precisions", default="float32,bfloat16", help="comma-separated (trunk: float32 only)")
    parser.add_argument("--e2e-scale", type=int, default=5, help="end-to-end runs on this many times the model-only images")
    parser.add_argument("--compile", action="store_true", help="TensorFlow: also time each model with XLA")
    parser.add_argument("--only", default="", help="comma-separated BACKBONE@SIZE[:BATCH] of the full list, e.g. resnet50@64")
    args = parser.parse_args()
    import contextlib
    import io

    # isort: off
    import featx  # noqa: F401  (before Keras: its backend's start-up lines stay quiet)
    import keras

    # isort: on

    from featx.runtime import auto_precision, describe_device, this_machine

    ceiling = sgemm_ceiling()
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cpus  keras {keras.__version__} ({keras.backend.backend()})")
    auto, why = auto_precision(this_machine())
    print(f"device: {describe_device()}; precision auto here: {auto} ({why})")
    print(f"numpy sgemm ceiling: {ceiling:.1f} GFLOP/s (2048x2048 float32 matmul)")
    configs = [("trunk", 32, 256, 8192), ("vgg19", 224, 32, 64), ("resnet50", 224, 32, 192)]
    if not args.quick or args.only:
        configs += [("vgg19", 224, 16, 64), ("vgg19", 224, 64, 128), ("vgg19", 112, 32, 256),
                    ("vgg19", 64, 64, 1024), ("resnet50", 224, 16, 192), ("resnet50", 224, 64, 256),
                    ("resnet50", 112, 32, 512), ("resnet50", 64, 64, 1024)]  # fmt: skip
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        configs = [c for c in configs if f"{c[0]}@{c[1]}" in wanted or f"{c[0]}@{c[1]}:{c[2]}" in wanted]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    xla = args.compile and keras.backend.backend() == "tensorflow"
    print(f"{'backbone':<9} {'size':>4} {'batch':>5} {'precision':>9} {'compiled':>8} {'model img/s':>11} "
          f"{'e2e img/s':>9} {'e2e/model':>9} {'extra s':>7} {'GFLOP/img':>9} {'GFLOP/s':>8} {'of ceiling':>10} "
          f"{'vs':>12}")  # fmt: skip
    for backbone, size, batch, n in [] if args.memory_only else configs:
        base = None
        for precision in precisions if backbone != "trunk" else ["float32"]:
            keras_choice, keras_compiled = 1.0, ""  # the row without XLA, run first
            for with_xla in (False, True) if xla else (False,):
                with contextlib.redirect_stdout(io.StringIO()):  # extract's own lines
                    ips, compiled, e2e, flops = measure(backbone, size, batch, n, precision,
                                                        0 if with_xla else n * args.e2e_scale, with_xla)  # fmt: skip
                gf = ips * flops / 1e9
                if with_xla:
                    vs, e2e_cols = f"{ips / keras_choice:.2f}x {keras_compiled}", f"{'-':>9} {'-':>9} {'-':>7}"
                else:
                    base = ips if base is None else base
                    keras_choice, keras_compiled = ips, compiled
                    rate, seconds, images = e2e
                    extra = seconds - images / ips
                    vs, e2e_cols = f"{ips / base:.2f}x f32", f"{rate:>9.1f} {rate / ips:>9.0%} {extra:>7.1f}"
                print(f"{backbone:<9} {size:>4} {batch:>5} {precision:>9} {compiled:>8} {ips:>11.1f} {e2e_cols} "
                      f"{flops / 1e9:>9.3f} {gf:>8.1f} {gf / ceiling:>10.0%} {vs:>12}", flush=True)  # fmt: skip
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for n in () if args.no_memory else (2000, 8000, 32000):
        print(f"extract_features resnet50@64, {n} images: peak RSS {peak_rss(n):.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
