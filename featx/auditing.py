"""Audit a dataset on its cached embeddings: duplicates, train/test leakage, likely label errors, outliers.

One search of every image's nearest neighbours (:mod:`featx.neighbors`, never an
N x N matrix) and one cross-validated head on the cached features find:

- **duplicates**: two images of one split whose embeddings have a cosine
  similarity of at least ``threshold`` (after the train mean is subtracted), or
  whose pixels are identical (exact). The later image of a pair is flagged, so
  leaving out every flagged image keeps one of each group;
- **leaks**: a test image with such a copy in the train split;
- **label errors**: images whose given label the out-of-sample probabilities
  contradict (cleanlab's confident learning). The probabilities are the mean of
  the head's (out-of-fold for the train split, ``folds``-fold cross-validation;
  the head fitted on every train image for the test split) and the vote of the
  image's ``neighbors`` nearest images, itself left out (weights
  ``exp(similarity / 0.1)``): together they rank planted label errors better than
  either alone (BENCHMARKS.md, "Auditing a dataset");
- **outliers**: images far from every other image: the cosine distance to their
  ``neighbors`` nearest images, flagged above the median plus ``outlier_mads``
  robust standard deviations (1.4826 x the median absolute deviation).

It also measures what they change: the head's test accuracy with and without the
leaked test images, and trained with and without the suspect train labels, each
with its 95 % exact binomial interval. :func:`audit` writes ``audit.csv``
(one row per flagged image: kind, split, row, file, score, its partner),
``audit.json`` and ``audit.html`` (a page to check them by eye: pairs side by
side, ranked) to ``reports_dir``; ``compare --exclude audit.csv`` scores heads
without the flagged images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .audit_report import write_audit_report
from .errors import CacheError, DataError, SettingsError
from .neighbors import NeighborSearch, Stacked, nearest
from .options import RunOptions, as_options, split_kwargs

#: Cosine similarity (of centred embeddings) from which two images are called copies. Chosen on
#: planted copies of real CIFAR-10 images (resized, re-encoded, cropped, brightened) against the
#: nearest distinct image: BENCHMARKS.md, "Auditing a dataset".
DEFAULT_THRESHOLD = 0.90
KINDS = ("leak", "duplicate", "label error", "outlier")
#: Copies by their pixels as well: grey thumbnails of this side, cosine similarity from
#: ``pixel_threshold``, and embeddings at least this similar (two smooth skies are not copies).
PIXEL_SIDE = 16
DEFAULT_PIXEL_THRESHOLD = 0.97
PIXEL_PAIR_FLOOR = 0.5
#: Temperature of the nearest images' vote on a label (weights exp(similarity / 0.1)).
VOTE_TEMPERATURE = 0.1


@dataclass(frozen=True)
class AuditSettings:
    """How an audit judges (see the module's docstring).

    Parameters
    ----------
    threshold : float in [0, 1]
        Cosine similarity of the embeddings from which two images are copies (duplicates, leaks).
    head : str
        The head whose out-of-sample probabilities rank the labels (one with
        ``predict_proba``; default logreg).
    folds : int
        Cross-validation folds for the train split's probabilities.
    neighbors : int
        Nearest images searched per image (copies beyond them are not listed;
        the outlier score is the mean distance to them).
    outlier_mads : float
        Outliers: a distance above the median by this many robust standard deviations.
    pixel_threshold : float
        Cosine similarity of the images' grey 16 x 16 thumbnails (each minus its mean) from
        which two images are copies too, where their embeddings are at least 0.5 similar; above 1:
        by embeddings alone. It finds resized, re-encoded and brightened copies that the
        embeddings of small images miss.
    search : NeighborSearch
        How the nearest neighbours are found (exact by default).
    n_jobs : int
        Parallel fits of the cross-validation.
    """

    threshold: float = DEFAULT_THRESHOLD
    head: str = "logreg"
    folds: int = 5
    neighbors: int = 10
    outlier_mads: float = 4.0
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD
    search: NeighborSearch = field(default_factory=NeighborSearch)
    n_jobs: int = 2

    def __post_init__(self):
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not 0.0 <= float(t) <= 1.0:
            raise SettingsError(f"threshold is a cosine similarity from 0 to 1 (e.g. {DEFAULT_THRESHOLD}). "
                                f"Received: threshold={t!r}")  # fmt: skip
        t = self.pixel_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not 0.0 <= float(t):
            raise SettingsError(f"pixel_threshold is a cosine similarity from 0 to 1 (e.g. {DEFAULT_PIXEL_THRESHOLD}), "
                                f"or above 1 to judge copies by the embeddings alone. Received: pixel_threshold={t!r}")  # fmt: skip
        for name, low, high in (("folds", 2, 100), ("neighbors", 1, 1000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
                raise SettingsError(f"{name} must be an integer from {low} to {high}. Received: {name}={v!r}")
        m = self.outlier_mads
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise SettingsError(f"outlier_mads must be a positive number. Received: outlier_mads={m!r}")
        if not isinstance(self.search, NeighborSearch):
            raise SettingsError(f"search must be a NeighborSearch. Received: search={self.search!r}")

    def head_estimator(self):
        """A fresh head with probabilities."""
        from .heads import make_head

        est = make_head(self.head)
        if "probability" in est.get_params():
            est.set_params(probability=True)
        if not hasattr(est, "predict_proba"):
            raise SettingsError(f"The audit ranks labels by a head's probabilities, and head {self.head!r} has none: "
                                "use logreg, dense, knn or centroid.")  # fmt: skip
        return est


@dataclass
class Finding:
    """One flagged image. ``score``: the similarity of its embedding to its partner's (duplicate,
    leak; ``pixels``: that of their thumbnails, where the pixels found the pair), the probability
    of its given label (label error: low is suspect; the mean of the head's and its nearest images'
    vote, as ``confidence`` is of the predicted label), or its distance to its nearest
    images (outlier: high is far)."""

    kind: str
    split: str
    index: int
    score: float
    file: str = ""
    partner_split: str = ""
    partner_index: int = -1
    partner_file: str = ""
    exact: bool = False
    pixels: float = float("nan")
    given: str = ""
    predicted: str = ""
    confidence: float = float("nan")

    def row(self) -> dict:
        return asdict(self)


@dataclass
class AuditResult:
    """What :func:`audit_features` found.

    Attributes
    ----------
    findings : list of Finding
        Ranked within each kind: most similar pairs, least likely labels,
        farthest images first.
    accuracy : list of dict
        The head's test accuracy, trained with and without the suspect train
        labels and scored with and without the leaked test images:
        ``train``, ``test``, ``n_train``, ``n_test``, ``accuracy``, ``low``, ``high``.
    n_train, n_test : int
    class_names : tuple of str
    settings : AuditSettings
    search : str
        The neighbour search that ran (:meth:`NeighborSearch.describe`).
    exact_by : str
        "pixels" or "embeddings": what exact duplicates were judged by.
    seconds : dict
        Time of each step.
    data : str
        Fingerprint of the data audited (an audit's CSV names it, so that it is
        never applied to other data).
    """

    findings: list
    accuracy: list
    n_train: int
    n_test: int
    class_names: tuple
    settings: AuditSettings
    search: str
    exact_by: str
    seconds: dict
    data: str = ""
    features: str = ""

    def csv_fields(self) -> list[str]:
        """The columns of audit.csv: a finding's fields, and the data's fingerprint."""
        import dataclasses

        return [f.name for f in dataclasses.fields(Finding)] + ["data"]

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def counts(self) -> dict[str, int]:
        return {k: len(self.of(k)) for k in KINDS}

    def flagged(self, kind: str, split: str) -> np.ndarray:
        """Rows of ``split`` flagged as ``kind``, sorted."""
        return np.array(
            sorted({f.index for f in self.findings if f.kind == kind and f.split == split}), dtype=np.int64
        )

    def summary(self) -> str:
        """Counts per finding and the accuracy table, as text."""
        c = self.counts()
        exact = {k: sum(f.exact for f in self.of(k)) for k in ("leak", "duplicate")}
        lines = [
            f"audited {self.n_train} train and {self.n_test} test images ({len(self.class_names)} classes); "
            f"copies: cosine >= {self.settings.threshold:g}; search: {self.search}",
            f"  leaks (test images with a copy in train)  {c['leak']:>6}  ({exact['leak']} identical pixels)"
            if self.exact_by == "pixels" else
            f"  leaks (test images with a copy in train)  {c['leak']:>6}  ({exact['leak']} identical embeddings)",
            f"  duplicates within a split                 {c['duplicate']:>6}  ({exact['duplicate']} exact)",
            f"  likely label errors                       {c['label error']:>6}  "
            f"({len(self.flagged('label error', 'train'))} train, {len(self.flagged('label error', 'test'))} test)",
            f"  outliers                                  {c['outlier']:>6}",
            "",
            f"{self.settings.head} accuracy on the test split (95% exact binomial interval):",
        ]  # fmt: skip
        for r in self.accuracy:
            lines.append(f"  train {r['train']:<26} test {r['test']:<22} {r['accuracy']:>7.2%}  "
                         f"{r['low']:.1%}-{r['high']:.1%}  ({r['n_train']} train, {r['n_test']} test)")  # fmt: skip
        return "\n".join(lines)


def audit_features(X_train, y_train, X_test, y_test, class_names=(), *, settings: AuditSettings | None = None,
                   images=None, files=None, seed: int = 0, progress: bool | None = None,
                   data: str = "", features: str = "") -> AuditResult:  # fmt: skip
    """Audit embeddings given as arrays (see the module's docstring).

    ``images``: ``(train images, test images)`` (uint8), to judge exact duplicates by their
    pixels (else by identical embeddings); ``files``: ``(train names, test names)``.
    """
    settings = settings or AuditSettings()
    X_train, X_test = np.asarray(X_train), np.asarray(X_test)
    y_train, y_test = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    n_classes = len(class_names) or int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    class_names = tuple(class_names) or tuple(map(str, range(n_classes)))
    check_auditable(y_train, y_test, class_names, settings.folds)
    seconds: dict = {}
    findings: list[Finding] = []
    names = files or ((), ())

    def name(split: str, i: int) -> str:
        f = names[0 if split == "train" else 1]
        return f[i] if i < len(f) else ""

    n_tr = len(X_train)
    split_of = np.array(["train"] * n_tr + ["test"] * len(X_test), dtype=object)
    local = np.concatenate([np.arange(n_tr), np.arange(len(X_test))])

    # -- exact copies: identical pixels (or identical embeddings where no pixels came with them)
    t0 = time.perf_counter()
    digests = _digests(images) if images is not None else [_row_digest(X) for X in (X_train, X_test)]
    exact_of = _first_equal(np.concatenate(digests))  # row -> earlier row with equal content, or -1
    seconds["exact"] = time.perf_counter() - t0

    # -- nearest neighbours of every image among all images (train mean subtracted)
    t0 = time.perf_counter()
    X_all = Stacked(X_train, X_test)  # one bank, no copy
    search = settings.search if settings.search.progress is not None else \
        NeighborSearch(**{**asdict(settings.search), "progress": progress})  # fmt: skip
    center = X_train.mean(axis=0, dtype=np.float64)  # summed in float64, no float64 copy of the rows
    sims, idx = nearest(X_all, settings.neighbors, search=search, center=center, desc="nearest images")
    seconds["neighbours"] = time.perf_counter() - t0

    # -- copies: pairs by embedding similarity, and (where there are images) by pixel similarity
    R, J, E, P = _pairs_by_embedding(sims, idx, settings.threshold)
    if images is not None and settings.pixel_threshold <= 1.0:
        t0 = time.perf_counter()
        R2, J2, E2, P2 = _pairs_by_pixels(images, X_all, center, settings, search)
        R, J, E, P = (np.concatenate(a) for a in ((R, R2), (J, J2), (E, E2), (P, P2)))
        seconds["pixels"] = time.perf_counter() - t0
    del X_all
    # a test image with a copy in train (leak); the later image of a pair within a split (duplicate)
    is_test = split_of == "test"
    for kind, keep in (("leak", is_test[R] & ~is_test[J]), ("duplicate", (is_test[R] == is_test[J]) & (J < R))):
        r_, j_, e_, p_ = R[keep], J[keep], E[keep], P[keep]
        order = np.lexsort((-e_, r_))  # by row, most similar first
        first = order[np.r_[True, r_[order][1:] != r_[order][:-1]]] if len(order) else order
        for k in first:
            r, j = int(r_[k]), int(j_[k])
            findings.append(Finding(kind, split_of[r], int(local[r]), float(e_[k]), name(split_of[r], int(local[r])),
                                    split_of[j], int(local[j]), name(split_of[j], int(local[j])), False,
                                    pixels=float(p_[k])))  # fmt: skip
    _mark_exact(findings, exact_of, split_of, local, name)

    # -- outliers: far from their nearest images
    valid = idx >= 0
    k_sims = np.where(valid, sims, np.nan)
    dist = 1.0 - np.nanmean(k_sims, axis=1) if valid.any() else np.zeros(len(idx))
    med = float(np.nanmedian(dist))
    spread = 1.4826 * float(np.nanmedian(np.abs(dist - med)))
    far = np.flatnonzero(dist > med + settings.outlier_mads * max(spread, 1e-6))
    for r in far[np.argsort(-dist[far], kind="stable")]:
        findings.append(
            Finding("outlier", split_of[r], int(local[r]), float(dist[r]), name(split_of[r], int(local[r])))
        )

    # -- label errors, and the accuracy with and without what was found
    t0 = time.perf_counter()
    proba_train, est = _out_of_fold(settings, X_train, y_train, n_classes, seed, progress)
    proba_test = _proba(est, X_test, n_classes)
    seconds["cross-validation"] = time.perf_counter() - t0
    # the ranking: the head's out-of-sample probabilities averaged with the vote of each image's nearest images
    votes = knn_votes(sims, idx, np.concatenate([y_train, y_test]), n_classes)
    ranking = ((proba_train + votes[:n_tr]) / 2, (proba_test + votes[n_tr:]) / 2)
    for split, y, proba in (("train", y_train, ranking[0]), ("test", y_test, ranking[1])):
        for i in _label_issues(y, proba):
            p = int(np.argmax(proba[i]))
            findings.append(Finding("label error", split, int(i), float(proba[i, y[i]]), name(split, int(i)),
                                    given=class_names[y[i]], predicted=class_names[p], confidence=float(proba[i, p])))  # fmt: skip
    t0 = time.perf_counter()
    leaked = {f.index for f in findings if f.kind == "leak"}
    suspect = {f.index for f in findings if f.kind == "label error" and f.split == "train"}
    pred_all = np.argmax(proba_test, axis=1) if len(X_test) else np.zeros(0, np.int64)
    keep_train = np.setdiff1d(np.arange(n_tr), np.fromiter(suspect, np.int64, len(suspect)))
    if suspect and len(np.unique(y_train[keep_train])) == len(np.unique(y_train)):
        from sklearn.base import clone

        cleaner = clone(est).fit(X_train[keep_train], y_train[keep_train])
        pred_clean = cleaner.classes_[np.argmax(cleaner.predict_proba(X_test), axis=1)]
    else:
        pred_clean = pred_all
    clean_test = np.setdiff1d(np.arange(len(X_test)), np.fromiter(leaked, np.int64, len(leaked)))
    accuracy = []
    for train_name, pred, n_train in (
        ("all", pred_all, n_tr),
        ("without suspect labels", pred_clean, len(keep_train)),
    ):
        for test_name, rows_ in (("all", np.arange(len(X_test))), ("without leaked images", clean_test)):
            accuracy.append(_accuracy_row(train_name, test_name, y_test[rows_], pred[rows_], n_train))
    seconds["refit"] = time.perf_counter() - t0
    order = {k: i for i, k in enumerate(KINDS)}
    findings.sort(key=lambda f: (order[f.kind], _rank(f)))
    return AuditResult(findings, accuracy, n_tr, len(X_test), class_names, settings, search.describe(len(idx)),
                       "pixels" if images is not None else "embeddings", seconds, data, features)  # fmt: skip


def _pairs_by_embedding(sims, idx, threshold: float):
    """``(rows, partners, embedding similarity, pixel similarity = nan)`` of the neighbours at or above ``threshold``."""
    r, c = np.nonzero((idx >= 0) & (sims >= threshold))
    return r, idx[r, c], sims[r, c].astype(np.float64), np.full(len(r), np.nan)


def pixel_signatures(images, side: int = PIXEL_SIDE) -> np.ndarray:
    """Each image as a ``side`` x ``side`` grey thumbnail (box-averaged), minus its own mean: the
    cosine similarity of two signatures ignores brightness and contrast, a resize and a re-encode."""
    from PIL import Image

    out = np.empty((len(images), side * side), np.float32)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    h0, w0 = images.shape[1:3] if len(images) else (side, side)
    rows = max(1, (64 << 20) // (h0 * w0 * 3 * 4))  # blocks of about 64 MiB of float pixels
    for start in range(0, len(images), rows):
        block = np.asarray(images[start : start + rows])
        h, w = block.shape[1:3]
        if h % side == 0 and w % side == 0:
            grey = (block.astype(np.float32) @ weights).reshape(len(block), side, h // side, side, w // side).mean(axis=(2, 4))
        else:
            grey = np.stack([np.asarray(Image.fromarray(im).convert("L").resize((side, side), Image.BOX), np.float32)
                             for im in block])  # fmt: skip
        grey = grey.reshape(len(block), -1)
        out[start : start + len(block)] = grey - grey.mean(axis=1, keepdims=True)
    return out


def _pairs_by_pixels(images, X_all, center, settings, search):
    """Pairs whose pixel signatures are at least ``pixel_threshold`` similar and whose embeddings
    at least :data:`PIXEL_PAIR_FLOOR`: ``(rows, partners, embedding similarity, pixel similarity)``."""
    from .neighbors import unit_rows

    sig = np.concatenate([pixel_signatures(split) for split in images])
    psims, pidx = nearest(sig, settings.neighbors, search=search, desc="nearest thumbnails")
    r, c = np.nonzero((pidx >= 0) & (psims >= settings.pixel_threshold))
    j = pidx[r, c]
    e = np.empty(len(r))
    for s in range(0, len(r), 4096):
        a = unit_rows(X_all[r[s : s + 4096]], center)
        b = unit_rows(X_all[j[s : s + 4096]], center)
        e[s : s + 4096] = np.sum(a * b, axis=1)
    keep = e >= PIXEL_PAIR_FLOOR
    return r[keep], j[keep], e[keep], psims[r, c][keep].astype(np.float64)


def _rank(f: Finding) -> float:
    return f.score if f.kind == "label error" else -f.score


def check_auditable(y_train, y_test, class_names, folds: int) -> None:
    """One line for data an audit cannot judge: one class, a test split of fewer than two images,
    fewer train images of a class than cross-validation folds."""
    present = np.unique(y_train)
    if len(present) < 2:
        raise DataError(f"An audit needs at least 2 classes in the train split; it has {len(present)} "
                        f"({', '.join(class_names[int(c)] for c in present) or 'none'}). Add images of other classes.")  # fmt: skip
    if len(y_test) < 2:
        raise DataError(f"An audit needs a test split of at least 2 images to measure what its findings change; "
                        f"it has {len(y_test)}. Give the data a test split (or more images, for featx's own split).")  # fmt: skip
    counts = np.bincount(y_train)
    fewest = int(counts[present].min())
    if fewest < folds:
        c = class_names[int(present[np.argmin(counts[present])])]
        raise DataError(f"Class {c!r} has {fewest} train images, fewer than the {folds} cross-validation folds "
                        f"that rank the labels: add images, or pass --folds {max(2, fewest)}."
                        if fewest >= 2 else
                        f"Class {c!r} has {fewest} train image: the labels cannot be cross-validated. "
                        "Add images of it, or leave the class out.")  # fmt: skip


def _digests(images) -> list[np.ndarray]:
    from .images import image_digest

    return [np.array([image_digest(im) for im in split], dtype="S16").reshape(-1) for split in images]


def _row_digest(X: np.ndarray) -> np.ndarray:
    import hashlib

    X = np.ascontiguousarray(X)
    return np.array([hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in X], dtype="S16").reshape(
        -1
    )


def _first_equal(digests: np.ndarray) -> np.ndarray:
    """For each row, the first earlier row with the same digest, else -1."""
    out = np.full(len(digests), -1, dtype=np.int64)
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    first_of = first[inverse.reshape(-1)]
    later = first_of != np.arange(len(digests))
    out[later] = first_of[later]
    return out


def _mark_exact(findings: list, exact_of: np.ndarray, split_of, local, name) -> None:
    """Exact copies are findings whatever the embeddings say, and say so. The rows come train first,
    so an image's first copy is in train wherever it has one there: a test image's is a leak."""
    by_key = {(f.kind, f.split, f.index): f for f in findings}
    for r in np.flatnonzero(exact_of >= 0):
        j = int(exact_of[r])
        kind = "duplicate" if split_of[r] == split_of[j] else "leak"
        key = (kind, split_of[r], int(local[r]))
        f = by_key.get(key)
        if f is None:
            f = by_key[key] = Finding(kind, split_of[r], int(local[r]), 1.0, name(split_of[r], int(local[r])))
            findings.append(f)
        f.partner_split, f.partner_index, f.partner_file = (
            split_of[j],
            int(local[j]),
            name(split_of[j], int(local[j])),
        )
        f.exact, f.score = True, max(f.score, 1.0)


def _out_of_fold(settings: AuditSettings, X, y, n_classes: int, seed: int, progress=None):
    """Out-of-fold probabilities of the train rows, and the head fitted on all of them: ``folds``
    + 1 fits, ``n_jobs`` at a time, with a progress bar."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    est = settings.head_estimator()
    if "random_state" in est.get_params():
        est.set_params(random_state=seed)
    folds = list(StratifiedKFold(settings.folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    jobs = [(train, test) for train, test in folds] + [(np.arange(len(y)), None)]
    full, fitted = np.zeros((len(X), n_classes)), None
    run = Parallel(n_jobs=min(settings.n_jobs, len(jobs)), return_as="generator_unordered")
    bar = tqdm(total=len(jobs), desc=f"cross-validating {settings.head}", unit="fit", leave=False,
               disable=None if progress is None else not progress)  # fmt: skip
    with bar:
        for test, model, proba in run(delayed(_fit_fold)(est, X, y, train, test) for train, test in jobs):
            if test is None:
                fitted = model
            else:
                full[np.ix_(test, model.classes_)] = proba
            bar.update(1)
    return full, fitted


def _fit_fold(est, X, y, train, test):
    """One fit of the cross-validation: ``(test rows, model, their probabilities)``; the model is
    returned for the fit on every row (``test`` None) alone."""
    from sklearn.base import clone

    model = clone(est).fit(X[train], y[train])
    if test is None:
        return None, model, None
    return test, _Classes(model.classes_), model.predict_proba(X[test])


class _Classes:
    """What the caller needs of a fold's model: its classes (the model itself stays in the worker)."""

    def __init__(self, classes):
        self.classes_ = classes


def _proba(est, X, n_classes: int) -> np.ndarray:
    out = np.zeros((len(X), n_classes))
    if len(X):
        out[:, est.classes_] = est.predict_proba(X)
    return out


def knn_votes(sims: np.ndarray, idx: np.ndarray, labels: np.ndarray, n_classes: int,
              temperature: float = VOTE_TEMPERATURE) -> np.ndarray:  # fmt: skip
    """Class probabilities of each row from the labels of its nearest rows (itself left out): votes
    weighted by ``exp(similarity / temperature)``. A row with no neighbour gets a uniform vote."""
    valid = idx >= 0
    s = np.where(valid, sims, -np.inf).astype(np.float64)
    w = np.where(valid, np.exp((s - s.max(axis=1, keepdims=True)) / temperature), 0.0)
    out = np.zeros((len(idx), n_classes))
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    np.add.at(out, (rows, labels[np.maximum(idx, 0)].ravel()), w.ravel())
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1), 1.0 / n_classes)


def _label_issues(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Rows whose label is likely wrong, least likely first: cleanlab's confident learning."""
    import warnings

    from cleanlab.filter import find_label_issues

    present = np.unique(y)
    if len(y) < 2 or len(present) < 2:
        return np.zeros(0, np.int64)
    # cleanlab wants every column a class present in the labels: the columns of absent classes go
    cols = present
    p = proba[:, cols]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    labels = np.searchsorted(cols, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = find_label_issues(labels, p, filter_by="prune_by_noise_rate",
                                   return_indices_ranked_by="self_confidence", n_jobs=1)  # fmt: skip
    return np.asarray(ranked, dtype=np.int64)


def _accuracy_row(train: str, test: str, y: np.ndarray, pred: np.ndarray, n_train: int) -> dict:
    from .stats import accuracy_interval

    correct = int(np.sum(y == pred))
    lo, hi = accuracy_interval(correct, len(y))
    return {"train": train, "test": test, "n_train": int(n_train), "n_test": int(len(y)),
            "accuracy": correct / len(y) if len(y) else float("nan"), "low": lo, "high": hi}  # fmt: skip


def audit(spec="trunk", data=None, task: str | None = None, *, features=None, threshold: float = DEFAULT_THRESHOLD,
          head: str = "logreg", folds: int = 5, neighbors: int = 10, outlier_mads: float = 4.0,
          pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD,
          search: NeighborSearch | None = None, n_jobs: int = 2, reports_dir="reports",
          options: RunOptions | None = None, **kwargs) -> tuple[AuditResult, dict[str, Path]]:  # fmt: skip
    """Audit a dataset on its cached features, or on embeddings made elsewhere; write the page.

    ``spec`` and the feature settings among ``kwargs`` say which cached features
    (as for :func:`featx.extract_features`); they must be cached already (the
    error names the ``extract`` to run). ``features``: an ``.npz`` or ``.h5``
    file of embeddings instead (:func:`featx.data.load_embeddings`). The other
    parameters are those of :class:`AuditSettings`.

    Returns the result and the paths of ``audit.csv``, ``audit.json`` and ``audit.html``.

    Examples
    --------
    >>> from featx import audit
    >>> result, paths = audit("trunk", "sample", weights="none", reports_dir=tmp)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    settings = AuditSettings(threshold=threshold, head=head, folds=folds, neighbors=neighbors, outlier_mads=outlier_mads,
                             pixel_threshold=pixel_threshold, search=search or NeighborSearch(), n_jobs=n_jobs)  # fmt: skip
    spec_settings, run = split_kwargs(kwargs)
    opts = as_options(options, **run)
    Path(reports_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after the work
    if features is not None:
        from .data import load_embeddings

        ds, (X_train, y_train, X_test, y_test) = load_embeddings(features)
        label = f"{Path(features).name} ({X_train.shape[1]}-d)"
        result = audit_features(X_train, y_train, X_test, y_test, ds.class_names, settings=settings, seed=opts.seed,
                                progress=opts.progress, data=ds.fingerprint, features=label)  # fmt: skip
        return result, write_audit_report(result, None, reports_dir)
    ds, fs = cached_features(spec, data, task, opts, spec_settings)
    X_train, y_train, X_test, y_test = fs.load()
    result = audit_features(X_train, y_train, X_test, y_test, fs.class_names, settings=settings,
                            images=(ds.X_train, ds.X_test), files=ds.files, seed=opts.seed, progress=opts.progress,
                            data=ds.fingerprint, features=fs.settings.get("backbone", ""))  # fmt: skip
    from .spec import describe

    result.features = describe(fs.settings)
    return result, write_audit_report(result, ds, reports_dir)


def cached_features(spec, data, task, opts: RunOptions, spec_settings: dict):
    """``(dataset, feature set)`` of ``spec`` on ``data``, from the cache; a one-line error naming the
    ``extract`` that makes them where they are not cached yet."""
    from .cache import feature_path, find_features
    from .data import load_dataset
    from .extract import feature_settings
    from .extractor import Extractor
    from .spec import as_spec

    spec = as_spec(spec, **spec_settings)
    task = task or spec.backbone_.default_task
    ds = load_dataset(data, task, cache_dir=opts.cache_dir, seed=opts.seed, images=spec.images, progress=opts.progress)
    extractor = Extractor(spec, seed=opts.seed, data=ds, cache_dir=opts.cache_dir, progress=opts.progress)
    settings = feature_settings(extractor, ds)
    fs = find_features(settings, opts.cache_dir)
    if fs is None:
        where = feature_path(settings, opts.cache_dir)
        raise CacheError(f"No cached features of {spec.describe()} on {ds.name} ({task}) yet ({where.name}): "
                         f"run `python cli.py extract {_extract_args(spec, data, task, opts)}` first, then audit again.")  # fmt: skip
    return ds, fs


def _extract_args(spec, data, task: str, opts: RunOptions) -> str:
    """The command-line arguments of the ``extract`` that makes ``spec``'s features: every feature
    setting that differs from the backbone's default, as its option."""
    import dataclasses
    import shlex

    args = ["--backbone", str(spec.backbone), "--data", str(data or "sample"), "--task", task]
    default = type(spec)(spec.backbone)
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if f.name == "backbone" or v == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else f"--no-{f.name}")
        else:
            args += [flag, ",".join(v) if isinstance(v, tuple) else str(v)]
    if opts.seed:
        args += ["--seed", str(opts.seed)]
    if opts.cache_dir is not None:
        args += ["--cache-dir", str(opts.cache_dir)]
    return " ".join(shlex.quote(a) for a in args)
