"""Images to leave out: ``compare --exclude FILE`` reads them from an audit's CSV or a list of files.

- an audit's ``audit.csv`` (:mod:`featx.auditing`): every row names one image by its ``split`` and
  ``index``, and by its ``file`` where it has one. On the data it was made on (its ``data``
  column, the data's fingerprint) the rows are used as they are; on other data (another task,
  seed or split of the same files) the files are looked up by name, in whichever split they are;
  rows that name neither are refused. Delete the rows of the findings you want
  to keep before passing it.
- a text file of image files, one per line (``#`` starts a comment): paths as the dataset names
  them (``train/cat/0001.jpg``), or longer paths that end with them.

Excluded train images are left out of training; excluded test images out of scoring.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import Dataset
from .errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Exclusions:
    """The images a file names (see the module's docstring)."""

    source: Path
    entries: tuple  # (split or "", index or -1, file or "")
    data: str = ""  # the fingerprint of the data an audit was made on

    def rows(self, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """``(train rows, test rows)`` of ``ds`` to leave out, sorted; a one-line error for an entry
        that names no image of ``ds``."""
        sizes = {"train": len(ds.y_train), "test": len(ds.y_test)}
        by_file: dict[str, tuple[str, int]] = {}
        if ds.files is not None:
            for split, names in zip(SPLITS, ds.files):
                by_file.update((name, (split, i)) for i, name in enumerate(names))
        same_data = bool(self.data) and self.data == ds.fingerprint
        out: dict[str, set] = {"train": set(), "test": set()}
        for split, index, file in self.entries:
            if same_data and split in SPLITS and index >= 0:
                if index >= sizes[split]:
                    raise DataError(f"{self.source}: {split} row {index} is beyond the {sizes[split]} {split} images "
                                    "of this data: the file was not made on it. Audit this data again.")  # fmt: skip
                out[split].add(index)
                continue
            if not file:
                raise DataError(
                    f"{self.source} names {split or 'an'} image by its row ({index}) and was made on other data "
                    f"({self.data or 'not recorded'}; this data is {ds.fingerprint}): rows of other data are other "
                    "images. Audit this data again, or list the images by file."
                )
            found = _lookup(file, by_file)  # in whichever split this data has it (another task splits otherwise)
            if found is None:
                where = "" if ds.files is not None else " (this data has no files: embeddings given as arrays)"
                raise DataError(f"{self.source} names '{file}', which is not an image of {ds.name}{where}. "
                                "Check the file is about this data.")  # fmt: skip
            out[found[0]].add(found[1])
        return tuple(np.array(sorted(out[s]), dtype=np.int64) for s in SPLITS)


def _lookup(file: str, by_file: dict):
    """The image a path names: the dataset's own name for it, or a longer path ending with one."""
    parts = Path(file.replace("\\", "/")).parts
    for start in range(len(parts)):
        hit = by_file.get("/".join(parts[start:]))
        if hit is not None:
            return hit
    return None


def read_exclusions(path) -> Exclusions:
    """The images that ``path`` names: an audit's CSV or a list of files (see the module's docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"Exclusion file not found: {p}. Pass an audit's audit.csv or a text file of image paths."
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(
            f"{p} is not text: pass an audit's audit.csv or a text file of image paths, one per line."
        ) from None
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.strip()), "")
    cols = [c.strip() for c in header.split(",")]
    if "split" in cols and ("index" in cols or "file" in cols):
        entries, data = [], set()
        for n, row in enumerate(csv.DictReader(lines), start=2):
            split = (row.get("split") or "").strip()
            if split not in SPLITS:
                raise DataError(f"{p}, line {n}: split must be train or test. Received: {split!r}")
            raw = (row.get("index") or "").strip()
            try:
                index = int(raw) if raw else -1
            except ValueError:
                raise DataError(f"{p}, line {n}: index must be a row number. Received: {raw!r}") from None
            entries.append((split, index, (row.get("file") or "").strip()))
            if (row.get("data") or "").strip():
                data.add(row["data"].strip())
        if len(data) > 1:
            raise DataError(f"{p} mixes rows of {len(data)} different datasets: keep the rows of one audit.")
        return Exclusions(p, tuple(entries), next(iter(data), ""))
    files = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return Exclusions(p, tuple(("", -1, f) for f in files))


def without(ds: Dataset, train_rows: np.ndarray, test_rows: np.ndarray) -> Dataset:
    """``ds`` without the given rows (its images, labels and files; a fingerprint of its own)."""
    from .data import hash_strings

    keep = [
        np.setdiff1d(np.arange(n), rows)
        for n, rows in ((len(ds.y_train), train_rows), (len(ds.y_test), test_rows))
    ]
    files = None if ds.files is None else tuple(tuple(f[i] for i in k) for f, k in zip(ds.files, keep))
    fp = hash_strings(
        ds.fingerprint, "without", ",".join(map(str, train_rows)), ",".join(map(str, test_rows))
    )
    return replace(ds, X_train=ds.X_train[keep[0]] if ds.X_train.size else ds.X_train[:0],
                   y_train=ds.y_train[keep[0]], X_test=ds.X_test[keep[1]] if ds.X_test.size else ds.X_test[:0],
                   y_test=ds.y_test[keep[1]], files=files, fingerprint=fp,
                   info={**ds.info, "excluded": f"{len(train_rows)} train, {len(test_rows)} test images"})  # fmt: skip
