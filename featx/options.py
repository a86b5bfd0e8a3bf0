"""How and where to run: :class:`RunOptions`, one settings object every entry point shares.

:class:`~featx.spec.FeatureSpec` says what the features are; ``RunOptions``
says how and where they are made (batch size, seed, cache folder, recompute or
not, progress bars, how long to wait for another process, the Dask cluster).
``extract_features``, ``fit_head``, ``compare`` and ``predict_files`` take
``options=RunOptions(...)``, or the same names as keyword arguments, and hand
the one object on, so that an option given at the top reaches every step.

>>> opts = RunOptions(batch_size=64, seed=1)
>>> opts.replace(force=True).force, opts.batch_size
(True, 64)
>>> RunOptions(batch_size=0)
Traceback (most recent call last):
...
featx.errors.SettingsError: batch_size must be a positive integer or 'auto'. Received: batch_size=0
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError, SettingsError


@dataclass(frozen=True)
class RunOptions:
    """How and where features are made and heads fitted (not what they are).

    Parameters
    ----------
    batch_size : int or "auto", default="auto"
        Images per forward pass. "auto": 32 on a CPU, on a GPU by its memory; a
        batch that does not fit is halved (saying so) and the run goes on.
    seed : int, default=0
        Seed of the data splits, of random weights and of the trunk's training.
    cache_dir : path, optional
        Cache folder (default ``./cache`` or ``$FEATX_CACHE_DIR``).
    force : bool, default=False
        Recompute features even if a complete cache exists.
    progress : bool, optional
        Progress bars (default: when on a terminal).
    lock_timeout : float, optional
        Seconds to wait for another process making the same features (default: until it is done).
    cluster : "local", str or distributed.Client, optional
        Run on a Dask cluster (:mod:`featx.cluster`): "local" starts one here,
        an address such as "tcp://host:8786" connects to a running scheduler.
    workers : int, optional
        Worker processes of ``cluster="local"`` (default: one per core).
    shard_size : int or "auto", default="auto"
        Images per Dask task ("auto": about 4 shards per worker, 256 to 10,000).
    """

    batch_size: int | str = "auto"
    seed: int = 0
    cache_dir: str | os.PathLike | None = None
    force: bool = False
    progress: bool | None = None
    lock_timeout: float | None = None
    cluster: object = None
    workers: int | None = None
    shard_size: int | str = "auto"

    def __post_init__(self):
        _positive_or_auto("batch_size", self.batch_size)
        _positive_or_auto("shard_size", self.shard_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise SettingsError(f"seed must be an integer from 0 to 2**32-1. Received: seed={self.seed!r}")
        if not isinstance(self.force, (bool, np.bool_)):
            raise SettingsError(f"force must be True or False. Received: force={self.force!r}")
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise SettingsError(f"progress must be True, False or None. Received: progress={self.progress!r}")
        t = self.lock_timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0):
            raise SettingsError(f"lock_timeout must be a number of seconds (0 or more) or None. Received: {t!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise SettingsError(f"cache_dir must be a folder path. Received: cache_dir={self.cache_dir!r}")
        if self.cluster is not None or self.workers is not None:
            from .cluster import check_cluster

            check_cluster(self.cluster, self.workers)

    def replace(self, **changes) -> RunOptions:
        """A copy with ``changes`` (checked again)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)


#: The names of the run options (the keyword arguments every entry point takes besides the feature settings).
NAMES = tuple(f.name for f in dataclasses.fields(RunOptions))


def _positive_or_auto(name: str, value) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SettingsError(f"{name} must be a positive integer or 'auto'. Received: {name}={value!r}")


def _check_names(fields: Mapping) -> None:
    unknown = [k for k in fields if k not in NAMES]
    if unknown:
        raise ArgumentError(f"Unknown run option {unknown[0]!r}. The run options are: {', '.join(NAMES)}.")


def as_options(options: RunOptions | None = None, **changes) -> RunOptions:
    """The options an entry point works with: ``options`` (default ``RunOptions()``) with ``changes``.

    >>> as_options(seed=3).seed, as_options(RunOptions(seed=3), batch_size=8).seed
    (3, 3)
    """
    if options is not None and not isinstance(options, RunOptions):
        raise ArgumentError(f"options must be a RunOptions. Received: {options!r}")
    options = options or RunOptions()
    return options.replace(**changes) if changes else options


def split_kwargs(kwargs: Mapping) -> tuple[dict, dict]:
    """``(feature settings, run options)`` of the keyword arguments of an entry point."""
    run = {k: v for k, v in kwargs.items() if k in NAMES}
    return {k: v for k, v in kwargs.items() if k not in NAMES}, run
