"""Datasets: the shipped sample, CIFAR-10 and image folders or archives, one concept per module.

- :mod:`.dataset`: :class:`Dataset` (uint8 RGB images ``(n, h, w, 3)``, integer labels, class
  names and a train/test split) and the hashes that key every cache made of one;
- :mod:`.tasks`: the split-CIFAR source and target tasks, seeded stratified splits;
- :mod:`.cifar`: CIFAR-10 through ``keras.datasets`` or from its batches;
- :mod:`.folders`: folders and archives of class folders, and the one archive reader;
- :mod:`.pixel_cache`: decoded pixels cached under ``<cache_dir>/pixels/``, so that a second
  load of the same, unchanged source is near instant;
- :mod:`.loading`: :func:`load_dataset`, which picks among them;
- :mod:`.embeddings`: embeddings made by another tool (``--features``).
"""

from .cifar import CIFAR10_CLASSES
from .dataset import Dataset, fingerprint_arrays, hash_strings, source_stamp
from .embeddings import EMBEDDING_KEYS, load_embeddings
from .folders import ARCHIVE_SUFFIXES, ReadSettings
from .loading import DATASETS, load_dataset, sample_path
from .tasks import TASKS, make_task, stratified_split

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CIFAR10_CLASSES",
    "DATASETS",
    "EMBEDDING_KEYS",
    "TASKS",
    "Dataset",
    "ReadSettings",
    "fingerprint_arrays",
    "hash_strings",
    "load_dataset",
    "load_embeddings",
    "make_task",
    "sample_path",
    "source_stamp",
    "stratified_split",
]
