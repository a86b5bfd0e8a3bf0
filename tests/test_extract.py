import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
from conftest import make_class_folders

from featx import cache as cache_mod
from featx import extract as extract_mod
from featx.backbones import get_backbone
from featx.errors import CacheError, WeightsError
from featx.extract import extract_features

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(weights="none", size=32, batch_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 3 classes x (10 train + 4 test) = 42 images
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=10, n_test=4)


def test_extract_writes_complete_hdf5(tiny, tmp_path):
    fs = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    X, y, Xt, yt = fs.load()
    # vgg19's default embedding: its last layer (block5_pool), averaged: 512
    assert X.shape == (30, 512) and Xt.shape == (12, 512) and X.dtype == np.float32
    assert y.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert np.isfinite(X).all() and X.std() > 0
    assert fs.class_names == ("cat", "dog", "eel")
    with h5py.File(fs.path) as f:
        assert f.attrs["complete"] and f["train/X"].maxshape == (None, 512)
        assert f["train/X"].chunks[1] == 512
        for attr in ("setting_backbone", "setting_weights", "setting_size", "setting_pooling",
                     "setting_data_fingerprint", "setting_interpolation", "setting_dtype"):
            assert attr in f.attrs
    assert "keras" in fs.info["versions"] and fs.settings["weights"] == "random-init-seed0"
    with fs.open() as (Xv, _, _, _):  # memory-light view
        np.testing.assert_array_equal(Xv[3:5], X[3:5])


def test_same_settings_reuse_the_file(tiny, tmp_path):
    with mock.patch.object(extract_mod, "_run", wraps=extract_mod._run) as spy:
        a = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
        b = extract_features("vgg19", tiny, cache_dir=tmp_path, **dict(FAST, batch_size=5))
        assert spy.call_count == 1 and a.path == b.path
        extract_features("vgg19", tiny, cache_dir=tmp_path, force=True, **FAST)
        assert spy.call_count == 2


@pytest.mark.parametrize(
    "change",
    [dict(size=48), dict(pooling="max"), dict(dtype="float16"), dict(seed=1),
     dict(interpolation="nearest")],
)
def test_any_setting_change_makes_a_new_file(tiny, tmp_path, change):
    base = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    other = extract_features("vgg19", tiny, cache_dir=tmp_path, **dict(FAST, **change))
    assert other.path != base.path
    if "dtype" in change:
        assert other.load()[0].dtype == np.float16


def test_task_changes_key(tmp_path):
    from featx.data import load_dataset

    ds = load_dataset("sample")
    small = type(ds)(ds.name, ds.X_train[::250], ds.y_train[::250], ds.X_test[::100], ds.y_test[::100],
                     ds.class_names, ds.fingerprint + "s")
    from featx.data import make_task

    a = extract_features("trunk", make_task(small, "source"), cache_dir=tmp_path, **FAST)
    b = extract_features("trunk", make_task(small, "target"), cache_dir=tmp_path, **FAST)
    assert a.path != b.path and a.settings["task"] == "source" and b.settings["task"] == "target"


def test_random_init_is_seeded(tiny, tmp_path):
    a = extract_features("vgg19", tiny, cache_dir=tmp_path / "a", **FAST).load()[0]
    b = extract_features("vgg19", tiny, cache_dir=tmp_path / "b", **FAST).load()[0]
    c = extract_features("vgg19", tiny, cache_dir=tmp_path / "c", seed=1, **{**FAST}).load()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_batches_stream_to_the_file(tiny, tmp_path):
    # Bounded memory: features go to disk batch by batch, never gathered in memory.
    with mock.patch.object(cache_mod.PartialWriter, "append", autospec=True,
                           side_effect=cache_mod.PartialWriter.append) as spy:
        extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    sizes = [len(call.args[2]) for call in spy.call_args_list]
    assert max(sizes) <= 8 and sum(sizes) == 42


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from featx import cache
    from featx.extract import extract_features
    calls = 0
    original = cache.PartialWriter.append
    def append(self, split, X, y):
        global calls
        calls += 1
        if split == "train" and calls == 3:
            if sys.argv[3] == "mid-write":  # die with rows written but not yet vouched for
                g = self.file[split]
                n = int(g.attrs["n_done"])
                g["X"].resize(n + len(X), axis=0)
                g["X"][n:] = X
                self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, split, X, y)
    if sys.argv[3] == "in-model":  # die while the model runs, with a batch still being written
        import threading
        import keras
        model_calls = []
        writing_third = threading.Event()
        real = keras.Model.predict_on_batch
        def held(self, split, X, y):  # the writer takes the third batch and holds it
            global calls
            calls += 1
            if split == "train" and calls == 3:
                writing_third.set()
                threading.Event().wait()
            return original(self, split, X, y)
        def predict_on_batch(self, x):
            model_calls.append(1)
            if len(model_calls) == 4:
                assert writing_third.wait(120), "the writer never took the third batch"
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, x)
        keras.Model.predict_on_batch = predict_on_batch
        cache.PartialWriter.append = held
    else:
        cache.PartialWriter.append = append
    extract_features("vgg19", sys.argv[1], cache_dir=sys.argv[2], weights="none", size=32,
                     batch_size=8, progress=False)
    """
)


@pytest.mark.slow  # a real kill -9
@pytest.mark.parametrize("where", ["between-batches", "mid-write", "in-model"])
def test_killed_run_resumes_to_the_same_result(tiny, tmp_path, where, caplog):
    res = subprocess.run([sys.executable, "-c", CHILD, str(tiny), str(tmp_path / "c"), where],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    partial = list((tmp_path / "c" / "features").glob("*.partial.h5"))
    assert len(partial) == 1 and not list((tmp_path / "c" / "features").glob("*[0-9a-f].h5"))
    with h5py.File(partial[0]) as f:
        done = int(f["train"].attrs["n_done"])
        assert not f.attrs["complete"]
    # killed in the writer, or in the model while the writer held the third batch: the two batches before
    assert done == 16

    resumed = extract_features("vgg19", tiny, cache_dir=tmp_path / "c", **FAST)
    assert f"resuming train at image {done} of 30" in caplog.text
    fresh = extract_features("vgg19", tiny, cache_dir=tmp_path / "f", **FAST)
    for a, b in zip(resumed.load(), fresh.load()):
        np.testing.assert_array_equal(a, b)
    assert not partial[0].exists()


def test_lock_makes_a_second_writer_wait_or_fail(tiny, tmp_path):
    holder = textwrap.dedent(
        """
        import sys, time
        from filelock import FileLock
        lock = FileLock(sys.argv[1]); lock.acquire(); print("held", flush=True); sys.stdin.readline()
        """
    )
    settings_probe = extract_features("vgg19", tiny, cache_dir=tmp_path / "probe", **FAST)
    path = tmp_path / "c" / "features" / settings_probe.path.name
    path.parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(cache_mod.lock_path(path))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # holds it until told
    try:
        assert proc.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(CacheError, match="being written by another featx process"):
            extract_features("vgg19", tiny, cache_dir=tmp_path / "c", lock_timeout=0.5, **FAST)
        assert time.monotonic() - t0 >= 0.5
    finally:
        proc.kill()
        proc.wait()
    # Once the holder is gone (its lock dies with it), extraction proceeds.
    assert extract_features("vgg19", tiny, cache_dir=tmp_path / "c", lock_timeout=5, **FAST).path == path


def test_truncated_cache_is_rebuilt(tiny, tmp_path, caplog):
    fs = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    good = fs.load()
    data = fs.path.read_bytes()
    fs.path.write_bytes(data[: len(data) // 2])
    again = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    assert "damaged" in caplog.text
    for a, b in zip(good, again.load()):
        np.testing.assert_array_equal(a, b)


def test_cache_with_mismatched_attrs_is_not_reused(tiny, tmp_path, caplog):
    fs = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    with h5py.File(fs.path, "r+") as f:
        settings = json.loads(f.attrs["settings"])
        f.attrs["settings"] = json.dumps(dict(settings, size=64))
    with mock.patch.object(extract_mod, "_run", wraps=extract_mod._run) as spy:
        extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
        assert spy.call_count == 1
    assert "do not match its key" in caplog.text


def test_trunk_architecture():
    from featx.backbones.trunk import build_trunk_classifier

    model = build_trunk_classifier(5)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["conv1"] == (28, 28, 32) and shapes["conv2"] == (24, 24, 16)
    assert shapes["pool"] == (12, 12, 16) and shapes["conv3"] == (10, 10, 8)
    assert shapes["flatten"] == (800,) and shapes["softmax"] == (5,)
    assert model.get_layer("dropout").rate == 0.42


def test_trunk_is_pretrained_on_source_then_frozen(tmp_path, caplog):
    from PIL import Image

    from featx.data import load_dataset

    # a small folder of real sample images (every 50th train, 20th test image), so the trunk
    # trains on its source classes in seconds
    ds = load_dataset("sample")
    root = tmp_path / "small"
    for split, X, y, step in (("train", ds.X_train, ds.y_train, 50), ("test", ds.X_test, ds.y_test, 20)):
        for i in range(0, len(X), step):
            path = root / split / ds.class_names[y[i]] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(X[i]).save(path)
    fs = extract_features("trunk", root, "target", cache_dir=tmp_path, batch_size=16)
    assert "training it now" in caplog.text and "validation accuracy" in caplog.text
    caplog.clear()
    # conv1 and pool max-pooled to 4x4 (16 x 32 + 16 x 16) and the 800-d flatten output
    assert fs.load()[0].shape[1] == 512 + 256 + 800 and fs.settings["weights"].startswith("trunk:sha256=")
    saved = list((tmp_path / "trunk").glob("*.keras"))
    assert len(saved) == 1 and saved[0].with_suffix(".json").exists()
    # The second use loads the saved trunk instead of training again.
    extract_features("trunk", root, "target", cache_dir=tmp_path, batch_size=16, force=True)
    assert "training it now" not in caplog.text and "features cached" in caplog.text


def test_imagenet_offline_says_where_keras_looks(monkeypatch, tmp_path, tiny):
    import urllib.error

    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(WeightsError, match=r"keras/models/vgg19_weights.*--weights PATH.*--weights none"):
        extract_features("vgg19", tiny, size=32, cache_dir=tmp_path)


def test_local_weights_file(tiny, tmp_path):
    import keras

    keras.utils.set_random_seed(7)
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        tmp_path / "w.weights.h5")
    fs = extract_features("vgg19", tiny, weights=tmp_path / "w.weights.h5", size=32, cache_dir=tmp_path,
                          layers="classic")  # fmt: skip
    assert fs.settings["weights"].startswith("file:w.weights.h5:sha256=")
    rand = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    assert not np.allclose(fs.load()[0], rand.load()[0])


def test_bad_options_are_explained(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown backbone \(did you mean 'vgg1\d'\?\)\. Known: trunk and the"):
        get_backbone("vgg")
    with pytest.raises(ValueError, match="Received: pooling='mean'"):
        extract_features("vgg19", tiny, pooling="mean", cache_dir=tmp_path, **{**FAST})
    with pytest.raises(ValueError, match="at least 32. Received: size=16"):
        extract_features("vgg19", tiny, weights="none", size=16, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="only runs at 32x32"):
        extract_features("trunk", tiny, weights="none", size=64, cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="path of a weights file that exists"):
        extract_features("vgg19", tiny, weights="/no/such.h5", size=32, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Received: dtype='int8'"):
        extract_features("vgg19", tiny, dtype="int8", cache_dir=tmp_path, weights="none", size=32)


def _other_backend():
    import importlib.util

    for name in ("jax", "torch"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


@pytest.mark.skipif(_other_backend() is None, reason="neither jax nor torch is installed: no second Keras backend")
def test_extraction_on_a_second_backend_matches_tensorflow(tiny, tmp_path):
    """The same weights (a file) give the same features under TensorFlow and the other backend."""
    import keras

    backend = _other_backend()
    weights = tmp_path / "vgg19.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    code = textwrap.dedent(
        """
        import sys, numpy as np, keras
        from featx.extract import extract_features
        assert keras.backend.backend() == sys.argv[3]
        fs = extract_features("vgg19", sys.argv[1], cache_dir=sys.argv[2], weights=sys.argv[4], size=32,
                              precision="float32", batch_size=8)
        np.save(sys.argv[2] + "/X.npy", fs.load()[0])
        print(fs.settings["backend"])
        """
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    res = subprocess.run([sys.executable, "-c", code, str(tiny), str(tmp_path), backend, str(weights)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == backend  # keyed on its own backend
    other = np.load(tmp_path / "X.npy")
    tf_feats = extract_features("vgg19", tiny, cache_dir=tmp_path / "tf", weights=weights, size=32,
                                precision="float32", batch_size=8).load()[0]  # fmt: skip
    assert other.shape == tf_feats.shape and tf_feats.std() > 0
    np.testing.assert_allclose(other, tf_feats, rtol=1e-3, atol=1e-3 * np.abs(tf_feats).max())


def test_a_backbone_whose_features_overflow_is_stopped_and_nothing_is_cached(tiny, tmp_path):
    import keras

    from featx.errors import OutputError

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Rescaling(1e38, name="boom")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)  # 1e38 * weights * 255 overflows float32
    model = keras.Model(inputs, x, name="overflow")
    path = tmp_path / "overflow.keras"
    model.save(path)
    with pytest.raises(OutputError, match=r"overflow gave features that are not numbers .*layer c2.*Nothing of them was cached"):
        extract_features(str(path), tiny, size=32, cache_dir=tmp_path / "c", layers=["c1", "c2"])
    files = list((tmp_path / "c" / "features").glob("*.h5"))
    assert all(f.name.endswith(".partial.h5") for f in files)  # no file that looks complete


def test_a_full_disk_is_one_line_before_hdf5_fails_and_the_run_resumes(tiny, tmp_path, monkeypatch, caplog):
    import collections
    import shutil

    from featx import extract as extract_mod
    from featx.errors import CacheError

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    calls = {"n": 0}

    def filling(path):  # room for the first check and a batch or two, then none
        calls["n"] += 1
        return usage(1, 1, real(path).free if calls["n"] <= 2 else 1024)

    monkeypatch.setattr(extract_mod.shutil, "disk_usage", filling)
    with pytest.raises(CacheError, match=r"No space left on device for the features in .*MiB free"):
        extract_features("trunk", tiny, weights="none", cache_dir=tmp_path, batch_size=4, progress=False)
    assert not [p for p in (tmp_path / "features").glob("*.h5") if not p.name.endswith(".partial.h5")]
    monkeypatch.setattr(extract_mod.shutil, "disk_usage", real)  # space freed: the same run goes on
    fs = extract_features("trunk", tiny, weights="none", cache_dir=tmp_path, batch_size=4, progress=False)
    assert "resuming train at image 4" in caplog.text  # the batch written before the disk filled
    fresh = extract_features("trunk", tiny, weights="none", cache_dir=tmp_path / "fresh", progress=False)
    np.testing.assert_allclose(fs.load()[0], fresh.load()[0], atol=1e-5)
