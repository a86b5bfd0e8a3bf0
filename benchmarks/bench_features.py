"""Which feature settings transfer best: chosen on a validation split of the train images.

    python benchmarks/bench_features.py ../shared/data/cifar10-jpeg.tar.gz [--cache-dir DIR]

On the split-CIFAR target task (classes 5-9; featx's trunk trained on classes 0-4),
the train split is cut again 80/20 (stratified, seeded): every feature setting is
extracted once, and the heads are fitted on the 80% and scored on the 20%. The
test split is never read. Prints, per setting: width, extract seconds, and the
validation accuracy of the dense and logreg heads with their fit seconds.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CANDIDATES = [
    ("classic: flatten", dict(layers=["flatten"], flip=False)),
    ("flatten + flip", dict(layers=["flatten"], flip=True)),
    ("conv1+pool+flatten grid 2, max", dict(grid=2, flip=False)),
    ("conv1+pool+flatten grid 4, max", dict(grid=4, flip=False)),
    ("conv1+pool+flatten grid 4, avg", dict(grid=4, pooling="avg", flip=False)),
    ("conv1+pool+flatten grid 6, max", dict(grid=6, flip=False)),
    ("conv1+conv2+pool+conv3+flatten grid 4", dict(layers=["conv1", "conv2", "pool", "conv3", "flatten"], grid=4,
                                                   flip=False)),  # fmt: skip
    ("conv1+pool+flatten grid 4, max, flip", dict(grid=4, flip=True)),
    ("conv1+pool+flatten grid 6, max, flip", dict(grid=6, flip=True)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from featx.data import Dataset, load_dataset, stratified_split
    from featx.extract import extract_features
    from featx.heads import make_head

    ds = load_dataset(args.data, "target", cache_dir=args.cache_dir, seed=args.seed)
    tr, va = stratified_split(ds.y_train, 0.2, args.seed)
    # Validation only: the "test" split of this dataset is 20% of the train split.
    val = Dataset(ds.name, ds.X_train[tr], ds.y_train[tr], ds.X_train[va], ds.y_train[va], ds.class_names,
                  ds.fingerprint + "-val", ds.task, {"split": "80/20 of the target train split"})  # fmt: skip
    print(f"target train split {len(ds.X_train)} images: fit on {len(tr)}, validate on {len(va)}")
    print(f"{'features':<40} {'dim':>5} {'extract s':>9} {'dense':>7} {'fit s':>6} {'logreg':>7} {'fit s':>6}")
    for label, kw in CANDIDATES:
        t0 = time.perf_counter()
        fs = extract_features("trunk", val, cache_dir=args.cache_dir, seed=args.seed, batch_size=256, force=True,
                              progress=False, **kw)  # fmt: skip
        ext = time.perf_counter() - t0
        X, y, Xv, yv = fs.load()
        row = f"{label:<40} {X.shape[1]:>5} {ext:>9.1f}"
        for head in ("dense", "logreg"):
            est = make_head(head, random_state=0) if head == "dense" else make_head(head)
            t0 = time.perf_counter()
            est.fit(X, y)
            fit = time.perf_counter() - t0
            row += f" {np.mean(est.predict(Xv) == yv):>7.2%} {fit:>6.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
