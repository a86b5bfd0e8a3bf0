"""Where featx keeps what it computes."""

import os
from pathlib import Path

#: Environment variable that overrides the default cache directory.
CACHE_ENV = "FEATX_CACHE_DIR"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the cache directory: ``path``, else ``$FEATX_CACHE_DIR``, else ``./cache``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or "cache"
    if not str(path).strip():
        from .errors import SettingsError

        raise SettingsError("The cache folder is empty (''): name a folder, e.g. --cache-dir cache (the default).")
    return Path(path).expanduser()


def slug(name: str) -> str:
    """``name`` as part of a file name: the last part of a path, letters, digits, ``-`` and ``_``
    kept, anything else ``_``, at most 40 characters (never empty). The one rule of every file
    featx names after a backbone, a dataset or a head.

    >>> slug("/data/my photos.v2"), slug("cifar10"), slug("")
    ('my_photos_v2', 'cifar10', 'x')
    """
    name = str(name)
    name = Path(name).name if ("/" in name or os.sep in name) else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "x"
