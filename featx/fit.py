"""Fit a head on cached features: :func:`fit_head`, and what it returns, :class:`FitResult`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score

from .cluster import connect
from .config import cache_dir as resolve_cache_dir
from .config import slug
from .data import Dataset, load_dataset
from .errors import CacheError, DataError, HeadError
from .extract import extract_features
from .heads import make_head
from .options import RunOptions, as_options, split_kwargs
from .persistence import PICKLE_SUFFIX, SUFFIX, load_head, save_head
from .spec import FeatureSpec, as_spec


@dataclass
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
    class_names: tuple
    note: str = ""
    features: str = ""
    params: dict = field(default_factory=dict)
    cv_accuracy: float | None = None
    extract_seconds: float | None = None
    proba: np.ndarray | None = None  # test-split probabilities, columns in label order (heads that have them)
    p_vs_best: float | None = None  # McNemar's exact test against the best result (None: this is the best)
    repeat_accuracies: list = field(default_factory=list)  # with compare(repeats=N): this split's, then N-1 more

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        """The 95 % exact binomial (Clopper-Pearson) interval of :attr:`accuracy` on these test images."""
        from .stats import accuracy_interval

        return accuracy_interval(int(np.sum(np.asarray(self.y_test) == np.asarray(self.y_pred))), len(self.y_test))

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


def evaluate_head(estimator, X_train, y_train, X_test, y_test, *, backbone="", head="", class_names=(),
                  features="", tune: bool = False):  # fmt: skip
    """Fit a clone of ``estimator`` and measure it on the test split.

    With ``tune``, the head's parameters are chosen first by a cross-validated
    grid search on the train rows alone (:func:`featx.tune.tune_head`); the
    fit time then includes the search.
    """
    params, cv_acc = {}, None
    t0 = time.perf_counter()
    if tune:
        from .tune import tune_head

        est, params, cv_acc, _ = tune_head(head, estimator, X_train, y_train)
    else:
        est = clone(estimator)
        est.fit(X_train, y_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = est.predict(X_test)
    pred_ms = (time.perf_counter() - t0) * 1000 / max(1, len(X_test))
    note = getattr(est, "solver_", "")
    proba = None
    if hasattr(est, "predict_proba") and set(np.unique(y_train)) == set(range(len(class_names) or 0)):
        proba = np.asarray(est.predict_proba(X_test), dtype=np.float64)  # columns = labels 0..k-1
    return FitResult(backbone, head, float(accuracy_score(y_test, pred)),
                     float(f1_score(y_test, pred, average="macro")), fit_s, pred_ms, est,
                     np.asarray(y_test), np.asarray(pred), tuple(class_names), note, features,
                     params, cv_acc, proba=proba)  # fmt: skip


def head_path(head: str, spec: FeatureSpec, data_name: str, task: str, seed: int = 0, cache_dir=None) -> Path:
    """Where :func:`fit_head` saves the ``head`` fitted on ``spec``'s features of a dataset's ``task``
    (split with ``seed``): a head fitted on other features, or other splits, is another file."""
    tag = hashlib.sha256(json.dumps({"spec": spec.to_dict(), "seed": seed}, sort_keys=True).encode()).hexdigest()
    prefix = _heads_prefix(head, spec.backbone_.label, data_name, task, cache_dir)
    return prefix.with_name(f"{prefix.name}-{tag[:10]}{SUFFIX}")


def fitted_heads(head: str, backbone_label: str, data_name: str, task: str, cache_dir=None) -> list[Path]:
    """Every saved ``head`` on this backbone's features of a dataset's ``task``, whatever the
    settings: skops files first, then pickles of earlier versions (named by their settings, or not)."""
    prefix = _heads_prefix(head, backbone_label, data_name, task, cache_dir)
    return [p for suffix in (SUFFIX, PICKLE_SUFFIX) for p in sorted(prefix.parent.glob(f"{prefix.name}*{suffix}"))
            if p.stem == prefix.name or p.stem[len(prefix.name):].startswith("-")]  # fmt: skip


def _heads_prefix(head: str, backbone_label: str, data_name: str, task: str, cache_dir) -> Path:
    return resolve_cache_dir(cache_dir) / "heads" / f"{head}-{slug(backbone_label)}-{slug(data_name)}-{task}"


def fit_head(
    head: str = "logreg",
    spec: FeatureSpec | str | None = None,
    data=None,
    task: str = "full",
    *,
    params: dict | None = None,
    tune: bool = False,
    save: bool = True,
    options: RunOptions | None = None,
    **kwargs,
) -> tuple[FitResult, Path | None]:
    """Fit one head on cached features (extracting them first when missing) and save it.

    ``spec`` (a :class:`~featx.spec.FeatureSpec` or a backbone, "vgg19" by
    default) and the feature settings among ``kwargs`` say which features, as
    in :func:`featx.extract.extract_features`; ``options``
    (:class:`~featx.options.RunOptions`) and the run options among ``kwargs``
    say how to run (``force``, ``progress`` and ``lock_timeout`` reach the
    extraction). ``tune`` chooses the head's parameters by cross-validation on
    the train split first (see :mod:`featx.tune`). Returns the result
    (accuracy, macro-F1, times, fitted estimator) and the path of the saved
    head: a skops file (:mod:`featx.persistence`, no pickle) holding the estimator and a record of the feature cache
    it was trained on.

    With ``cluster``, the features are extracted in shards on the Dask cluster
    and the head is fitted on one of its workers, through joblib's dask backend.
    """
    settings, run = split_kwargs(kwargs)
    spec = as_spec(spec, **settings)
    opts = as_options(options, **run)
    params = dict(params or {})
    if save and "probability" in make_head(head).get_params():
        params.setdefault("probability", True)  # `predict` prints a calibrated probability
    estimator = make_head(head, **params)
    check_tune(head, params, tune)
    with connect(opts.cluster, opts.workers) as client:
        opts = opts.replace(cluster=client, workers=None)
        ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=opts.cache_dir,
                                                                 seed=opts.seed, images=spec.images)  # fmt: skip
        check_splits(ds.y_train, ds.y_test, ds.class_names, tune)  # before any features are made
        fs = extract_features(spec, ds, options=opts)
        X_train, y_train, X_test, y_test = fs.load()
        [res] = evaluate_heads([(head, estimator)], (X_train, y_train, X_test, y_test), client, n_jobs=1,
                               backbone=spec.backbone_.label, class_names=fs.class_names,
                               features=spec.describe(), tune=tune)  # fmt: skip
    path = None
    if save:
        path = head_path(head, spec, ds.name, ds.task, opts.seed, opts.cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "head": head,
            "params": {**params, **res.params},
            "features": str(fs.path),
            "feature_settings": fs.settings,
            "spec": spec.to_dict(),
            "data": ds.name,
            "task": ds.task,
            "seed": opts.seed,
            "class_names": list(fs.class_names),
            "image_shape": fs.info["image_shape"],
            "metrics": res.row(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_head(path, res.estimator, record)
    return res, path


def evaluate_heads(jobs, data, client, *, n_jobs: int, **common) -> list[FitResult]:
    """:func:`evaluate_head` for each ``(head name, estimator)`` of ``jobs`` on ``data`` (the four arrays).

    On a Dask cluster (``client``), every fit is a task on its workers, through
    joblib's dask backend. Else the scikit-learn heads run in ``n_jobs``
    processes and the Keras head here (it keeps thread pools of its own).
    """
    from joblib import Parallel, delayed, parallel_config

    if client is not None:
        with parallel_config(backend="dask", client=client):
            return list(Parallel(n_jobs=-1)(delayed(evaluate_head)(e, *data, head=h, **common) for h, e in jobs))
    keras_jobs = [(h, e) for h, e in jobs if h == "dense"]
    other = [(h, e) for h, e in jobs if h != "dense"]
    par = Parallel(n_jobs=min(n_jobs, max(1, len(other))))(
        delayed(evaluate_head)(e, *data, head=h, **common) for h, e in other
    )
    return [evaluate_head(e, *data, head=h, **common) for h, e in keras_jobs] + list(par)


def check_splits(y_train: np.ndarray, y_test: np.ndarray, class_names, tune: bool) -> None:
    """What a fit needs of the data, checked before any work: test images to score on, and, with
    ``tune``, as many train images of each class as the cross-validation has folds."""
    from .tune import CV_FOLDS

    if len(y_test) == 0:
        raise DataError("The test split is empty: a head is scored on the test images. Add a test/ folder of "
                        "class folders, or give class folders alone (featx then splits them 80/20).")  # fmt: skip
    if len(y_train) == 0:
        raise DataError("The train split is empty: add train images (a train/ folder of class folders).")
    if tune:
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(class_names))
        few = [(class_names[i], int(c)) for i, c in enumerate(counts) if c < CV_FOLDS]
        if few:
            name, n = min(few, key=lambda t: t[1])
            raise DataError(
                f"--tune cross-validates on the train split in {CV_FOLDS} folds: every class needs {CV_FOLDS} train "
                f"images or more, and {len(few)} have fewer ({name!r}: {n}). Add images, or fit without --tune."
            )


def check_tune(head: str, params: dict, tune: bool) -> None:
    """A parameter set by hand and searched by ``tune`` would be silently overridden: refuse."""
    if not tune:
        return
    from .tune import SEARCHES

    both = sorted(set(params) & set(SEARCHES.get(head, {})))
    if both:
        raise HeadError(
            f"The {head} head's {', '.join(both)} is both given and tuned (its search: "
            f"{SEARCHES[head]}). Drop the parameter or drop --tune."
        )


def find_head(head: str, spec: FeatureSpec, data=None, task: str = "full", *, options: RunOptions | None = None,
              trust_pickle: bool = False) -> tuple[object, dict, Path]:  # fmt: skip
    """``(estimator, record, path)`` of the saved ``head`` fitted on ``spec``'s features of ``data``
    (a name or path, as given to :func:`fit_head`), ``task`` and the options' seed; else a one-line
    error that lists the heads fitted on other settings (or the pickles of earlier versions, which
    are read only with ``trust_pickle``)."""
    opts = as_options(options)
    name = "sample" if data is None else str(data)
    ds_name = "sample" if name == "sample" else (name if name == "cifar10" else str(Path(name).expanduser().resolve()))
    path = head_path(head, spec, ds_name, task, opts.seed, opts.cache_dir)
    if path.exists():
        est, rec = load_head(path)
        _check_is_the_head_asked_for(path, rec, head, spec, opts.seed)
        return est, rec, path
    others, pickles = [], []
    for p in fitted_heads(head, spec.backbone_.label, ds_name, task, opts.cache_dir):
        if p.suffix == PICKLE_SUFFIX and not trust_pickle:
            pickles.append(p.name)
            continue
        try:
            est, rec = load_head(p, trust_pickle=trust_pickle)
            fitted, _, seed = recorded_spec(rec)
        except Exception:  # noqa: BLE001 - an unreadable head is not the one asked for
            continue
        if fitted == spec and seed == opts.seed:
            return est, rec, p  # saved before heads were named by their settings
        others.append(f"{fitted.describe()}, seed {seed}")
    wanted = f"{spec.describe()} features of {name} ({task}, seed {opts.seed})"
    if pickles:
        raise CacheError(
            f"No {head} head saved by this featx for {wanted}; there are {len(pickles)} saved by an earlier "
            f"featx as pickles ({', '.join(pickles[:3])}), which can run any code when loaded. If you trust "
            "them, run again with --trust-pickle (Python: trust_pickle=True); or fit the head again."
        )
    if others:
        raise CacheError(
            f"No {head} head fitted on {wanted}; there are {head} heads fitted on: {'; '.join(others)}. "
            "Pass the feature options (and --seed) they were fitted with, or fit one on these."
        )
    raise CacheError(
        f"No {head} head fitted on {wanted} yet. Run `python cli.py fit --head {head}` with the same options first."
    )


def _check_is_the_head_asked_for(path: Path, rec: dict, head: str, spec: FeatureSpec, seed: int) -> None:
    """A head file under this name is the head and features asked for: a file copied over another's
    name (an svm over the logreg, a ResNet50 head over a trunk head) is refused, never used."""
    saved_head = rec.get("head")
    try:
        fitted, _, saved_seed = recorded_spec(rec)
    except Exception:  # noqa: BLE001 - a record that says nothing of its features cannot be checked
        fitted, saved_seed = None, seed
    wrong = []
    if saved_head is not None and saved_head != head:
        wrong.append(f"a {saved_head} head, not {head}")
    if fitted is not None and fitted != spec:
        wrong.append(f"fitted on {fitted.describe()}, not {spec.describe()}")
    elif saved_seed != seed:
        wrong.append(f"seed {saved_seed}, not {seed}")
    if wrong:
        raise CacheError(f"{path} is {'; '.join(wrong)}: it was copied or renamed over this head's name. Remove it "
                         "and fit the head again.")  # fmt: skip


def recorded_spec(record: dict) -> tuple[FeatureSpec, str, int]:
    """The spec, data and seed a saved head's features were made with (records of
    featx 0.1 kept the spec's fields in "extract_args")."""
    if "spec" in record:
        return FeatureSpec.from_dict(record["spec"]), record["data"], int(record.get("seed", 0))
    args = dict(record["extract_args"])
    spec = FeatureSpec.from_dict({**args, "dtype": record["feature_settings"].get("dtype", "float32")})
    return spec, args["data"], int(args.get("seed", 0))


def head_extractor(record: dict, path: Path, cache_dir=None):
    """``(extractor, spec)`` of the backbone a saved head (``record``, from ``path``) was fitted on,
    rebuilt from its record; an error if it does not rebuild the same (other weights, say)."""
    from .errors import FeatxError
    from .extractor import Extractor

    spec, data, seed = recorded_spec(record)
    extractor = Extractor(spec, seed=seed, data=data, cache_dir=cache_dir)
    for k, v in extractor.settings.items():
        if v != record["feature_settings"].get(k):
            raise FeatxError(f"The backbone rebuilt for {path.name} differs from the one it was trained on "
                             f"({k}: {v} vs {record['feature_settings'].get(k)}). Fit the head again.")  # fmt: skip
    return extractor, spec
