"""Multi-layer, grid-pooled and mirror-averaged features; heads tuned on the train split."""

import re
from unittest import mock

import numpy as np
import pytest
from conftest import make_class_folders
from sklearn.model_selection import GridSearchCV

from featx import FeatureExtractor
from featx.backbones.trunk import build_trunk_classifier, embedding_weights
from featx.compare import compare
from featx.extract import extract_features
from featx.extractor import build_extractor, feature_names
from featx.fit import fit_head
from featx.spec import FeatureSpec


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trunk():
    return build_trunk_classifier(5, seed=0)


def _embed(spec, trunk, X):
    state = {"trunk_weights": embedding_weights(trunk)} if spec.backbone == "trunk" else None
    model = build_extractor(spec, state=state)
    return np.asarray(model.predict_on_batch(X)), model


def _classic_trunk(trunk, X):
    """The trunk's embedding as featx 0.1 built it: input scaling through dropout, on float pixels."""
    import keras

    from featx.backbones.trunk import trunk_embedding_layers

    inputs = keras.Input((32, 32, 3))
    x = inputs
    for layer in trunk_embedding_layers(trunk):
        x = layer(x)
    return np.asarray(keras.Model(inputs, x).predict_on_batch(X.astype("float32")))


@pytest.mark.parametrize(
    "kw, width, first_names",
    [
        (dict(), 512 + 256 + 800, ["trunk_conv1_0", "trunk_pool_0", "trunk_flatten_0"]),
        (dict(grid=2), 4 * 32 + 4 * 16 + 800, ["trunk_conv1_0", "trunk_pool_0", "trunk_flatten_0"]),
        (dict(layers=["conv2", "conv3"], grid=3, pooling="avg"), 9 * 16 + 9 * 8, ["trunk_conv2_0", "trunk_conv3_0"]),
        (dict(layers=["pool"], pooling="flatten"), 12 * 12 * 16, ["trunk_pool_0"]),
        (dict(layers=["flatten"]), 800, ["trunk0"]),
    ],
)
def test_layers_and_grid_give_the_documented_width_and_names(trunk, images, kw, width, first_names):
    spec = FeatureSpec("trunk", weights="none", **kw)
    Z, model = _embed(spec, trunk, images)
    names = feature_names(spec, model)
    assert Z.shape == (len(images), width) and len(names) == width
    block = [re.sub(r"\d+$", "", n) for n in names]  # a layer's columns: one name, numbered
    starts = [n for i, n in enumerate(names) if i == 0 or block[i] != block[i - 1]]
    assert starts == first_names


def test_grid_pooling_is_max_over_equal_windows(trunk, images):
    import keras

    spec = FeatureSpec("trunk", weights="none", layers=["conv1"], grid=4, flip=False)
    Z, _ = _embed(spec, trunk, images)
    layers = trunk.layers[:2]  # scale, conv1
    x = keras.ops.convert_to_tensor(images.astype("float32"))
    for layer in layers:
        x = layer(x)
    fmap = np.asarray(x)  # (n, 28, 28, 32): 4x4 windows of 7x7
    expect = fmap.reshape(len(images), 4, 7, 4, 7, 32).max(axis=(2, 4)).reshape(len(images), -1)
    np.testing.assert_allclose(Z, expect, rtol=1e-6)


def test_the_single_layer_setting_is_featx_0_1_embedding_bit_for_bit(trunk, images):
    Z, _ = _embed(FeatureSpec("trunk", weights="none", layers=["flatten"], flip=False), trunk, images)
    assert np.array_equal(Z, _classic_trunk(trunk, images))
    classic = FeatureSpec("vgg19", weights="none", size=32, layers=["block5_pool"])
    model = build_extractor(classic)
    assert [layer.name for layer in model.layers][-2:] == ["vgg19", "avg_pool"]  # the 0.1 graph


def test_flip_is_the_mean_of_two_passes_and_mirror_invariant(trunk, images):
    plain = FeatureSpec("trunk", weights="none", flip=False)
    a, model = _embed(plain, trunk, images)
    b = np.asarray(model.predict_on_batch(images[:, :, ::-1]))
    Z, flip_model = _embed(plain.replace(flip=True), trunk, images)
    np.testing.assert_allclose(Z, (a + b) / 2, rtol=1e-5, atol=1e-6)
    mirrored = np.asarray(flip_model.predict_on_batch(np.ascontiguousarray(images[:, :, ::-1])))
    np.testing.assert_allclose(mirrored, Z, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)  # the mirror image does give other features


def test_flip_works_for_imagenet_backbones_in_one_pass(images):
    spec = FeatureSpec("vgg19", weights="none", size=32, layers=["block5_pool"], flip=True)
    Z, model = _embed(spec, None, images[:4])
    plain = build_extractor(spec.replace(flip=False))
    a, b = (np.asarray(plain.predict_on_batch(x)) for x in (images[:4], images[:4, :, ::-1]))
    np.testing.assert_allclose(Z, (a + b) / 2, rtol=1e-4, atol=1e-5)
    assert "with_mirror" in [layer.name for layer in model.layers]


def test_layers_grid_and_flip_change_the_cache_key():
    base = FeatureSpec("trunk", weights="none")
    keys = {str(s.key_settings("w")) for s in (base, base.replace(grid=2), base.replace(flip=False),
                                               base.replace(layers=["conv1", "flatten"]))}  # fmt: skip
    assert len(keys) == 4


def test_feature_extractor_with_layers_and_flip_caches_per_setting(images, tmp_path):
    fx = FeatureExtractor("trunk", weights=None, grid=2, flip=True, cache_dir=tmp_path).fit(images)
    Z = fx.transform(images)
    assert Z.shape == (10, 4 * 32 + 4 * 16 + 800) and fx.get_feature_names_out()[0] == "trunk_conv1_0"
    other = FeatureExtractor("trunk", weights=None, grid=2, flip=False, cache_dir=tmp_path).fit(images)
    assert other.settings_ != fx.settings_ and not np.allclose(other.transform(images), Z)
    assert len(list((tmp_path / "embeddings").glob("*.h5"))) == 2
    with mock.patch.object(fx.model_, "predict_on_batch", side_effect=fx.model_.predict_on_batch) as calls:
        assert np.array_equal(fx.transform(images), Z)
    assert calls.call_count == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=12, n_test=4)


def test_tune_searches_on_the_train_split_only(tiny, tmp_path):
    fs = extract_features("vgg19", tiny, weights="none", size=32, cache_dir=tmp_path)
    X_train, _, X_test, _ = fs.load()
    seen = []
    real_fit = GridSearchCV.fit

    searches = []

    def spy(self, X, y=None, **kw):
        seen.append(np.asarray(X))
        searches.append(self)
        return real_fit(self, X, y, **kw)

    with mock.patch.object(GridSearchCV, "fit", autospec=True, side_effect=spy):
        res, path = fit_head("logreg", "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path, tune=True)
    assert len(seen) == 1 and np.array_equal(seen[0], X_train)
    test_rows = {r.tobytes() for r in X_test}
    assert not any(r.tobytes() in test_rows for r in seen[0])
    assert set(res.params) == {"C"} and res.params == searches[0].best_params_
    assert res.cv_accuracy == searches[0].best_score_
    assert res.estimator.C == res.params["C"]


def test_compare_tunes_and_adds_the_protocol_row(tiny, tmp_path):
    results, paths = compare(["trunk"], ["logreg"], tiny, weights="none", task="full", tune=True,
                             cache_dir=tmp_path / "c", reports_dir=tmp_path / "r")  # fmt: skip
    rows = {r.features: r for r in results}
    assert set(rows) == {"trunk 32px max, random init, layers conv1+pool+flatten, grid 4, flip",
                         "trunk 32px flatten, random init"}  # fmt: skip
    # a random-init trunk is no split-CIFAR protocol: its reference row says what made it
    note = rows["trunk 32px flatten, random init"].note
    assert note == "reference: the trunk's 800-d flatten output (random init)" and "split-CIFAR" not in note
    assert all(set(r.params) == {"C"} for r in results)
    import csv

    table = list(csv.DictReader(open(paths["csv"])))
    assert all(row["params"].startswith('{"C": ') and row["cv_accuracy"] for row in table)
