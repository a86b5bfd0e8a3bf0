import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def sample_pixels(tmp_path_factory):
    """The shipped sample decoded once per test run: a read-only entry of the pixel cache."""
    from featx.data import load_dataset

    root = tmp_path_factory.mktemp("sample-pixels")
    load_dataset("sample", cache_dir=root, progress=False)
    (entry,) = [p for p in (root / "pixels").iterdir() if p.is_dir() and not p.name.startswith(".")]
    for p in [entry, *entry.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    yield entry
    entry.chmod(0o755)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, sample_pixels):
    # Nothing a test does lands in the repository's cache/; the sample's pixels, decoded once, are
    # in every test's cache (read-only: no test can change them for the next).
    cache = tmp_path_factory.mktemp("featx-cache")
    (cache / "pixels").mkdir()
    (cache / "pixels" / sample_pixels.name).symlink_to(sample_pixels, target_is_directory=True)
    monkeypatch.setenv("FEATX_CACHE_DIR", str(cache))


def write_image(path: Path, seed: int, size=(32, 32), mode="RGB", fmt=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return arr


def make_class_folders(root: Path, classes=("cat", "dog", "eel"), n_train=4, n_test=2, split=True) -> Path:
    """Write tiny PNG images in class folders (lossless, so pixels can be compared)."""
    seed = 0
    for c in classes:
        if split:
            for s, n in (("train", n_train), ("test", n_test)):
                for i in range(n):
                    write_image(root / s / c / f"{i:03d}.png", seed)
                    seed += 1
        else:
            for i in range(n_train + n_test):
                write_image(root / c / f"{i:03d}.png", seed)
                seed += 1
    return root


# A head module that a test registers and then removes: collecting it would register it for every test.
collect_ignore = ["throwaway_head.py"]


@pytest.fixture(autouse=True)
def _featx_messages(caplog):
    """featx's INFO records reach ``caplog`` in every test; the CLI's console handler, which a test
    that runs ``cli.main`` in this process installs, is removed after it."""
    import logging

    caplog.set_level(logging.INFO, logger="featx")
    yield
    featx_log = logging.getLogger("featx")
    for handler in [h for h in featx_log.handlers if getattr(h, "_featx_cli", False)]:
        featx_log.removeHandler(handler)
    featx_log.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _one_network_for_dense(request, monkeypatch):
    """The dense head fits one network, not featx's ensemble of 5, in tests about something else
    (``@pytest.mark.ensemble``: a test about the ensemble keeps featx's default)."""
    if request.node.get_closest_marker("ensemble"):
        return
    from featx.heads import DenseClassifier

    monkeypatch.setattr(DenseClassifier, "defaults", {**DenseClassifier.defaults, "n_members": 1})


@pytest.fixture
def throwaway():
    """A head family featx does not ship (tests/throwaway_head.py), registered for one test."""
    import throwaway_head

    from featx.heads import HEADS

    HEADS.add(throwaway_head.ShrunkCentroidHead)
    yield throwaway_head.ShrunkCentroidHead
    HEADS.remove("shrunk-centroid")
