"""An evaluation of heads on features: what goes in (:class:`LabelledFeatures`, :class:`EvalSettings`),
what comes out (:class:`FitResult`), and :func:`evaluate_heads`, which fits and scores.

:class:`LabelledFeatures` holds the arrays of one evaluation, their class names and what made
them; :class:`EvalSettings` holds how heads are evaluated on them (which heads, their
parameters, tuning, repeated splits, learning curves, parallel jobs, the seed). Both are handed
down whole, from ``fit_head`` and ``compare`` to each fit.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score

from .errors import HeadError, SettingsError
from .heads import HEADS, make_head


@dataclass(frozen=True, eq=False)
class LabelledFeatures:
    """The features of one evaluation: train and test rows with their labels (``0..k-1``), the
    class names, and what made them (the backbone's label and the features' description).

    >>> import numpy as np
    >>> f = LabelledFeatures(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((2, 2)), np.array([0, 1]), ("a", "b"))
    >>> f.without(([0], [])).X_train.shape
    (3, 2)
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple = ()
    backbone: str = ""
    features: str = ""

    @property
    def in_memory(self) -> bool:
        """Whether the rows are arrays in memory (else they are read from the cache in blocks)."""
        return isinstance(self.X_train, np.ndarray) and isinstance(self.X_test, np.ndarray)

    @property
    def arrays(self) -> tuple:
        """``(X_train, y_train, X_test, y_test)``."""
        return self.X_train, self.y_train, self.X_test, self.y_test

    def without(self, rows) -> LabelledFeatures:
        """These features without the ``(train rows, test rows)`` given."""
        tr, te = rows
        return replace(self, X_train=np.delete(self.X_train, tr, axis=0), y_train=np.delete(self.y_train, tr),
                       X_test=np.delete(self.X_test, te, axis=0), y_test=np.delete(self.y_test, te))  # fmt: skip

    def columns(self, cols: slice, **what) -> LabelledFeatures:
        """These features' columns ``cols`` (a part of them, made by ``what``: backbone, features)."""
        if self.in_memory:
            return replace(self, X_train=self.X_train[:, cols], X_test=self.X_test[:, cols], **what)
        from .streaming import Columns

        return replace(self, X_train=Columns(self.X_train, cols), X_test=Columns(self.X_test, cols), **what)


@dataclass(frozen=True)
class EvalSettings:
    """How heads are evaluated on features: checked whole when made, before any work.

    Parameters
    ----------
    heads : tuple of str
        Registry names of the heads (:data:`featx.heads.HEADS`).
    params : dict
        Head name -> its parameters.
    tune : bool
        Choose each head's parameters by cross-validation on the train split first (:mod:`featx.tune`).
    repeats : int
        Fit every head on that many seeded splits too (mean and s.d.).
    train_sizes : tuple or None
        Images per class (or "all") for learning curves (:mod:`featx.curves`).
    n_jobs : int
        Processes for the scikit-learn heads.
    seed : int
        The seed of the repeated splits and curve subsets.
    stream : bool or None
        Fit the heads on the cache read a block of rows at a time (:mod:`featx.streaming`): None
        (default) as the work needs: the rows are read into memory (as stored) where they fit in
        the memory budget (:func:`featx.streaming.fits_in_memory`), and each head is fitted from
        them where its working set fits beside them, else a block at a time; True always, False never.

    >>> EvalSettings(heads=("logreg",), repeats=0)
    Traceback (most recent call last):
    ...
    featx.errors.SettingsError: repeats must be an integer from 1 to 100. Received: repeats=0
    """

    heads: tuple = ("dense", "logreg", "svm")
    params: dict = field(default_factory=dict)
    tune: bool = False
    repeats: int = 1
    train_sizes: tuple | None = None
    n_jobs: int = 2
    seed: int = 0
    stream: bool | None = None

    def __post_init__(self):
        from .curves import parse_train_sizes

        heads = (self.heads,) if isinstance(self.heads, str) else tuple(self.heads or ())
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "params", dict(self.params or {}))
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 1 <= self.repeats <= 100:
            raise SettingsError(f"repeats must be an integer from 1 to 100. Received: repeats={self.repeats!r}")
        if self.train_sizes is not None:
            sizes = self.train_sizes
            try:
                sizes = parse_train_sizes(sizes if isinstance(sizes, str) else ",".join(map(str, sizes)))
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
            object.__setattr__(self, "train_sizes", tuple(sizes))
        if not heads:
            raise HeadError(f"No heads to fit: name at least one of {', '.join(HEADS)}.")
        stray = [h for h in self.params if h not in heads]
        if stray:
            raise HeadError(
                f"Parameters are given for head {stray[0]!r}, which is not compared here (heads: {', '.join(heads)}; "
                f"known heads: {', '.join(HEADS)}). Received: params for {stray[0]!r}"
            )
        for h in heads:
            self.estimator(h)  # unknown heads and bad parameters fail before any work
            self._check_tune(h)
        if self.stream:
            self.check_streams()

    def streams(self, rows: int, width: int, itemsize: int = 4) -> bool:
        """Whether features of ``rows`` x ``width`` (``itemsize`` bytes a value, as stored) stay in
        their file, read in blocks (see ``stream``), rather than read into memory."""
        from .streaming import fits_in_memory

        return bool(self.stream) if self.stream is not None else not fits_in_memory(rows * width * itemsize)

    def in_blocks(self, head: str, data: LabelledFeatures) -> bool:
        """Whether ``head`` is fitted on ``data`` a block of rows at a time: rows left in their
        file; else where the head can learn so and its working set
        (:meth:`featx.heads.Head.working_set`) would not fit in the memory budget beside the rows
        (``stream`` None, without tuning, repeats or curves, which need them whole)."""
        if not data.in_memory:
            return True
        if self.stream is not None or self.tune or self.repeats > 1 or self.train_sizes or not HEADS[head].streams():
            return False
        return not self.fits(head, data)

    def fits(self, head: str, data: LabelledFeatures, heads_at_once: int = 1) -> bool:
        """Whether ``heads_at_once`` fits of ``head`` from ``data``'s rows in memory fit in the budget."""
        from .streaming import fits_in_memory

        rows, width = len(data.X_train) + len(data.X_test), data.X_train.shape[1]
        held = data.X_train.nbytes + data.X_test.nbytes
        return fits_in_memory(held + heads_at_once * HEADS[head].working_set(rows, width, len(data.class_names)))

    def check_streams(self, rows: int | None = None, width: int | None = None) -> None:
        """What reading the features in blocks rules out, refused before any fit: heads that need
        every row in memory, tuning, repeated splits and learning curves."""
        held = [h for h in self.heads if not HEADS[h].streams()]
        size = "" if rows is None else f" ({rows:,} x {width:,} features need {4 * rows * width / 2**30:,.1f} GiB as float32)"
        if held:
            streaming = ", ".join(h for h, cls in HEADS.items() if cls.streams())
            raise HeadError(f"These features are read in blocks{size}, and {', '.join(held)} needs all of them in "
                            f"memory: use heads that learn a block at a time ({streaming}), or fewer rows.")  # fmt: skip
        if self.tune or self.repeats > 1 or self.train_sizes:
            raise SettingsError(f"These features are read in blocks{size}: --tune, --repeats and --train-sizes need "
                                "them in memory. Leave them out.")  # fmt: skip

    def estimator(self, head: str):
        """A fresh ``head`` with its parameters."""
        return make_head(head, **self.params.get(head, {}))

    def _check_tune(self, head: str) -> None:
        """A parameter set by hand and searched by ``tune`` would be silently overridden: refuse."""
        if not self.tune:
            return
        grid = HEADS[head].search
        both = sorted(set(self.params.get(head, {})) & set(grid))
        if both:
            raise HeadError(
                f"The {head} head's {', '.join(both)} is both given and tuned (its search: {grid}). Drop the "
                "parameter or drop --tune."
            )


@dataclass(kw_only=True)
class FitResult:
    """A fitted head and how it did on the held-out split."""

    backbone: str
    head: str
    accuracy: float
    macro_f1: float
    fit_seconds: float
    predict_ms_per_image: float
    estimator: object
    y_test: np.ndarray
    y_pred: np.ndarray
    class_names: tuple = ()
    note: str = ""
    features: str = ""
    params: dict = field(default_factory=dict)
    cv_accuracy: float | None = None
    extract_seconds: float | None = None
    proba: np.ndarray | None = None  # test-split probabilities, columns in label order (heads that have them)
    p_vs_best: float | None = None  # McNemar's exact test against the best result (None: this is the best)
    repeat_accuracies: list = field(
        default_factory=list
    )  # with compare(repeats=N): this split's, then N-1 more

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        """The 95 % exact binomial (Clopper-Pearson) interval of :attr:`accuracy` on these test images."""
        from .stats import accuracy_interval

        return accuracy_interval(
            int(np.sum(np.asarray(self.y_test) == np.asarray(self.y_pred))), len(self.y_test)
        )

    @property
    def distinguishable(self) -> bool | None:
        """Whether McNemar's test tells this result from the best at the 5 % level (None for the best)."""
        from .stats import ALPHA

        return None if self.p_vs_best is None else bool(self.p_vs_best < ALPHA)

    @property
    def calibration(self) -> dict | None:
        """Expected calibration error and reliability bins (:func:`featx.stats.calibration`), or None."""
        from .stats import calibration

        return None if self.proba is None else calibration(self.proba, self.y_test)

    def per_class(self) -> list[dict]:
        """Precision, recall, F1 and support of every class on the test split."""
        from sklearn.metrics import precision_recall_fscore_support

        labels = np.arange(len(self.class_names)) if self.class_names else np.unique(self.y_test)
        p, r, f, n = precision_recall_fscore_support(self.y_test, self.y_pred, labels=labels, zero_division=0)
        names = self.class_names or [str(k) for k in labels]
        return [{"class": str(names[i]), "precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                 "f1": round(float(f[i]), 4), "support": int(n[i])} for i in range(len(labels))]  # fmt: skip

    def row(self) -> dict:
        lo, hi = self.accuracy_interval
        reps = np.asarray(self.repeat_accuracies, dtype=np.float64)
        cal = self.calibration
        return {
            "backbone": self.backbone,
            "features": self.features,
            "head": self.head,
            "accuracy": round(self.accuracy, 4),
            "accuracy_ci_low": round(lo, 4),
            "accuracy_ci_high": round(hi, 4),
            "p_vs_best": "" if self.p_vs_best is None else float(f"{self.p_vs_best:.4g}"),
            "distinguishable_from_best": {None: "best", True: "yes", False: "no"}[self.distinguishable],
            "repeats": max(1, len(reps)),
            "accuracy_mean": round(float(reps.mean()), 4) if len(reps) > 1 else "",
            "accuracy_std": round(float(reps.std(ddof=1)), 4) if len(reps) > 1 else "",
            "ece": "" if cal is None else round(cal["ece"], 4),
            "macro_f1": round(self.macro_f1, 4),
            "fit_seconds": round(self.fit_seconds, 3),
            "predict_ms_per_image": round(self.predict_ms_per_image, 4),
            "params": json.dumps(self.params, sort_keys=True) if self.params else "",
            "cv_accuracy": "" if self.cv_accuracy is None else round(self.cv_accuracy, 4),
            "extract_seconds": "" if self.extract_seconds is None else round(self.extract_seconds, 3),
            "note": self.note,
        }


def evaluate_head(head: str, estimator, data: LabelledFeatures, settings: EvalSettings, client=None) -> FitResult:
    """Fit a clone of ``estimator`` (the head named ``head``) on ``data``'s train rows and score it
    on its test rows. Rows on disk with a Dask ``client``: fitted on its workers, each reading its
    blocks of the file (:func:`featx.cluster_fit.fit_on_cluster`), scored here.

    With ``settings.tune``, the head's parameters are chosen first by a cross-validated grid
    search on the train rows alone (:func:`featx.tune.tune_head`); the fit time then includes
    the search. Repeated splits and learning curves are :func:`refits`.
    """
    params, cv_acc, proba = {}, None, None
    every_class = set(np.unique(data.y_train)) == set(range(len(data.class_names)))
    t0 = time.perf_counter()
    if settings.in_blocks(head, data):  # rows on disk, or too many for the head: fitted and scored a block at a time
        from .streaming import fit_in_blocks, predict_in_blocks, predict_proba_in_blocks

        if client is not None and not data.in_memory:
            from .cluster_fit import fit_on_cluster

            est = fit_on_cluster(clone(estimator), data.X_train, data.y_train, client)
        else:
            est = fit_in_blocks(clone(estimator), data.X_train, data.y_train)
        fit_s, t0 = time.perf_counter() - t0, time.perf_counter()
        if hasattr(est, "predict_proba"):
            scores = predict_proba_in_blocks(est, data.X_test)
            pred = est.classes_[scores.argmax(axis=1)]
            proba = scores if every_class else None
        else:  # a margin classifier without probabilities (svm without probability=True)
            pred = predict_in_blocks(est, data.X_test)
        how = est.fit_note() if hasattr(est, "fit_note") else ""
        where = "read in blocks" + (" on the cluster's workers" if client is not None and not data.in_memory else "")
        note = f"{where}; {how}" if how else where
    else:
        if settings.tune:
            from .tune import tune_head

            est, params, cv_acc, _ = tune_head(estimator, data.X_train, data.y_train)
        else:
            est = clone(estimator).fit(data.X_train, data.y_train)
        fit_s, t0 = time.perf_counter() - t0, time.perf_counter()
        pred = est.predict(data.X_test)
        if hasattr(est, "predict_proba") and every_class:
            proba = np.asarray(est.predict_proba(data.X_test), dtype=np.float64)  # columns = labels 0..k-1
        note = est.fit_note() if hasattr(est, "fit_note") else ""
    pred_ms = (time.perf_counter() - t0) * 1000 / max(1, len(data.X_test))
    if hasattr(est, "chosen_params"):
        params = {**est.chosen_params(), **params}
    return FitResult(backbone=data.backbone, head=head, accuracy=float(accuracy_score(data.y_test, pred)),
                     macro_f1=float(f1_score(data.y_test, pred, average="macro")), fit_seconds=fit_s,
                     predict_ms_per_image=pred_ms, estimator=est, y_test=np.asarray(data.y_test),
                     y_pred=np.asarray(pred), class_names=tuple(data.class_names), note=note,
                     features=data.features, params=params, cv_accuracy=cv_acc, proba=proba)  # fmt: skip


def evaluate_heads(data: LabelledFeatures, settings: EvalSettings, client=None) -> list[FitResult]:
    """:func:`evaluate_head` for each head of ``settings`` on ``data``, in the order of ``settings.heads``.

    On a Dask cluster (``client``), every fit is a task on its workers, through joblib's dask
    backend; rows on disk, each head in turn is fitted on the workers, each reading its own blocks.
    Else the heads that fit in-process (the Keras head, which keeps thread pools of its own) run
    here and the others in ``settings.n_jobs`` processes.
    """
    from joblib import Parallel, delayed, parallel_config

    heads = settings.heads
    if not data.in_memory:  # rows on disk (an open HDF5 file): every fit here, one after another
        settings.check_streams(len(data.X_train) + len(data.X_test), data.X_train.shape[1])
        return [evaluate_head(h, settings.estimator(h), data, settings, client) for h in heads]
    jobs = {h: delayed(evaluate_head)(h, settings.estimator(h), data, settings) for h in heads}
    if client is not None:
        with parallel_config(backend="dask", client=client):
            return list(Parallel(n_jobs=-1)(jobs.values()))
    here = [h for h in heads if HEADS[h].in_process]
    other = [h for h in heads if not HEADS[h].in_process]
    n_jobs = min(settings.n_jobs, max(1, len(other)))
    if n_jobs > 1 and not all(settings.in_blocks(h, data) or settings.fits(h, data, n_jobs) for h in other):
        n_jobs = 1  # the heads' working sets side by side would not fit: one at a time
    done = dict(zip(other, Parallel(n_jobs=n_jobs)(jobs[h] for h in other)))
    done.update({h: evaluate_head(h, settings.estimator(h), data, settings) for h in here})
    return [done[h] for h in heads]


def refits(r: FitResult, data: LabelledFeatures, settings: EvalSettings) -> list[dict]:
    """Fill ``r``'s repeated-split accuracies; return its learning-curve rows (the head as fitted,
    tuned parameters included, refitted on each split or subset)."""
    from .curves import learning_curve, repeat_accuracies

    if settings.repeats > 1:
        r.repeat_accuracies = repeat_accuracies(r.estimator, data, settings.repeats, settings.seed, first=r.accuracy)
    if not settings.train_sizes:
        return []
    return [{"features": r.features, "head": r.head, **row}
            for row in learning_curve(r.estimator, data, settings.train_sizes, settings.repeats, settings.seed)]  # fmt: skip


def open_features(fs, how: EvalSettings, files: ExitStack, **what) -> LabelledFeatures:  # fs: a cache.FeatureSet
    """The features of ``fs``: read into memory, or, where ``how`` streams them (too large for
    memory, or asked), its HDF5 datasets, kept open in ``files``, with the labels in memory."""
    with fs.open() as (X_train, _, X_test, _):
        rows, width, itemsize = len(X_train) + len(X_test), X_train.shape[1], X_train.dtype.itemsize
    if not how.streams(rows, width, itemsize):
        return LabelledFeatures(*fs.load(), class_names=fs.class_names, **what)
    X_train, y_train, X_test, y_test = files.enter_context(fs.open())
    return LabelledFeatures(X_train, y_train[:], X_test, y_test[:], class_names=fs.class_names, **what)
