"""``load_dataset``: the shipped sample, CIFAR-10, or a folder or archive, as a :class:`Dataset` of a task."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ..errors import ArgumentError, DataError
from ..images import ImageOptions
from .cifar import load_keras_cifar10
from .dataset import Dataset
from .folders import ReadSettings, load_path
from .tasks import TASKS, make_task

logger = logging.getLogger(__name__)

#: Names accepted by :func:`load_dataset` besides a path.
DATASETS = ("sample", "cifar10")


def sample_path() -> Path:
    """Path of the CIFAR-10 sample shipped with featx (1,000 train and 200 test per class)."""
    return Path(str(resources.files("featx") / "datasets" / "cifar10-sample.tar.gz"))


def load_dataset(
    data: str | os.PathLike | None = None,
    task: str = "full",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: tuple[int, int] | None = None,
    images: ImageOptions | None = None,
    progress: bool | None = None,
) -> Dataset:
    """Load a dataset and select a task.

    Parameters
    ----------
    data : str, path or None
        "sample" (the default, shipped with featx and offline), "cifar10" (the
        full dataset through ``keras.datasets``, downloaded once), or a path:
        a folder, ``.tar.gz``/``.tar``/``.zip`` archive in class-folder layout,
        or a ``cifar-10-batches-py`` folder or archive.
    task : {"full", "source", "target"}
        See :func:`make_task`.
    cache_dir : path, optional
        Where decoded pixels are cached (default: see :func:`featx.config.cache_dir`).
    seed : int
        Seed of every split featx makes.
    test_fraction : float
        Test share of the splits featx makes (folders with no train/test
        folders, and the source/target tasks).
    image_size : (height, width), optional
        Size every image is brought to, by the ``images`` aspect policy.
    images : ImageOptions, optional
        How images of a folder or archive are stored (default
        ``ImageOptions()``): images of one size within 256 pixels as they are
        (CIFAR tiles); larger photos, or images of mixed sizes, as 256 x 256
        squares, centre-cropped ("crop"), letterboxed ("pad") or resized
        ("squash"). Photos are decoded straight to that size, in parallel and
        into the pixel cache as they go (:mod:`featx.data.pixel_cache`): memory stays flat
        in the number of images, and an interrupted decode goes on from where it
        stopped. ``Dataset.info`` says the sizes found, how many were changed,
        the stored size and the cache's size on disk.
    progress : bool, optional
        Show a progress bar while decoding (default: when on a terminal).

    Returns
    -------
    Dataset

    Examples
    --------
    >>> from featx.data import load_dataset
    >>> ds = load_dataset("sample", task="target")
    >>> ds.class_names
    ('dog', 'frog', 'horse', 'ship', 'truck')
    >>> ds.X_train.shape, ds.X_test.shape
    ((4800, 32, 32, 3), (1200, 32, 32, 3))
    """
    if task not in TASKS:
        raise DataError(f"Unknown task. Expected one of {', '.join(TASKS)}. Received: task={task!r}")
    images = ImageOptions() if images is None else images
    if not isinstance(images, ImageOptions):
        raise ArgumentError(f"images must be an ImageOptions. Received: images={images!r}")
    how = ReadSettings(seed=seed, test_fraction=test_fraction, image_size=image_size, images=images, progress=progress)
    if data is None or str(data) == "sample":
        ds = load_path(sample_path(), cache_dir, how)
        ds = replace(ds, name="sample")
    elif str(data) == "cifar10":
        ds = load_keras_cifar10()
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(
                f"Dataset not found: '{data}' is neither a path that exists nor one of "
                f"{', '.join(DATASETS)}. Pass a folder or archive of class folders, 'sample' or "
                "'cifar10'."
            )
        ds = load_path(path, cache_dir, how)
    if ds.info.get("empty class folders"):
        logger.warning(f"{ds.name}: class folders with no images, left out: {ds.info['empty class folders']}")
    return make_task(ds, task, seed=seed, test_fraction=test_fraction)
