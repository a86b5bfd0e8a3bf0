"""Folders and archives of class folders, decoded into the pixel cache (:mod:`.pixel_cache`).

A folder or archive is read in the class-folder layout (``train/<class>/``, ``test/<class>/`` or
``<class>/`` alone), or as CIFAR-10 batches. Every archive is read by :func:`archive_members`,
in one streaming pass.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..config import cache_dir as resolve_cache_dir
from ..config import slug
from ..errors import DataError
from ..images import ImageOptions, is_image_name
from ..images import image_size as image_size_of
from . import pixel_cache
from .cifar import cifar_batches, cifar_prefix, is_cifar_batches
from .dataset import Dataset, hash_strings, source_stamp
from .tasks import stratified_split

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
_LAYOUT_HELP = (
    "featx expects class folders: 'train/<class>/*.jpg' and 'test/<class>/*.jpg', "
    "or only '<class>/*.jpg' (then split train/test for you), or a CIFAR-10 "
    "'cifar-10-batches-py' folder."
)


@dataclass(frozen=True)
class ReadSettings:
    """How a folder or archive is read: the seed and test share of the split featx makes (class
    folders alone), the size images are brought to (``image_size``, else by ``images``), and
    whether a progress bar shows the decoding."""

    seed: int = 0
    test_fraction: float = 0.2
    image_size: tuple[int, int] | None = None
    images: ImageOptions = field(default_factory=ImageOptions)
    progress: bool | None = None


def load_path(path: Path, cache_dir, how: ReadSettings) -> Dataset:
    """The dataset of a folder or archive ``path``, from the pixel cache under ``cache_dir``, or
    decoded into it now (one process at a time: another one waits, then reads it)."""
    from filelock import FileLock, Timeout

    path = path.resolve()
    key = hash_strings(
        str(pixel_cache.VERSION), str(path), source_stamp(path), str(how.seed),
        str(how.test_fraction), str(how.image_size), how.images.describe(),
    )  # fmt: skip
    root = resolve_cache_dir(cache_dir) / "pixels"
    entry = root / f"{slug(path.name)}-{key[:16]}"
    cached = pixel_cache.read_entry(entry)
    if cached is not None:
        logger.debug("decoded pixels of %s loaded from %s", path, entry)
        return cached
    try:
        pixel_cache.lock_file(entry).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(pixel_cache.lock_file(entry)))
    except OSError as exc:
        raise DataError(f"Cannot write the pixel cache in '{root}' ({exc}): pass a writable --cache-dir.") from None
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning(f"another featx process is decoding {path.name} into {root}; waiting for it")
        lock.acquire()
    try:
        cached = pixel_cache.read_entry(entry)  # another process decoded it while we waited
        if cached is not None:
            return cached
        return _read_source(path, entry, how)
    finally:
        lock.release()


def _read_source(path: Path, entry: Path, how: ReadSettings) -> Dataset:
    """Decode ``path`` into the pixel cache ``entry`` (see :mod:`.pixel_cache`) and load it."""
    where = str(path)
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
        if is_cifar_batches(files):
            prefix = cifar_prefix(files)
            blobs = {k[len(prefix):]: v.read_bytes() for k, v in files.items() if k.startswith(prefix)}
            return pixel_cache.write_entry(entry, cifar_batches(blobs, where), where)
        entries = {k: v for k, v in files.items() if is_image_name(k)}
        skipped = [k for k in files if not is_image_name(k)]
        if not entries:
            raise DataError(f"No image files (*.jpg, *.png, ...) found in '{path}'. {_LAYOUT_HELP}")
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            sizes = dict(zip(entries, pool.map(lambda k: image_size_of(entries[k], f"{where}/{k}"), entries)))

        def read(wanted):
            return ((k, entries[k]) for k in entries if k in wanted)

        empty = _empty_class_folders(path, entries.values())
        return _decode(entry, where, sizes, read, skipped, how,
                       {"empty class folders": ", ".join(empty)} if empty else {})  # fmt: skip
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(
            f"Cannot read '{path}': expected a folder or an archive ending in "
            f"{', '.join(ARCHIVE_SUFFIXES)}. {_LAYOUT_HELP}"
        )
    names, sizes = [], {}
    for name, blob in archive_members(path, lambda n: True, header_only=True):
        names.append(name)
        if blob is not None:
            sizes[name] = image_size_of(blob, f"{where}/{name}")
    if is_cifar_batches(names):
        blobs = dict(archive_members(path, lambda n: True))
        prefix = cifar_prefix(blobs)
        ds = cifar_batches({k[len(prefix):]: v for k, v in blobs.items() if k.startswith(prefix)}, where)
        return pixel_cache.write_entry(entry, ds, where)
    if not sizes:
        raise DataError(f"No image files (*.jpg, *.png, ...) found in '{path}'. {_LAYOUT_HELP}")
    skipped = [n for n in names if not is_image_name(n)]

    def read(wanted):
        return archive_members(path, lambda n: n in wanted)

    return _decode(entry, where, sizes, read, skipped, how)


def archive_members(path: Path, want, header_only: bool = False):
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


def _decode(entry, where, sizes, read, skipped, how: ReadSettings,
            notes: dict | None = None) -> Dataset:  # fmt: skip
    groups = _layout(sizes.keys(), where)
    classes = sorted({c for _, c in groups})
    order = [(s, classes.index(c), n) for (s, c), names in sorted(groups.items(), key=str) for n in sorted(names)]
    names = tuple(n for _, _, n in order)
    y = np.array([label for _, label, _ in order], dtype=np.int64)
    split = np.array([s for s, _, _ in order], dtype=object)
    info: dict = {}
    if groups and next(iter(groups))[0] is None:
        tr, te = stratified_split(y, how.test_fraction, how.seed)
        info["split"] = f"stratified {1 - how.test_fraction:.0%}/{how.test_fraction:.0%}, seed {how.seed}"
    else:
        tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        info["split"] = "train/ and test/ folders"
    for label, c in enumerate(classes):
        if not (y[tr] == label).any():
            raise DataError(f"'{where}': class '{c}' has no training images. Add images or remove the folder.")
    seen = [sizes[n] for n in names]
    images = how.images
    target = tuple(how.image_size) if how.image_size else images.target(seen)
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
    plan = pixel_cache.Plan(names, tr, te, target, images.aspect)
    try:
        part = pixel_cache.decode_to_entry(entry, plan, read, where=where, progress=how.progress)
    except OSError as exc:
        raise DataError(f"Cannot decode '{where}' into the pixel cache ({exc.__class__.__name__}: {exc}). "
                        "Free some disk space or pass another --cache-dir, then run again: it goes on "
                        "from the images done.") from None  # fmt: skip
    np.save(part / "y_train.npy", y[tr])
    np.save(part / "y_test.npy", y[te])
    fp = pixel_cache.fingerprint(part, classes)
    if n_changed:  # the policy made these pixels: it keys them too
        fp = hash_strings(fp, images.aspect, info["stored"])
    meta = {"name": where, "class_names": classes, "fingerprint": fp, "info": info, "source": where,
            "images": {"side": images.side, "aspect": images.aspect}}  # fmt: skip
    (part / "meta.json").write_text(json.dumps(meta, indent=1))
    pixel_cache.install(entry, part, where)
    ds = pixel_cache.read_entry(entry)
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


def _junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


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
