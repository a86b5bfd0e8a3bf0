"""The process featx runs in: the backend's start-up output, and what the hardware offers.

TensorFlow prints its native start-up lines ("Could not find cuda drivers",
the oneDNN and CPU-instruction notices, "All log messages before
absl::InitializeLog()") straight to file descriptor 2, before Python's
logging exists, and ``TF_CPP_MIN_LOG_LEVEL`` does not reach all of them.
:func:`quiet_backend_start` makes the first ``import tensorflow`` of the process
write into a temporary file instead and passes on every line of it that is not
one of those notices, so real errors still show.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import threading

import numpy as np

#: Lines TensorFlow prints at start-up that say nothing about the user's work.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\)"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_(platform|executor|diagnostics|dnn|fft|blas)\.cc"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|cpu_feature_guard\.cc"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|oneDNN custom operations are on"
    r"|TF-TRT Warning: Could not find TensorRT"
)


@contextlib.contextmanager
def filtered_native_stderr(noise: re.Pattern = STARTUP_NOISE):
    """Send what is written to file descriptor 2 (by Python or native code) to a
    temporary file, then write its lines that do not match ``noise`` to stderr."""
    fd = 2  # where native code writes, whatever sys.stderr is now
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(True) if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        for finder in [f for f in sys.meta_path if isinstance(f, _QuietFinder)]:
            sys.meta_path.remove(finder)  # the first import only
        with filtered_native_stderr():
            self._loader.exec_module(module)
            # The CUDA probe of the first device query prints too: do it here, once.
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader, until it is
    imported. A look-up that imports nothing (``importlib.util.find_spec``, as PyTorch's
    compiler does for many modules) leaves it in place for the real import."""

    _looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the other finders, not this one again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_backend_start() -> None:
    """Silence TensorFlow's start-up lines in this process (and in the processes it
    starts, through ``TF_CPP_MIN_LOG_LEVEL``), if TensorFlow is not imported yet.

    Warnings and errors that are not start-up notices still reach stderr.
    ``FEATX_QUIET_START=0`` in the environment leaves TensorFlow's output as it is.
    """
    if os.environ.get("FEATX_QUIET_START", "1") == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


# ---------------------------------------------------------------------------
# What the hardware offers: the device, its precision, the batch size it takes.

#: The precisions a backbone can run in; "auto" picks one by the hardware.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

#: CPU flags that mean native bfloat16 arithmetic (x86 AVX-512 BF16 / AMX, Arm BF16).
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def hardware_report() -> dict:
    """What the Keras backend runs on: ``{"device": "gpu"|"cpu", "name", "compute_capability",
    "memory_bytes", "cpu_flags"}`` (GPU fields None on a CPU)."""
    import keras

    report = {"device": "cpu", "name": None, "compute_capability": None, "memory_bytes": None,
              "cpu_flags": sorted(cpu_flags() & {"avx2", "fma", "avx512f", *_CPU_BF16_FLAGS})}  # fmt: skip
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            dev = jax.devices()[0]
            if dev.platform == "gpu":
                stats = dev.memory_stats() or {}
                report.update(device="gpu", name=dev.device_kind, memory_bytes=stats.get("bytes_limit"),
                              compute_capability=_cc(getattr(dev, "compute_capability", None)))  # fmt: skip
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                report.update(device="gpu", name=props.name, memory_bytes=props.total_memory,
                              compute_capability=(props.major, props.minor))  # fmt: skip
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                report.update(device="gpu", name=details.get("device_name"),
                              compute_capability=_cc(details.get("compute_capability")))  # fmt: skip
    except Exception:  # noqa: BLE001 - a probe that fails means: run as on a CPU
        pass
    return report


def _cc(value):
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(int(p) for p in value.split("."))
    return tuple(value)


def auto_precision(report: dict) -> tuple[str, str]:
    """The precision "auto" means on the hardware of ``report`` (:func:`hardware_report`),
    and why: bfloat16 on GPUs that compute in it natively (compute capability 8.0 and up),
    float32 on every other GPU and on every CPU.

    A CPU with native bfloat16 (AVX512_BF16, AMX) runs the ImageNet backbones about twice
    as fast in it (BENCHMARKS.md), but "auto" keeps float32 there: so the features, and
    the cache keys, of a CPU are the same on every CPU, and a cache made on one machine
    is found on the next. ``precision="bfloat16"`` asks for the speed.
    """
    if report.get("device") == "gpu":
        cc = report.get("compute_capability")
        if cc is not None and tuple(cc) >= (8, 0):
            return "bfloat16", f"{report.get('name') or 'GPU'} computes in bfloat16 natively"
        return "float32", f"{report.get('name') or 'this GPU'} has no native bfloat16"
    flags = set(report.get("cpu_flags") or ())
    if flags & _CPU_BF16_FLAGS:
        return "float32", ("float32 on every CPU, for the same features everywhere; this one computes in "
                           "bfloat16 natively: --precision bfloat16 is faster here")  # fmt: skip
    return "float32", "this CPU has no native bfloat16"


_REPORT: dict | None = None


def this_machine() -> dict:
    """:func:`hardware_report` of this process, probed once."""
    global _REPORT
    if _REPORT is None:
        _REPORT = hardware_report()
    return _REPORT


def describe_device(report: dict | None = None) -> str:
    r = this_machine() if report is None else report
    if r["device"] == "gpu":
        mem = f", {r['memory_bytes'] / 2**30:.0f} GiB" if r.get("memory_bytes") else ""
        return f"GPU {r.get('name') or '?'}{mem}"
    return f"CPU ({' '.join(r.get('cpu_flags') or []) or 'no avx2'})"


def compilation(model) -> str:
    """How the backend runs ``model.predict_on_batch``: "XLA" or "graph" (TensorFlow),
    "jit" (JAX), "torch.compile" or "eager" (PyTorch).

    featx keeps Keras's own choice (``jit_compile="auto"``): XLA on TensorFlow only where
    there is a GPU, always jit on JAX, eager on PyTorch. On a CPU, XLA is not worth it for
    TensorFlow: ``benchmarks/bench_extract.py --compile`` measured it 1.07-1.12x for
    VGG19/ResNet50 at 224 but 0.86x for the trunk and 0.13x for ResNet50 at 64 (BENCHMARKS.md).
    """
    import keras

    jit = bool(getattr(model, "jit_compile", False))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return "XLA" if jit else "graph"
    if backend == "torch":
        return "torch.compile" if jit else "eager"
    return "jit" if jit else "eager"


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build Keras layers under ``precision``: float32, or the mixed policy of bfloat16/float16
    (variables stay float32, the arithmetic runs in the lower precision)."""
    import keras

    if precision == "float32":
        yield
        return
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


#: Batch size "auto" on a CPU: past this, larger batches only add memory.
CPU_BATCH = 32


_SEEDED = threading.Lock()


@contextlib.contextmanager
def seeded_build(seed: int):
    """Build Keras layers reproducibly from ``seed``, also with other threads in the process.

    ``keras.utils.set_random_seed`` seeds Python's global ``random``, from which
    Keras draws the seed of every initializer not given one. Other threads that
    use ``random`` meanwhile (a Dask worker's event loop does) would shift those
    draws and so the weights. Inside this block Keras draws them from a private
    generator seeded alike: the same weights as in a quiet process, whatever
    the other threads do. Builds take turns.
    """
    import random

    import keras

    try:
        from keras.src.random import seed_generator as _sg
    except ImportError:  # another Keras layout: seed as usual
        _sg = None
    with _SEEDED:
        saved = getattr(_sg, "python_random", None)
        keras.utils.set_random_seed(seed)
        if saved is not None:
            _sg.python_random = random.Random(seed)
        try:
            yield
        finally:
            if saved is not None:
                _sg.python_random = saved


def auto_batch_size(size: int, report: dict | None = None) -> int:
    """Images per forward pass for "auto": 32 on a CPU; on a GPU, by its memory and the
    input side (256 images of 224x224 per 16 GiB, more for smaller inputs), at most 4096."""
    r = this_machine() if report is None else report
    if r["device"] != "gpu":
        return CPU_BATCH
    gib = (r.get("memory_bytes") or 16 * 2**30) / 2**30
    n = 256 * (gib / 16) * (224 / max(size, 32)) ** 2
    return int(min(4096, max(32, 2 ** int(np.log2(n)))))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's out-of-memory error (TensorFlow's ResourceExhaustedError,
    XLA's RESOURCE_EXHAUSTED, PyTorch's OutOfMemoryError)."""
    name = type(exc).__name__
    text = str(exc)[:2000]
    return (name in ("ResourceExhaustedError", "OutOfMemoryError")
            or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())  # fmt: skip
