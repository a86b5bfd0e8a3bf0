import dataclasses
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path
from unittest import mock

import joblib
import numpy as np
import pytest
from conftest import make_class_folders

from featx import FeatureExtractor
from featx.config import slug
from featx.data import Dataset
from featx.errors import CacheError, SettingsError, WeightsError
from featx.extract import extract_features
from featx.fit import fit_head
from featx.persistence import load_head
from featx.predict import predict_files
from featx.spec import FeatureSpec, as_spec, describe, specs_for

FIXTURES = Path(__file__).parent / "fixtures" / "legacy-cache"


def test_defaults_are_filled_and_equal_specs_hash_alike():
    a = FeatureSpec("vgg19")
    b = FeatureSpec("vgg19", weights="imagenet", size=224, pooling="avg", interpolation="bilinear")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert (a.weights, a.size, a.pooling, a.dtype) == ("imagenet", 224, "avg", "float32")
    t = FeatureSpec("trunk")
    assert (t.weights, t.size, t.pooling, t.layers, t.grid, t.flip) == ("trained", 32, "max",
                                                                         ("conv1", "pool", "flatten"), 4, True)
    assert FeatureSpec("trunk", layers="conv1, pool,flatten") == t == FeatureSpec("trunk", layers=["conv1", "pool",
                                                                                                   "flatten"])
    # the flatten output alone is a vector: nothing to pool, whatever pooling and grid were asked
    assert FeatureSpec("trunk", layers=["flatten"], pooling="avg", grid=8) == FeatureSpec("trunk", layers=["flatten"])
    assert (a.layers, a.grid, a.flip) == (("block4_conv4", "block5_conv4", "block5_pool"), 1, False)
    assert a.replace(layers="classic").layers == ("block5_pool",)  # the linear-probe feature
    assert FeatureSpec("resnet50", weights="pretrained") == FeatureSpec("resnet50", weights="imagenet")
    assert FeatureSpec("resnet50", weights=None) == FeatureSpec("resnet50", weights="none")  # Keras's None
    assert FeatureSpec("vgg19", weights="None").weights == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.size = 64


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(backbone="alexnet"), ValueError, "Known: trunk and the"),
        (dict(backbone="VGG19"), ValueError, "Unknown backbone (names are lower case: 'vgg19')"),
        (dict(backbone="/no/such/model.keras"), ValueError, "No Keras model file at '/no/such/model.keras'"),
        (dict(size=16), ValueError, "size must be an integer of at least 32. Received: size=16"),
        (dict(size=64.0), ValueError, "size must be an integer"),
        (dict(size=True), ValueError, "size must be an integer"),
        (dict(backbone="trunk", size=64), ValueError, "only runs at 32x32. Received: size=64"),
        (dict(pooling="mean"), ValueError, "pooling must be one of avg, max, flatten. Received: pooling='mean'"),
        (dict(backbone="trunk", layers=["conv9"]), ValueError, "Unknown layer 'conv9' for trunk. Its layers: conv1, conv2, pool, conv3, flatten (`python cli.py layers --backbone trunk` lists them"),
        (dict(layers=["block1_conv1", "block9_pool"]), ValueError, "Unknown layer 'block9_pool' for vgg19. Its layers: block1_conv1, block1_conv2"),
        (dict(layers=[]), ValueError, "layers must be a non-empty list of layer names of vgg19"),
        (dict(layers=["block5_pool", "block5_pool"]), ValueError, "layers names a layer twice"),
        (dict(layers=[3]), ValueError, "layers must be a non-empty list"),
        (dict(grid=0), ValueError, "grid must be an integer from 1 to 32 (cells per side). Received: grid=0"),
        (dict(grid=2.5), ValueError, "grid must be an integer from 1 to 32"),
        (dict(grid=33), ValueError, "grid must be an integer from 1 to 32"),
        (dict(flip="yes"), ValueError, "flip must be True or False. Received: flip='yes'"),
        (dict(interpolation="cubic"), ValueError, "interpolation must be one of bilinear"),
        (dict(weights="trained"), WeightsError, "weights for vgg19 must be 'imagenet', None (a random init"),
        (dict(weights="/no/such.h5"), WeightsError, "path of a weights file that exists"),
        (dict(weights=3), ValueError, "weights must be a name or a file path. Received: weights=3"),
        (dict(dtype="int8"), ValueError, "dtype must be one of float32, float16. Received: dtype='int8'"),
    ],
)
def test_bad_settings_fail_when_the_spec_is_made(kw, error, match):
    with pytest.raises(error, match=re.escape(match)):
        FeatureSpec(**kw)


def test_a_weights_file_is_kept_as_its_path(tmp_path):
    w = tmp_path / "w.weights.h5"
    w.write_bytes(b"x")
    assert FeatureSpec("vgg19", weights=w).weights == str(w)


def test_as_spec_takes_a_spec_a_name_or_settings():
    spec = FeatureSpec("vgg19", size=64)
    assert as_spec(spec) is spec
    assert as_spec(spec, pooling="max") == FeatureSpec("vgg19", size=64, pooling="max")
    assert as_spec("resnet50", size=64) == FeatureSpec("resnet50", size=64)
    assert as_spec(None, backbone="trunk") == FeatureSpec("trunk")
    with pytest.raises(TypeError, match="Unknown feature setting 'colour'. The feature settings are: backbone"):
        as_spec("vgg19", colour="red")
    with pytest.raises(TypeError, match="named twice"):
        as_spec("vgg19", backbone="trunk")
    with pytest.raises(TypeError, match="FeatureSpec or a backbone name"):
        as_spec(42)


def test_specs_for_applies_each_setting_where_it_fits(tmp_path):
    trunk, vgg = specs_for(["trunk", "vgg19"], weights="none", size=64, pooling="max")
    assert trunk == FeatureSpec("trunk", weights="none", pooling="max") and vgg == FeatureSpec(
        "vgg19", weights="none", size=64, pooling="max")  # fmt: skip
    w = tmp_path / "vgg.weights.h5"
    w.write_bytes(b"x")
    with pytest.raises(SettingsError, match=r"One weights file cannot be the weights of 2 backbones \(trunk, vgg19\)"):
        specs_for(["trunk", "vgg19"], weights=w)  # whose weights would it be?
    (vgg,) = specs_for(["vgg19"], weights=w)
    assert vgg.weights == str(w)
    with pytest.raises(WeightsError, match="weights for trunk must be 'trained'"):
        specs_for(["trunk", "vgg19"], weights="imagenett")  # a name no backbone takes is not dropped silently
    trunk, vgg = specs_for(["trunk", "vgg19"], weights="imagenet")
    assert trunk.weights == "trained" and vgg.weights == "imagenet"
    own = FeatureSpec("resnet50", size=96)
    assert specs_for([own, "vgg19"], size=64) == [own, FeatureSpec("vgg19", size=64)]
    with pytest.raises(ValueError, match="Unknown backbone"):
        specs_for(["alexnet"])


def test_round_trip_and_description(tmp_path):
    spec = FeatureSpec("resnet50", weights="none", size=64, interpolation="nearest", dtype="float16",
                       layers=["conv5_block3_out"])  # fmt: skip
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.describe() == "resnet50 64px avg, random init, interpolation nearest, float16"
    recorded = spec.key_settings(spec.backbone_.resolve(spec.weights, seed=3)[1])
    assert describe(recorded) == "resnet50 64px avg, random init (seed 3), interpolation nearest, float16"
    # a trunk's weights are named by their hash: trained or a seeded random init, the hash does not say
    assert describe({**recorded, "backbone": "trunk", "weights": "trunk:sha256=0123456789abcdef"}).startswith(
        "trunk 64px avg, trunk weights 01234567")  # fmt: skip
    trunk = FeatureSpec("trunk", grid=2)
    assert FeatureSpec.from_dict(json.loads(json.dumps(trunk.to_dict()))) == trunk
    assert trunk.describe() == "trunk 32px max, trained, layers conv1+pool+flatten, grid 2, flip"


def _old_key(settings: dict) -> str:
    """The cache-key rule of featx 0.1, written out here so that a change to it is caught."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_key_settings_are_the_settings_featx_0_1_hashed():
    spec = FeatureSpec("vgg19", weights="none", size=32, dtype="float16", layers=["block5_pool"])
    old = {"backbone": "vgg19", "weights": "random-init-seed0", "size": 32, "interpolation": "bilinear",
           "pooling": "avg", "dtype": "float16"}  # fmt: skip
    assert spec.key_settings(spec.backbone_.resolve(spec.weights, seed=0)[1]) == old


def test_a_later_setting_enters_the_key_only_away_from_its_neutral_value():
    # How a new setting is added: a field whose metadata names the value that reproduces the old features.
    Later = dataclasses.make_dataclass(
        "Later", [("mirror", bool, dataclasses.field(default=False, metadata={"neutral": False}))],
        bases=(FeatureSpec,), frozen=True,
    )  # fmt: skip
    base = FeatureSpec("vgg19", weights="none", size=32).key_settings("w")
    assert Later("vgg19", weights="none", size=32).key_settings("w") == base
    assert Later("vgg19", weights="none", size=32, mirror=True).key_settings("w") == {**base, "mirror": True}


def _legacy_dataset() -> Dataset:
    # The dataset the fixture caches were extracted from, by featx 0.1 (before FeatureSpec).
    rng = np.random.default_rng(2024)
    X = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    return Dataset("legacy", X[:6], y[:6], X[6:], y[6:], ("a", "b", "c"), fingerprint="legacy0000000001")


@pytest.fixture
def legacy_cache(tmp_path):
    for gz in FIXTURES.rglob("*.h5.gz"):
        dest = tmp_path / gz.relative_to(FIXTURES).with_suffix("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(gz) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    return tmp_path


def test_feature_files_written_before_the_spec_are_still_found(legacy_cache, caplog):
    (old,) = (legacy_cache / "features").glob("*.h5")
    with mock.patch("featx.extract._run", side_effect=AssertionError("recomputed")):
        fs = extract_features("vgg19", _legacy_dataset(), weights="none", size=32, dtype="float16",
                              layers=["block5_pool"], cache_dir=legacy_cache)  # fmt: skip
    assert fs.path == old and "features already cached" in caplog.text
    assert fs.load()[0].shape == (6, 512)


def test_per_image_embeddings_written_before_the_spec_are_still_found(legacy_cache):
    X = _legacy_dataset().X_train
    classic = dict(weights=None, size=32, dtype="float16", layers=["block5_pool"])
    fx = FeatureExtractor("vgg19", cache_dir=legacy_cache, **classic).fit(X)
    assert fx.spec_ == FeatureSpec("vgg19", weights="none", size=32, dtype="float16", layers=["block5_pool"])
    with mock.patch.object(fx.model_, "predict_on_batch", side_effect=fx.model_.predict_on_batch) as calls:
        Z = fx.transform(X)
    assert calls.call_count == 0 and Z.shape == (6, 512)
    # made on another machine: equal to this one's up to a float16 rounding of the last bit
    np.testing.assert_allclose(Z, FeatureExtractor("vgg19", **classic).fit(X).transform(X), rtol=1e-3, atol=2e-5)


def test_entry_points_take_a_spec_or_its_settings(tmp_path):
    tiny = make_class_folders(tmp_path / "ds", n_train=3, n_test=1)
    spec = FeatureSpec("vgg19", weights="none", size=32, layers=["block5_pool"])
    a = extract_features(spec, tiny, cache_dir=tmp_path / "c", batch_size=8)
    b = extract_features("vgg19", tiny, cache_dir=tmp_path / "c", weights="none", size=32, layers="block5_pool")
    c = extract_features(backbone="vgg19", data=tiny, cache_dir=tmp_path / "c", weights="none", size=32,
                         layers=("block5_pool",))  # fmt: skip
    assert a.path == b.path == c.path and a.info["spec"] == spec.to_dict()
    res, path = fit_head("logreg", spec, tiny, cache_dir=tmp_path / "c")
    assert res.features == "vgg19 32px avg, random init"
    assert load_head(path)[1]["spec"] == spec.to_dict()
    img = tiny / "test" / "cat" / "000.png"
    (out,) = predict_files([img], "logreg", spec, tiny, cache_dir=tmp_path / "c")
    assert out[3] is None and out[1] in ("cat", "dog", "eel")
    with pytest.raises(CacheError, match="No logreg head fitted on vgg19 32px max, random init features of .*; there "
                                         "are logreg heads fitted on: vgg19 32px avg, random init, seed 0"):  # fmt: skip
        list(predict_files([img], "logreg", spec.replace(pooling="max"), tiny, cache_dir=tmp_path / "c"))


def test_a_head_saved_by_featx_0_1_still_predicts(tmp_path):
    tiny = make_class_folders(tmp_path / "ds", n_train=3, n_test=1)
    # featx 0.1 made the classic embedding; its records name no layers, grid or flip
    _, path = fit_head("logreg", "vgg19", tiny, weights="none", size=32, layers=["block5_pool"],
                       cache_dir=tmp_path / "c")  # fmt: skip
    est, rec = load_head(path)
    saved = {"estimator": est, "record": rec}
    for k in ("spec", "data", "seed"):
        rec.pop(k)
    rec["extract_args"] = {"backbone": "vgg19", "data": str(tiny.resolve()), "task": "full", "weights": "none",
                           "size": 32, "pooling": "avg", "interpolation": "bilinear", "seed": 0}  # fmt: skip
    path.unlink()
    joblib.dump(saved, path.with_name(f"logreg-vgg19-{slug(str(tiny.resolve()))}-full.joblib"))  # 0.1's file name
    settings = dict(cache_dir=tmp_path / "c", weights="none", size=32, layers=["block5_pool"])
    img = tiny / "test" / "dog" / "000.png"
    with pytest.raises(CacheError, match=r"saved by an earlier featx as pickles \(logreg-vgg19-.*-full.joblib\), "
                                         r"which can run any code when loaded. If you trust them, run again with "
                                         r"--trust-pickle"):  # fmt: skip
        list(predict_files([img], "logreg", "vgg19", tiny, **settings))
    (out,) = predict_files([img], "logreg", "vgg19", tiny, trust_pickle=True, **settings)
    assert out[3] is None and out[1] in ("cat", "dog", "eel")
