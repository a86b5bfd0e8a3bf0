"""Classifier heads for cached features, one family per module, each a scikit-learn estimator.

- ``dense``, ``linear`` (:mod:`.dense`): the split-CIFAR softmax head in Keras, and the same with no
  hidden layer (multinomial logistic regression by SGD, which also trains from a cache in blocks).
- ``logreg``, ``svm`` (:mod:`.linear`): standardisation + a linear classifier.
- ``svm-rbf`` (:mod:`.rbf`): an RBF SVM, exact when small, Nystroem + linear SVM when large.
- ``knn``, ``centroid`` (:mod:`.cosine`): votes by cosine similarity to the training rows.

A head class joins the registry, :data:`HEADS`, by being defined (:class:`~.base.Head`); every
module of this package is imported here, so a new head is one new module and nothing else.
"""

import importlib
import pkgutil

from .base import HEADS, Head, head_class, heads_help, make_head, parse_params, trusted_types
from .cosine import KNNClassifier, NearestCentroidHead
from .dense import DenseClassifier, LinearSoftmaxHead
from .linear import LinearSVMHead, LogisticRegressionHead
from .rbf import RBFSVMClassifier

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "HEADS",
    "DenseClassifier",
    "Head",
    "KNNClassifier",
    "LinearSVMHead",
    "LinearSoftmaxHead",
    "LogisticRegressionHead",
    "NearestCentroidHead",
    "RBFSVMClassifier",
    "head_class",
    "heads_help",
    "make_head",
    "parse_params",
    "trusted_types",
]
