"""Fit a head on cached features (:func:`fit_head`), and find a saved one again with the
backbone it was fitted on (:func:`load_fitted`)."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .cluster import connect
from .config import cache_dir as resolve_cache_dir
from .config import slug
from .data import Dataset, load_dataset
from .errors import CacheError, DataError, FeatxError
from .evaluation import EvalSettings, FitResult, evaluate_heads, open_features
from .extract import extract_features
from .heads import head_class
from .options import RunOptions, as_options, split_kwargs
from .persistence import PICKLE_SUFFIX, SUFFIX, load_head, save_head
from .spec import FeatureSpec, as_spec


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
    stream: bool | None = None,
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
    the train split first (see :mod:`featx.tune`). ``stream`` fits the head on the cache read a
    block of rows at a time (as :func:`featx.compare.compare`'s). Returns the result
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
    if save and "probability" in head_class(head)._get_param_names():
        params.setdefault("probability", True)  # `predict` prints a calibrated probability
    settings = EvalSettings(heads=(head,), params={head: params}, tune=tune, n_jobs=1, seed=opts.seed, stream=stream)
    with connect(opts.cluster, opts.workers) as client, ExitStack() as files:
        opts = opts.replace(cluster=client, workers=None)
        ds = data if isinstance(data, Dataset) else load_dataset(data, task, cache_dir=opts.cache_dir,
                                                                 seed=opts.seed, images=spec.images,
                                                                 progress=opts.progress)  # fmt: skip
        check_splits(ds.y_train, ds.y_test, ds.class_names, tune)  # before any features are made
        fs = extract_features(spec, ds, options=opts)
        feats = open_features(fs, settings, files, backbone=spec.backbone_.label, features=spec.describe())
        [res] = evaluate_heads(feats, settings, client)
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


def check_splits(y_train: np.ndarray, y_test: np.ndarray, class_names, tune: bool) -> None:
    """What a fit needs of the data, checked before any work: test images to score on, and, with
    ``tune``, as many train images of each class as the cross-validation has folds."""
    if len(y_test) == 0:
        raise DataError("The test split is empty: a head is scored on the test images. Add a test/ folder of "
                        "class folders, or give class folders alone (featx then splits them 80/20).")  # fmt: skip
    if len(y_train) == 0:
        raise DataError("The train split is empty: add train images (a train/ folder of class folders).")
    if tune:
        from .tune import CV_FOLDS

        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(class_names))
        few = [(class_names[i], int(c)) for i, c in enumerate(counts) if c < CV_FOLDS]
        if few:
            name, n = min(few, key=lambda t: t[1])
            raise DataError(
                f"--tune cross-validates on the train split in {CV_FOLDS} folds: every class needs {CV_FOLDS} train "
                f"images or more, and {len(few)} have fewer ({name!r}: {n}). Add images, or fit without --tune."
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


class FittedHead(NamedTuple):
    """A saved head found again, with the backbone it was fitted on (:func:`load_fitted`)."""

    estimator: object
    record: dict
    path: Path
    extractor: object  # featx.extractor.Extractor
    spec: FeatureSpec  # the features it was fitted on, as recorded


def load_fitted(head: str, spec: FeatureSpec, data=None, task: str = "full", *, options: RunOptions | None = None,
                trust_pickle: bool = False) -> FittedHead:  # fmt: skip
    """The saved ``head`` fitted on ``spec``'s features of ``data`` and ``task`` (see
    :func:`find_head`) and its backbone rebuilt from the record (see :func:`head_extractor`):
    what ``predict`` and ``export`` run."""
    opts = as_options(options)
    est, rec, path = find_head(head, spec, data, task, options=opts, trust_pickle=trust_pickle)
    extractor, fitted_spec = head_extractor(rec, path, opts.cache_dir)
    return FittedHead(est, rec, path, extractor, fitted_spec)


def head_extractor(record: dict, path: Path, cache_dir=None):
    """``(extractor, spec)`` of the backbone a saved head (``record``, from ``path``) was fitted on,
    rebuilt from its record; an error if it does not rebuild the same (other weights, say)."""
    from .extractor import Extractor

    spec, data, seed = recorded_spec(record)
    extractor = Extractor(spec, seed=seed, data=data, cache_dir=cache_dir)
    for k, v in extractor.settings.items():
        if v != record["feature_settings"].get(k):
            raise FeatxError(f"The backbone rebuilt for {path.name} differs from the one it was trained on "
                             f"({k}: {v} vs {record['feature_settings'].get(k)}). Fit the head again.")  # fmt: skip
    return extractor, spec
