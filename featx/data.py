"""Datasets: the embedded sample, CIFAR-10 and image folders or archives.

Every loader returns a :class:`Dataset`: uint8 RGB images ``(n, h, w, 3)``,
integer labels, class names and a train/test split. Decoding thousands of
small image files is slow, so decoded pixels are cached under
``<cache_dir>/pixels/`` and a second load of the same, unchanged source is
near instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np

from .config import cache_dir as resolve_cache_dir
from .config import slug
from .errors import DataError
from .images import ImageOptions, is_image_name
from .images import image_size as image_size_of

logger = logging.getLogger(__name__)

#: Names accepted by :func:`load_dataset` besides a path.
DATASETS = ("sample", "cifar10")
#: Tasks accepted by :func:`make_task`.
TASKS = ("full", "source", "target")
#: CIFAR-10 class names in label order.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
# Bump when decoding changes, so stale pixel caches are not reused.
_PIXEL_CACHE_VERSION = 2
_LAYOUT_HELP = (
    "featx expects class folders: 'train/<class>/*.jpg' and 'test/<class>/*.jpg', "
    "or only '<class>/*.jpg' (then split train/test for you), or a CIFAR-10 "
    "'cifar-10-batches-py' folder."
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and class names with a train/test split.

    Attributes
    ----------
    name : str
        Where the images came from ("sample", "cifar10" or a path).
    X_train, X_test : ndarray of uint8, shape (n, h, w, 3)
        RGB images.
    y_train, y_test : ndarray of int64, shape (n,)
        Labels, indices into ``class_names``.
    class_names : tuple of str
        Class names in label order.
    task : str
        "full", "source" or "target" (see :func:`make_task`).
    fingerprint : str
        Hash of the pixels, labels and class names; it keys every cache.
    info : dict
        How the data was read: split, sizes found and stored, resized images,
        skipped files, the pixel cache.
    images : ImageOptions or None
        How the images of a folder or archive were brought to the stored size
        (None for data that came as arrays).
    pixel_cache : Path or None
        The folder of the pixel cache that holds these images (None for data
        that came as arrays).
    files : (train names, test names) or None
        The file of every image, in row order, relative to the folder or
        archive it was read from (None for data that came as arrays).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    task: str = "full"
    info: dict = field(default_factory=dict)
    images: ImageOptions | None = None
    pixel_cache: Path | None = None
    files: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.X_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(X, y)`` of the "train" or "test" split."""
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'. Received: split={which!r}")
        return (self.X_train, self.y_train) if which == "train" else (self.X_test, self.y_test)

    def describe(self) -> str:
        """A short human-readable summary: sizes, classes, image shape."""
        lines = [
            f"dataset      {self.name}",
            f"task         {self.task}",
            f"images       {len(self.X_train)} train, {len(self.X_test)} test, "
            f"shape {'x'.join(map(str, self.image_shape))} uint8 RGB",
            f"fingerprint  {self.fingerprint}",
            f"classes      {self.n_classes}",
        ]
        tr, te = np.bincount(self.y_train, minlength=self.n_classes), np.bincount(
            self.y_test, minlength=self.n_classes
        )
        width = max(len(c) for c in self.class_names)
        for i, c in enumerate(self.class_names):
            lines.append(f"  {i:>2} {c:<{width}}  {tr[i]:>6} train {te[i]:>6} test")
        for k, v in self.info.items():
            lines.append(f"{k:<12} {v}")
        if self.pixel_cache is not None:
            from .pixels import disk_bytes

            try:
                lines.append(f"pixel cache  {disk_bytes(self.pixel_cache) / 1e6:,.1f} MB in {self.pixel_cache}")
            except OSError:
                pass
        return "\n".join(lines)


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
        into the pixel cache as they go (:mod:`featx.pixels`): memory stays flat
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
        raise ValueError(f"Unknown task. Expected one of {', '.join(TASKS)}. Received: task={task!r}")
    images = ImageOptions() if images is None else images
    if not isinstance(images, ImageOptions):
        raise TypeError(f"images must be an ImageOptions. Received: images={images!r}")
    if data is None or str(data) == "sample":
        ds = _load_path(sample_path(), cache_dir, seed, test_fraction, image_size, images, progress)
        ds = replace(ds, name="sample")
    elif str(data) == "cifar10":
        ds = _load_keras_cifar10()
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(
                f"Dataset not found: '{data}' is neither a path that exists nor one of "
                f"{', '.join(DATASETS)}. Pass a folder or archive of class folders, 'sample' or "
                "'cifar10'."
            )
        ds = _load_path(path, cache_dir, seed, test_fraction, image_size, images, progress)
    if ds.info.get("empty class folders"):
        print(f"{ds.name}: class folders with no images, left out: {ds.info['empty class folders']}",
              file=sys.stderr, flush=True)  # fmt: skip
    return make_task(ds, task, seed=seed, test_fraction=test_fraction)


def make_task(ds: Dataset, task: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Select the classes of a task.

    - "full": all classes, the dataset's own train/test split.
    - "source": the first half of the classes (CIFAR-10: 0-4), the images the
      ``trunk`` backbone learns from.
    - "target": the second half (CIFAR-10: 5-9), relabelled from 0, the
      classes transferred to.

    As in the split-CIFAR protocol, "source" and "target" pool the train and
    test images of their classes and split them 80/20 again, stratified and
    seeded (``test_fraction``, ``seed``).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task. Expected one of {', '.join(TASKS)}. Received: task={task!r}")
    if task == "full" or ds.task == task:
        return ds
    if ds.task != "full":
        raise ValueError(f"Cannot make task {task!r} from a dataset that is already {ds.task!r}.")
    n = ds.n_classes
    if n < 4:
        raise DataError(
            f"The '{task}' task splits the classes in two halves and needs at least 4 classes; "
            f"'{ds.name}' has {n}. Use task='full'."
        )
    lo, hi = (0, n // 2) if task == "source" else (n // 2, n)
    X = np.concatenate([ds.X_train, ds.X_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    keep = (y >= lo) & (y < hi)
    X, y = X[keep], y[keep] - lo
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    files = None
    if ds.files is not None:
        names = np.array(ds.files[0] + ds.files[1], dtype=object)[keep]
        files = (tuple(names[train_idx]), tuple(names[test_idx]))
    fp = _hash_strings(ds.fingerprint, task, str(seed), str(test_fraction))
    info = dict(ds.info, split=f"pooled train+test, stratified {1 - test_fraction:.0%}/"
                f"{test_fraction:.0%}, seed {seed}", classes_from=f"{lo}-{hi - 1} of {ds.name}")
    return Dataset(
        name=ds.name,
        X_train=X[train_idx],
        y_train=y[train_idx],
        X_test=X[test_idx],
        y_test=y[test_idx],
        class_names=tuple(ds.class_names[lo:hi]),
        fingerprint=fp,
        task=task,
        info=info,
        images=ds.images,
        pixel_cache=ds.pixel_cache,
        files=files,
    )


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices ``0..len(y)-1`` into (train, test), each sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------- CIFAR-10


def _load_keras_cifar10() -> Dataset:
    import keras

    try:
        (X_train, y_train), (X_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # the download raises various network errors
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
        raise DataError(
            f"Could not load CIFAR-10 through keras.datasets ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}). It is downloaded once into {cache}; offline, point featx at "
            "a local copy instead: --data PATH, where PATH is the 'cifar-10-python.tar.gz' "
            "archive, its extracted 'cifar-10-batches-py' folder, or a folder/archive of class "
            "folders."
        ) from None
    X_train, X_test = _nhwc(X_train), _nhwc(X_test)
    y_train, y_test = y_train.reshape(-1).astype(np.int64), y_test.reshape(-1).astype(np.int64)
    return Dataset(
        "cifar10", X_train, y_train, X_test, y_test, CIFAR10_CLASSES,
        _fingerprint(X_train, y_train, X_test, y_test, CIFAR10_CLASSES),
        info={"split": "official"},
    )  # fmt: skip


def _nhwc(X: np.ndarray) -> np.ndarray:
    # keras returns channels-last unless its image_data_format says otherwise
    return np.ascontiguousarray(X.transpose(0, 2, 3, 1) if X.shape[1] == 3 else X)


def _cifar_batches(blobs: dict[str, bytes], where: str) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if n not in blobs]
    if missing:
        raise DataError(f"'{where}' looks like cifar-10-batches-py but lacks {', '.join(missing)}.")

    def unpack(blob: bytes, name: str):
        try:
            d = pickle.loads(blob, encoding="bytes")
            X = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            return X, np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as exc:
            raise DataError(
                f"Cannot read CIFAR-10 batch '{name}' in '{where}' ({exc}). Download the archive again."
            ) from None

    parts = [unpack(blobs[n], n) for n in names]
    X_test, y_test = unpack(blobs["test_batch"], "test_batch")
    X_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    classes = CIFAR10_CLASSES
    if "batches.meta" in blobs:
        meta = pickle.loads(blobs["batches.meta"], encoding="bytes")
        classes = tuple(c.decode() for c in meta[b"label_names"])
    X_test = np.ascontiguousarray(X_test)
    X_train = np.ascontiguousarray(X_train)
    return Dataset(
        where, X_train, y_train, X_test, y_test, classes,
        _fingerprint(X_train, y_train, X_test, y_test, classes), info={"split": "official"},
    )  # fmt: skip


# ------------------------------------------------------------- folders, archives


def _load_path(path, cache_dir, seed, test_fraction, image_size, images, progress) -> Dataset:
    from filelock import FileLock, Timeout

    from .pixels import lock_file

    path = path.resolve()
    key = _hash_strings(
        str(_PIXEL_CACHE_VERSION), str(path), _source_stamp(path), str(seed),
        str(test_fraction), str(image_size), images.describe(),
    )  # fmt: skip
    root = resolve_cache_dir(cache_dir) / "pixels"
    entry = root / f"{slug(path.name)}-{key[:16]}"
    cached = _read_pixel_cache(entry)
    if cached is not None:
        logger.info("decoded pixels of %s loaded from %s", path, entry)
        return cached
    try:
        lock_file(entry).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file(entry)))
    except OSError as exc:
        raise DataError(f"Cannot write the pixel cache in '{root}' ({exc}): pass a writable --cache-dir.") from None
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another featx process is decoding {path.name} into {root}; waiting for it", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        cached = _read_pixel_cache(entry)  # another process decoded it while we waited
        if cached is not None:
            return cached
        return _read_source(path, entry, seed, test_fraction, image_size, images, progress)
    finally:
        lock.release()


def _read_source(path: Path, entry: Path, seed, test_fraction, image_size, images, progress) -> Dataset:
    """Decode ``path`` into the pixel cache ``entry`` (see :mod:`featx.pixels`) and load it."""
    where = str(path)
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
        if _is_cifar_batches(files):
            prefix = _cifar_prefix(files)
            blobs = {k[len(prefix):]: v.read_bytes() for k, v in files.items() if k.startswith(prefix)}
            return _write_pixel_cache(entry, _cifar_batches(blobs, where), where)
        entries = {k: v for k, v in files.items() if is_image_name(k)}
        skipped = [k for k in files if not is_image_name(k)]
        if not entries:
            raise DataError(f"No image files (*.jpg, *.png, ...) found in '{path}'. {_LAYOUT_HELP}")
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            sizes = dict(zip(entries, pool.map(lambda k: image_size_of(entries[k], f"{where}/{k}"), entries)))

        def read(wanted):
            return ((k, entries[k]) for k in entries if k in wanted)

        empty = _empty_class_folders(path, entries.values())
        return _decode(entry, where, sizes, read, skipped, seed, test_fraction, image_size, images, progress,
                       {"empty class folders": ", ".join(empty)} if empty else {})  # fmt: skip
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(
            f"Cannot read '{path}': expected a folder or an archive ending in "
            f"{', '.join(ARCHIVE_SUFFIXES)}. {_LAYOUT_HELP}"
        )
    names, sizes = [], {}
    for name, blob in _archive_members(path, lambda n: True, header_only=True):
        names.append(name)
        if blob is not None:
            sizes[name] = image_size_of(blob, f"{where}/{name}")
    if _is_cifar_batches(names):
        blobs, _ = _read_archive(path)
        prefix = _cifar_prefix(blobs)
        ds = _cifar_batches({k[len(prefix):]: v for k, v in blobs.items() if k.startswith(prefix)}, where)
        return _write_pixel_cache(entry, ds, where)
    if not sizes:
        raise DataError(f"No image files (*.jpg, *.png, ...) found in '{path}'. {_LAYOUT_HELP}")
    skipped = [n for n in names if not is_image_name(n)]

    def read(wanted):
        return _archive_members(path, lambda n: n in wanted)

    return _decode(entry, where, sizes, read, skipped, seed, test_fraction, image_size, images, progress)


def _archive_members(path: Path, want, header_only: bool = False):
    """``(name, bytes)`` of the files of an archive that ``want(name)``, in one streaming pass (the
    bytes are None for a file that is not an image, with ``header_only``)."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and not _junk(info.filename) and want(info.filename):
                        image = is_image_name(info.filename)
                        yield info.filename, (zf.read(info) if image or not header_only else None)
        else:
            # One streaming pass: random access into a gzip stream restarts it every time.
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    if member.isfile() and not _junk(member.name) and want(member.name):
                        image = is_image_name(member.name)
                        yield member.name, (tar.extractfile(member).read() if image or not header_only else None)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(
            f"Cannot read archive '{path}' ({exc.__class__.__name__}: {exc}). It is truncated or "
            "not a tar/zip archive: download or pack it again."
        ) from None


def _decode(entry, where, sizes, read, skipped, seed, test_fraction, image_size, images, progress,
            notes: dict | None = None) -> Dataset:  # fmt: skip
    from . import pixels

    groups = _layout(sizes.keys(), where)
    classes = sorted({c for _, c in groups})
    order = [(s, classes.index(c), n) for (s, c), names in sorted(groups.items(), key=str) for n in sorted(names)]
    names = tuple(n for _, _, n in order)
    y = np.array([label for _, label, _ in order], dtype=np.int64)
    split = np.array([s for s, _, _ in order], dtype=object)
    info: dict = {}
    if groups and next(iter(groups))[0] is None:
        tr, te = stratified_split(y, test_fraction, seed)
        info["split"] = f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%}, seed {seed}"
    else:
        tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        info["split"] = "train/ and test/ folders"
    for label, c in enumerate(classes):
        if not (y[tr] == label).any():
            raise DataError(f"'{where}': class '{c}' has no training images. Add images or remove the folder.")
    seen = [sizes[n] for n in names]
    target = tuple(image_size) if image_size else images.target(seen)
    n_changed = sum(hw != target for hw in seen)
    by_area = sorted(seen, key=lambda hw: (hw[0] * hw[1], hw))
    info["sizes"] = "min {}x{}, median {}x{}, max {}x{}".format(*by_area[0], *by_area[len(by_area) // 2], *by_area[-1])
    info["stored"] = f"{target[0]}x{target[1]}"
    if n_changed:
        shapes = Counter(seen)
        info["resized"] = f"{n_changed} of {len(seen)} images to {target[0]}x{target[1]} by {images.aspect} (sizes seen: " + \
            ", ".join(f"{h}x{w}: {c}" for (h, w), c in shapes.most_common(5)) + ")"  # fmt: skip
        logger.info("%s: %s", where, info["resized"])
    if skipped:
        info["skipped"] = f"{len(skipped)} non-image files, e.g. {skipped[0]}"
        logger.warning("%s: skipped %d files that are not images, e.g. %s", where, len(skipped), skipped[0])
    info.update(notes or {})
    plan = pixels.Plan(names, tr, te, target, images.aspect)
    try:
        part = pixels.decode_to_entry(entry, plan, read, where=where, progress=progress)
    except OSError as exc:
        raise DataError(f"Cannot decode '{where}' into the pixel cache ({exc.__class__.__name__}: {exc}). "
                        "Free some disk space or pass another --cache-dir, then run again: it goes on "
                        "from the images done.") from None  # fmt: skip
    np.save(part / "y_train.npy", y[tr])
    np.save(part / "y_test.npy", y[te])
    fp = pixels.fingerprint(part, classes)
    if n_changed:  # the policy made these pixels: it keys them too
        fp = _hash_strings(fp, images.aspect, info["stored"])
    meta = {"name": where, "class_names": classes, "fingerprint": fp, "info": info, "source": where,
            "images": {"side": images.side, "aspect": images.aspect}}  # fmt: skip
    (part / "meta.json").write_text(json.dumps(meta, indent=1))
    _install(entry, part, where)
    ds = _read_pixel_cache(entry)
    if ds is None:
        raise DataError(f"The pixel cache entry {entry} could not be read back: check the disk, then run again.")
    return ds


def _empty_class_folders(root: Path, files) -> list[str]:
    """Folders beside the class folders that hold no image: classes a user meant, left out."""
    classes = {Path(f).parent for f in files}
    out = []
    for parent in {c.parent for c in classes}:
        for d in sorted(parent.iterdir()):
            if d.is_dir() and d not in classes and not _junk(d.name) and d.name not in ("train", "test"):
                if not any(q.is_file() and is_image_name(q.name) for q in d.rglob("*")):
                    out.append(d.relative_to(root).as_posix())
    return sorted(out)


def _read_archive(path: Path) -> tuple[dict[str, bytes], list[str]]:
    blobs: dict[str, bytes] = {}
    skipped: list[str] = []
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and not _junk(info.filename):
                        blobs[info.filename] = zf.read(info)
        else:
            # One streaming pass: random access into a gzip stream restarts it every time.
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    if member.isfile() and not _junk(member.name):
                        blobs[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(
            f"Cannot read archive '{path}' ({exc.__class__.__name__}: {exc}). It is truncated or "
            "not a tar/zip archive: download or pack it again."
        ) from None
    return blobs, skipped


def _junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_cifar_batches(files) -> bool:
    return any(PurePosixPath(k).name == "data_batch_1" for k in files) and any(
        PurePosixPath(k).name == "test_batch" for k in files
    )


def _cifar_prefix(files) -> str:
    k = next(k for k in files if PurePosixPath(k).name == "data_batch_1")
    return k[: -len("data_batch_1")]


def _layout(names, where: str) -> dict[tuple[str | None, str], list[str]]:
    """Group image paths by (split, class); split is None for class-only layouts."""
    parts = {n: PurePosixPath(n).parts for n in names}
    # Strip folders that every path shares (e.g. 'cifar10-jpeg/train/...').
    while True:
        firsts = {p[0] for p in parts.values() if len(p) > 1}
        if len(firsts) == 1 and firsts.isdisjoint({"train", "test"}) and all(len(p) > 2 for p in parts.values()):
            parts = {n: p[1:] for n, p in parts.items()}
        else:
            break
    depth = Counter(len(p) for p in parts.values())
    groups: dict[tuple[str | None, str], list[str]] = {}
    tops = {p[0] for p in parts.values()}
    if tops <= {"train", "test", "val", "valid", "validation"} and "train" in tops:
        if "test" not in tops:
            raise DataError(
                f"'{where}' has a 'train' folder but no 'test' folder. Add 'test/<class>/...' "
                "or put the class folders at the top level and featx will split them."
            )
        bad = [n for n, p in parts.items() if len(p) != 3]
        if bad:
            raise DataError(
                f"'{where}': images must sit in train/<class>/ or test/<class>/, but "
                f"'{bad[0]}' does not ({len(bad)} such files). {_LAYOUT_HELP}"
            )
        for n, p in parts.items():
            split = "test" if p[0] == "test" else ("train" if p[0] == "train" else None)
            if split is None:
                continue  # a validation folder is not used
            groups.setdefault((split, p[1]), []).append(n)
        train_c = {c for s, c in groups if s == "train"}
        test_c = {c for s, c in groups if s == "test"}
        if train_c != test_c:
            only = sorted(train_c ^ test_c)
            raise DataError(
                f"'{where}': train and test must hold the same class folders; "
                f"{', '.join(only)} is in only one of them. Add the missing folders or remove these."
            )
    else:
        if set(depth) != {2}:
            odd = next(n for n, p in parts.items() if len(p) != 2)
            raise DataError(
                f"'{where}': found '{odd}', which is not inside a class folder. {_LAYOUT_HELP}"
            )
        for n, p in parts.items():
            groups.setdefault((None, p[0]), []).append(n)
    classes = sorted({c for _, c in groups})
    if len(classes) < 2:
        raise DataError(
            f"'{where}' holds a single class ({classes[0]!r}): a classifier needs at least two "
            f"class folders. {_LAYOUT_HELP}"
        )
    return groups


# ------------------------------------------------------------ decoded-pixel cache


def _source_stamp(path: Path) -> str:
    """Changes whenever the source changes: sizes and mtimes of every file."""
    if path.is_dir():
        stats = [
            f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}"
            for p in sorted(path.rglob("*"))
            if p.is_file() and (st := p.stat())
        ]
        return _hash_strings(*stats)
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _read_pixel_cache(entry: Path) -> Dataset | None:
    meta_file = entry / "meta.json"
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="r") for k in ("X_train", "y_train", "X_test", "y_test")}
        images = ImageOptions(**meta["images"]) if meta.get("images") else None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable pixel cache %s (%s)", entry, exc)
        return None
    return Dataset(meta["name"], class_names=tuple(meta["class_names"]), fingerprint=meta["fingerprint"],
                   info=meta["info"], images=images, pixel_cache=entry, files=_files_of(entry, arrays),
                   **arrays)  # fmt: skip


def _files_of(entry: Path, arrays: dict) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The image files of a decoded folder or archive, in row order of each split (None for
    CIFAR batches, which have no files, or a plan that does not match the rows)."""
    try:
        plan = json.loads((entry / "plan.json").read_text())
        names = plan["names"]
        files = tuple(tuple(names[i] for i in plan[split]) for split in ("train", "test"))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if (len(files[0]), len(files[1])) != (len(arrays["y_train"]), len(arrays["y_test"])):
        return None
    return files


def _write_pixel_cache(entry: Path, ds: Dataset, source: str) -> Dataset:
    """Cache the pixels of ``ds`` (read whole: CIFAR-10 batches) in ``entry``; return ``ds``."""
    root = entry.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        for k in ("X_train", "y_train", "X_test", "y_test"):
            np.save(tmp / f"{k}.npy", getattr(ds, k))
        meta = {"name": ds.name, "class_names": list(ds.class_names), "fingerprint": ds.fingerprint,
                "info": ds.info, "source": source}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _install(entry, tmp, source)
    except OSError as exc:
        logger.warning("could not cache decoded pixels in %s (%s)", root, exc)
    return ds


def _install(entry: Path, complete: Path, source: str) -> None:
    """Give the complete folder ``complete`` the entry's name. Decodes of ``source`` as it was
    before (another stamp: files changed since) go; those of the same files with other settings
    (``--aspect``, ``--image-side``, seed) stay, so that switching between them decodes nothing."""
    root = entry.parent
    meta_file = complete / "meta.json"
    meta = json.loads(meta_file.read_text())
    stamp = meta["stamp"] = _source_stamp(Path(source)) if Path(source).exists() else ""
    meta_file.write_text(json.dumps(meta, indent=1))
    for old in root.iterdir():
        if old.is_dir() and old not in (entry, complete) and not old.name.startswith(".") and (old / "meta.json").exists():
            try:
                was = json.loads((old / "meta.json").read_text())
                if was.get("source") == source and was.get("stamp") != stamp:
                    shutil.rmtree(old, ignore_errors=True)
            except (OSError, ValueError):
                pass
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(complete, entry)  # atomic: a crash leaves no half-written entry


def _fingerprint(X_train, y_train, X_test, y_test, classes) -> str:
    h = hashlib.sha256()
    for a in (X_train, y_train, X_test, y_test):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update("\0".join(classes).encode())
    return h.hexdigest()[:16]


def _hash_strings(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------ embeddings made elsewhere

EMBEDDING_KEYS = ("X_train", "y_train", "X_test", "y_test")


def _text(v) -> str:
    """A label or class name as text: HDF5 gives strings as bytes."""
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def load_embeddings(path) -> tuple[Dataset, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Embeddings made by another tool, for ``compare --features``: an ``.npz`` or ``.h5`` file
    holding ``X_train``, ``y_train``, ``X_test``, ``y_test`` (labels as integers or strings) and
    optionally ``class_names``.

    Labels are classes by their values: integers index ``class_names`` where it is given, else
    each distinct value is a class named by it (1-based or sparse labels make no empty classes);
    strings (bytes, as HDF5 stores them, are decoded) name classes. Both splits' labels are of one
    kind, and every class name is given once.

    Returns a :class:`Dataset` that describes them (no images: its arrays have no pixels) and the
    four arrays, labels as integers into its class names. Every problem is one
    :class:`~featx.errors.DataError` naming the file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Embeddings file not found: {p}. Pass an .npz or .h5 file with {', '.join(EMBEDDING_KEYS)}.")
    arrays: dict = {}
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif p.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        else:
            raise DataError(f"{p}: embeddings must be an .npz or .h5 file. Received a {p.suffix or 'nameless'} file.")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(f"Cannot read embeddings from {p} ({exc.__class__.__name__}: {exc}).") from None
    missing = [k for k in EMBEDDING_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{p} lacks {', '.join(missing)}: it must hold {', '.join(EMBEDDING_KEYS)} "
                        f"(and may hold class_names). It holds: {', '.join(sorted(arrays)) or 'nothing'}.")  # fmt: skip
    X_train, X_test = (np.asarray(arrays[k]) for k in ("X_train", "X_test"))
    y_train, y_test = (np.asarray(arrays[k]).reshape(-1) for k in ("y_train", "y_test"))
    for X, y, split in ((X_train, y_train, "train"), (X_test, y_test, "test")):
        if X.ndim != 2 or X.dtype.kind not in "fiu":
            raise DataError(f"{p}: X_{split} must be a 2-D array of numbers (rows x features). Received shape "
                            f"{X.shape}, dtype {X.dtype}.")  # fmt: skip
        if len(X) != len(y):
            raise DataError(f"{p}: X_{split} has {len(X)} rows but y_{split} {len(y)} labels: they must match.")
        if len(X) == 0:
            raise DataError(f"{p}: the {split} split is empty.")
        if not np.isfinite(X).all():
            raise DataError(f"{p}: X_{split} holds NaN or infinite values.")
    if X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"{p}: X_train has {X_train.shape[1]} features and X_test {X_test.shape[1]}: they must match.")
    names = [_text(c) for c in np.asarray(arrays["class_names"]).reshape(-1)] if "class_names" in arrays else None
    if names is not None and len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise DataError(f"{p}: class_names names {', '.join(map(repr, twice[:3]))} more than once: each class once.")
    kinds = {split: ("number" if y.dtype.kind in "iub" else "text" if y.dtype.kind in "SUO" else y.dtype.kind)
             for split, y in (("train", y_train), ("test", y_test))}  # fmt: skip
    if len(set(kinds.values())) > 1 or not set(kinds.values()) <= {"number", "text"}:
        raise DataError(f"{p}: y_train holds {kinds['train']} labels and y_test {kinds['test']} labels: both must be "
                        "integers, or both class names (text).")  # fmt: skip
    if kinds["train"] == "number":
        values = np.unique(np.concatenate([y_train, y_test])).astype(np.int64)
        if names is not None:  # integers index the names given
            if values.min() < 0 or values.max() >= len(names):
                raise DataError(f"{p}: integer labels must index class_names (0 to {len(names) - 1}); they run from "
                                f"{values.min()} to {values.max()}.")  # fmt: skip
            y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
        else:  # classes by their values, whatever they are (1-based, sparse): no class that no label has
            names = [str(v) for v in values]
            y_train, y_test = (np.searchsorted(values, y.astype(np.int64)) for y in (y_train, y_test))
    else:
        y_train = np.array([_text(v) for v in y_train], dtype=object)
        y_test = np.array([_text(v) for v in y_test], dtype=object)
        labels = sorted(set(y_train) | set(y_test))
        names = names or labels
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{p}: labels {', '.join(map(repr, unknown[:3]))} are not in class_names "
                            f"({', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''}).")  # fmt: skip
        y_train = np.array([index[v] for v in y_train], dtype=np.int64)
        y_test = np.array([index[v] for v in y_test], dtype=np.int64)
    no_pixels = np.zeros((0, 0, 0, 3), np.uint8)
    ds = Dataset(str(p), no_pixels, y_train, no_pixels, y_test, tuple(names),
                 _hash_strings(str(p), _source_stamp(p)), info={"embeddings": f"{X_train.shape[1]}-d, from {p.name}"})  # fmt: skip
    return ds, (X_train.astype(np.float32), y_train, X_test.astype(np.float32), y_test)
