"""What the FeatureExtractor's per-image cache saves in cross-validation and grid search.

Run:  python benchmarks/bench_pipeline.py [--n 1000] [--backbone resnet50] [--size 64]

Cross-validates ``Pipeline([FeatureExtractor, RidgeClassifier])`` on N images of the
shipped CIFAR-10 sample (random weights: the same arithmetic as ImageNet weights; a head that
fits in milliseconds, so that the times are the backbone's), and prints
wall time and how many images went through the backbone for:

- no cache (every fold embeds its train and test images);
- scikit-learn's ``Pipeline(memory=...)`` (caches each fold's fit_transform by hashing the
  whole input; test folds and later calls are embedded again), first and second run;
- featx ``cache_dir`` (per-image cache), first and second run, and a 2-process grid search
  over the head's alpha on a warm cache.

It also prints the cost of the cache lookup itself: hashing and reading the embeddings of
the N images when all are hits.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images (default 1000)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cv", type=int, default=5)
    args = ap.parse_args()

    import joblib
    import keras
    import sklearn
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import Pipeline

    from featx import FeatureExtractor, load_dataset
    from featx import pipeline as fx_pipeline
    from featx.images import image_digest

    ds = load_dataset("sample", "full")
    pick = np.random.default_rng(0).permutation(len(ds.y_train))[: args.n]  # the sample is stored by class
    X, y = np.asarray(ds.X_train)[pick], ds.y_train[pick]
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cpus  keras {keras.__version__} "
          f"({keras.backend.backend()})  scikit-learn {sklearn.__version__}")  # fmt: skip
    print(f"{args.n} CIFAR-10 sample images, {args.backbone}@{args.size} random weights, "
          f"RidgeClassifier, {args.cv}-fold CV\n")  # fmt: skip

    embedded = []
    real_embed = fx_pipeline.embed

    def counting(model, batch, **kw):
        embedded.append(len(batch))
        return real_embed(model, batch, **kw)

    def fx(cache_dir=None):
        return FeatureExtractor(
            args.backbone, weights=None, size=args.size, cache_dir=cache_dir, progress=False
        )

    tmp = tempfile.mkdtemp(prefix="featx-bench-")
    rows = []

    def run(label, fn):
        embedded.clear()
        t0 = time.perf_counter()
        score = fn()
        rows.append((label, time.perf_counter() - t0, sum(embedded), score))
        print(f"{label:<40} {rows[-1][1]:8.1f} s {rows[-1][2]:9d} {score:8.3f}", flush=True)

    print(f"{'run':<40} {'wall':>10} {'embedded':>9} {'score':>8}")
    fx(None).fit(X[:1])  # build the model once: every run below pays the same (zero) build cost
    clf = RidgeClassifier()
    with mock.patch.object(fx_pipeline, "embed", side_effect=counting):
        run("no cache", lambda: cross_val_score(Pipeline([("f", fx()), ("c", clf)]), X, y, cv=args.cv).mean())
        memory = joblib.Memory(os.path.join(tmp, "joblib"), verbose=0)
        for i in (1, 2):
            run(f"Pipeline(memory=), run {i}", lambda: cross_val_score(
                Pipeline([("f", fx()), ("c", clf)], memory=memory), X, y, cv=args.cv).mean())  # fmt: skip
        for i in (1, 2):
            run(f"FeatureExtractor(cache_dir=), run {i}", lambda: cross_val_score(
                Pipeline([("f", fx(tmp)), ("c", clf)]), X, y, cv=args.cv).mean())  # fmt: skip
    # Worker processes do not see the spy; the cache's row count says whether they embedded anything.
    from featx.cache import EmbeddingCache

    warm = fx(tmp).fit(X[:1])
    store = EmbeddingCache(warm.settings_, warm.n_features_out_, "float32", tmp)
    before = len(store)
    t0 = time.perf_counter()
    search = GridSearchCV(
        Pipeline([("f", fx(tmp)), ("c", clf)]), {"c__alpha": [0.1, 1.0, 10.0]}, cv=args.cv, n_jobs=2
    )
    search.fit(X, y)
    print(f"{'GridSearchCV 3 alphas x ' + str(args.cv) + ' folds, n_jobs=2, warm':<40} "
          f"{time.perf_counter() - t0:8.1f} s {len(store) - before:9d} {search.best_score_:8.3f}")  # fmt: skip

    t0 = time.perf_counter()
    digests = [image_digest(im) for im in X]
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.get(digests)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm.transform(X)
    t_all = time.perf_counter() - t0
    print(f"\nall-hits transform of {args.n} images: {t_all * 1e3:.1f} ms "
          f"(hashing {t_hash * 1e3:.1f} ms, lookup + read {t_read * 1e3:.1f} ms)")  # fmt: skip
    t0 = time.perf_counter()
    fx(None).fit(X[:1]).transform(X)
    t_embed = time.perf_counter() - t0
    print(f"uncached transform of {args.n} images: {t_embed:.2f} s ({args.n / t_embed:.0f} img/s)")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
