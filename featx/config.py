"""Where featx keeps what it computes."""

import os
from pathlib import Path

#: Environment variable that overrides the default cache directory.
CACHE_ENV = "FEATX_CACHE_DIR"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the cache directory: ``path``, else ``$FEATX_CACHE_DIR``, else ``./cache``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or "cache"
    return Path(path).expanduser()
