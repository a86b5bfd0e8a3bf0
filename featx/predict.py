"""Classify image files with a saved head and the backbone its features came from."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import joblib
import numpy as np

from .errors import CacheError, DataError, FeatxError
from .extractor import Extractor
from .fit import fitted_heads, head_path
from .options import RunOptions, as_options, split_kwargs
from .spec import FeatureSpec, as_spec


class Prediction(NamedTuple):
    """One image's class from :func:`predict_files`."""

    file: str
    label: str | None
    score: float | None
    error: str | None
    score_name: str = "probability"


def predict_files(files, head: str = "logreg", spec: FeatureSpec | str = "vgg19", data=None, task: str = "full",
                  *, options: RunOptions | None = None, **kwargs):  # fmt: skip
    """Classify image files with a saved head and its backbone.

    The head is the one :func:`featx.fit.fit_head` fitted on the features of
    ``spec`` (a :class:`~featx.spec.FeatureSpec`, or a backbone and the feature
    settings among ``kwargs``, as given to ``fit_head``) for ``data``, ``task``
    and ``seed``; its backbone is rebuilt from the spec recorded with it. A head
    fitted on other settings is not used: the error lists the heads there are.

    Yields a :class:`Prediction` ``(file, label, score, error, score_name)``
    per image: ``score`` is the head's probability of ``label``
    (``score_name`` "probability"; the SVM heads fitted by :func:`fit_head`
    carry a calibration for it), or, for a head saved without one, its
    decision margin (``score_name`` "margin"). A file that cannot be read gets
    its error and the others still run. ``files`` may name folders: their
    images are classified. ``options`` (or run options by name in ``kwargs``):
    ``cache_dir``, ``seed`` and ``batch_size`` apply.
    """
    from .images import is_image_name, load_image

    settings, run = split_kwargs(kwargs)
    spec = as_spec(spec, **settings)
    opts = as_options(options, **run)
    cache_dir = opts.cache_dir
    name = "sample" if data is None else str(data)
    ds_name = "sample" if name == "sample" else (name if name == "cifar10" else str(Path(name).expanduser().resolve()))
    path = _find_head(head, spec, name, ds_name, task, opts)
    saved = joblib.load(path)
    est, rec = saved["estimator"], saved["record"]
    fitted_spec, fitted_data, seed = _recorded_spec(rec)
    extractor = Extractor(fitted_spec, seed=seed, data=fitted_data, cache_dir=cache_dir)
    for k, v in extractor.settings.items():
        if v != rec["feature_settings"].get(k):
            raise FeatxError(f"The backbone rebuilt for {path.name} differs from the one it was trained on "
                             f"({k}: {v} vs {rec['feature_settings'].get(k)}). Fit the head again.")  # fmt: skip
    shape = tuple(rec.get("image_shape", ())) or None
    paths = []
    for f in files:
        p = Path(f)
        paths += sorted(q for q in p.rglob("*") if q.is_file() and is_image_name(q.name)) if p.is_dir() else [p]
    if not paths:
        raise DataError(f"No image files in {', '.join(map(str, files)) or 'the list given'}: name image files, or "
                        "folders that hold some (jpg, png, ...).")  # fmt: skip
    # each photo is stored as the head's training images were: their size, by the same aspect policy
    size = tuple(shape[:2]) if shape else (32, 32)
    decoded: list = []
    for p in paths:
        try:
            decoded.append(load_image(p, size, fitted_spec.aspect))
        except FeatxError as exc:
            decoded.append(exc)
    good = [im for im in decoded if isinstance(im, np.ndarray)]
    predictions, score_name = iter(()), "probability"
    if good:
        X = np.stack(good)
        feats = extractor.transform(X, batch_size=opts.batch_size)
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


def _find_head(head: str, spec: FeatureSpec, name: str, ds_name: str, task: str, opts: RunOptions) -> Path:
    """The saved head fitted on ``spec``'s features of these data and seed; else a one-line error
    that lists the heads fitted on other settings."""
    path = head_path(head, spec, ds_name, task, opts.seed, opts.cache_dir)
    if path.exists():
        return path
    others = []
    for p in fitted_heads(head, spec.backbone_.label, ds_name, task, opts.cache_dir):
        try:
            fitted, _, seed = _recorded_spec(joblib.load(p)["record"])
        except Exception:  # noqa: BLE001 - an unreadable head is not the one asked for
            continue
        if fitted == spec and seed == opts.seed:
            return p  # saved before heads were named by their settings
        others.append(f"{fitted.describe()}, seed {seed}")
    wanted = f"{spec.describe()} features of {name} ({task}, seed {opts.seed})"
    if others:
        raise CacheError(
            f"No {head} head fitted on {wanted}; there are {head} heads fitted on: {'; '.join(others)}. "
            "Pass the feature options (and --seed) they were fitted with, or fit one on these."
        )
    raise CacheError(
        f"No {head} head fitted on {wanted} yet. Run `python cli.py fit --head {head}` with the same options first."
    )


def _recorded_spec(record: dict) -> tuple[FeatureSpec, str, int]:
    """The spec, data and seed a saved head's features were made with (records of
    featx 0.1 kept the spec's fields in "extract_args")."""
    if "spec" in record:
        return FeatureSpec.from_dict(record["spec"]), record["data"], int(record.get("seed", 0))
    args = dict(record["extract_args"])
    spec = FeatureSpec.from_dict({**args, "dtype": record["feature_settings"].get("dtype", "float32")})
    return spec, args["data"], int(args.get("seed", 0))
