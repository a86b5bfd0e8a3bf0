"""Build the CIFAR-10 sample that ships inside featx.

Reads the real CIFAR-10 (JPEG files in class folders, as a ``.tar.gz``) in one
streaming pass and writes a stratified, seeded subset to
``featx/datasets/cifar10-sample.tar.gz`` in featx's class-folder layout
(``train/<class>/*.jpg``, ``test/<class>/*.jpg``) as a ``.tar.gz``. The JPEG bytes are copied
as they are, so the sample's pixels are exactly those of the source.

Usage::

    python scripts/build_sample.py ../shared/data/cifar10-jpeg.tar.gz \
        --train-per-class 1000 --test-per-class 200 --seed 0
"""

import argparse
import gzip
import io
import random
import tarfile
from collections import defaultdict
from pathlib import Path

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
OUT = Path(__file__).resolve().parent.parent / "featx" / "datasets" / "cifar10-sample.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="cifar10-jpeg.tar.gz")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    files: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(args.source, "r|gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            split, cls, name = parts[-3], parts[-2], parts[-1]
            files[(split, cls)][name] = tar.extractfile(member).read()

    rng = random.Random(args.seed)
    wanted = {"train": args.train_per_class, "test": args.test_per_class}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # gzip shares the JPEG headers across files (about 3x smaller than a zip);
    # fixed mtimes make the archive byte-for-byte reproducible.
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for split in ("train", "test"):
                for cls in CLASSES:
                    names = sorted(files[(split, cls)])
                    if len(names) < wanted[split]:
                        raise SystemExit(f"{split}/{cls} has {len(names)} images, need {wanted[split]}")
                    for name in sorted(rng.sample(names, wanted[split])):
                        data = files[(split, cls)][name]
                        info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                        info.size, info.mtime, info.mode = len(data), 0, 0o644
                        tar.addfile(info, io.BytesIO(data))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
