"""The ``featx`` command line (also ``python cli.py``).

Each command parses and checks its arguments, then calls the public featx
function that a Python user would call.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import FeatxError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="sample",
        help="'sample' (shipped, offline; default), 'cifar10' (downloaded once by Keras), or a "
        "folder/.tar.gz/.zip of class folders, or a cifar-10-batches-py folder or archive",
    )  # fmt: skip
    p.add_argument("--task", default="full", choices=["full", "source", "target"],
                   help="full: all classes; source: classes 0-4; target: classes 5-9 relabelled 0-4")
    p.add_argument("--seed", type=int, default=0, help="seed of every split and random init (default 0)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default ./cache or $FEATX_CACHE_DIR)")


def cmd_data(args: argparse.Namespace) -> int:
    from .data import load_dataset

    ds = load_dataset(args.data, args.task, cache_dir=args.cache_dir, seed=args.seed)
    print(ds.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx",
        description="Extract frozen-backbone image embeddings once, cache them in HDF5, and "
        "train and compare scikit-learn heads on them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("data", help="show what a dataset holds: sizes, classes, image shape")
    _add_data_args(p)
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except FeatxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
