"""Exceptions raised by featx.

Every featx error says what was wrong and what to do about it; the CLI prints
the message alone, without a traceback, and exits with code 2. Any other
exception is a bug in featx: the CLI says so, writes its traceback to a file
and exits with code 1 (see :func:`featx.cli.main`).
"""


class FeatxError(Exception):
    """Base class of the errors featx raises on bad input or a bad state."""


class ArgumentError(FeatxError, TypeError):
    """An argument of a featx function is of the wrong type (a Python caller's mistake)."""


class DataError(FeatxError, ValueError):
    """A dataset could not be read: missing path, wrong layout, bad image."""


class WeightsError(FeatxError):
    """Backbone weights could not be found or loaded."""


class CacheError(FeatxError):
    """A feature cache is missing, locked or does not match what was asked."""


class SettingsError(FeatxError, ValueError):
    """A feature setting (backbone option) is not valid."""


class HeadError(FeatxError, ValueError):
    """A head name or a head parameter is not valid."""


class ResourceError(FeatxError, ValueError):
    """What was asked does not fit in the machine's memory (a batch, an input size, an embedding)."""


class ClusterError(FeatxError):
    """A Dask cluster could not be reached, or a task on it failed."""


class OutputError(FeatxError, ValueError):
    """A backbone gave features that are not numbers (NaN or inf): nothing of them is cached."""
