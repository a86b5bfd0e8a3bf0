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
        with filtered_native_stderr():
            self._loader.exec_module(module)
            # The CUDA probe of the first device query prints too: do it here, once.
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, through the other finders, and wraps its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_backend_start() -> None:
    """Silence TensorFlow's start-up lines in this process (and in the processes it
    starts, through ``TF_CPP_MIN_LOG_LEVEL``), if TensorFlow is not imported yet.

    Warnings and errors that are not start-up notices still reach stderr.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())
