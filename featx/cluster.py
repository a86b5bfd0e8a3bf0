"""Dask clusters: start a local one, or connect to a running scheduler.

``cluster`` is a run option of ``extract``, ``fit`` and ``compare``:

- ``"local"`` starts a :class:`distributed.LocalCluster` of worker processes,
  one thread each (``workers`` of them; by default one per CPU core), or, on a
  machine with GPUs, one worker per GPU (``dask-cuda``'s ``LocalCUDACluster``
  when it is installed, else one worker process per GPU with
  ``CUDA_VISIBLE_DEVICES`` set to it);
- an address such as ``"tcp://10.0.0.5:8786"`` connects to a running scheduler;
- a :class:`distributed.Client` is used as it is.

This module imports dask only inside :func:`connect`: featx without a cluster
never loads it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import struct
import subprocess
from contextlib import contextmanager

from .errors import ClusterError, SettingsError

log = logging.getLogger(__name__)

#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT = 10
#: Seconds a Dask scheduler has to greet a new connection (it does at once).
GREETING_TIMEOUT = 5
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})/?$")
_HELP = "Pass 'local', a scheduler address such as tcp://host:8786, or a distributed.Client"


def is_client(obj) -> bool:
    """Whether ``obj`` is a :class:`distributed.Client` (checked without importing dask)."""
    return any(c.__name__ == "Client" and c.__module__.startswith("distributed") for c in type(obj).__mro__)


def check_cluster(cluster, workers=None) -> None:
    """Check ``cluster`` and ``workers`` without connecting to anything; raises :class:`SettingsError`."""
    if cluster is None and workers is not None:
        raise SettingsError("workers is the size of cluster='local': pass cluster='local' (--cluster local) too.")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise SettingsError(f"workers must be a positive integer. Received: workers={workers!r}")
        if cluster != "local":
            raise SettingsError(
                "workers applies to cluster='local' only: a running cluster has the workers it was started "
                f"with. Received: cluster={cluster!r}, workers={workers}"
            )
    if cluster is None or cluster == "local" or is_client(cluster):
        return
    if not isinstance(cluster, str):
        raise SettingsError(f"cluster must be a string or a distributed.Client. {_HELP}. Received: {cluster!r}")
    m = _ADDRESS.match(cluster.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise SettingsError(f"Not a Dask scheduler address: {cluster!r}. {_HELP}.")


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this machine shows (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def worker_env(n_workers: int) -> dict[str, str]:
    """Environment of local worker processes: this process's Keras backend, quiet start-up, and the
    machine's cores shared out, so that N workers do not each start a thread per core."""
    import keras

    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    return {
        "KERAS_BACKEND": keras.backend.backend(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "TF_NUM_INTRAOP_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX takes GPU memory as it needs it
    }


@contextmanager
def _worker_start_env(env: dict[str, str]):
    """Dask sets some variables in a worker before it starts (1 thread per library, and
    ``MALLOC_TRIM_THRESHOLD_=65536``, which makes a Keras forward pass ~30% slower here);
    featx workers start with its thread split instead and glibc's own malloc tuning."""
    import dask

    keep = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {k: env[k] for k in keep if k in env}}):
        yield


def gpu_cluster(gpus: list[str], **kwargs):
    """A local cluster of one worker process per GPU, each seeing only its own GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    env = worker_env(len(gpus))
    workers = {f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {**env, "CUDA_VISIBLE_DEVICES": g},
                                                     "name": f"gpu-{g}"}} for g in gpus}  # fmt: skip
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with _worker_start_env(env):
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40, **kwargs)


def _local_cluster(workers: int | None):
    import logging

    gpus = visible_gpus()
    if gpus:
        gpus = gpus[: workers or len(gpus)]
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return gpu_cluster(gpus), f"{len(gpus)} GPU workers"
        return (LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(gpus), threads_per_worker=1, dashboard_address=":0",
                                 silence_logs=logging.ERROR), f"{len(gpus)} GPU workers (dask-cuda)")  # fmt: skip
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    env = worker_env(n)
    with _worker_start_env(env):
        lc = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR, env=env)  # fmt: skip
    return lc, f"{n} CPU worker{'s' if n > 1 else ''}"


@contextmanager
def connect(cluster, workers: int | None = None):
    """A :class:`distributed.Client` for ``cluster`` (see the module's doc), or None for
    no cluster; what this started (a local cluster, a connection) is closed on exit.
    Prints where the cluster is and its dashboard."""
    check_cluster(cluster, workers)
    if cluster is None or is_client(cluster):
        yield cluster
        return
    try:
        import distributed
    except ImportError:
        raise ClusterError("A cluster needs Dask: pip install 'featx[dask]'.") from None
    if cluster == "local":
        with _kept_environ():  # dask sets OMP_NUM_THREADS=1 and more in this process to start its workers
            lc, what = _local_cluster(workers)
        with _closed_quietly() as closing, lc, distributed.Client(lc) as client, _kept_environ():
            _announce(client, f"local Dask cluster, {what}")
            try:
                yield client
            finally:
                _quiet_shutdown(client)
                closing()
        return
    address = cluster.strip().rstrip("/")
    greet(address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, MemoryError, OverflowError) as exc:
        raise ClusterError(
            f"No Dask scheduler answered at {address} within {CONNECT_TIMEOUT} s ({exc.__class__.__name__}). "
            "Check the address and that `dask scheduler` runs there, or use --cluster local."
        ) from None
    with client:
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            log.warning(f"the scheduler at {address} has no workers yet: tasks wait for one")
        _announce(client, f"Dask scheduler {address}, {n} worker{'s' if n != 1 else ''}")
        yield client


def greet(address: str, timeout: float = GREETING_TIMEOUT) -> None:
    """Check that a Dask scheduler listens at a ``tcp://`` address before handing it to Dask.

    A Dask scheduler speaks first: a message's 8-byte length as soon as a connection is
    made. Something else (a web server) says nothing, or something else, and Dask would wait
    on it for minutes or read its bytes as a length of exabytes: one line here instead.
    """
    m = _ADDRESS.match(address)
    if m is None or address.split("://")[0] not in ("tcp", address):  # tls, ucx, ...: left to Dask
        return
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise ClusterError(
            f"No Dask scheduler answered at {address} within {CONNECT_TIMEOUT} s ({exc.__class__.__name__}). Check "
            "the address and that `dask scheduler` runs there, or use --cluster local."
        ) from None
    with sock:
        sock.settimeout(timeout)
        first = b""
        try:
            while len(first) < 8:
                chunk = sock.recv(8 - len(first))
                if not chunk:
                    break
                first += chunk
        except OSError:  # a timeout included
            pass
    if len(first) < 8 or struct.unpack("<Q", first)[0] > 2**32:
        raise ClusterError(
            f"Something listens at {address}, but it is not a Dask scheduler (it did not greet as one within "
            f"{timeout:g} s). Check the address and port (a scheduler's is 8786 by default), or use --cluster local."
        )


def _quiet_shutdown(client) -> None:
    """Before a local cluster closes: its worker processes log nothing below CRITICAL.

    Closing races in Dask: a worker's heartbeat can reach a scheduler that has just closed,
    and the worker logs that as an ERROR with a traceback, after featx's work has finished
    and succeeded. Errors during the work itself still show (they also reach the client as
    the task's exception)."""
    import logging

    def quiet():
        logging.getLogger("distributed").setLevel(logging.CRITICAL)

    try:  # the workers; the nannies, in this process, are quieted by _closed_quietly while they close
        client.run(quiet, on_error="ignore")
    except Exception:  # noqa: BLE001 - a cluster already gone has nothing left to log
        pass


@contextmanager
def _closed_quietly():
    """A switch that quiets Dask's loggers in this process (the scheduler's, the client's and
    the nannies' of a local cluster) while the cluster featx started closes, and gives them back
    their levels once it has closed.

    Closing a local cluster on a busy machine, a nanny may wait longer than its few seconds
    for its worker process to exit, and logs ``Worker process still alive after 4.0 seconds,
    killing``: after featx's work has finished and succeeded, nothing for the user to act on.
    Only the close is quieted; what Dask logs during the work still shows."""
    saved: dict[str, int] = {}

    def quiet() -> None:
        names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
        for name in names:
            logger = logging.getLogger(name)
            saved.setdefault(name, logger.level)
            logger.setLevel(logging.CRITICAL)

    try:
        yield quiet
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _kept_environ():
    saved = dict(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - set(saved):
            del os.environ[k]
        os.environ.update(saved)


def _announce(client, what: str) -> None:
    try:
        import bokeh  # noqa: F401

        dash = f"dashboard {client.dashboard_link}"
    except ImportError:
        dash = "dashboard: pip install bokeh to see one"
    log.info(f"{what}; {dash}")


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))
