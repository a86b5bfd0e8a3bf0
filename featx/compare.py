"""Fit heads on cached features, compare them, and classify new images."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .config import cache_dir as resolve_cache_dir
from .data import Dataset, load_dataset
from .errors import CacheError, FeatxError
from .extract import extract_features, make_extractor
from .heads import make_head
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
    batch_size: int = 32,
    seed: int = 0,
    cache_dir=None,
    save: bool = True,
    **settings,
) -> tuple[FitResult, Path | None]:
    """Fit one head on cached features (extracting them first when missing) and save it.

    ``spec`` (a :class:`~featx.spec.FeatureSpec` or a backbone name, "vgg19" by
    default) and ``settings`` say which features, as in :func:`extract_features`.
    ``tune`` chooses the head's parameters by cross-validation on the train split
    first (see :mod:`featx.tune`). Returns the result (accuracy, macro-F1, times, fitted estimator) and the
    path of the saved head: a joblib file holding the estimator and a record
    of the feature cache it was trained on.
    """
    spec = as_spec(spec, **settings)
    estimator = make_head(head, **(params or {}))
    ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
    fs = extract_features(spec, ds, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
    X_train, y_train, X_test, y_test = fs.load()
    res = evaluate_head(estimator, X_train, y_train, X_test, y_test, backbone=spec.backbone, head=head,
                        class_names=fs.class_names, features=spec.describe(), tune=tune)  # fmt: skip
    path = None
    if save:
        path = head_path(head, spec.backbone, ds.name, ds.task, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "head": head,
            "params": {**(params or {}), **res.params},
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
    batch_size: int = 32,
    seed: int = 0,
    cache_dir=None,
    reports_dir="reports",
    n_jobs: int = 2,
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

    Returns the results, best first, and the paths of the report files.
    """
    from joblib import Parallel, delayed

    specs = specs_for([specs] if isinstance(specs, (str, FeatureSpec)) else specs, **settings)
    protocol = [s.replace(layers=["flatten"], flip=False) for s in specs if s.backbone == "trunk"] if reference else []
    specs += [p for p in dict.fromkeys(protocol) if p not in specs]
    if task is None:
        task = "target" if any(s.backbone == "trunk" for s in specs) else "full"
    params = params or {}
    for h in heads:
        make_head(h, **params.get(h, {}))  # unknown heads and bad parameters fail before any work
    ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=cache_dir, seed=seed)
    results: list[FitResult] = []
    for spec in specs:
        fs = extract_features(spec, ds, batch_size=batch_size, seed=seed, cache_dir=cache_dir)
        X_train, y_train, X_test, y_test = fs.load()
        jobs = [(h, make_head(h, **params.get(h, {}))) for h in heads]
        keras_jobs = [(h, e) for h, e in jobs if h == "dense"]
        other = [(h, e) for h, e in jobs if h != "dense"]
        common = dict(backbone=spec.backbone, class_names=fs.class_names, features=spec.describe(), tune=tune)
        # Keras keeps its own thread pools: its head runs here, the sklearn heads in worker processes.
        par = Parallel(n_jobs=min(n_jobs, max(1, len(other))))(
            delayed(evaluate_head)(e, X_train, y_train, X_test, y_test, head=h, **common) for h, e in other
        )
        ker = [evaluate_head(e, X_train, y_train, X_test, y_test, head=h, **common) for h, e in keras_jobs]
        for r in ker + list(par):
            if spec in protocol:
                r.note = " ".join(filter(None, ["reference: split-CIFAR protocol", r.note]))
            results.append(r)
    results.sort(key=lambda r: (-r.accuracy, -r.macro_f1, r.fit_seconds))
    paths = write_report(results, ds, reports_dir)
    return results, paths


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


def write_report(results: list[FitResult], ds: Dataset, reports_dir) -> dict[str, Path]:
    """Write compare.csv, compare.json, accuracy.png and confusion.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    paths = {"csv": out / "compare.csv", "json": out / "compare.json",
             "accuracy": out / "accuracy.png", "confusion": out / "confusion.png"}  # fmt: skip
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    meta = {"data": ds.name, "task": ds.task, "classes": list(ds.class_names),
            "n_train": len(ds.X_train), "n_test": len(ds.X_test), "results": rows}  # fmt: skip
    paths["json"].write_text(json.dumps(meta, indent=1))

    labels = [f"{r['features'] or r['backbone']} + {r['head']}" for r in rows][::-1]
    # room for the longest label (about 0.075 inch a character at the default font size)
    fig, ax = plt.subplots(figsize=(4.5 + 0.075 * max(map(len, labels)), 1.2 + 0.4 * len(rows)))
    accs = [r["accuracy"] for r in rows][::-1]
    ax.barh(labels, accs, color="tab:blue")
    for i, a in enumerate(accs):
        ax.text(a, i, f" {a:.1%}", va="center")
    ax.set_xlim(0, 1.1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("held-out accuracy")
    ax.set_title(f"{ds.name} / {ds.task}: {len(ds.X_test)} test images")
    fig.tight_layout()
    fig.savefig(paths["accuracy"], dpi=100)
    plt.close(fig)

    best = results[0]
    cm = confusion_matrix(best.y_test, best.y_pred, labels=np.arange(len(best.class_names)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(cm), 1 + 0.6 * len(cm)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(cm)), best.class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(cm)), best.class_names)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{best.features or best.backbone} + {best.head}: {best.accuracy:.1%}")
    fig.tight_layout()
    fig.savefig(paths["confusion"], dpi=100)
    plt.close(fig)
    return paths


def predict_files(files, head: str = "logreg", spec: FeatureSpec | str = "vgg19", data=None, task: str = "full",
                  *, cache_dir=None, batch_size: int = 32):  # fmt: skip
    """Classify image files with a saved head and its backbone.

    The head is the one last fitted by :func:`fit_head` on ``spec``'s backbone
    for ``data`` and ``task``; its backbone is rebuilt from the spec recorded
    with it. Passing a full :class:`~featx.spec.FeatureSpec` also checks that
    the head was fitted on those features.

    Yields ``(file, class_name, probability_or_score, error)`` per image;
    a file that cannot be read gets its error and the others still run.
    ``files`` may name folders: their images are classified.
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
    predictions = iter(())
    if good:
        size = tuple(shape[:2]) if shape else (32, 32)
        X = np.stack([resize_image(im, size) for im in good])
        feats = np.asarray(model.predict(X, batch_size=batch_size, verbose=0))
        if hasattr(est, "predict_proba"):
            scores = est.predict_proba(feats)
        else:  # margins of the SVMs
            scores = est.decision_function(feats)
            scores = scores if scores.ndim == 2 else np.stack([-scores, scores], 1)
        labels = np.asarray(est.predict(feats))
        cols = np.searchsorted(est.classes_, labels)
        predictions = iter(zip(labels, scores[np.arange(len(labels)), cols]))
    classes = rec["class_names"]
    for p, im in zip(paths, decoded):
        if isinstance(im, Exception):
            yield str(p), None, None, str(im)
        else:
            label, score = next(predictions)
            yield str(p), str(classes[int(label)]), float(score), None


def _recorded_spec(record: dict) -> tuple[FeatureSpec, str, int]:
    """The spec, data and seed a saved head's features were made with (records of
    featx 0.1 kept the spec's fields in "extract_args")."""
    if "spec" in record:
        return FeatureSpec.from_dict(record["spec"]), record["data"], int(record.get("seed", 0))
    args = dict(record["extract_args"])
    spec = FeatureSpec.from_dict({**args, "dtype": record["feature_settings"].get("dtype", "float32")})
    return spec, args["data"], int(args.get("seed", 0))
