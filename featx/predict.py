"""Classify image files with a saved head and the backbone its features came from."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import DataError, FeatxError
from .fit import load_fitted
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
                  *, trust_pickle: bool = False, trust_saved_model: bool = False, options: RunOptions | None = None,
                  **kwargs):  # fmt: skip
    """Classify image files with a saved head and its backbone, or with an exported classifier.

    The head is the one :func:`featx.fit.fit_head` fitted on the features of
    ``spec`` (a :class:`~featx.spec.FeatureSpec`, or a backbone and the feature
    settings among ``kwargs``, as given to ``fit_head``) for ``data``, ``task``
    and ``seed``; its backbone is rebuilt from the spec recorded with it. A head
    fitted on other settings is not used: the error lists the heads there are.
    A head saved as a pickle by an earlier featx is loaded only with
    ``trust_pickle``. ``head`` may also be the path of a classifier made by
    :func:`featx.export.export_classifier` (``.keras``, ``.onnx`` or a SavedModel
    folder, loaded only with ``trust_saved_model``: it is a program): then ``spec``, ``data``
    and ``task`` are not used.

    Yields a :class:`Prediction` ``(file, label, score, error, score_name)``
    per image: ``score`` is the head's probability of ``label``
    (``score_name`` "probability"; the SVM heads fitted by :func:`fit_head`
    carry a calibration for it), or, for a head saved without one, its
    decision margin (``score_name`` "margin"). Each image is brought to the
    size of the head's training images by their aspect policy (``crop`` by
    default). A file that cannot be read gets its error and the others still
    run. ``files`` may name folders: their images are classified. ``options``
    (or run options by name in ``kwargs``): ``cache_dir``, ``seed`` and
    ``batch_size`` apply.
    """
    from .export import is_exported, load_exported

    paths = _image_paths(files)
    if is_exported(head):
        model = load_exported(head, trust_saved_model=trust_saved_model)
        yield from _predictions(paths, model.image_shape, model.aspect, model.class_names,
                                lambda X: (model.predict_proba(X), "probability"))  # fmt: skip
        return
    settings, run = split_kwargs(kwargs)
    spec = as_spec(spec, **settings)
    opts = as_options(options, **run)
    est, rec, _, extractor, fitted_spec = load_fitted(head, spec, data, task, options=opts, trust_pickle=trust_pickle)
    shape = tuple(rec.get("image_shape", ())) or None

    def scores(X):
        feats = extractor.transform(X, batch_size=opts.batch_size)
        if hasattr(est, "predict_proba"):
            return est.predict_proba(feats), "probability"
        margins = est.decision_function(feats)  # margins of SVMs saved without a calibration
        return (margins if margins.ndim == 2 else np.stack([-margins, margins], 1)), "margin"

    names = [str(rec["class_names"][int(c)]) for c in est.classes_]
    yield from _predictions(paths, tuple(shape[:2]) if shape else (32, 32), fitted_spec.aspect, names, scores)


def _image_paths(files) -> list[Path]:
    from .images import is_image_name

    paths = []
    for f in files:
        p = Path(f)
        paths += sorted(q for q in p.rglob("*") if q.is_file() and is_image_name(q.name)) if p.is_dir() else [p]
    if not paths:
        raise DataError(f"No image files in {', '.join(map(str, files)) or 'the list given'}: name image files, or "
                        "folders that hold some (jpg, png, ...).")  # fmt: skip
    return paths


def _predictions(paths, size, aspect, class_names, scores):
    """One :class:`Prediction` per path: each image stored at ``size`` by ``aspect`` (as the head's
    training images were), ``scores(X)`` -> ``(scores per class, score name)`` in ``class_names`` order."""
    from .images import load_image

    decoded: list = []
    for p in paths:
        try:
            decoded.append(load_image(p, tuple(size), aspect))
        except FeatxError as exc:
            decoded.append(exc)
    good = [im for im in decoded if isinstance(im, np.ndarray)]
    predictions, score_name = iter(()), "probability"
    if good:
        s, score_name = scores(np.stack(good))
        best = np.argmax(s, axis=1)
        predictions = iter(zip(best, s[np.arange(len(best)), best]))
    for p, im in zip(paths, decoded):
        if isinstance(im, Exception):
            yield Prediction(str(p), None, None, str(im), score_name)
        else:
            col, score = next(predictions)
            yield Prediction(str(p), str(class_names[int(col)]), float(score), None, score_name)
