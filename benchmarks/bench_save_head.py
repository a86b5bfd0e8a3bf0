"""Peak memory of saving and loading a large fitted head (a ``knn`` bank), beyond what it holds.

    python benchmarks/bench_save_head.py --rows 400000 --width 1024 --storage float16 --dir /tmp

Fits a ``knn`` head on random unit rows a block at a time (as a cache read in blocks fills it),
then, each in the same process: the RSS the head holds, the peak RSS while ``save_head`` writes
it, the file's size; then, in a fresh process, the peak RSS of ``load_head``. The peak is the
kernel's high-water mark (``VmHWM``), reset just before each step (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def status(key: str) -> float:
    """A ``/proc/self/status`` memory figure, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


def save(args) -> None:
    sys.path.insert(0, str(ROOT))
    from featx.heads import make_head
    from featx.persistence import save_head

    head = make_head("knn", storage=args.storage)
    rng = np.random.default_rng(0)
    head.reserve(args.rows)
    for start in range(0, args.rows, 65_536):
        n = min(65_536, args.rows - start)
        head.partial_fit(rng.normal(size=(n, args.width)).astype(np.float32), rng.integers(0, 10, n),
                         classes=np.arange(10))  # fmt: skip
    bank = head.train_.nbytes / 2**20
    held = status("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    path = save_head(Path(args.dir) / "knn-bench.skops", head, {"bench": True})
    seconds = time.perf_counter() - t0
    peak = status("VmHWM")
    print(f"bank {bank:,.0f} MiB; RSS holding it {held:,.0f} MiB; save: peak {peak:,.0f} MiB "
          f"(+{peak - held:,.0f} MiB), {seconds:.1f} s; file {path.stat().st_size / 2**20:,.0f} MiB")  # fmt: skip


def load(args) -> None:
    sys.path.insert(0, str(ROOT))
    import featx.heads  # noqa: F401 - imports counted before the peak is reset
    from featx.persistence import load_head

    before = status("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    head, _ = load_head(Path(args.dir) / "knn-bench.skops")
    seconds = time.perf_counter() - t0
    peak = status("VmHWM")
    print(f"load: RSS before {before:,.0f} MiB, peak {peak:,.0f} MiB (+{peak - before:,.0f} MiB), {seconds:.1f} s; "
          f"bank {head.train_.shape} {head.train_.dtype}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--storage", default="float16", choices=["float16", "float32"])
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--step", choices=["save", "load"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        return {"save": save, "load": load}[args.step](args)
    for step in ("save", "load"):  # each in a fresh process: one's peak is not the other's
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--step", step], check=True)
    (Path(args.dir) / "knn-bench.skops").unlink()


if __name__ == "__main__":
    main()
