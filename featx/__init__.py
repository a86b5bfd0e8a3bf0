"""featx: frozen-backbone feature extraction, cached in HDF5, with scikit-learn heads."""

from importlib.metadata import PackageNotFoundError, version

from .data import Dataset, load_dataset, make_task
from .errors import CacheError, DataError, FeatxError, WeightsError

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CacheError",
    "DataError",
    "Dataset",
    "FeatxError",
    "WeightsError",
    "__version__",
    "load_dataset",
    "make_task",
]
