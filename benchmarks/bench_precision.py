"""--precision on any Keras backbone: float32 against bfloat16, interleaved rounds in one process.

    python benchmarks/bench_precision.py MODEL [--size 224] [--images 256] [--rounds 4] [--batch 32]

MODEL is anything ``--backbone`` takes (a ``.keras`` file, a KerasHub preset folder, a
keras.applications name with ``--weights none``). Both extractors are built and warmed first;
then each round times float32 and bfloat16 on the same images, A, B, A, B, ..., so that the
machine's drift falls on both. Prints each round's images/s, the median ratio, and how close
the bfloat16 embeddings are to the float32 ones (cosine, and the agreement of nearest neighbours).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--weights", default="pretrained")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data", default="sample", help="where the images come from (default: the shipped sample)")
    args = ap.parse_args()

    from featx.data import load_dataset
    from featx.extractor import Extractor
    from featx.runtime import describe_device
    from featx.spec import FeatureSpec

    X = np.asarray(load_dataset(args.data, "full").X_test[: args.images])
    ex = {p: Extractor(FeatureSpec(args.model, weights=args.weights, size=args.size, precision=p))
          for p in ("float32", "bfloat16")}  # fmt: skip
    print(f"{ex['float32'].spec.describe()} on {describe_device()}, {len(X)} images, batch {args.batch}")
    feats = {p: e.transform(X[: args.batch], batch_size=args.batch) for p, e in ex.items()}  # build and warm
    rates = {p: [] for p in ex}
    for r in range(args.rounds):
        for p, e in ex.items():
            t0 = time.perf_counter()
            feats[p] = e.transform(X, batch_size=args.batch)
            rates[p].append(len(X) / (time.perf_counter() - t0))
        print(f"round {r + 1}: float32 {rates['float32'][-1]:.1f} img/s, bfloat16 {rates['bfloat16'][-1]:.1f} img/s, "
              f"ratio {rates['bfloat16'][-1] / rates['float32'][-1]:.2f}", flush=True)
    ratios = np.array(rates["bfloat16"]) / np.array(rates["float32"])
    a, b = feats["float32"], feats["bfloat16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    def nn(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    print(f"bfloat16 / float32 speed: median {np.median(ratios):.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"cosine of the embeddings: mean {cos.mean():.4f}, min {cos.min():.4f}; same nearest neighbour "
          f"{np.mean(nn(a) == nn(b)):.1%}")


if __name__ == "__main__":
    main()
