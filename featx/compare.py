"""Compare heads on cached features: every head on every backbone's features, one table and report."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .cache import FeatureSet
from .cluster import connect
from .data import Dataset, load_dataset
from .errors import SettingsError
from .evaluation import EvalSettings, FitResult, LabelledFeatures, evaluate_heads, open_features, refits
from .extract import extract_features
from .fit import check_splits
from .options import RunOptions, as_options, split_kwargs
from .report import feature_map, write_report
from .spec import FeatureSpec, specs_for


def compare(
    specs=("trunk",),
    heads=("dense", "logreg", "svm"),
    data=None,
    task: str | None = None,
    *,
    params: dict | None = None,
    tune: bool = False,
    reference: bool = True,
    reports_dir="reports",
    n_jobs: int = 2,
    repeats: int = 1,
    train_sizes=None,
    features=None,
    exclude=None,
    stream: bool | None = None,
    options: RunOptions | None = None,
    **kwargs,
) -> tuple[list[FitResult], dict[str, Path]]:
    """Fit every head on every backbone's cached features; write a table and pictures.

    With the defaults it runs the split-CIFAR experiment on the shipped
    sample: the trunk is trained on classes 0-4 (once, then cached), extracts
    frozen features of classes 5-9, and the heads are fit on those.

    ``specs`` are backbones (names, ``.keras`` files, models) or
    :class:`~featx.spec.FeatureSpec` objects; the feature settings among
    ``kwargs`` (``weights``, ``size``, ...) apply to each backbone named that can
    take them (see :func:`featx.spec.specs_for`); ``options``
    (:class:`~featx.options.RunOptions`) and the run options among ``kwargs``
    say how to run, for every extraction. ``task`` defaults to the backbones'
    own (the trunk's: "target", the classes it was not trained on), else
    "full". ``params`` maps a head name to its parameters; ``tune`` chooses
    them by cross-validation on the train split instead (:mod:`featx.tune`).
    With ``reference``, a backbone that has a reference embedding (the trunk:
    the split-CIFAR protocol's 800-d flatten output, no mirror) gets it as a
    reference row, so the table shows what the feature settings add.
    Scikit-learn heads run in parallel (``n_jobs`` processes); the Keras head
    runs in this process. With ``cluster``, features are extracted in shards on
    the Dask cluster and every head, the Keras one and any parameter search
    included, is fitted on its workers through joblib's dask backend; features
    read in blocks (``stream``), each head is fitted on the workers, each
    reading its own blocks of the file (:mod:`featx.cluster_fit`).

    Every accuracy comes with its 95 % exact binomial interval over the test
    images, and every result but the best with McNemar's exact test against
    the best on the same images (:mod:`featx.stats`). ``repeats`` fits every
    head on that many seeded splits of the cached features and reports mean
    and standard deviation; ``train_sizes`` (images per class, or "all"; a
    list or "5,50,all") fits every head on seeded class-balanced subsets of the
    train rows, ``repeats`` times each, for a learning curve (:mod:`featx.curves`).
    ``features``: the path of an ``.npz`` or ``.h5`` file of embeddings made
    elsewhere (``X_train``, ``y_train``, ``X_test``, ``y_test``, optionally
    ``class_names``): the heads, table and report run on those, no backbone.
    ``exclude``: an audit's ``audit.csv`` or a text file of image paths
    (:mod:`featx.exclusions`): the train images it names are left out of
    training and the test images out of scoring. ``stream``: fit the heads on the cache read a
    block of rows at a time (:mod:`featx.streaming`; None: where the features would not fit
    comfortably in memory, :func:`featx.streaming.fits_in_memory`; only heads that can learn so).

    Returns the results, best first, and the paths of the report files.
    """
    settings, run = split_kwargs(kwargs)
    opts = as_options(options, **run)
    how = EvalSettings(heads=tuple(heads or ()), params=params or {}, tune=tune, repeats=repeats,
                       train_sizes=train_sizes, n_jobs=n_jobs, seed=opts.seed, stream=stream)  # fmt: skip
    specs = specs_for([specs] if isinstance(specs, (str, FeatureSpec)) else specs, **settings)
    if not specs:
        raise SettingsError("No backbones to compare: name at least one, e.g. trunk or vgg19.")
    protocol = [r for s in specs if (r := s.reference()) is not None] if reference else []
    specs += [p for p in dict.fromkeys(protocol) if p not in specs]
    if task is None:
        task = next((t for s in specs if (t := s.backbone_.default_task) != "full"), "full")
    Path(reports_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after the fits
    if exclude is not None:
        from .exclusions import read_exclusions

        exclude = read_exclusions(exclude)
    if features is not None:
        with connect(opts.cluster, opts.workers) as client:
            return _compare_embeddings(features, how, reports_dir=reports_dir, exclude=exclude, client=client)
    results: list[FitResult] = []
    feature_sets, curves = [], []
    with connect(opts.cluster, opts.workers) as client, ExitStack() as files:
        opts = opts.replace(cluster=client, workers=None)
        loaded: dict = {}  # one decode per way of storing the images that the specs ask for
        made: dict = {}  # spec -> its feature set, for reference rows that are columns of another's
        for spec in specs:
            if isinstance(data, Dataset):
                ds = data
            elif (ds := loaded.get(spec.images)) is None:
                ds = loaded[spec.images] = load_dataset(data, task, cache_dir=opts.cache_dir, seed=opts.seed,
                                                        images=spec.images, progress=opts.progress)  # fmt: skip
            shown, drop, note = _excluded(ds, exclude) if exclude is not None else (ds, None, "")
            check_splits(shown.y_train, shown.y_test, ds.class_names, tune)  # before any features are made
            fs, feats = _features_of(spec, ds, made, opts, protocol, how, files)
            if drop is not None:
                feats = _without(feats, drop)
            feature_sets.append({"features": spec.describe(), "settings": fs.settings, "info": fs.info, "path": str(fs.path),
                                 "map": feature_map(feats.X_test, feats.y_test, seed=opts.seed)})  # fmt: skip
            extract_s = sum(fs.info.get("seconds", {}).values()) or None
            for r in evaluate_heads(feats, how, client):
                if spec in protocol:
                    r.note = " ".join(filter(None, [spec.reference_note(), r.note]))
                if exclude is not None:
                    r.note = " ".join(filter(None, [r.note, note]))
                r.extract_seconds = extract_s
                results.append(r)
                curves += refits(r, feats, how)
    return _finish(results, shown, reports_dir, feature_sets, curves)


def _without(feats: LabelledFeatures, rows) -> LabelledFeatures:
    """``feats`` without the excluded ``(train, test)`` rows (features held in memory only)."""
    if not feats.in_memory:
        raise SettingsError("--exclude leaves rows out of features held in memory; these are read in blocks (too "
                            "large for memory): run without it.")  # fmt: skip
    return feats.without(rows)


def _excluded(ds: Dataset, exclude):
    """``ds`` without the images ``exclude`` names, the rows left out (train, test), and a note that says so."""
    from .exclusions import without

    tr, te = exclude.rows(ds)
    note = f"without {len(tr)} train and {len(te)} test images ({exclude.source.name})"
    return without(ds, tr, te), (tr, te), note


def _features_of(spec: FeatureSpec, ds, made: dict, opts, protocol: list, how: EvalSettings, files: ExitStack):
    """``(feature set, features)`` of ``spec`` (a :class:`~featx.evaluation.LabelledFeatures`): the
    columns of a feature set made in this run where its features are a part of that one's (the
    linear-probe reference of a pretrained CNN), else extracted (or found in the cache). Features
    too large for memory (``how.streams``) stay in their file, open in ``files``, read in blocks."""
    what = {"backbone": spec.backbone_.label, "features": spec.describe()}
    for other, (fs, feats) in made.items():
        cols = spec.columns_in(other)
        if cols is not None and cols.stop <= feats.X_train.shape[1]:
            if cols.stop - cols.start == feats.X_train.shape[1] and cols.start == 0:
                return fs, feats.columns(slice(None), **what)
            info = {**fs.info, "seconds": {}, "columns_of": str(fs.path)}
            part = FeatureSet(fs.path, {**fs.settings, **spec.key_settings(fs.settings["weights"])}, info)
            return part, feats.columns(cols, **what)
    fs = extract_features(spec, ds, options=opts)
    feats = open_features(fs, how, files, **what)
    if any(p.columns_in(spec) is not None for p in protocol if p != spec):
        made[spec] = (fs, feats)  # kept only while a reference row may take its columns
    return fs, feats


def _finish(results: list[FitResult], ds, reports_dir, feature_sets, curves) -> tuple[list[FitResult], dict]:
    results.sort(key=lambda r: (-r.accuracy, -r.macro_f1, r.fit_seconds))
    mark_vs_best(results)
    paths = write_report(results, ds, reports_dir, feature_sets, curves=curves)
    return results, paths


def mark_vs_best(results: list[FitResult]) -> None:
    """Set each result's McNemar p-value against the first (the best), on the same test images."""
    from .stats import mcnemar

    if not results:
        return
    best = results[0]
    right = np.asarray(best.y_test) == np.asarray(best.y_pred)
    for r in results[1:]:
        if len(r.y_test) == len(best.y_test) and np.array_equal(r.y_test, best.y_test):
            r.p_vs_best = mcnemar(right, np.asarray(r.y_test) == np.asarray(r.y_pred))


def _compare_embeddings(path, how: EvalSettings, *, reports_dir, exclude=None, client=None):
    """compare on embeddings made by another tool (see :func:`featx.data.load_embeddings`)."""
    from .data import load_embeddings

    with ExitStack() as files:
        ds, arrays = load_embeddings(path, on_disk=how.streams, files=files)
        feats = LabelledFeatures(*arrays, class_names=ds.class_names, backbone=Path(path).stem,
                                 features=f"{Path(path).name} ({arrays[0].shape[1]}-d)")  # fmt: skip
        return _embeddings_results(path, ds, feats, how, reports_dir, exclude, client)


def _embeddings_results(path, ds, feats: LabelledFeatures, how: EvalSettings, reports_dir, exclude, client=None):
    note = ""
    if exclude is not None:
        ds, drop, note = _excluded(ds, exclude)
        feats = _without(feats, drop)
        check_splits(feats.y_train, feats.y_test, ds.class_names, how.tune)
    results, curves = [], []
    for r in evaluate_heads(feats, how, client):
        r.note = " ".join(filter(None, [r.note, note]))
        results.append(r)
        curves += refits(r, feats, how)
    feature_sets = [{"features": feats.features, "settings": {"file": str(Path(path).resolve())}, "info": {},
                     "path": str(path), "map": feature_map(feats.X_test, feats.y_test, seed=how.seed)}]  # fmt: skip
    return _finish(results, ds, reports_dir, feature_sets, curves)


def format_table(results: list[FitResult], width: int | None = None) -> str:
    """The results as a text table, one row per head and feature set, best first.

    At most ``width`` characters wide (default: the terminal's, 120 when output
    is not a terminal): where the feature descriptions make rows wider, each
    feature set gets a number in the table and its description in a legend
    below, and a note still too long is cut short with "…" (the CSV, JSON and
    HTML report keep everything whole).
    """
    import shutil

    width = width or shutil.get_terminal_size((120, 24)).columns
    names = [r.features or r.backbone for r in results]
    legend = list(dict.fromkeys(names))
    notes = []
    for r in results:
        chosen = " ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
        if r.cv_accuracy is not None:
            chosen += f" (cv {r.cv_accuracy:.2%})"
        notes.append(" ".join(filter(None, [chosen, r.note])))

    repeats = any(len(r.repeat_accuracies) > 1 for r in results)

    def cells(r) -> str:
        lo, hi = r.accuracy_interval
        p = r.p_vs_best
        vs = "best" if p is None else f"{'worse' if r.distinguishable else 'same'} " + (
            "p<.001" if p < 0.001 else f"p={p:.3f}")  # fmt: skip
        out = f"{r.accuracy:>8.2%} {f'{lo:.1%}-{hi:.1%}':>11} {vs:<13}"
        if repeats:
            reps = np.asarray(r.repeat_accuracies, dtype=float)
            out += f" {f'{reps.mean():.2%}±{reps.std(ddof=1):.2%}' if len(reps) > 1 else '':>13}"
        return out

    def table(labels: list[str]) -> list[str]:
        w = max([len("features"), *map(len, labels)])
        head = (f"{'features':<{w}} {'head':<8} {'accuracy':>8} {'95% CI':>11} {'vs best':<13}"
                + (f" {'mean±sd':>13}" if repeats else "")
                + f" {'macro-F1':>8} {'fit s':>7} {'ms/img':>7}  chosen / note")  # fmt: skip
        lines = [head, "-" * min(len(head), width)]
        for label, r, note in zip(labels, results, notes):
            row = (f"{label:<{w}} {r.head:<8} {cells(r)} {r.macro_f1:>8.3f} {r.fit_seconds:>7.2f} "
                   f"{r.predict_ms_per_image:>7.4f}  ")  # fmt: skip
            room = max(12, width - len(row))
            lines.append((row + (note if len(note) <= room else note[: room - 1] + "…")).rstrip())
        return lines

    import textwrap

    text = ("95% CI: exact binomial interval over the test images. vs best: McNemar's exact test on the same images "
            "(same: p >= 0.05, not distinguishable from the best). ms/img: predict time per image.")  # fmt: skip
    if repeats:
        text += " mean±sd: over seeded splits of the cached features (--repeats)."
    foot = ["", *textwrap.wrap(text, max(40, width))]
    lines = table(names)
    if max(map(len, lines)) <= width:
        return "\n".join(lines + foot)
    lines = table([f"[{legend.index(n) + 1}]" for n in names]) + foot + [""]
    lines += [f"[{i}] {n}" for i, n in enumerate(legend, 1)]
    return "\n".join(lines)
