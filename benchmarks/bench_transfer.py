"""featx against the hand-written split-CIFAR transfer recipe, on one split, in one run.

    python benchmarks/bench_transfer.py ../shared/data/cifar10-jpeg.tar.gz [--cache-dir DIR]

Both use the same trunk (featx's, trained on classes 0-4 of the data, cached)
and the same target split (classes 5-9, pooled and split 80/20, seeded).

- recipe: the seeds' transfer step. The trunk's embedding layers frozen, a new
  Dense(128, relu) -> Dense(5, softmax) head, the whole model trained for 10
  epochs (batch 100, Adam) on the target train images: the frozen convolutions
  run again every epoch.
- featx: extract the features once (timed, never from a warm cache), then fit a
  head on them. Rows for the split-CIFAR protocol's features (the 800-d flatten
  output) and for featx's default features, with several heads.

Prints accuracy on the target test split, extract and fit seconds, and how many
times faster than the recipe's training each transfer stage is.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return platform.processor()
    keep = [f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return " ".join(keep) or "none of avx2/avx512"


def recipe(trunk_path, ds, epochs: int, seed: int) -> tuple[float, float]:
    """The seeds' transfer step on a fresh copy of the trunk: (accuracy, train seconds)."""
    import keras

    from featx.backbones.trunk import trunk_embedding_layers

    trunk = keras.saving.load_model(trunk_path)
    keras.utils.set_random_seed(seed)
    frozen = trunk_embedding_layers(trunk)  # input scaling, conv, conv, pool, conv, flatten, dropout
    model = keras.Sequential([keras.Input((32, 32, 3)), *frozen,
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(ds.n_classes, activation="softmax")])  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    X = ds.X_train.astype("float32")
    t0 = time.perf_counter()
    model.fit(X, ds.y_train, epochs=epochs, batch_size=100, shuffle=True, verbose=0)
    seconds = time.perf_counter() - t0
    pred = np.argmax(model.predict(ds.X_test.astype("float32"), batch_size=500, verbose=0), axis=1)
    return float(np.mean(pred == ds.y_test)), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10, help="the recipe's epochs (default 10)")
    args = ap.parse_args()

    import keras

    from featx.backbones.trunk import load_or_train_trunk
    from featx.data import load_dataset
    from featx.extract import extract_features
    from featx.heads import make_head
    from featx.spec import FeatureSpec

    ds = load_dataset(args.data, "target", cache_dir=args.cache_dir, seed=args.seed)
    source = load_dataset(args.data, "source", cache_dir=args.cache_dir, seed=args.seed)
    _, trunk_path = load_or_train_trunk(source, seed=args.seed, cache_dir=args.cache_dir)
    print(f"{ds.name}: target classes {', '.join(ds.class_names)}; {len(ds.X_train)} train, {len(ds.X_test)} test")
    print(f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} cores, CPU flags: {cpu_flags()}")

    acc, rec_s = recipe(trunk_path, ds, args.epochs, args.seed)
    rows = [("recipe: frozen trunk retrained end to end", "dense 128", acc, 0.0, rec_s)]
    print(f"recipe done: {acc:.2%} in {rec_s:.1f} s", flush=True)

    protocol = FeatureSpec("trunk", layers=["flatten"], flip=False)
    default = FeatureSpec("trunk")
    runs = [
        (protocol, "split-CIFAR protocol features", [("dense", {}), ("logreg", {})]),
        (default, "featx default features", [("dense", {}), ("dense", {"epochs": 3})]),
        (default.replace(flip=False), "default layers, no mirror", [("dense", {})]),
        (FeatureSpec("trunk", layers=["conv1"], flip=False), "conv1 4x4 only, no mirror",
         [("dense", {}), ("dense", {"epochs": 3})]),
    ]
    for spec, label, heads in runs:
        t0 = time.perf_counter()
        fs = extract_features(spec, ds, seed=args.seed, cache_dir=args.cache_dir, batch_size=256, force=True,
                              progress=False)  # fmt: skip
        ext_s = time.perf_counter() - t0
        X, y, Xt, yt = fs.load()
        for head, params in heads:
            est = make_head(head, **params)
            t0 = time.perf_counter()
            est.fit(X, y)
            fit_s = time.perf_counter() - t0
            name = head + "".join(f" {k}={v}" for k, v in params.items())
            rows.append((f"featx: {label} ({X.shape[1]}-d)", name, float(np.mean(est.predict(Xt) == yt)), ext_s,
                         fit_s))  # fmt: skip
            print(f"{rows[-1][0]} + {name}: {rows[-1][2]:.2%}", flush=True)

    print()
    print(f"{'transfer stage':<52} {'head':<15} {'accuracy':>8} {'extract s':>9} {'fit s':>7} {'total s':>7} "
          f"{'x faster':>8}")  # fmt: skip
    for label, head, acc, ext_s, fit_s in rows:
        total = ext_s + fit_s
        print(f"{label:<52} {head:<15} {acc:>8.2%} {ext_s:>9.1f} {fit_s:>7.1f} {total:>7.1f} "
              f"{rec_s / total:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
