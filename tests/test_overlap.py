"""The overlapped pipeline: the same rows, in order, as running batch after batch; failures surface."""

import threading

import h5py
import keras
import numpy as np
import pytest
from conftest import make_class_folders, write_image
from PIL import Image

from featx import FeatureExtractor
from featx.errors import DataError
from featx.extract import embed, extract_features
from featx.extractor import build_extractor
from featx.overlap import BackgroundWriter, prefetch
from featx.spec import FeatureSpec

SPEC = FeatureSpec("vgg19", weights="none", size=32, layers=["block5_pool"])


@pytest.fixture(scope="module")
def model():
    return build_extractor(SPEC, seed=0)


@pytest.mark.parametrize("n, batch", [(64, 16), (70, 16), (5, 16), (1, 1)])
def test_overlapped_embed_gives_the_sequential_rows_in_order(model, n, batch):
    X = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    sequential = []
    for s in range(0, n, batch):  # the plain loop: one padded batch after another
        b = X[s : s + batch]
        padded = np.concatenate([b, np.zeros((batch - len(b), 32, 32, 3), np.uint8)])
        sequential.append(np.asarray(model.predict_on_batch(padded))[: len(b)])
    starts, rows = zip(*embed(model, X, batch_size=batch))
    assert list(starts) == list(range(0, n, batch))
    np.testing.assert_array_equal(np.concatenate(rows), np.concatenate(sequential))


def test_prefetch_keeps_order_bounds_memory_and_raises_in_the_consumer():
    made = []

    def items():
        for i in range(10):
            made.append(i)
            if i == 7:
                raise OSError("disk gone")
            yield i

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for i in prefetch(items(), depth=2):
            got.append(i)
            assert len(made) - len(got) <= 3  # at most depth ahead (+ the one being made)
    assert got == list(range(7))
    # leaving early stops the producer
    it = prefetch(iter(range(10**9)), depth=2)
    assert next(it) == 0
    it.close()
    assert not any(t.name == "featx-prefetch" and t.is_alive() for t in threading.enumerate())


def test_background_writer_writes_in_order_and_reports_its_failure():
    written = []
    with BackgroundWriter(lambda k: written.append(k), depth=2) as w:
        for k in range(50):
            w.put(k)
    assert written == list(range(50))

    def fail_at_3(k):
        if k == 3:
            raise OSError("No space left on device")
        written.append(k)

    written.clear()
    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter(fail_at_3) as w:
            for k in range(50):
                w.put(k)
    assert written == [0, 1, 2]  # nothing after the failed write


def test_a_failing_batch_is_a_clear_error_and_the_cache_resumes(tmp_path, caplog):
    tiny = make_class_folders(tmp_path / "ds", n_train=12, n_test=4)
    real = keras.Model.predict_on_batch
    calls = []

    def third_fails(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.Model, "predict_on_batch", third_fails)
        with pytest.raises(RuntimeError, match="device lost"):
            extract_features(SPEC, tiny, cache_dir=tmp_path / "c", batch_size=8, progress=False)
    (partial,) = (tmp_path / "c" / "features").glob("*.partial.h5")
    with h5py.File(partial) as f:  # the two batches before the failure were written and vouched for
        assert int(f["train"].attrs["n_done"]) == 16 and not f.attrs["complete"]
    resumed = extract_features(SPEC, tiny, cache_dir=tmp_path / "c", batch_size=8)
    assert "resuming train at image 16 of 36" in caplog.text
    fresh = extract_features(SPEC, tiny, cache_dir=tmp_path / "f", batch_size=8)
    for a, b in zip(resumed.load(), fresh.load()):
        np.testing.assert_array_equal(a, b)


def test_an_unreadable_file_in_the_decode_pool_names_the_file(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(6)]
    for i, p in enumerate(paths):
        write_image(p, i)
    paths[4].write_bytes(b"not a png")
    fx = FeatureExtractor("vgg19", weights=None, size=32, layers=["block5_pool"], batch_size=2, progress=False)
    fx.fit(paths[:1])
    with pytest.raises(DataError, match="4.png"):
        fx.transform([str(p) for p in paths])
    good = fx.transform([str(p) for p in paths[:4]])
    arrays = fx.transform(np.stack([np.asarray(Image.open(p)) for p in paths[:4]]))
    np.testing.assert_array_equal(good, arrays)  # decoded on the pool: the same as decoded beforehand
