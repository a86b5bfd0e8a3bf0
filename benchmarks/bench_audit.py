"""The audit on the real CIFAR-10: planted faults found, the threshold chosen, real leaks, and scale.

    python benchmarks/bench_audit.py threshold --backbone MODEL.keras --data cifar10-jpeg.tar.gz --size 128
    python benchmarks/bench_audit.py planted   --backbone MODEL.keras --data cifar10-jpeg.tar.gz --size 128 --seeds 0,1,2
    python benchmarks/bench_audit.py scale --rows 60000 --width 1584 --features-of MODEL.keras ...   # real features
    python benchmarks/bench_audit.py scale --rows 1000000 --width 1024                           # synthetic

The features must be cached first (``python cli.py extract`` with the same options).

``threshold`` chooses the copy threshold on the *train* split alone: 400 train images are
copied after a resize, a JPEG re-encode, a small crop or a brightness change, and each copy's
similarity to its source is set against every original train image's similarity to its nearest
other train image. It prints precision and recall of "copy" at each threshold.

``planted`` then measures every detector on the official split at the default settings: 200
test images copied into train after one of those four changes (50 each), 2 % of the train
labels flipped to another class at random, 20 exact copies within train, and 50 images of no
class (noise, flat colour, stripes) added to train. Natural faults of CIFAR-10 (its own
near-duplicates and label errors) are found too: a leak or duplicate that the audit of the
unplanted data also flags is not counted against precision.

``scale`` times the neighbour search alone (the part that grows with the square of the rows)
and reports its peak memory (ru_maxrss) for each search method.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CHANGES = ("resize", "jpeg", "crop", "brightness")


def change(image: np.ndarray, how: str, rng) -> np.ndarray:
    """A copy of a uint8 RGB image after a resize (down to 3/4 and back), a JPEG re-encode (quality
    60-80), a small crop (1-3 pixels off each side, resized back) or a brightness change (x0.8-1.2)."""
    from PIL import Image, ImageEnhance

    im = Image.fromarray(image)
    w, h = im.size
    if how == "resize":
        im = im.resize((w * 3 // 4, h * 3 // 4), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    elif how == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(60, 81)))
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    elif how == "crop":
        c = [int(v) for v in rng.integers(1, 4, size=4)]
        im = im.crop((c[0], c[1], w - c[2], h - c[3])).resize((w, h), Image.BILINEAR)
    else:
        im = ImageEnhance.Brightness(im).enhance(
            float(rng.choice([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.2)]))
        )
    return np.asarray(im, dtype=np.uint8)


def no_class_images(n: int, shape, rng) -> np.ndarray:
    """Images of no class, no two alike: uniform noise, a flat colour, stripes of a random colour,
    width and phase."""
    out = np.empty((n, *shape), np.uint8)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out[i] = rng.integers(0, 256, size=shape)
        elif kind == 1:
            out[i] = rng.integers(0, 256, size=3)
        else:
            period, phase = int(rng.integers(2, 6)), int(rng.integers(0, 6))
            on = ((np.arange(shape[1]) + phase) // period % 2).astype(bool)
            out[i] = rng.integers(0, 256, size=3)
            out[i][:, on] = rng.integers(0, 256, size=3)
    return out


def _load(args):
    from featx.auditing import cached_features
    from featx.extractor import Extractor
    from featx.options import RunOptions

    opts = RunOptions(cache_dir=args.cache_dir, progress=False)
    ds, fs = cached_features(args.backbone, args.data, args.task, opts, _settings(args))
    X_train, y_train, X_test, y_test = fs.load()
    ex = Extractor(_spec(args), data=ds, cache_dir=args.cache_dir)
    return ds, fs, (X_train, y_train, X_test, y_test), ex


def _settings(args) -> dict:
    return {k: v for k, v in (("size", args.size), ("weights", args.weights)) if v is not None}


def _spec(args):
    from featx.spec import as_spec

    return as_spec(args.backbone, **_settings(args))


def cmd_threshold(args):
    from featx.auditing import PIXEL_PAIR_FLOOR, pixel_signatures
    from featx.neighbors import NeighborSearch, nearest, unit_rows

    ds, fs, (X_train, y_train, _, _), ex = _load(args)
    rng = np.random.default_rng(1234)
    src = np.sort(rng.choice(len(X_train), 400, replace=False))
    copies = np.stack([change(np.asarray(ds.X_train[i]), CHANGES[k % 4], rng) for k, i in enumerate(src)])
    Xc = ex.transform(copies)
    center = X_train.mean(axis=0)
    A = unit_rows(X_train, center)
    sim_copy = np.sum(unit_rows(Xc, center) * A[src], axis=1)
    sims, _ = nearest(X_train, 1, search=NeighborSearch(progress=False), center=center)
    nearest_other = sims[:, 0]
    sig = pixel_signatures(np.asarray(ds.X_train))
    pix_copy = np.sum(unit_rows(pixel_signatures(copies)) * unit_rows(sig[src]), axis=1)
    psims, pidx = nearest(sig, 10, search=NeighborSearch(progress=False))
    pemb = np.einsum("ij,ikj->ik", A, A[pidx])  # embedding similarity of each thumbnail neighbour
    print(f"{fs.path.name}: {len(X_train)} train images, {len(src)} planted copies (train split only)")
    for k, how in enumerate(CHANGES):
        s, p = sim_copy[k::4], pix_copy[k::4]
        print(f"  copy by {how:<10} similarity to its source: embeddings min {s.min():.3f} median {np.median(s):.3f}; "
              f"thumbnails min {p.min():.3f} median {np.median(p):.3f}")  # fmt: skip
    q = np.quantile(nearest_other, [0.5, 0.9, 0.99, 0.999])
    print(f"  original images, embedding similarity to their nearest other train image: median {q[0]:.3f}, "
          f"90% {q[1]:.3f}, 99% {q[2]:.3f}, 99.9% {q[3]:.3f}")  # fmt: skip
    print(
        "copies found, and original train images with another above the threshold (real copies among them):"
    )
    print(
        f"{'embeddings':>10} {'thumbnails':>10} {'copies found':>12} {'by change':>28} {'originals above':>15}"
    )
    for tp in (None, 0.95, 0.97, 0.99):
        for t in (0.85, 0.88, 0.90, 0.92, 0.94, 0.96):
            found = sim_copy >= t
            above = nearest_other >= t
            if tp is not None:
                found = found | ((pix_copy >= tp) & (sim_copy >= PIXEL_PAIR_FLOOR))
                above = above | ((psims >= tp) & (pemb >= PIXEL_PAIR_FLOOR)).any(axis=1)
            by = " ".join(f"{found[k::4].mean():.0%}" for k in range(4))
            print(f"{t:>10.2f} {'-' if tp is None else f'{tp:.2f}':>10} {found.mean():>12.1%} {by:>28} "
                  f"{above.mean():>8.2%} ({int(above.sum())})")  # fmt: skip


def _pr(found: set, planted: set, natural: set = frozenset()) -> tuple[float, float, float]:
    """``(precision, precision without the natural findings, recall)``: the second leaves out of the
    count what the audit of the unplanted data flags too (CIFAR-10's own copies and label errors)."""
    hits = len(found & planted)
    counted = len(found - (natural - planted))
    return (hits / len(found) if found else float("nan"), hits / counted if counted else float("nan"),
            hits / len(planted))  # fmt: skip


def cmd_planted(args):
    from featx.auditing import AuditSettings, audit_features

    ds, fs, (X_train, y_train, X_test, y_test), ex = _load(args)
    settings = AuditSettings(threshold=args.threshold) if args.threshold is not None else AuditSettings()
    images = (np.asarray(ds.X_train), np.asarray(ds.X_test))
    t0 = time.perf_counter()
    base = audit_features(X_train, y_train, X_test, y_test, fs.class_names, settings=settings, images=images,
                          progress=False)  # fmt: skip
    print(f"unplanted: {base.counts()} in {time.perf_counter() - t0:.0f} s ({base.seconds})")
    natural_leaks = {f.index for f in base.of("leak")}
    natural_labels = {f.index for f in base.of("label error") if f.split == "train"}
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        n = len(X_train)
        leak_src = np.sort(rng.choice(len(X_test), 200, replace=False))
        leak_imgs = np.stack([change(images[1][i], CHANGES[k % 4], rng) for k, i in enumerate(leak_src)])
        exact_src = rng.choice(n, 20, replace=False)
        odd = no_class_images(50, images[0].shape[1:], rng)
        new_imgs = np.concatenate([leak_imgs, images[0][exact_src], odd])
        new_X = np.concatenate([ex.transform(leak_imgs), X_train[exact_src], ex.transform(odd)])
        new_y = np.concatenate(
            [y_test[leak_src], y_train[exact_src], rng.integers(0, len(fs.class_names), 50)]
        )
        y_flip = y_train.copy()
        flipped = np.sort(rng.choice(n, int(0.02 * n), replace=False))
        y_flip[flipped] = (y_flip[flipped] + rng.integers(1, len(fs.class_names), len(flipped))) % len(
            fs.class_names
        )
        Xp, yp = np.concatenate([X_train, new_X]), np.concatenate([y_flip, new_y])
        t0 = time.perf_counter()
        res = audit_features(Xp, yp, X_test, y_test, fs.class_names, settings=settings,
                             images=(np.concatenate([images[0], new_imgs]), images[1]), seed=seed, progress=False)  # fmt: skip
        secs = time.perf_counter() - t0
        leaks = {f.index for f in res.of("leak")}
        exact = {f.index for f in res.of("duplicate") if f.split == "train" and f.exact}
        labels = {f.index for f in res.of("label error") if f.split == "train"}
        outliers = {f.index for f in res.of("outlier") if f.split == "train"}
        odd_rows = set(range(n + 220, n + 270))
        row = {"seed": seed, "seconds": secs,
               "leak": _pr(leaks, set(leak_src.tolist()), natural_leaks),
               "exact": _pr(exact, set(range(n + 200, n + 220)), set()),
               "label": _pr(labels, set(flipped.tolist()), natural_labels),
               "outlier": _pr(outliers, odd_rows, set()),
               "leak by change": {how: len(leaks & set(leak_src[k::4].tolist())) / len(leak_src[k::4])
                                  for k, how in enumerate(CHANGES)},
               "accuracy": res.accuracy}  # fmt: skip
        rows.append(row)
        print(f"seed {seed}: {secs:.0f} s; counts {res.counts()}")
        for k in ("leak", "exact", "label", "outlier"):
            print(
                f"  {k:<8} precision {row[k][0]:.3f} (without natural findings {row[k][1]:.3f}) recall {row[k][2]:.3f}"
            )
        print(
            "  leak recall by change: " + ", ".join(f"{h} {v:.0%}" for h, v in row["leak by change"].items())
        )
        for a in res.accuracy:
            print(
                f"  train {a['train']:<24} test {a['test']:<22} {a['accuracy']:.2%} ({a['low']:.1%}-{a['high']:.1%})"
            )
    print(f"\nover seeds {','.join(map(str, args.seeds))} (mean ± sd):")
    for k in ("leak", "exact", "label", "outlier"):
        p, q, r = (np.array([row[k][j] for row in rows]) for j in range(3))
        print(f"  {k:<8} precision {np.nanmean(p):.3f} ± {np.nanstd(p, ddof=1):.3f}  "
              f"without natural findings {np.nanmean(q):.3f} ± {np.nanstd(q, ddof=1):.3f}  "
              f"recall {r.mean():.3f} ± {r.std(ddof=1):.3f}")  # fmt: skip
    found = np.array([[row["leak by change"][h] for h in CHANGES] for row in rows])
    print("  leak recall by change: " + ", ".join(f"{h} {m:.0%} ± {s:.0%}" for h, m, s in
                                                zip(CHANGES, found.mean(axis=0), found.std(axis=0, ddof=1))))  # fmt: skip


def _without_self(s, i, rows):
    """Each query row's neighbours without the row itself (a query search of rows of the bank)."""
    keep = i != rows[:, None]
    out_s = np.array([a[k][:10] for a, k in zip(s, keep)])
    out_i = np.array([a[k][:10] for a, k in zip(i, keep)])
    return out_s, out_i


def cmd_ranking(args):
    """One planting (``--seeds``' first): the label-error ranking by the head alone, by the nearest
    images' vote alone, and by their mean (the audit's); and what became of the images of no class."""
    import warnings

    from cleanlab.filter import find_label_issues

    from featx.auditing import AuditSettings, audit_features

    ds, fs, (X_train, y_train, X_test, y_test), ex = _load(args)
    seed = args.seeds[0]
    rng = np.random.default_rng(seed)
    n, k = len(X_train), len(fs.class_names)
    odd = no_class_images(50, ds.X_train.shape[1:], rng)
    flipped = np.sort(rng.choice(n, int(0.02 * n), replace=False))
    y_flip = y_train.copy()
    y_flip[flipped] = (y_flip[flipped] + rng.integers(1, k, len(flipped))) % k
    Xp = np.concatenate([X_train, ex.transform(odd)])
    yp = np.concatenate([y_flip, rng.integers(0, k, 50)])
    images = (np.concatenate([np.asarray(ds.X_train), odd]), np.asarray(ds.X_test))
    import featx.auditing as auditing

    captured: dict = {}
    real_issues, real_nearest = auditing._label_issues, auditing.nearest

    def issues(y, proba):  # the audit's own ranking input (the first call: the train split)
        captured.setdefault("ranking", proba)
        return real_issues(y, proba)

    def nearest(*a, **kw):  # the audit's own neighbours (the first call: the embeddings)
        out = real_nearest(*a, **kw)
        captured.setdefault("neighbours", out)
        return out

    auditing._label_issues, auditing.nearest = issues, nearest
    try:
        res = audit_features(Xp, yp, X_test, y_test, fs.class_names, settings=AuditSettings(), images=images,
                             seed=seed, progress=False)  # fmt: skip
    finally:
        auditing._label_issues, auditing.nearest = real_issues, real_nearest
    odd_rows = set(range(n, n + 50))
    for kind in ("duplicate", "outlier", "label error"):
        got = {f.index for f in res.of(kind) if f.split == "train"} & odd_rows
        print(f"images of no class flagged as {kind}: {len(got)} of 50")
    mean_train = captured["ranking"]
    votes = auditing.knn_votes(*captured["neighbours"], np.concatenate([yp, y_test]), k)[: len(yp)]
    head = 2 * mean_train - votes
    flips = set(flipped.tolist())
    print(f"label errors among {len(yp)} train rows, {len(flips)} flipped:")
    for name, proba in (("head alone (out-of-fold)", head), ("nearest images' vote alone", votes),
                        ("mean of the two (the audit)", mean_train)):  # fmt: skip
        p = np.clip(proba, 1e-9, None)
        p = p / p.sum(axis=1, keepdims=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = find_label_issues(yp, p, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence",
                                       n_jobs=1)  # fmt: skip
        hits = len(set(ranked.tolist()) & flips)
        top = len(set(ranked[:1000].tolist()) & flips)
        print(
            f"  {name:<30} accuracy {np.mean(p.argmax(axis=1) == yp):.3f}  flagged {len(ranked):>6}  "
            f"precision {hits / max(1, len(ranked)):.3f}  recall {hits / len(flips):.3f}  flips in the top 1,000: {top}"
        )


def cmd_leaks(args):
    """A head fitted on all the train features, scored on every test image and without the leaked ones
    that an audit's ``audit.json`` (``--audit``) lists; ``--seeds`` fits of it."""
    import json

    from featx.heads import make_head
    from featx.stats import accuracy_interval

    _, fs, (X_train, y_train, X_test, y_test), _ = _load(args)
    leaks = sorted({r["index"] for r in json.load(open(args.audit))["findings"] if r["kind"] == "leak"})
    keep = np.setdiff1d(np.arange(len(y_test)), leaks)
    print(f"{len(leaks)} leaked test images")
    accs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        params = {"random_state": seed} if "random_state" in make_head(args.head).get_params() else {}
        right = make_head(args.head, **params).fit(X_train, y_train).predict(X_test) == y_test
        a, b = right.mean(), right[keep].mean()
        accs.append((a, b))
        lo, hi = accuracy_interval(int(right.sum()), len(right))
        lo2, hi2 = accuracy_interval(int(right[keep].sum()), len(keep))
        print(f"{args.head} seed {seed}: all {a:.2%} ({lo:.1%}-{hi:.1%}), without leaks {b:.2%} ({lo2:.1%}-{hi2:.1%}); "
              f"leaked images right: {int(right[leaks].sum())}/{len(leaks)} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    if len(accs) > 1:
        A = np.array(accs)
        print(f"{args.head} mean ± sd: all {A[:, 0].mean():.2%} ± {A[:, 0].std(ddof=1):.2%}, without "
              f"{A[:, 1].mean():.2%} ± {A[:, 1].std(ddof=1):.2%}, change {np.mean(A[:, 1] - A[:, 0]) * 100:+.2f} points")  # fmt: skip


def cmd_scale(args):
    from featx.neighbors import NeighborSearch, nearest, recall

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if args.features_of:
        import h5py

        with h5py.File(args.features_of, "r") as f:
            X = np.concatenate([f["train/X"][()], f["test/X"][()]])[: args.rows]
    else:
        # clustered rows: 1,000 centres, each row a centre plus noise (nearest neighbours are meaningful)
        centres = rng.standard_normal((1000, args.width), dtype=np.float32)
        X = np.empty((args.rows, args.width), np.float32)
        for s in range(0, args.rows, 100_000):
            m = min(100_000, args.rows - s)
            X[s : s + m] = centres[rng.integers(0, 1000, m)] + 0.7 * rng.standard_normal(
                (m, args.width), dtype=np.float32
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{len(X)} rows x {X.shape[1]}, float32 {X.nbytes / 2**30:.2f} GiB, made in {time.perf_counter() - t0:.0f} s; "
          f"peak RSS before the search {rss:.2f} GiB")  # fmt: skip
    method = args.methods[0]
    # "numpy": exact in NumPy blocks; "exact": exact in FAISS; "approximate": FAISS IVF
    search = NeighborSearch(engine="numpy", progress=False) if method == "numpy" else \
        NeighborSearch(method=method, engine="faiss", storage=args.storage, progress=False)  # fmt: skip
    q = len(X) if args.queries is None else min(args.queries, len(X))
    t0 = time.perf_counter()
    if q == len(X):
        s, i = nearest(X, 10, search=search)
    else:
        s, i = _without_self(*nearest(X, 11, X[:q], search=search), np.arange(q))
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    full = dt * len(X) / q
    print(
        f"{search.describe(len(X))}: {q} of {len(X)} rows searched in {dt:.1f} s, {q / dt:,.0f} queries/s"
        + (f" (all {len(X)}: {full:,.0f} s at this rate)" if q < len(X) else "")
        + f"; peak RSS {rss:.2f} GiB"
    )
    if args.save:
        np.savez(args.save, idx=i[: args.recall_rows])
    if args.recall_against:
        ref = np.load(args.recall_against)["idx"]
        n = min(len(ref), len(i))
        print(f"  recall@10 against the exact search, first {n} rows: {recall(i[:n], ref[:n]):.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["threshold", "planted", "ranking", "leaks", "scale"])
    p.add_argument("--backbone", default="trunk")
    p.add_argument("--data", default="sample")
    p.add_argument("--task", default="full")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--audit", default="reports/audit.json", help="leaks: an audit's audit.json")
    p.add_argument("--head", default="dense", help="leaks: the head")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument(
        "--queries", type=int, default=None, help="scale: search this many query rows (default all)"
    )
    p.add_argument("--features-of", default=None, help="scale: a featx feature file (real features)")
    p.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=["exact"],
        help="scale: numpy (exact, NumPy blocks), exact (FAISS) or approximate (FAISS IVF); one per run",
    )
    p.add_argument("--storage", default="float32")
    p.add_argument("--save", default=None, help="scale: save the neighbours of the first --recall-rows rows")
    p.add_argument("--recall-rows", type=int, default=5000)
    p.add_argument("--recall-against", default=None, help="scale: an --save file of an exact run")
    args = p.parse_args()
    {
        "threshold": cmd_threshold,
        "planted": cmd_planted,
        "ranking": cmd_ranking,
        "leaks": cmd_leaks,
        "scale": cmd_scale,
    }[args.command](args)


if __name__ == "__main__":
    main()
