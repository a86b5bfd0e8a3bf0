"""Keep the device busy: the host prepares the next batch and writes the last one
while the model runs the current one.

- :func:`prefetch` runs a generator in a background thread, a bounded number of
  items ahead (so memory stays flat), and re-raises its errors in the consumer.
- :class:`BackgroundWriter` calls a write function in a background thread, in
  order, from a bounded queue; a failed write is raised in the producer at its
  next ``put`` or at the end, and leaving the block waits for every queued write.
- :func:`decode_pool` decodes image files on the machine's cores.

The model itself runs in the calling thread: the backends keep their own thread
pools, and a compiled function is best called from one thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Yield the items of ``items``, produced in a background thread at most ``depth`` ahead.

    An exception raised while producing an item is raised here, in place of that
    item. Closing the returned generator (or leaving a ``for`` loop early) stops
    the producer after the item it is working on.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(_Failure(exc))

    thread = threading.Thread(target=produce, name="featx-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class BackgroundWriter:
    """``with BackgroundWriter(write) as w: w.put(*args)``: ``write(*args)`` runs in a
    background thread, in the order of the ``put`` calls, at most ``depth`` behind."""

    def __init__(self, write: Callable, depth: int = 2):
        self._write = write
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featx-writer", daemon=True)

    def _run(self):
        while True:
            args = self._q.get()
            if args is _DONE:
                return
            if self._error is None:
                try:
                    self._write(*args)
                except BaseException as exc:  # noqa: BLE001 - raised in the producer
                    self._error = exc

    def put(self, *args) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(args)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Write what is queued even when the block failed: those rows are sound, and a
        # resumed run then starts after them.
        self._q.put(_DONE)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error


def decode_pool(workers: int | None = None) -> ThreadPoolExecutor:
    """A thread pool for decoding image files (Pillow releases the GIL while it decodes)."""
    return ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1), thread_name_prefix="featx-decode")
