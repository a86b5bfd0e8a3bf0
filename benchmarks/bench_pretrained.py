"""A real pretrained CNN's frozen features on the real CIFAR-10: the linear probe against featx's options.

    python benchmarks/bench_pretrained.py extract MODEL.keras cifar10-jpeg.tar.gz --size 128 [--mirror]
    python benchmarks/bench_pretrained.py validate --size 128         # choose, on 20% of the train split
    python benchmarks/bench_pretrained.py test --size 128 --variants A,B --seeds 0,1,2   # official split
    python benchmarks/bench_pretrained.py test --size 128 --heads logreg --param C=1.0    # a fixed C
    python benchmarks/bench_pretrained.py timing --size 128 --variant probe    # C=1 against C="auto"
    python benchmarks/bench_pretrained.py path-tol --size 224 --variant probe --rounds 2
    python benchmarks/bench_pretrained.py check MODEL.keras cifar10-jpeg.tar.gz --size 128 --variant B

``extract`` runs the network once over the official 50,000/10,000 split (``--mirror``: over
the mirror images) and keeps, for each candidate layer, its map pooled globally (avg) and
to a 2x2 grid (avg), as featx's own graph pools them (the same Resizing, GridPooling and
GlobalAveragePooling2D layers). Every feature variant below is a set of those blocks
(and, with flip, the mean of the image's and its mirror's), so one pass per size serves
every variant. ``check`` confirms on 64 images that a variant's columns equal featx's
own extraction with the matching FeatureSpec.

``validate`` cuts the train split 80/20 (stratified, seeded) and never reads the test
split; ``test`` fits on the 50,000 and scores the 10,000 for each seed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

#: Candidate layers of an EfficientNet (keras.applications names): the last map and the ends of earlier stages.
LAYERS = ["top_activation", "block7a_project_bn", "block6d_add", "block5c_add"]
#: variant -> (blocks, flip). A block is "<layer>/g1" (global avg) or "<layer>/g2" (2x2 grid, avg).
VARIANTS = {
    "probe": (["top_activation/g1"], False),  # the model's avg_pool output: the standard linear probe
    "probe+flip": (["top_activation/g1"], True),
    "top g2": (["top_activation/g2"], False),
    "top g2+flip": (["top_activation/g2"], True),
    "3 stages g1": (["block5c_add/g1", "block6d_add/g1", "top_activation/g1"], False),
    "3 stages g1+flip": (["block5c_add/g1", "block6d_add/g1", "top_activation/g1"], True),
    "3 stages g2": (["block5c_add/g2", "block6d_add/g2", "top_activation/g2"], False),
    "3 stages g2+flip": (["block5c_add/g2", "block6d_add/g2", "top_activation/g2"], True),
    "4 layers g1+flip": (["block5c_add/g1", "block6d_add/g1", "block7a_project_bn/g1", "top_activation/g1"], True),
}
OUT = Path("cache/bench_pretrained")


def _blocks_model(model_path: str, size: int):
    import keras

    from featx.layers import featx_layers

    L = featx_layers()
    base = keras.saving.load_model(model_path, compile=False)
    taps = keras.Model(base.inputs, [base.get_layer(n).output for n in LAYERS])
    inp = keras.Input((None, None, 3), dtype="uint8")
    x = L["ToFloat"]()(inp)
    x = keras.layers.Resizing(size, size, interpolation="bilinear")(x)
    maps = taps(x)
    outs = []
    for m in maps:
        outs.append(keras.layers.GlobalAveragePooling2D()(m))
        outs.append(L["GridPooling"](2, "avg")(m))
    return keras.Model(inp, outs)


def _names():
    return [f"{n}/{g}" for n in LAYERS for g in ("g1", "g2")]


def extract(args) -> None:
    import h5py
    from tqdm import tqdm

    from featx.data import load_dataset

    ds = load_dataset(args.data, "full", cache_dir=args.cache_dir)
    model = _blocks_model(args.model, args.size)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"blocks-{args.size}{'-mirror' if args.mirror else ''}.h5"
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    with h5py.File(tmp, "w") as f:
        for split, X in (("train", ds.X_train), ("test", ds.X_test)):
            f[f"{split}/y"] = (ds.y_train if split == "train" else ds.y_test)
            dsets = None
            for s in tqdm(range(0, len(X), args.batch), desc=f"{split} {args.size}px", mininterval=30):
                xb = np.asarray(X[s:s + args.batch])
                if args.mirror:
                    xb = xb[:, :, ::-1, :]
                outs = model.predict_on_batch(xb)
                if dsets is None:
                    dsets = [f.create_dataset(f"{split}/{n}".replace("/g", "_g"), (len(X), o.shape[1]), "float32")
                             for n, o in zip(_names(), outs)]
                for d, o in zip(dsets, outs):
                    d[s:s + len(xb)] = np.asarray(o, np.float32)
    os.replace(tmp, path)
    n = len(ds.X_train) + len(ds.X_test)
    print(f"{path}: {n} images at {args.size}px in {time.perf_counter() - t0:.0f} s "
          f"({n / (time.perf_counter() - t0):.1f} img/s)")


def _load(size: int, variant: str):
    import h5py

    blocks, flip = VARIANTS[variant]
    out = {}
    files = [OUT / f"blocks-{size}.h5"] + ([OUT / f"blocks-{size}-mirror.h5"] if flip else [])
    for split in ("train", "test"):
        parts = []
        for p in files:
            with h5py.File(p, "r") as f:
                parts.append(np.concatenate([f[f"{split}/{b}".replace("/g", "_g")][:] for b in blocks], axis=1))
                y = f[f"{split}/y"][:]
        out[split] = (sum(parts) / len(parts), y)
    return out


#: Parameters given to every head that has them (``--param C=1.0``: logreg's fixed C of earlier releases).
PARAMS: dict = {}
#: What each fit chose (logreg's and svm's ``C="auto"``), printed with the scores.
CHOSEN: list = []


def _score(head: str, seed: int, X, y, Xv, yv, members: int = 5) -> tuple[float, float]:
    from featx.heads import head_class, make_head

    names = head_class(head)._get_param_names()
    kw = {k: v for k, v in PARAMS.items() if k in names}
    if "random_state" in names:  # the dense head's networks; logreg's and svm's held-out rows for C
        kw["random_state"] = seed
    est = make_head(head, n_members=members, **kw) if head == "dense" else make_head(head, **kw)
    t0 = time.perf_counter()
    est.fit(X, y)
    CHOSEN.append(est.chosen_params())
    return float(np.mean(est.predict(Xv) == yv)), time.perf_counter() - t0


def validate(args) -> None:
    from featx.data import stratified_split

    heads = args.heads.split(",")
    print(f"validation: 80/20 of the train split (seed {args.seed}), size {args.size}, dense of {args.members} "
          "network(s); the test split is not read")
    print(f"{'variant':<22} {'dim':>5} " + " ".join(f"{h:>8} {'fit s':>6}" for h in heads), flush=True)
    for variant in (args.variants.split(",") if args.variants else VARIANTS):
        d = _load(args.size, variant)
        X, y = d["train"]
        tr, va = stratified_split(y, 0.2, args.seed)
        row = f"{variant:<22} {X.shape[1]:>5} "
        for h in heads:
            acc, fit = _score(h, args.seed, X[tr], y[tr], X[va], y[va], args.members)
            row += f" {acc:>8.2%} {fit:>6.1f}"
        print(row, flush=True)


def test(args) -> None:
    heads = args.heads.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"official split 50,000/10,000, size {args.size}, seeds {seeds}")
    for variant in args.variants.split(","):
        d = _load(args.size, variant)
        (X, y), (Xt, yt) = d["train"], d["test"]
        for h in heads:
            accs, fits = [], []
            CHOSEN.clear()
            for seed in seeds:
                acc, fit = _score(h, seed, X, y, Xt, yt, args.members)
                accs.append(acc)
                fits.append(fit)
            spread = f"+- {np.std(accs, ddof=1) * 100:.2f}" if len(accs) > 1 else "(one seed)"
            chosen = [c["C"] for c in CHOSEN if "C" in c]
            print(f"{variant:<22} {X.shape[1]:>5} {h:<8} {np.mean(accs):.2%} {spread} "
                  f"({', '.join(f'{a:.2%}' for a in accs)}) fit {np.mean(fits):.0f} s "
                  f"({', '.join(f'{f:.0f}' for f in fits)})"
                  + (f" C chosen {', '.join(f'{c:g}' for c in chosen)}" if chosen else ""), flush=True)


def timing(args) -> None:
    """logreg with a fixed C (``--param``, default C=1.0: the earlier default) against C="auto",
    in interleaved rounds in this process (fixed, auto, fixed, auto, ...), on the official split."""
    from featx.heads import make_head

    fixed = {"C": 1.0, **PARAMS}
    d = _load(args.size, args.variant)
    (X, y), (Xt, yt) = d["train"], d["test"]
    print(f"{args.variant} at {args.size}: {X.shape[0]:,} x {X.shape[1]:,}; logreg {fixed} against C='auto'")
    for r in range(args.rounds):
        for name, kw in (("fixed", fixed), ("auto", {})):
            est = make_head("logreg", random_state=r, **kw)
            t0 = time.perf_counter()
            est.fit(X, y)
            fit = time.perf_counter() - t0
            print(f"round {r} {name:<5} fit {fit:6.1f} s, test {np.mean(est.predict(Xt) == yt):.2%}, "
                  f"lbfgs iterations {est.n_iter_}, {est.fit_note() or ''}", flush=True)


def path_tol(args) -> None:
    """logreg's C="auto" with its path solved to lbfgs's default tolerance (``PATH_TOL`` None)
    and to 1e-3, alternately in this process, on the official split: seconds, C chosen, accuracy."""
    from featx.heads import make_head

    d = _load(args.size, args.variant)
    (X, y), (Xt, yt) = d["train"], d["test"]
    for r in range(args.rounds):
        for tol in (None, 1e-3):
            est = make_head("logreg", random_state=args.seed)
            est.PATH_TOL = tol
            t0 = time.perf_counter()
            est.fit(X, y)
            print(f"round {r} path tol {tol or 'default'}: "
                  f"{time.perf_counter() - t0:.1f} s, C {est.C_:g}, test {np.mean(est.predict(Xt) == yt):.2%}, "
                  f"held-out accuracy along the path {est.C_path_['accuracy']}", flush=True)


def check(args) -> None:
    """A variant's columns against featx's own extraction of the matching spec, on 64 images."""
    from featx.data import load_dataset
    from featx.extractor import Extractor
    from featx.spec import FeatureSpec

    blocks, flip = VARIANTS[args.variant]
    layers = [b.split("/")[0] for b in blocks]
    grid = {int(b[-1]) for b in blocks}.pop()
    spec = FeatureSpec(args.model, size=args.size, layers=layers, grid=grid, pooling="avg", flip=flip,
                       precision="float32")  # fmt: skip
    default = FeatureSpec(args.model, size=args.size, precision="float32")
    print(f"featx's default for this model: {default.describe()}")
    if grid == 1 and not flip and len(layers) == len(default.layers):
        spec = default  # the same columns: block5c_add, block6d_add, and the pooled top (= its avg_pool)
    ds = load_dataset(args.data, "full", cache_dir=args.cache_dir)
    ours = Extractor(spec).transform(np.asarray(ds.X_test[:64]))
    d = _load(args.size, args.variant)
    theirs = d["test"][0][:64]
    print(f"{spec.describe()}: max |diff| {np.abs(ours - theirs).max():.2e}, max value {np.abs(theirs).max():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["extract", "validate", "test", "check", "timing", "path-tol"])
    ap.add_argument("model", nargs="?")
    ap.add_argument("data", nargs="?")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--heads", default="logreg,dense")
    ap.add_argument("--variants", default=None)
    ap.add_argument("--members", type=int, default=5, help="networks in the dense head's ensemble")
    ap.add_argument("--rounds", type=int, default=1, help="timing: interleaved rounds")
    ap.add_argument("--variant", default="probe")
    ap.add_argument("--param", action="append", default=[], help="NAME=VALUE for every head that has it (C=1.0)")
    args = ap.parse_args()
    from featx.heads import parse_params

    PARAMS.update(parse_params(args.param))
    ap_steps = {"extract": extract, "validate": validate, "test": test, "check": check, "timing": timing,
                "path-tol": path_tol}
    ap_steps[args.step](args)


if __name__ == "__main__":
    main()
