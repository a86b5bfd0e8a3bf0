"""featx: frozen-backbone feature extraction, cached in HDF5, with scikit-learn heads."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from .runtime import quiet_backend_start

quiet_backend_start()  # before anything imports TensorFlow

from .data import Dataset, load_dataset, make_task  # noqa: E402
from .errors import CacheError, DataError, FeatxError, WeightsError  # noqa: E402

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# Imported on first use, so that `import featx` (and the CLI) does not load scikit-learn up front.
_LAZY = {
    "FeatureExtractor": "pipeline",
    "FeatureSpec": "spec",
    "RunOptions": "options",
    "Extractor": "extractor",
    "get_backbone": "backbones",
    "DenseClassifier": "heads",
    "Head": "heads",
    "HEADS": "heads",
    "LinearSVMHead": "heads",
    "LogisticRegressionHead": "heads",
    "RBFSVMClassifier": "heads",
    "KNNClassifier": "heads",
    "NearestCentroidHead": "heads",
    "ImageOptions": "images",
    "make_head": "heads",
    "export_classifier": "export",
    "audit": "auditing",
    "AuditSettings": "auditing",
    "NeighborSearch": "neighbors",
    "extract_features": "extract",
    "fit_head": "fit",
    "predict_files": "predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "AuditSettings",
    "NeighborSearch",
    "audit",
    "CacheError",
    "DataError",
    "Dataset",
    "DenseClassifier",
    "Extractor",
    "FeatureExtractor",
    "FeatureSpec",
    "FeatxError",
    "HEADS",
    "Head",
    "ImageOptions",
    "KNNClassifier",
    "LinearSVMHead",
    "LogisticRegressionHead",
    "NearestCentroidHead",
    "RBFSVMClassifier",
    "RunOptions",
    "WeightsError",
    "__version__",
    "export_classifier",
    "extract_features",
    "fit_head",
    "get_backbone",
    "load_dataset",
    "make_head",
    "make_task",
    "predict_files",
]
