import json
import multiprocessing
import os
import pickle
import pickletools
import subprocess
import sys
from unittest import mock

import h5py
import joblib
import numpy as np
import pytest
from conftest import make_class_folders, write_image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx import DenseClassifier, FeatureExtractor, make_head
from featx import pipeline as fx_pipeline
from featx.cache import EmbeddingCache, embedding_path
from featx.extractor import clear_models

# scikit-learn's checks feed 2-D tables (n_samples, n_features); FeatureExtractor takes images
# (n, h, w, 3) and rejects a table with a ValueError before anything else. The properties those
# checks look for are tested on images below (see the test named in each reason).
_TABLE = "fits on a 2-D table; FeatureExtractor takes images (n, h, w, 3) and rejects tables. "
TABLE_CHECKS = {
    "check_fit_score_takes_y": _TABLE + "Tested on images: test_pipeline_fit_predict.",
    "check_estimators_overwrite_params": _TABLE
    + "Tested on images: test_fit_keeps_params_and_is_idempotent.",
    "check_dont_overwrite_parameters": _TABLE + "Tested on images: test_fit_keeps_params_and_is_idempotent.",
    "check_estimators_fit_returns_self": _TABLE
    + "Tested on images: test_fit_keeps_params_and_is_idempotent.",
    "check_readonly_memmap_input": _TABLE + "Tested on images: test_readonly_and_fortran_input.",
    "check_n_features_in_after_fitting": "an image is not a row of features: there is no n_features_in_.",
    "check_n_features_in": "an image is not a row of features: there is no n_features_in_.",
    "check_positive_only_tag_during_fit": _TABLE + "Pixels are checked to lie in 0-255: test_bad_images.",
    "check_estimators_dtypes": _TABLE + "Tested on images: test_pixel_dtypes.",
    "check_dtype_object": _TABLE + "Tested on images: test_bad_images.",
    "check_estimators_empty_data_messages": _TABLE + "Tested on images: test_bad_images.",
    "check_pipeline_consistency": _TABLE + "Tested on images: test_clone_and_pickle_give_identical_outputs.",
    "check_estimators_nan_inf": _TABLE + "Tested on images: test_bad_images.",
    "check_estimators_pickle": _TABLE + "Tested on images: test_clone_and_pickle_give_identical_outputs.",
    "check_f_contiguous_array_estimator": _TABLE + "Tested on images: test_readonly_and_fortran_input.",
    "check_transformer_data_not_an_array": _TABLE + "Lists of images are tested: test_paths_lists_and_sizes.",
    "check_transformer_general": _TABLE + "Tested on images: test_pipeline_fit_predict.",
    "check_methods_sample_order_invariance": _TABLE + "Tested on images: test_order_and_subset_invariance.",
    "check_methods_subset_invariance": _TABLE + "Tested on images: test_order_and_subset_invariance.",
    "check_fit2d_1sample": _TABLE + "One image is tested: test_order_and_subset_invariance.",
    "check_fit2d_1feature": _TABLE + "Images have no features to count.",
    "check_dict_unchanged": _TABLE + "Tested on images: test_fit_keeps_params_and_is_idempotent.",
    "check_fit_idempotent": _TABLE + "Tested on images: test_fit_keeps_params_and_is_idempotent.",
    "check_fit_check_is_fitted": _TABLE + "Tested on images: test_not_fitted_and_bad_params.",
    "check_fit2d_predict1d": _TABLE + "Wrong ranks are tested: test_bad_images.",
}


def tiny(**kw) -> FeatureExtractor:
    """The trunk with seeded random weights, its classic 800-d embedding (the flatten output, no
    mirror): runs at 32x32, builds in well under a second."""
    kw = {"weights": None, "batch_size": 8, "layers": ["flatten"], "flip": False, **kw}
    return FeatureExtractor("trunk", **kw)


@parametrize_with_checks([tiny(), tiny(layers=None, flip=True)], expected_failed_checks=lambda est: TABLE_CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def colour_images(n_per_class=16, size=16, seed=0):
    """Noise images tinted red, green or blue by class: easy to tell apart from random features."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    X = rng.integers(0, 90, size=(len(y), size, size, 3))
    X[np.arange(len(y)), :, :, y] += 160
    order = rng.permutation(len(y))
    return X[order].astype(np.uint8), np.array(["red", "green", "blue"])[y[order]]


@pytest.fixture(scope="module")
def data():
    return colour_images()


def spy(fx: FeatureExtractor):
    """Wrap the live backbone's predict_on_batch; the real call still runs."""
    model = fx.model_
    return mock.patch.object(model, "predict_on_batch", side_effect=model.predict_on_batch)


@pytest.mark.parametrize(
    "head", [LogisticRegression(max_iter=500), make_head("svm"), DenseClassifier(n_members=1, epochs=40, random_state=0)]
)
def test_pipeline_fit_predict(data, head):
    X, y = data
    pipe = Pipeline([("features", tiny()), ("clf", head)])
    pipe.fit(X[::2], y[::2])
    assert pipe.score(X[1::2], y[1::2]) > 0.9
    assert set(pipe.predict(X[:5])) <= {"red", "green", "blue"}
    emb = pipe[0].fit_transform(X, y)
    assert emb.shape == (len(X), 800) and emb.dtype == np.float32


def test_embeddings_are_the_backbone_output(data):
    X, _ = data
    fx = tiny(batch_size=5).fit(X)
    direct = np.asarray(fx.model_.predict_on_batch(X[:7]))
    np.testing.assert_allclose(fx.transform(X[:7]), direct, rtol=1e-5, atol=1e-6)
    vgg = FeatureExtractor("vgg19", weights=None, size=32, batch_size=4, layers=["block5_pool"]).fit(X)
    assert vgg.transform(X[:3]).shape == (3, 512) and vgg.n_features_out_ == 512


@pytest.mark.parametrize("kw", [{"backbone": "trunk"}, {"backbone": "vgg19", "size": 32}])
def test_clone_and_pickle_give_identical_outputs(data, kw):
    X, _ = data
    fx = FeatureExtractor(weights=None, batch_size=8, **kw).fit(X)
    expected = fx.transform(X)
    assert np.array_equal(clone(fx).fit(X).transform(X), expected)
    blob = pickle.dumps(fx)
    # No live model in the pickle: only settings, and the trunk's small weight arrays.
    modules = {arg.split()[0] for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL" and arg}
    modules |= {arg for op, arg, _ in pickletools.genops(blob) if op.name in ("SHORT_BINUNICODE", "BINUNICODE")
                and isinstance(arg, str) and arg.startswith("keras")}  # fmt: skip
    assert not any(m.startswith(("keras", "tensorflow", "jax")) for m in modules), modules
    clear_models()  # force a rebuild from the pickled state
    again = pickle.loads(blob)
    assert np.array_equal(again.transform(X), expected)
    assert again.get_params() == fx.get_params()


def test_joblib_round_trip_in_a_fresh_process(data, tmp_path):
    X, y = data
    pipe = Pipeline([("features", tiny()), ("clf", LogisticRegression(max_iter=500))]).fit(X, y)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    np.save(tmp_path / "X.npy", X)
    code = ("import joblib, numpy as np, json; p = joblib.load('pipe.joblib'); X = np.load('X.npy'); "
            "print(json.dumps(p.predict_proba(X).round(6).tolist()))")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    proba = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(proba, pipe.predict_proba(X), atol=2e-6)


def test_cache_hits_skip_the_backbone(data, tmp_path, caplog):
    X, _ = data
    fx = tiny(cache_dir=tmp_path).fit(X)
    with spy(fx) as calls:
        first = fx.transform(X)
    assert calls.call_count == -(-len(X) // 8)
    with spy(fx) as calls, caplog.at_level("DEBUG", logger="featx.pipeline"):
        second = fx.transform(X[::-1])
    assert calls.call_count == 0 and np.array_equal(second, first[::-1])
    assert f"{len(X)} cache hits, 0 misses" in caplog.text
    # Three new images among known ones: only they go through the backbone.
    new = colour_images(1, seed=7)[0]
    with spy(fx) as calls:
        mixed = fx.transform(np.concatenate([X[:10], new]))
    assert calls.call_count == 1 and np.array_equal(mixed[:10], first[:10])
    # A clone with the same settings shares the cache; other settings do not.
    with spy(fx) as calls:
        assert np.array_equal(clone(fx).fit(X).transform(X), first)
    assert calls.call_count == 0
    other = tiny(cache_dir=tmp_path, random_state=1).fit(X)
    with spy(other) as calls:
        other.transform(X[:8])
    assert calls.call_count == 1
    files = sorted(p.name for p in (tmp_path / "embeddings").glob("*.h5"))
    assert len(files) == 2 and all(f.startswith("trunk-") for f in files)
    assert len(EmbeddingCache(fx.settings_, 800, "float32", tmp_path)) == len(X) + 3


def test_cross_validation_embeds_each_image_once(data, tmp_path):
    X, y = data
    pipe = Pipeline([("features", tiny(cache_dir=tmp_path)), ("clf", LogisticRegression(max_iter=500))])
    seen = []
    real = fx_pipeline.embed

    def counting_embed(model, batch, **kw):
        seen.append(len(batch))
        return real(model, batch, **kw)

    with mock.patch.object(fx_pipeline, "embed", side_effect=counting_embed):
        scores = cross_val_score(pipe, X, y, cv=3)
        cross_val_score(pipe, X, y, cv=4)
    assert scores.mean() > 0.9
    assert sum(seen) == len(X)  # 7 fits and 7 predicts, yet every image went through the backbone once


def test_grid_search_in_two_processes_shares_the_cache(data, tmp_path):
    X, y = data
    pipe = Pipeline([("features", tiny(cache_dir=tmp_path)), ("clf", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipe, {"clf__C": [0.01, 1.0]}, cv=3, n_jobs=2).fit(X, y)
    assert search.best_score_ > 0.9 and search.best_params_["clf__C"] in (0.01, 1.0)
    fx = search.best_estimator_[0]
    store = EmbeddingCache(fx.settings_, 800, "float32", tmp_path)
    assert len(store) == len(X)  # each image stored once, though both workers embedded some
    uncached = tiny().fit(X).transform(X)
    with spy(fx) as calls:
        cached = fx.transform(X)
    assert calls.call_count == 0
    # The worker processes run the backbone with one thread each, this process with two: oneDNN
    # sums in another order there, so the rows agree to rounding, not bit for bit.
    np.testing.assert_allclose(cached, uncached, rtol=1e-5, atol=1e-6)


def _embed_into(cache_dir, seed_offsets, out_q):
    X = colour_images(40, seed=3)[0]
    fx = tiny(cache_dir=cache_dir, batch_size=4).fit(X)
    for lo in seed_offsets:
        fx.transform(X[lo : lo + 10])
    out_q.put(len(X))


def test_two_processes_writing_one_cache_do_not_corrupt_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_embed_into, args=(str(tmp_path), range(s, 120, 10), q)) for s in (0, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    X = colour_images(40, seed=3)[0]
    fx = tiny(cache_dir=tmp_path).fit(X)
    with h5py.File(embedding_path(fx.settings_, tmp_path), "r") as f:
        n = int(f.attrs["n"])
        keys = {bytes(k) for k in f["keys"][:n]}
    assert n == len(X) == len(keys)
    with spy(fx) as calls:
        cached = fx.transform(X)
    assert calls.call_count == 0
    # Each process embedded other batches of images; oneDNN's kernels on some CPUs round an image
    # differently with other neighbours in the batch, so the rows agree to rounding.
    np.testing.assert_allclose(cached, tiny().fit(X).transform(X), rtol=1e-5, atol=1e-6)


def test_interrupted_and_damaged_cache_files(data, tmp_path, caplog):
    X, _ = data
    fx = tiny(cache_dir=tmp_path).fit(X)
    first = fx.transform(X[:10])
    path = embedding_path(fx.settings_, tmp_path)
    # An interrupted write: rows past `n` that nothing vouches for are never read.
    with h5py.File(path, "r+") as f:
        for name, rows in (
            ("keys", np.full((5, 16), 7, np.uint8)),
            ("X", np.full((5, 800), 9.0, np.float32)),
        ):
            f[name].resize(15, axis=0)
            f[name][10:] = rows
    with spy(fx) as calls:
        assert np.array_equal(fx.transform(X[:12])[:10], first)
    assert calls.call_count == 1
    with h5py.File(path, "r") as f:
        assert int(f.attrs["n"]) == 12 and f["X"].shape[0] == 12 and not (f["X"][:] == 9.0).all(axis=1).any()
    # A damaged file is started again, and the results are still right.
    path.write_bytes(path.read_bytes()[:300])
    with caplog.at_level("WARNING", logger="featx.cache"):
        again = fx.transform(X[:10])
    assert "is unreadable" in caplog.text and "starting it again" in caplog.text
    assert np.array_equal(again, first)
    assert len(EmbeddingCache(fx.settings_, 800, "float32", tmp_path)) == 10


def test_float16_storage_returns_float32_and_same_values_on_hits(data, tmp_path):
    X, _ = data
    fx = tiny(cache_dir=tmp_path, dtype="float16").fit(X)
    a, b = fx.transform(X[:9]), fx.transform(X[:9])
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert np.array_equal(a, a.astype(np.float16).astype(np.float32))


def test_feature_names_and_pandas_output(data, tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = data
    fx = tiny().fit(X)
    names = fx.get_feature_names_out()
    assert names[0] == "trunk0" and names[-1] == "trunk799" and len(names) == 800
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        write_image(p, i, size=(16, 16))
        paths.append(str(p))
    fx.set_output(transform="pandas")
    df = fx.transform(pd.Series(paths, index=["a", "b", "c"]))
    assert isinstance(df, pd.DataFrame) and list(df.index) == ["a", "b", "c"] and df.columns[5] == "trunk5"
    pipe = Pipeline([("features", tiny()), ("clf", LogisticRegression(max_iter=500))]).fit(X, y)
    assert pipe[:-1].get_feature_names_out()[1] == "trunk1"


def test_paths_lists_and_sizes(tmp_path):
    arrays = [write_image(tmp_path / f"{i}.png", i, size=(16, 16)) for i in range(5)]
    arrays.append(write_image(tmp_path / "big.png", 9, size=(40, 24)))
    paths = [str(tmp_path / f"{i}.png") for i in range(5)] + [tmp_path / "big.png"]
    fx = tiny().fit(paths)
    from_paths = fx.transform(paths)
    assert from_paths.shape == (6, 800)
    np.testing.assert_array_equal(from_paths[:5], fx.transform(np.stack(arrays[:5])))
    np.testing.assert_array_equal(from_paths[5:], fx.transform(arrays[5][None]))
    np.testing.assert_array_equal(fx.transform(arrays), from_paths)  # a list of arrays of two sizes
    np.testing.assert_array_equal(fx.transform(np.array(paths[:5], dtype=object)), from_paths[:5])


def test_pixel_dtypes(data):
    X, _ = data
    fx = tiny().fit(X)
    expected = fx.transform(X[:6])
    for dtype in (np.float32, np.float64, np.int64, np.uint16):
        np.testing.assert_array_equal(fx.transform(X[:6].astype(dtype)), expected, err_msg=str(dtype))
    # Floats are rounded to whole pixel levels, as images are stored.
    np.testing.assert_array_equal(fx.transform(X[:6] + np.float32(0.3)), expected)


def test_order_and_subset_invariance(data):
    X, _ = data
    fx = tiny(batch_size=5).fit(X)
    full = fx.transform(X)
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(fx.transform(X[perm]), full[perm], rtol=1e-5, atol=1e-6)
    for i in (0, 17):  # one image alone: padded batch, same embedding
        np.testing.assert_allclose(fx.transform(X[i : i + 1]), full[i : i + 1], rtol=1e-5, atol=1e-6)


def test_readonly_and_fortran_input(data, tmp_path):
    X, _ = data
    np.save(tmp_path / "X.npy", X)
    ro = np.load(tmp_path / "X.npy", mmap_mode="r")
    fx = tiny().fit(ro)
    expected = fx.transform(X)
    np.testing.assert_array_equal(fx.transform(ro), expected)
    np.testing.assert_array_equal(fx.transform(np.asfortranarray(X)), expected)


def test_fit_keeps_params_and_is_idempotent(data):
    X, _ = data
    fx = tiny()
    params = fx.get_params()
    assert fx.fit(X) is fx
    assert fx.get_params() == params
    state = {k: v for k, v in vars(fx).items() if not k.startswith("_")}
    a = fx.transform(X)
    fx.fit(X[:3])
    assert vars(fx).keys() >= state.keys() and fx.settings_ == state["settings_"]
    assert np.array_equal(fx.transform(X), a)
    assert not set(vars(tiny())) - set(params)  # __init__ stores parameters only


def test_random_state_seeds_random_weights(data):
    X, _ = data
    a = tiny(random_state=0).fit(X).transform(X[:4])
    b = tiny(random_state=1).fit(X).transform(X[:4])
    assert not np.allclose(a, b)
    state = np.random.get_state()[1].copy()
    tiny(random_state=5).fit(X)
    assert np.array_equal(np.random.get_state()[1], state)  # the user's global RNG is left alone


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((4, 16, 16)), "shape \\(n, h, w, 3\\).*Grayscale"),
        (np.zeros((16, 16, 3)), "one image: pass X\\[np.newaxis\\]"),
        (np.zeros((4, 48)), "not feature tables"),
        (np.zeros((2, 4, 16, 16, 3)), "shape \\(n, h, w, 3\\)"),
        (np.zeros((4, 16, 16, 1)), "3 \\(RGB\\) channels.*Grayscale"),
        (np.zeros((4, 16, 16, 4)), "3 \\(RGB\\) channels.*RGBA"),
        (np.zeros((0, 16, 16, 3)), "holds no images"),
        ([], "holds no images"),
        (np.full((2, 8, 8, 3), np.nan), "2 NaN|NaN or infinite"),
        (np.full((2, 8, 8, 3), np.inf), "NaN or infinite"),
        (np.full((2, 8, 8, 3), 0.5), "0-1.*X \\* 255"),
        (np.full((2, 8, 8, 3), -3.0), "0-255.*normalised"),
        (np.full((2, 8, 8, 3), 300), "must lie in 0-255"),
        (np.zeros((2, 8, 8, 3), bool), "must hold numbers"),
        (np.array([["a", "b"]]), "X\\[0\\] is"),
        ("photo.jpg", "pass a list: \\[path\\]"),
        (None, "X must be images"),
        ([np.zeros((8, 8, 3)), 5], "X\\[1\\] is int"),
        ([np.zeros((8, 8))], "X\\[0\\] must be images of shape \\(h, w, 3\\)"),
    ],
)
def test_bad_images(X, match):
    with pytest.raises(ValueError, match=match):
        tiny().fit(X)
    fitted = tiny().fit(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=match):
        fitted.transform(X)


def test_bad_files_and_tables(tmp_path):
    pd = pytest.importorskip("pandas")
    from featx import DataError

    fx = tiny().fit(np.zeros((1, 8, 8, 3), np.uint8))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        fx.transform([str(tmp_path / "notes.png")])
    with pytest.raises(DataError, match="not found.*missing.jpg"):
        fx.transform([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="DataFrame.*df\\['path'\\]"):
        fx.transform(pd.DataFrame({"path": ["a.png"]}))
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="Sparse input is not supported"):
        fx.transform(scipy_sparse.csr_matrix(np.ones((2, 3))))


def test_not_fitted_and_bad_params(data):
    X, _ = data
    with pytest.raises(NotFittedError):
        tiny().transform(X)
    with pytest.raises(NotFittedError):
        tiny().get_feature_names_out()
    assert not hasattr(tiny(), "model_")
    with pytest.raises(
        ValueError, match="Known: trunk and the"
    ):
        FeatureExtractor("alexnet").fit(X)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16. Received: dtype='int8'"):
        tiny(dtype="int8").fit(X)
    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'. Received: batch_size=0"):
        tiny(batch_size=0).fit(X)
    with pytest.raises(ValueError, match="only runs at 32x32"):
        tiny(size=64).fit(X)
    from featx import WeightsError

    with pytest.raises(WeightsError, match="weights for trunk must be 'trained', None"):
        FeatureExtractor("trunk", weights="imagenet").fit(X)


def test_trunk_trained_on_a_dataset_travels_in_the_pickle(tmp_path, data):
    import featx.backbones.trunk

    X, _ = data
    folder = make_class_folders(tmp_path / "imgs", classes=("a", "b", "c", "d"), n_train=6, n_test=2)
    fx = FeatureExtractor("trunk", trunk_data=str(folder), cache_dir=tmp_path / "cache", batch_size=8)
    with mock.patch.object(featx.backbones.trunk, "pretrain_trunk", side_effect=featx.backbones.trunk.pretrain_trunk) as trained:
        fx.fit(X)
        clone(fx).fit(X)  # the second fit loads the saved trunk
    assert trained.call_count == 1 and fx.settings_["weights"].startswith("trunk:sha256=")
    expected = fx.transform(X[:5])
    blob = pickle.dumps(fx)
    for p in (tmp_path / "cache" / "trunk").glob("*"):
        p.unlink()
    clear_models()
    np.testing.assert_array_equal(pickle.loads(blob).transform(X[:5]), expected)


def test_cache_command_lists_per_image_embeddings(data, tmp_path, capsys):
    from featx.cli import main

    X, _ = data
    tiny(cache_dir=tmp_path).fit(X).transform(X[:6])
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "per-image embeddings" in out and "trunk-" in out
    row = next(line for line in out.splitlines() if line.startswith("trunk-"))
    assert " 6 " in f" {row} " and "800" in row


def test_fitted_under_tensorflow_runs_under_jax(data, tmp_path):
    pytest.importorskip("jax")
    X, _ = data
    trunk = tiny().fit(X)  # random init, but the trunk's weights travel in the pickle
    vgg = FeatureExtractor("vgg19", weights=None, size=32).fit(X)  # random init of this backend only
    joblib.dump((trunk, vgg), tmp_path / "fx.joblib")
    np.save(tmp_path / "X.npy", X[:6])
    np.save(tmp_path / "tf.npy", trunk.transform(X[:6]))
    code = """
import joblib, numpy as np
trunk, vgg = joblib.load("fx.joblib")
X = np.load("X.npy")
a = trunk.set_params(cache_dir="c").transform(X)
b = trunk.transform(X)
print("max diff", float(np.abs(a - np.load("tf.npy")).max()), np.array_equal(a, b))
try:
    vgg.transform(X)
except ValueError as exc:
    print("refused:", exc)
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    diff_line = next(line for line in out.stdout.splitlines() if line.startswith("max diff"))
    assert float(diff_line.split()[2]) < 1e-4 and diff_line.endswith("True")
    assert (
        "refused: These features were set up under the tensorflow Keras backend with random weights"
        in out.stdout
    )
    assert [p.name.split("-")[0] for p in (tmp_path / "c" / "embeddings").glob("*.h5")] == ["trunk"]
