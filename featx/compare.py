"""Compare heads on cached features: every head on every backbone's features, one table and report."""

from __future__ import annotations

from pathlib import Path

from .cluster import connect
from .data import Dataset, load_dataset
from .errors import HeadError, SettingsError
from .extract import extract_features
from .fit import FitResult, check_tune, evaluate_heads
from .heads import HEADS, make_head
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
    included, is fitted on its workers through joblib's dask backend.

    Returns the results, best first, and the paths of the report files.
    """
    settings, run = split_kwargs(kwargs)
    opts = as_options(options, **run)
    specs = specs_for([specs] if isinstance(specs, (str, FeatureSpec)) else specs, **settings)
    if not specs:
        raise SettingsError("No backbones to compare: name at least one, e.g. trunk or vgg19.")
    protocol = [r for s in specs if (r := s.backbone_.reference_spec(s)) is not None] if reference else []
    specs += [p for p in dict.fromkeys(protocol) if p not in specs]
    if task is None:
        task = next((t for s in specs if (t := s.backbone_.default_task) != "full"), "full")
    params = params or {}
    if not heads:
        raise HeadError(f"No heads to fit: name at least one of {', '.join(HEADS)}.")
    stray = [h for h in params if h not in heads]
    if stray:
        raise HeadError(
            f"Parameters are given for head {stray[0]!r}, which is not compared here (heads: {', '.join(heads)}; "
            f"known heads: {', '.join(HEADS)}). Received: params for {stray[0]!r}"
        )
    for h in heads:
        make_head(h, **params.get(h, {}))  # unknown heads and bad parameters fail before any work
        check_tune(h, params.get(h, {}), tune)
    Path(reports_dir).mkdir(parents=True, exist_ok=True)  # a bad folder fails now, not after the fits
    results: list[FitResult] = []
    feature_sets = []
    with connect(opts.cluster, opts.workers) as client:
        opts = opts.replace(cluster=client, workers=None)
        loaded: dict = {}  # one decode per way of storing the images that the specs ask for
        for spec in specs:
            if isinstance(data, Dataset):
                ds = data
            elif (ds := loaded.get(spec.images)) is None:
                ds = loaded[spec.images] = load_dataset(data, task, cache_dir=opts.cache_dir, seed=opts.seed,
                                                        images=spec.images)  # fmt: skip
            fs = extract_features(spec, ds, options=opts)
            X_train, y_train, X_test, y_test = fs.load()
            feature_sets.append({"features": spec.describe(), "settings": fs.settings, "info": fs.info,
                                 "path": str(fs.path), "map": feature_map(X_test, y_test, seed=opts.seed)})  # fmt: skip
            extract_s = sum(fs.info.get("seconds", {}).values()) or None
            jobs = [(h, make_head(h, **params.get(h, {}))) for h in heads]
            for r in evaluate_heads(jobs, (X_train, y_train, X_test, y_test), client, n_jobs=n_jobs,
                                    backbone=spec.backbone_.label, class_names=fs.class_names,
                                    features=spec.describe(), tune=tune):  # fmt: skip
                if spec in protocol:
                    r.note = " ".join(filter(None, [spec.backbone_.reference_note(spec), r.note]))
                r.extract_seconds = extract_s
                results.append(r)
    results.sort(key=lambda r: (-r.accuracy, -r.macro_f1, r.fit_seconds))
    paths = write_report(results, ds, reports_dir, feature_sets)
    return results, paths


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

    def table(labels: list[str]) -> list[str]:
        w = max([len("features"), *map(len, labels)])
        head = (f"{'features':<{w}} {'head':<8} {'accuracy':>8} {'macro-F1':>8} {'fit s':>7} "
                f"{'predict ms/img':>14}  chosen / note")  # fmt: skip
        lines = [head, "-" * min(len(head), width)]
        for label, r, note in zip(labels, results, notes):
            row = (f"{label:<{w}} {r.head:<8} {r.accuracy:>8.2%} {r.macro_f1:>8.3f} {r.fit_seconds:>7.2f} "
                   f"{r.predict_ms_per_image:>14.4f}  ")  # fmt: skip
            room = max(12, width - len(row))
            lines.append((row + (note if len(note) <= room else note[: room - 1] + "…")).rstrip())
        return lines

    lines = table(names)
    if max(map(len, lines)) <= width:
        return "\n".join(lines)
    lines = table([f"[{legend.index(n) + 1}]" for n in names]) + [""]
    lines += [f"[{i}] {n}" for i, n in enumerate(legend, 1)]
    return "\n".join(lines)
