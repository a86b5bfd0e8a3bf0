"""The ``featx`` command line (also ``python cli.py``).

Each command parses and checks its arguments, then calls the public featx
function that a Python user would call.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import sys
import tempfile
import time
import traceback

from .errors import FeatxError, HeadError


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line that points to --help."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def _int_or_auto(text: str):
    """A positive integer, or "auto" (``--batch-size``, ``--shard-size``)."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto. Received: {text!r}") from None


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32-1. Received: {text!r}")
    return value


def _n_jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, or -1 for every core. Received: {text!r}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="sample",
        help="'sample' (shipped, offline; default), 'cifar10' (downloaded once by Keras), or a "
        "folder/.tar.gz/.zip of class folders, or a cifar-10-batches-py folder or archive",
    )  # fmt: skip
    p.add_argument("--task", default="full", choices=["full", "source", "target"],
                   help="full: all classes; source: classes 0-4; target: classes 5-9 relabelled 0-4")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every split and random init (default 0)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default ./cache or $FEATX_CACHE_DIR)")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """How photos of a folder or archive are stored (featx.images.ImageOptions; FeatureSpec's aspect, image_side)."""
    from .images import ASPECTS

    p.add_argument("--aspect", choices=ASPECTS, default="crop",
                   help="photos of another shape than the stored one: crop (shorter side to size, centre kept; "
                   "default), pad (letterbox) or squash (resized out of shape)")
    p.add_argument("--image-side", type=int, default=None, metavar="PIXELS",
                   help="side of the stored photos (default 256, or --size where larger); images of one size "
                   "within it, such as CIFAR tiles, are stored as they are")


def cmd_data(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .images import DEFAULT_SIDE, ImageOptions

    images = ImageOptions(side=DEFAULT_SIDE if args.image_side is None else args.image_side, aspect=args.aspect)
    ds = load_dataset(args.data, args.task, cache_dir=args.cache_dir, seed=args.seed, images=images)
    print(ds.describe())
    return 0


def _add_spec_args(p: argparse.ArgumentParser, backbone: str | None = "vgg19") -> None:
    """The options that make the features: one per field of featx.spec.FeatureSpec."""
    from .runtime import PRECISIONS
    from .spec import DTYPES, INTERPOLATIONS, POOLINGS

    if backbone is not None:
        p.add_argument("--backbone", default=backbone, metavar="NAME|PATH",
                       help=f"trunk, a keras.applications model by lower-case name, a KerasHub preset (a name, an "
                       f"hf:// or kaggle:// handle, or a preset folder; `featx backbones` lists them), or a .keras "
                       f"model file (default {backbone})")  # fmt: skip
    p.add_argument("--weights", default="pretrained",
                   help="pretrained (default: imagenet for keras.applications models, trained for the trunk, saved "
                   "for a model file), imagenet, trained, none (a random init, seeded by --seed), or a weights "
                   "file path")  # fmt: skip
    p.add_argument("--size", type=int, default=None,
                   help="input side after upscaling (default: the backbone's, 224 for most; trunk 32)")
    p.add_argument("--pooling", choices=POOLINGS, default=None, help="default avg (trunk: max)")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="storage type of the features")
    p.add_argument("--layers", default=None, metavar="NAME,NAME",
                   help="layers whose pooled outputs make the embedding (default: a pretrained network's last "
                   "layer; trunk: conv1,pool,flatten; --layers flatten is the split-CIFAR protocol's 800-d "
                   "embedding; `featx layers --backbone NAME` lists them)")
    p.add_argument("--grid", type=int, default=None, help="cells per side each layer is pooled to (trunk 4, others 1)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's embedding with its mirror image's (default: trunk yes, others no)")
    p.add_argument("--batch-size", type=_int_or_auto, default="auto",
                   help="images per forward pass: a number, or auto (default: 32 on a CPU, by memory on a GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="what the backbone computes in (default auto: bfloat16 on GPUs that compute in it natively, "
                   "float32 on CPUs; the trunk and model files always float32)")
    _add_image_args(p)


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("on a Dask cluster (pip install 'featx[dask]')")
    g.add_argument("--cluster", default=None, metavar="local|ADDRESS",
                   help="embed in shards on Dask workers (and fit heads there): 'local' starts a cluster on this "
                   "machine (one worker per GPU where there are GPUs), tcp://host:8786 uses a running scheduler. "
                   "Workers must see --cache-dir at the same path")  # fmt: skip
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes of --cluster local (default: one per core)")
    g.add_argument("--shard-size", type=_int_or_auto, default="auto",
                   help="images per task (default auto: about 4 shards per worker, 256 to 10,000)")


def _spec_settings(args: argparse.Namespace) -> dict:
    """The feature settings given on the command line, by FeatureSpec field name."""
    import dataclasses

    from .spec import FeatureSpec

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(FeatureSpec)
            if f.name != "backbone" and hasattr(args, f.name)}  # fmt: skip


def _spec(args: argparse.Namespace):
    from .spec import as_spec

    return as_spec(args.backbone, **_spec_settings(args))


def _options(args: argparse.Namespace):
    """The run options given on the command line."""
    import dataclasses

    from .options import RunOptions

    return RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions) if hasattr(args, f.name)})


def cmd_extract(args: argparse.Namespace) -> int:
    if args.list:
        return cmd_cache(args)
    from .extract import extract_features

    extract_features(_spec(args), args.data, args.task, options=_options(args))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .backbones import backbone_names, get_backbone

    rows = []
    names = backbone_names()
    for name in tqdm(names, desc="building architectures", unit="model", disable=not args.widths, file=sys.stderr):
        bb = get_backbone(name)
        row = bb.row()
        if args.widths:
            row["width"] = bb.embedding_width()
            bb.forget_layers()  # one architecture in memory at a time
        rows.append(row)
    _print_table(rows)
    if not args.widths:
        print("\n(--widths adds the width of each default embedding: it builds every architecture, several minutes)")
    from .backbones.hub import preset_rows
    from .errors import SettingsError

    try:
        hub_rows = preset_rows()
    except SettingsError as exc:
        print(f"\nKerasHub presets (DINOv2, CLIP, SigLIP, ViT, ...): {exc}")
        return 0
    print(f"\nKerasHub image presets ({len(hub_rows)}, from KerasHub's registry; downloaded once when first used, "
          "or pass a preset folder, an hf:// or a kaggle:// handle):\n")
    _print_table([{**r, "size": r["size"] or "-", "params": f"{r['params'] / 1e6:,.1f}M" if r["params"] else "-",
                   "description": r["description"][:70]} for r in hub_rows])  # fmt: skip
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .backbones import get_backbone

    bb = get_backbone(args.backbone)
    default = set(bb.default_layers)
    print(f"{bb.label}: the layers --layers takes, with their output shapes at {bb.default_size}x{bb.default_size} "
          "(? where the model leaves a side open; * the default embedding)")  # fmt: skip
    _print_table([{"layer": name, "output shape": "x".join("?" if d is None else str(d) for d in shape),
                   "default": "*" if name in default else ""} for name, shape in bb.layer_shapes()])  # fmt: skip
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .backbones.trunk import pretrain_trunk

    pretrain_trunk(args.data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                   cache_dir=args.cache_dir, force=args.force)  # fmt: skip
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import list_embeddings, list_features

    rows = list_features(args.cache_dir)
    per_image = list_embeddings(args.cache_dir)
    if not rows and not per_image:
        print("no cached features yet: run `python cli.py extract`")
        return 0
    from .spec import describe

    for row in rows + per_image:
        row["features"] = describe(row) if "backbone" in row else ""
    if rows:
        cols = ["file", "status", "features", "data", "task", "dim", "train", "test", "bytes", "modified"]
        _print_table([{c: r.get(c, "") for c in cols} for r in rows])
    if per_image:
        print("\nper-image embeddings (FeatureExtractor cache_dir):")
        cols = ["file", "status", "features", "dim", "images", "bytes", "modified"]
        _print_table([{c: r.get(c, "") for c in cols} for r in per_image])
    return 0


def _params(args: argparse.Namespace) -> dict:
    from .heads import parse_params

    return parse_params(args.param)


def cmd_fit(args: argparse.Namespace) -> int:
    from .compare import format_table
    from .fit import fit_head

    res, path = fit_head(args.head, _spec(args), args.data, args.task, params=_params(args), tune=args.tune,
                         stream=args.stream, options=_options(args))  # fmt: skip
    print(format_table([res]))
    print(f"saved {args.head} head to {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, format_table

    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    params = {}
    for item in args.param or []:
        head, _, rest = item.partition(":")
        if not rest:
            raise HeadError(f"compare's --param is HEAD:NAME=VALUE, e.g. logreg:C=0.1. Received: {item!r}")
        params.setdefault(head, []).append(rest)
    from .heads import parse_params
    from .spec import specs_for

    results, paths = compare(specs_for(backbones, **_spec_settings(args)), heads, args.data, args.task,
                             params={h: parse_params(v) for h, v in params.items()}, tune=args.tune,
                             reference=args.reference, reports_dir=args.reports_dir, n_jobs=args.n_jobs,
                             repeats=args.repeats, train_sizes=args.train_sizes, features=args.features,
                             exclude=args.exclude, stream=args.stream, options=_options(args))  # fmt: skip
    print()
    print(format_table(results))
    print()
    for kind, path in paths.items():
        print(f"{kind:<10} {path}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .auditing import audit
    from .neighbors import NeighborSearch

    result, paths = audit(_spec(args), args.data, args.task, features=args.features, threshold=args.threshold,
                          head=args.head, folds=args.folds, neighbors=args.neighbors, outlier_mads=args.outlier_mads,
                          pixel_threshold=args.pixel_threshold,
                          search=NeighborSearch(method=args.search), n_jobs=args.n_jobs, reports_dir=args.reports_dir,
                          options=_options(args))  # fmt: skip
    print()
    print(result.summary())
    print()
    for kind, path in paths.items():
        print(f"{kind:<10} {path}")
    return 0


def _float(text: str) -> float:
    """``text`` as a number (NaN where it is none: every range check then refuses it)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _unit_float(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine similarity from 0 to 1, e.g. 0.9. Received: {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number. Received: {text!r}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_files

    failed = 0
    for i, p in enumerate(predict_files(args.images, args.head, _spec(args), args.data, args.task,
                                        trust_pickle=args.trust_pickle, trust_saved_model=args.trust_saved_model,
                                        options=_options(args))):  # fmt: skip
        if i == 0:
            print(f"file\tclass\t{p.score_name}")
        if p.error:
            failed += 1
            print(f"{p.file}\terror: {p.error}")
        else:
            print(f"{p.file}\t{p.label}\t{p.score:.3f}")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_classifier

    path = export_classifier(args.out, args.head, _spec(args), args.data, args.task, format=args.format,
                             force=args.force, trust_pickle=args.trust_pickle, options=_options(args))  # fmt: skip
    print(f"exported {args.head} head and {args.backbone} backbone ({args.format or 'from the name'}): {path}")
    return 0


def _print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def build_parser() -> argparse.ArgumentParser:
    from .heads import HEADS, heads_help

    exportable = ", ".join(name for name, cls in HEADS.items() if cls.exports())
    stream_help = (f"fit on the cache read a block of rows at a time (heads that can: "
                   f"{', '.join(name for name, cls in HEADS.items() if cls.streams())}); default: when 4 float32 "
                   "copies of the features would not fit in the memory available")  # fmt: skip
    parser = _Parser(
        prog="featx",
        description="Extract frozen-backbone image embeddings once, cache them in HDF5, and "
        "train and compare scikit-learn heads on them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    # -v after the command too (a subparser's default would reset the count: none is set)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                         help="more log output, and the traceback of an error (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    sub.add_parser = functools.partial(sub.add_parser, parents=[verbose])

    p = sub.add_parser("data", help="show what a dataset holds: sizes, classes, image shape, pixel cache")
    _add_data_args(p)
    _add_image_args(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("extract", help="run a frozen backbone once over a dataset, cache embeddings in HDF5")
    _add_data_args(p)
    _add_spec_args(p)
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--list", action="store_true", help="list cached feature sets and exit")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("pretrain", help="train the split-CIFAR trunk on the source classes (0-4)")
    _add_data_args(p)
    p.add_argument("--backbone", default="trunk", choices=["trunk"])
    p.add_argument("--epochs", type=_positive_int, default=10,
                   help="(default 10; other values make another trunk, which never replaces the default one)")
    p.add_argument("--batch-size", type=_positive_int, default=100)
    p.add_argument("--force", action="store_true", help="train again even if a trunk of these settings exists")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("fit", help="fit a head on cached features (extracting them first if missing)")
    _add_data_args(p)
    _add_spec_args(p)
    p.add_argument("--head", default="logreg", help=f"the head (default logreg). {heads_help()}")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="head parameter, e.g. C=0.1 (repeatable)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None, help=stream_help)
    p.add_argument("--tune", action="store_true",
                   help="choose the head's parameters by 3-fold cross-validation on the train split first")
    p.add_argument("--force", action="store_true", help="recompute the features even if cached")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("compare", help="fit every head on every backbone's features; print and save a table")
    _add_data_args(p)
    p.set_defaults(task=None)
    p.add_argument("--backbones", default="trunk", help="comma-separated (default trunk)")
    p.add_argument("--heads", default="dense,logreg,svm", help=f"comma-separated, of {', '.join(HEADS)} (default dense,logreg,svm)")
    p.add_argument("--param", action="append", metavar="HEAD:NAME=VALUE", help="e.g. logreg:C=0.1 (repeatable)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None, help=stream_help)
    p.add_argument("--tune", action="store_true",
                   help="choose each head's parameters by 3-fold cross-validation on the train split first")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also fit the heads on the split-CIFAR protocol's trunk features, as a reference row")
    _add_spec_args(p, backbone=None)  # each applies to the backbones that can take it
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="fit every head on N seeded splits of the cached features: mean and s.d. (default 1)")
    p.add_argument("--train-sizes", default=None, metavar="N,N,...,all",
                   help="learning curves: fit every head on seeded class-balanced subsets of N train images per "
                   "class (and all), --repeats times each, scored on the whole test split")
    p.add_argument("--features", default=None, metavar="FILE",
                   help="compare the heads on embeddings made elsewhere: an .npz or .h5 file holding X_train, "
                   "y_train, X_test, y_test (and class_names); no backbone runs")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="leave out the images an audit flagged (its audit.csv) or a text file lists: train images "
                   "from training, test images from scoring")
    p.add_argument("--reports-dir", default="reports", help="where the table and pictures go (default reports/)")
    p.add_argument("--n-jobs", type=_n_jobs, default=2, help="parallel fits of the scikit-learn heads")
    p.add_argument("--force", action="store_true", help="recompute the features even if cached")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_compare)

    from .auditing import DEFAULT_PIXEL_THRESHOLD, DEFAULT_THRESHOLD

    p = sub.add_parser("audit", help="find duplicates, train/test leaks, likely label errors and outliers in cached "
                       "features; write a page to check them")  # fmt: skip
    _add_data_args(p)
    p.set_defaults(task=None)  # the backbone's own (the trunk's: target), as compare
    _add_spec_args(p)  # the cached features audited (extract them first)
    p.add_argument("--features", default=None, metavar="FILE",
                   help="audit embeddings made elsewhere: an .npz or .h5 file holding X_train, y_train, X_test, "
                   "y_test (and class_names)")
    p.add_argument("--threshold", type=_unit_float, default=DEFAULT_THRESHOLD,
                   help=f"cosine similarity from which two images are copies (default {DEFAULT_THRESHOLD})")
    p.add_argument("--head", default="logreg", help="the head whose cross-validated probabilities rank the labels "
                   f"(default logreg), of {', '.join(HEADS)}")  # fmt: skip
    p.add_argument("--folds", type=_positive_int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--neighbors", type=_positive_int, default=10,
                   help="nearest images searched per image; outliers are far from them (default 10)")
    p.add_argument("--pixel-threshold", type=float, default=DEFAULT_PIXEL_THRESHOLD,
                   help="cosine similarity of two images' grey 16x16 thumbnails from which they are copies too, where "
                   f"their embeddings agree (default {DEFAULT_PIXEL_THRESHOLD}; above 1: by embeddings alone)")
    p.add_argument("--outlier-mads", type=_positive_float, default=4.0,
                   help="outliers: farther from their nearest images than the median by this many robust standard "
                   "deviations (default 4)")  # fmt: skip
    p.add_argument("--search", choices=["exact", "approximate"], default="exact",
                   help="nearest-neighbour search: exact (default; FAISS where installed, else NumPy, in blocks) or "
                   "approximate (a FAISS inverted-file index: faster on millions of rows)")  # fmt: skip
    p.add_argument("--reports-dir", default="reports", help="where audit.csv, audit.json and audit.html go")
    p.add_argument("--n-jobs", type=_n_jobs, default=2, help="parallel cross-validation fits")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("predict", help="classify image files with a fitted head and its backbone")
    _add_data_args(p)
    _add_spec_args(p)  # the head fitted with these feature options
    p.add_argument("--head", default="logreg", metavar="NAME|PATH",
                   help="a head fitted with `fit` (default logreg), or a model made by `export` (.keras, .onnx, "
                   "a SavedModel folder)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a head that an earlier featx saved as a pickle (loading one can run any code in it)")
    p.add_argument("--trust-saved-model", action="store_true",
                   help="run a SavedModel folder given as --head (its graph is a program: it can do anything)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a fitted head and its backbone as one model (.keras, ONNX, SavedModel)")
    _add_data_args(p)
    _add_spec_args(p)  # the head fitted with these feature options
    p.add_argument("--head", default="logreg", help=f"the fitted head to export (default logreg), of {exportable}")
    p.add_argument("--format", choices=["keras", "onnx", "saved_model"], default=None,
                   help="default: from OUT's ending (.keras, .onnx; else a SavedModel folder)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a head that an earlier featx saved as a pickle (loading one can run any code in it)")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("backbones", help="list the backbones: name, input size, preprocessing, weights")
    p.add_argument("--widths", action="store_true", help="also the width of each default embedding (slow)")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("layers", help="list the layers of a backbone that --layers takes, with their output shapes")
    p.add_argument("--backbone", default="vgg19", metavar="NAME|PATH", help="(default vgg19)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("cache", help="list cached feature sets with their settings, sizes and dates")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_cache)
    return parser


class _Console(logging.Handler):
    """featx's records as plain lines: warnings and errors on stderr, the rest on stdout (the
    streams of the moment, so that a redirected ``sys.stdout`` gets them)."""

    _featx_cli = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a message never breaks the run
            self.handleError(record)


def show_messages(verbose: int = 0) -> None:
    """featx's messages (its ``logging`` records) as the CLI shows them: what featx is doing on
    stdout, warnings on stderr, each as its plain text; with ``-v`` other libraries' INFO records
    too, with ``-vv`` everything at DEBUG."""
    featx_log = logging.getLogger("featx")
    for handler in [h for h in featx_log.handlers if getattr(h, "_featx_cli", False)]:
        featx_log.removeHandler(handler)  # main() run again in one process (tests): one handler
    featx_log.addHandler(_Console())
    featx_log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    root = logging.getLogger()
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    if not root.handlers:  # other libraries' records; featx's are shown above, once
        other = logging.StreamHandler()
        other.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        other.addFilter(lambda r: not r.name.startswith("featx"))
        root.addHandler(other)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show_messages(args.verbose)
    if not args.verbose:  # Dask logs every scheduler and worker event at INFO (its workers too): -v shows them
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    backend = _missing_backend()
    if backend:
        print(f"error: KERAS_BACKEND={backend}, but {backend} is not installed here: install it (see README, "
              "\"Backends\") or set KERAS_BACKEND to one that is (tensorflow, jax, torch).", file=sys.stderr)  # fmt: skip
        return 2
    unknown_home = _unknown_home(args)
    if unknown_home:
        print(f"error: {unknown_home!r} names the home folder of a user this machine does not have: write the "
              "path out in full.", file=sys.stderr)  # fmt: skip
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends here: a user's mistake (2) or a bug (1)
        if is_users_mistake(exc):
            # featx's own checks, or a path that cannot be read or written: one line
            # (-v shows the traceback too).
            if args.verbose:
                traceback.print_exc()
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        return _report_bug(exc, args.verbose)


#: The OS errors that are a user's mistake or the machine's state, not a bug: a missing file or
#: folder, a permission, a full or read-only disk, a name too long.
_EXPECTED_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                    errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EDQUOT, errno.ELOOP}  # fmt: skip


def is_users_mistake(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input or the machine's state (featx's own errors, the expected OS
    errors) rather than a bug in featx."""
    return isinstance(exc, FeatxError) or (isinstance(exc, OSError) and exc.errno in _EXPECTED_ERRNOS)


def _report_bug(exc: BaseException, verbose: int) -> int:
    """Say that ``exc`` is a bug in featx, keep its traceback in a file (and on stderr with -v): exit 1."""
    text = "".join(traceback.format_exception(exc))
    where = None
    try:
        fd, where = tempfile.mkstemp(prefix=f"featx-bug-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"featx {_version()}, Python {sys.version.split()[0]}, argv: {sys.argv!r}\n\n{text}")
    except OSError:
        verbose = True  # nowhere to keep it: show it
    if verbose:
        sys.stderr.write(text)
    first = " ".join(str(exc).split())[:300]
    kept = f"its traceback is in {where}" if where else "its traceback is above"
    print(f"error: featx hit a bug ({type(exc).__name__}: {first}). This is not a mistake of yours: {kept}. "
          "Please report it with the command you ran.", file=sys.stderr)  # fmt: skip
    return 1


def _version() -> str:
    from . import __version__

    return __version__


def _missing_backend() -> str | None:
    """The Keras backend that KERAS_BACKEND names where its library is not installed (Keras would
    fail with an import traceback at its first use)."""
    import importlib.util

    backend = os.environ.get("KERAS_BACKEND", "").strip().lower()
    if backend in ("torch", "jax", "tensorflow") and "keras" not in sys.modules and importlib.util.find_spec(backend) is None:
        return backend
    return None


def _unknown_home(args: argparse.Namespace) -> str | None:
    """The first path argument that starts with ``~user`` for a user who does not exist here (pathlib
    cannot expand it, and would raise deep inside a command)."""
    for value in vars(args).values():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v.startswith("~") and os.path.expanduser(v).startswith("~"):
                return v
    return None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: '{exc.filename}'. Check the path and its permissions."
    text = " ".join(str(exc).split())
    if not isinstance(exc, FeatxError):
        text = f"{text} ({type(exc).__name__})"
    return text
