"""Fit heads on cached features, compare them, and classify new images."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score

from .cluster import connect
from .config import cache_dir as resolve_cache_dir
from .data import Dataset, load_dataset
from .errors import CacheError, FeatxError, HeadError, SettingsError
from .extract import check_run_options, embed, extract_features, make_extractor, resolve_batch_size
from .heads import HEADS, make_head
from .report import feature_map, write_report
from .spec import FeatureSpec, as_spec, specs_for


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

    def row(self) -> dict:
        return {
            "backbone": self.backbone,
            "features": self.features,
            "head": self.head,
            "accuracy": round(self.accuracy, 4),
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
    return FitResult(backbone, head, float(accuracy_score(y_test, pred)),
                     float(f1_score(y_test, pred, average="macro")), fit_s, pred_ms, est,
                     np.asarray(y_test), np.asarray(pred), tuple(class_names), note, features,
                     params, cv_acc)  # fmt: skip


def head_path(head: str, backbone: str, data_name: str, task: str, cache_dir=None) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(str(data_name)).name)
    return resolve_cache_dir(cache_dir) / "heads" / f"{head}-{backbone}-{slug}-{task}.joblib"


def fit_head(
    head: str = "logreg",
    spec: FeatureSpec | str | None = None,
    data=None,
    task: str = "full",
    *,
    params: dict | None = None,
    tune: bool = False,
    batch_size: int | str = "auto",
    seed: int = 0,
    cache_dir=None,
    save: bool = True,
    cluster=None,
    workers: int | None = None,
    shard_size: int | str = "auto",
    **settings,
) -> tuple[FitResult, Path | None]:
    """Fit one head on cached features (extracting them first when missing) and save it.

    ``spec`` (a :class:`~featx.spec.FeatureSpec` or a backbone name, "vgg19" by
    default) and ``settings`` say which features, as in :func:`extract_features`.
    ``tune`` chooses the head's parameters by cross-validation on the train split
    first (see :mod:`featx.tune`). Returns the result (accuracy, macro-F1, times, fitted estimator) and the
    path of the saved head: a joblib file holding the estimator and a record
    of the feature cache it was trained on.

    With ``cluster`` (see :func:`featx.extract.extract_features`), the features
    are extracted in shards on the Dask cluster and the head is fitted on one of
    its workers, through joblib's dask backend.
    """
    spec = as_spec(spec, **settings)
    params = dict(params or {})
    if save and "probability" in make_head(head).get_params():
        params.setdefault("probability", True)  # `predict` prints a calibrated probability
    estimator = make_head(head, **params)
    _check_tune(head, params, tune)
    check_run_options(cluster, workers, shard_size)
    with connect(cluster, workers) as client:
        ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
        fs = extract_features(spec, ds, batch_size=batch_size, seed=seed, cache_dir=cache_dir, cluster=client,
                              shard_size=shard_size)  # fmt: skip
        X_train, y_train, X_test, y_test = fs.load()
        [res] = _evaluate([(head, estimator)], (X_train, y_train, X_test, y_test), client, n_jobs=1,
                          backbone=spec.backbone, class_names=fs.class_names, features=spec.describe(), tune=tune)  # fmt: skip
    path = None
    if save:
        path = head_path(head, spec.backbone, ds.name, ds.task, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "head": head,
            "params": {**params, **res.params},
            "features": str(fs.path),
            "feature_settings": fs.settings,
            "spec": spec.to_dict(),
            "data": ds.name,
            "task": ds.task,
            "seed": seed,
            "class_names": list(fs.class_names),
            "image_shape": fs.info["image_shape"],
            "metrics": res.row(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = path.with_suffix(".tmp")
        joblib.dump({"estimator": res.estimator, "record": record}, tmp)
        tmp.replace(path)
    return res, path


def compare(
    specs=("trunk",),
    heads=("dense", "logreg", "svm"),
    data=None,
    task: str | None = None,
    *,
    params: dict | None = None,
    tune: bool = False,
    reference: bool = True,
    batch_size: int | str = "auto",
    seed: int = 0,
    cache_dir=None,
    reports_dir="reports",
    n_jobs: int = 2,
    cluster=None,
    workers: int | None = None,
    shard_size: int | str = "auto",
    **settings,
) -> tuple[list[FitResult], dict[str, Path]]:
    """Fit every head on every backbone's cached features; write a table and pictures.

    With the defaults it runs the split-CIFAR experiment on the shipped
    sample: the trunk is trained on classes 0-4 (once, then cached), extracts
    frozen features of classes 5-9, and the heads are fit on those.

    ``specs`` are backbone names or :class:`~featx.spec.FeatureSpec` objects;
    ``settings`` (``weights``, ``size``, ...) apply to each backbone named by
    a string that can take them (see :func:`featx.spec.specs_for`).
    ``task`` defaults to "target" when the trunk is among the backbones, else
    "full". ``params`` maps a head name to its parameters; ``tune`` chooses them
    by cross-validation on the train split instead (:mod:`featx.tune`). With
    ``reference``, a trunk run with other features also gets the split-CIFAR
    protocol's (its 800-d flatten output, no mirror) as a reference row, so the
    table shows what the feature settings add. Scikit-learn heads run in
    parallel (``n_jobs`` processes); the Keras head runs in this process.
    With ``cluster`` (see :func:`featx.extract.extract_features`), features are
    extracted in shards on the Dask cluster and every head, the Keras one and
    any parameter search included, is fitted on its workers through joblib's
    dask backend.

    Returns the results, best first, and the paths of the report files.
    """
    specs = specs_for([specs] if isinstance(specs, (str, FeatureSpec)) else specs, **settings)
    if not specs:
        raise SettingsError("No backbones to compare: name at least one, e.g. trunk or vgg19.")
    protocol = [s.replace(layers=["flatten"], flip=False) for s in specs if s.backbone == "trunk"] if reference else []
    specs += [p for p in dict.fromkeys(protocol) if p not in specs]
    if task is None:
        task = "target" if any(s.backbone == "trunk" for s in specs) else "full"
    params = params or {}
    if not heads:
        raise HeadError(f"No heads to fit: name at least one of {', '.join(HEADS)}.")
    for h in heads:
        make_head(h, **params.get(h, {}))  # unknown heads and bad parameters fail before any work
        _check_tune(h, params.get(h, {}), tune)
    check_run_options(cluster, workers, shard_size)
    Path(reports_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after the fits
    results: list[FitResult] = []
    feature_sets = []
    with connect(cluster, workers) as client:
        ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
        for spec in specs:
            fs = extract_features(spec, ds, batch_size=batch_size, seed=seed, cache_dir=cache_dir, cluster=client,
                                  shard_size=shard_size)  # fmt: skip
            X_train, y_train, X_test, y_test = fs.load()
            feature_sets.append({"features": spec.describe(), "settings": fs.settings, "info": fs.info,
                                 "path": str(fs.path), "map": feature_map(X_test, y_test, seed=seed)})  # fmt: skip
            extract_s = sum(fs.info.get("seconds", {}).values()) or None
            jobs = [(h, make_head(h, **params.get(h, {}))) for h in heads]
            for r in _evaluate(jobs, (X_train, y_train, X_test, y_test), client, n_jobs=n_jobs,
                               backbone=spec.backbone, class_names=fs.class_names, features=spec.describe(),
                               tune=tune):  # fmt: skip
                if spec in protocol:
                    r.note = " ".join(filter(None, ["reference: split-CIFAR protocol", r.note]))
                r.extract_seconds = extract_s
                results.append(r)
    results.sort(key=lambda r: (-r.accuracy, -r.macro_f1, r.fit_seconds))
    paths = write_report(results, ds, reports_dir, feature_sets)
    return results, paths


def _evaluate(jobs, data, client, *, n_jobs: int, **common) -> list[FitResult]:
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


def _check_tune(head: str, params: dict, tune: bool) -> None:
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


def format_table(results: list[FitResult]) -> str:
    """The results as a text table, one row per head and feature set."""
    width = max([len("features"), *(len(r.features or r.backbone) for r in results)])
    head = (f"{'features':<{width}} {'head':<8} {'accuracy':>8} {'macro-F1':>8} {'fit s':>7} "
            f"{'predict ms/img':>14}  chosen / note")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        chosen = " ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
        if r.cv_accuracy is not None:
            chosen += f" (cv {r.cv_accuracy:.2%})"
        lines.append(f"{r.features or r.backbone:<{width}} {r.head:<8} {r.accuracy:>8.2%} {r.macro_f1:>8.3f} "
                     f"{r.fit_seconds:>7.2f} {r.predict_ms_per_image:>14.4f}  {' '.join(filter(None, [chosen, r.note]))}")  # fmt: skip
    return "\n".join(lines)


class Prediction(NamedTuple):
    """One image's class from :func:`predict_files`."""

    file: str
    label: str | None
    score: float | None
    error: str | None
    score_name: str = "probability"


def predict_files(files, head: str = "logreg", spec: FeatureSpec | str = "vgg19", data=None, task: str = "full",
                  *, cache_dir=None, batch_size: int | str = "auto"):  # fmt: skip
    """Classify image files with a saved head and its backbone.

    The head is the one last fitted by :func:`fit_head` on ``spec``'s backbone
    for ``data`` and ``task``; its backbone is rebuilt from the spec recorded
    with it. Passing a full :class:`~featx.spec.FeatureSpec` also checks that
    the head was fitted on those features.

    Yields a :class:`Prediction` ``(file, label, score, error, score_name)``
    per image: ``score`` is the head's probability of ``label``
    (``score_name`` "probability"; the SVM heads fitted by :func:`fit_head`
    carry a calibration for it), or, for a head saved without one, its
    decision margin (``score_name`` "margin"). A file that cannot be read gets
    its error and the others still run. ``files`` may name folders: their
    images are classified.
    """
    from .images import decode_image, is_image_name, resize_image

    backbone = spec.backbone if isinstance(spec, FeatureSpec) else str(spec)
    name = "sample" if data is None else str(data)
    ds_name = "sample" if name == "sample" else (name if name == "cifar10" else str(Path(name).expanduser().resolve()))
    path = head_path(head, backbone, ds_name, task, cache_dir)
    if not path.exists():
        raise CacheError(
            f"No {head} head fitted on {backbone} features of {name} ({task}) yet. Run "
            f"`python cli.py fit --head {head} --backbone {backbone} --data {name} --task {task}` first."
        )
    saved = joblib.load(path)
    est, rec = saved["estimator"], saved["record"]
    fitted_spec, fitted_data, seed = _recorded_spec(rec)
    if isinstance(spec, FeatureSpec) and spec != fitted_spec:
        raise FeatxError(f"The {head} head in {path.name} was fitted on {fitted_spec.describe()}, not on "
                         f"{spec.describe()}. Fit it on those features first.")  # fmt: skip
    model, settings = make_extractor(fitted_spec, seed=seed, data=fitted_data, cache_dir=cache_dir)
    for k, v in settings.items():
        if v != rec["feature_settings"].get(k):
            raise FeatxError(f"The backbone rebuilt for {path.name} differs from the one it was trained on "
                             f"({k}: {v} vs {rec['feature_settings'].get(k)}). Fit the head again.")  # fmt: skip
    shape = tuple(rec.get("image_shape", ())) or None
    paths = []
    for f in files:
        p = Path(f)
        paths += sorted(q for q in p.rglob("*") if q.is_file() and is_image_name(q.name)) if p.is_dir() else [p]
    decoded: list = []
    for p in paths:
        try:
            decoded.append(decode_image(p))
        except FeatxError as exc:
            decoded.append(exc)
    good = [im for im in decoded if isinstance(im, np.ndarray)]
    predictions, score_name = iter(()), "probability"
    if good:
        size = tuple(shape[:2]) if shape else (32, 32)
        X = np.stack([resize_image(im, size) for im in good])
        feats = np.concatenate([f for _, f in embed(model, X, batch_size=resolve_batch_size(batch_size, fitted_spec))])
        if hasattr(est, "predict_proba"):
            scores = est.predict_proba(feats)
        else:  # margins of SVMs saved without a calibration
            score_name = "margin"
            scores = est.decision_function(feats)
            scores = scores if scores.ndim == 2 else np.stack([-scores, scores], 1)
        labels = np.asarray(est.predict(feats))
        cols = np.searchsorted(est.classes_, labels)
        predictions = iter(zip(labels, scores[np.arange(len(labels)), cols]))
    classes = rec["class_names"]
    for p, im in zip(paths, decoded):
        if isinstance(im, Exception):
            yield Prediction(str(p), None, None, str(im), score_name)
        else:
            label, score = next(predictions)
            yield Prediction(str(p), str(classes[int(label)]), float(score), None, score_name)


def _recorded_spec(record: dict) -> tuple[FeatureSpec, str, int]:
    """The spec, data and seed a saved head's features were made with (records of
    featx 0.1 kept the spec's fields in "extract_args")."""
    if "spec" in record:
        return FeatureSpec.from_dict(record["spec"]), record["data"], int(record.get("seed", 0))
    args = dict(record["extract_args"])
    spec = FeatureSpec.from_dict({**args, "dtype": record["feature_settings"].get("dtype", "float32")})
    return spec, args["data"], int(args.get("seed", 0))
