"""The decoded-pixel cache: a folder or archive of images decoded once, straight to disk, under
``<cache_dir>/pixels/``; a second load of the same, unchanged source is near instant.

Decoding thousands of photos is slow and their full-resolution pixels are large,
so a folder or archive is decoded in two passes that never hold the images in
memory together:

1. the headers alone give every image's size (EXIF rotation counted), and so
   the one stored size (:meth:`featx.images.ImageOptions.target`);
2. the images are decoded in parallel, each straight to that size (JPEG draft
   decoding, then a quality resize, crop or pad), and written row by row into
   ``.npy`` files beside the entry, with a record of the rows done.

Memory stays flat in the number of images. An interrupted decode (Ctrl-C,
kill -9, a corrupt file) leaves its rows and their record; the next load of the
same source with the same settings goes on from there. The entry takes its
final name only once complete, so a partial decode is never read as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..images import ImageOptions, load_image
from .dataset import Dataset, source_stamp

logger = logging.getLogger(__name__)

#: Images decoded between two records of the rows done (and the most held at once).
CHUNK = 64
#: Bytes of encoded images read ahead from an archive at most.
READ_AHEAD = 64 << 20
ARRAYS = ("X_train", "y_train", "X_test", "y_test")


@dataclass(frozen=True)
class Plan:
    """What one decode makes: every image's name (in row order of the whole set), whether it goes
    to train or test, its row there, and the stored size."""

    names: tuple[str, ...]
    train: np.ndarray  # indices into names, in row order of X_train
    test: np.ndarray
    size: tuple[int, int]  # (height, width)
    aspect: str

    def describe(self) -> dict:
        return {"names": list(self.names), "train": self.train.tolist(), "test": self.test.tolist(),
                "size": list(self.size), "aspect": self.aspect}  # fmt: skip


def partial_dir(entry: Path) -> Path:
    """Where the decode of ``entry`` writes until it is complete."""
    return entry.parent / ".partial" / entry.name


def lock_file(entry: Path) -> Path:
    """The lock held while ``entry`` is decoded (a second process waits for the first)."""
    return entry.parent / ".partial" / f"{entry.name}.lock"


def decode_to_entry(entry: Path, plan: Plan, read: Callable[[set[str]], Iterator[tuple[str, object]]], *,
                    where: str, progress: bool | None, threads: int | None = None, draft: bool = True) -> Path:  # fmt: skip
    """Decode the images of ``plan`` into ``entry``'s partial folder, going on from rows done
    before; return that folder once every row is written (the caller completes the entry).

    ``read(wanted)`` yields ``(name, source)`` for the names in ``wanted``: a path or the bytes of
    an image file.
    """
    part = partial_dir(entry)
    plan_text = json.dumps(plan.describe(), sort_keys=True)
    if part.exists() and _plan_of(part) != plan_text:
        shutil.rmtree(part, ignore_errors=True)  # another decode's rows: of no use here
    part.mkdir(parents=True, exist_ok=True)
    h, w = plan.size
    files = {}
    for split, idx in (("train", plan.train), ("test", plan.test)):
        f = part / f"X_{split}.npy"
        if not f.exists():
            np.lib.format.open_memmap(f, mode="w+", dtype=np.uint8, shape=(len(idx), h, w, 3))
        files[split] = (f, _header(f)[1])
    if not (part / "plan.json").exists():
        (part / "plan.json").write_text(plan_text)
    done_file = part / "done.npy"
    done = np.load(done_file) if done_file.exists() else np.zeros(len(plan.names), bool)
    if done.shape != (len(plan.names),):
        done = np.zeros(len(plan.names), bool)
    where_row = {}
    for split, idx in (("train", plan.train), ("test", plan.test)):
        for row, i in enumerate(idx):
            where_row[plan.names[i]] = (split, row, int(i))
    wanted = {plan.names[i] for i in np.flatnonzero(~done)}
    row_bytes = h * w * 3
    fds = {split: os.open(f, os.O_RDWR) for split, (f, _) in files.items()}
    try:
        bar = tqdm(total=len(plan.names), initial=int(done.sum()), desc="decoding", unit="img",
                   disable=None if progress is None else not progress, leave=False)  # fmt: skip
        with bar, ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:

            def decode(item):
                name, source = item
                return name, load_image(source, plan.size, plan.aspect, name=f"{where}/{name}", draft=draft)

            for chunk in _chunks(read(wanted)):
                for name, image in pool.map(decode, chunk):
                    split, row, i = where_row[name]
                    os.pwrite(fds[split], np.ascontiguousarray(image).tobytes(), files[split][1] + row * row_bytes)
                    done[i] = True
                bar.update(len(chunk))
                _save_done(done_file, done)  # after the rows it vouches for
    finally:
        for fd in fds.values():
            os.close(fd)
    if not done.all():
        missing = plan.names[int(np.flatnonzero(~done)[0])]
        raise DataError(f"'{where}' changed while it was read: '{missing}' is gone")
    return part


def fingerprint(part: Path, classes: Iterable[str]) -> str:
    """The dataset fingerprint of a decoded folder (``featx.data``'s rule: the arrays' shapes and
    bytes, then the class names), read from the files a block at a time."""
    h = hashlib.sha256()
    for k in ARRAYS:
        f = part / f"{k}.npy"
        shape, offset = _header(f)
        h.update(str(shape).encode())
        with open(f, "rb") as fh:
            fh.seek(offset)
            while block := fh.read(16 << 20):
                h.update(block)
    h.update("\0".join(classes).encode())
    return h.hexdigest()[:16]


def _chunks(items: Iterator[tuple[str, object]]) -> Iterator[list]:
    chunk, size = [], 0
    for name, source in items:
        chunk.append((name, source))
        size += len(source) if isinstance(source, bytes) else 0
        if len(chunk) >= CHUNK or size >= READ_AHEAD:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _save_done(path: Path, done: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, done)
    os.replace(tmp, path)


def _header(f: Path) -> tuple[tuple, int]:
    """``(shape, offset of the data)`` of an ``.npy`` file, from its header."""
    with open(f, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
        return shape, fh.tell()


def _plan_of(part: Path) -> str | None:
    try:
        return json.dumps(json.loads((part / "plan.json").read_text()), sort_keys=True)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------ entries

# Bump when decoding changes, so stale pixel caches are not reused.
VERSION = 2


def read_entry(entry: Path) -> Dataset | None:
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


def write_entry(entry: Path, ds: Dataset, source: str) -> Dataset:
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
        install(entry, tmp, source)
    except OSError as exc:
        logger.warning("could not cache decoded pixels in %s (%s)", root, exc)
    return ds


def install(entry: Path, complete: Path, source: str) -> None:
    """Give the complete folder ``complete`` the entry's name. Decodes of ``source`` as it was
    before (another stamp: files changed since) go; those of the same files with other settings
    (``--aspect``, ``--image-side``, seed) stay, so that switching between them decodes nothing."""
    root = entry.parent
    meta_file = complete / "meta.json"
    meta = json.loads(meta_file.read_text())
    stamp = meta["stamp"] = source_stamp(Path(source)) if Path(source).exists() else ""
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
