"""Backbones as classes: every keras.applications model, a user's own Keras model, the listings."""

import hashlib
import pickle
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import make_class_folders

from featx import FeatureExtractor
from featx.backbones import backbone_names, get_backbone
from featx.backbones.applications import KerasApplication
from featx.cli import main
from featx.errors import SettingsError, WeightsError
from featx.extract import extract_features
from featx.extractor import Extractor, clear_models
from featx.spec import FeatureSpec

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    "name, mode",
    [("vgg16", "caffe"), ("mobilenetv2", "tf"), ("densenet121", "torch"), ("efficientnetb0", "none")],
)
def test_embedding_equals_the_keras_applications_recipe_by_hand(name, mode, tmp_path):
    """featx's embedding of an image = the model's own preprocess_input, resize, base model and global
    average pooling, done by hand with keras.applications (the same weights, from a file)."""
    bb = get_backbone(name)
    assert bb.preprocessing == mode
    size = 32
    ctor = getattr(keras.applications, bb._constructor.__name__)
    base = ctor(include_top=False, weights=None, input_shape=(size, size, 3))
    weights = tmp_path / f"{name}.weights.h5"
    base.save_weights(weights)
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)

    resized = keras.layers.Resizing(size, size)(images.astype("float32"))
    x = sys.modules[ctor.__module__].preprocess_input(np.array(resized))
    by_hand = np.asarray(keras.layers.GlobalAveragePooling2D()(base(x)))

    spec = FeatureSpec(name, weights=weights, size=size, precision="float32", layers="classic")
    ours = Extractor(spec).transform(images)
    assert ours.shape == by_hand.shape
    np.testing.assert_allclose(ours, by_hand, rtol=1e-4, atol=1e-4)


def test_every_keras_application_is_a_backbone_with_sizes_and_preprocessing_read_from_keras():
    names = backbone_names()
    assert names[0] == "trunk" and len(names) >= 41
    for n in ("vgg16", "resnet101", "resnet50v2", "mobilenetv3small", "mobilenetv3large", "efficientnetb7",
              "efficientnetv2s", "convnexttiny", "densenet201", "inceptionv3", "inceptionresnetv2", "xception",
              "nasnetmobile"):  # fmt: skip
        assert n in names
    expected = {"vgg19": (224, 32, "caffe"), "resnet50": (224, 32, "caffe"), "resnet50v2": (224, 32, "tf"),
                "inceptionv3": (299, 75, "tf"), "xception": (299, 71, "tf"), "efficientnetb3": (300, 32, "none"),
                "efficientnetv2s": (384, 32, "none"), "convnexttiny": (224, 32, "none"),
                "densenet121": (224, 32, "torch"), "nasnetlarge": (331, 32, "tf"),
                "mobilenetv3small": (224, 32, "none")}  # fmt: skip
    for n, (size, least, mode) in expected.items():
        bb = get_backbone(n)
        assert (bb.default_size, bb.min_size, bb.preprocessing) == (size, least, mode), n
    with pytest.raises(SettingsError, match="size must be an integer of at least 75"):
        FeatureSpec("inceptionv3", size=64)


def test_the_default_of_a_pretrained_network_is_the_ends_of_its_last_stages():
    for name, stages, layer, width in [
        ("vgg19", ("block4_conv4", "block5_conv4"), "block5_pool", 512 * 3),
        ("resnet50", ("conv4_block6_add", "conv5_block3_add"), "conv5_block3_out", 1024 + 2048 + 2048),
        ("efficientnetb0", ("block5c_add", "block6d_add"), "top_activation", 112 + 192 + 1280),
        ("mobilenetv3small", ("expanded_conv_7_add", "expanded_conv_10_add"), "activation_17", 48 + 96 + 576),
    ]:
        spec = FeatureSpec(name, size=32, precision="float32")
        assert spec.layers == (*stages, layer) and spec.grid == 1 and not spec.flip and spec.pooling == "avg"
        assert spec.backbone_.embedding_width() == width
        # the classic embedding, the last layer globally average-pooled, is one option away
        assert FeatureSpec(name, size=32, precision="float32", layers="classic").layers == (layer,)
        # a random init has no transfer to measure: its last layer alone
        random = FeatureSpec(name, weights="none", size=32, precision="float32")
        assert random.classic and random.layers == (layer,)


def test_layer_names_are_the_same_in_every_process_whatever_was_built_before():
    before = get_backbone("convnexttiny").layer_names()
    keras.layers.LayerNormalization()  # takes Keras's next automatic name in this process
    keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    again = KerasApplication("convnexttiny").layer_names()  # a new object: built again
    assert again == before and before[-1] == "layer_normalization"


def test_imagenet_identity_is_the_md5_of_the_file_keras_keeps(tmp_path, monkeypatch):
    """The cache key of ImageNet weights comes from the file Keras fetched, not from a table."""
    from keras.src.utils import file_utils

    from featx.backbones import applications

    monkeypatch.setattr(applications, "_IMAGENET_FILES", {})

    def get_file(fname=None, origin=None, *args, **kwargs):
        path = tmp_path / fname
        path.write_bytes(b"weights v1")
        return str(path)

    monkeypatch.setattr(file_utils, "get_file", get_file)
    bb = KerasApplication("vgg19")
    first = bb.named_identity("imagenet")
    md5 = hashlib.md5(b"weights v1").hexdigest()
    assert first == f"imagenet:vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5:md5={md5}"
    (tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"weights v2, another file")
    assert bb.named_identity("imagenet") != first  # Keras fetched a new version of the file


def test_imagenet_weights_offline_say_which_file_to_copy_where(folder, monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(WeightsError, match="copy 'efficientnetb0_notop.h5' there, or pass --weights PATH"):
        extract_features("efficientnetb0", folder, size=32)


def tiny_model(seed=0, name="mine"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model(inputs, out, name=name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("own") / "ds", n_train=6, n_test=3)


def test_a_saved_keras_model_is_a_backbone_on_the_command_line(folder, tmp_path, capsys):
    path = tmp_path / "mine.keras"
    tiny_model().save(path)
    bb = get_backbone(str(path))
    assert bb.output_layer == "hidden"  # a classifier: the input of its softmax layer
    assert bb.default_size == 224 and not bb.fixed_size and bb.preprocessing == "none"
    common = ["--backbone", str(path), "--data", str(folder), "--size", "32", "--cache-dir", str(tmp_path / "c")]
    assert main(["extract", *common]) == 0
    out = capsys.readouterr().out
    assert "train 18x28, test 9x28" in out  # c1, p1 (the ends of its two stages before c2) and hidden: 8 + 8 + 12
    assert main(["extract", *common, "--layers", "classic"]) == 0
    assert "train 18x12, test 9x12" in capsys.readouterr().out
    assert main(["extract", *common, "--layers", "c1,c2", "--grid", "2", "--flip"]) == 0
    assert "train 18x96, test 9x96" in capsys.readouterr().out  # (8 + 16) channels x 2 x 2 cells
    assert main(["fit", *common, "--head", "logreg"]) == 0
    assert "saved logreg head" in capsys.readouterr().out
    assert main(["predict", *common, str(folder / "test" / "cat" / "000.png")]) == 0
    assert re.search(r"000\.png\t(cat|dog|eel)\t", capsys.readouterr().out)
    assert main(["layers", "--backbone", str(path)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"hidden\s+12\s+\*", listing) and re.search(r"c1\s+222x222x8\s", listing)  # traced at 224


def test_retrained_and_saved_again_a_model_never_hits_the_old_cache(folder, tmp_path):
    path = tmp_path / "mine.keras"
    tiny_model(seed=0).save(path)
    a = extract_features(str(path), folder, size=32, cache_dir=tmp_path / "c")
    tiny_model(seed=1).save(path)  # "trained further"
    b = extract_features(str(path), folder, size=32, cache_dir=tmp_path / "c")
    assert a.path != b.path and not np.allclose(a.load()[0], b.load()[0])
    assert a.settings["backbone"] == b.settings["backbone"] == "model:mine"
    assert a.settings["weights"].startswith("file:mine.keras:sha256=")


def test_a_model_object_in_a_pipeline_clones_pickles_and_grid_searches(folder, tmp_path):
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from featx.data import load_dataset

    ds = load_dataset(str(folder))
    model = tiny_model()
    fx = FeatureExtractor(model, size=32, cache_dir=tmp_path, layers="classic")
    Z = fx.fit_transform(ds.X_train)
    assert Z.shape == (len(ds.X_train), 12)
    np.testing.assert_allclose(Z, np.asarray(keras.Model(model.inputs, model.get_layer("hidden").output)(
        keras.layers.Resizing(32, 32)(ds.X_train.astype("float32")))), rtol=1e-5, atol=1e-6)  # fmt: skip
    assert fx.get_feature_names_out()[0] == "mine0"
    assert Path(fx.spec_.backbone).parent.parent == tmp_path / "models"
    blob = pickle.dumps(fx)
    clear_models()
    np.testing.assert_array_equal(pickle.loads(blob).transform(ds.X_train), Z)
    np.testing.assert_array_equal(clone(fx).fit(ds.X_train).transform(ds.X_train), Z)
    pipe = Pipeline([("features", FeatureExtractor(model, size=32, cache_dir=tmp_path, layers="classic")),
                     ("clf", LogisticRegression(max_iter=200))])  # fmt: skip
    search = GridSearchCV(pipe, {"clf__C": [0.1, 1.0]}, cv=2, n_jobs=2).fit(ds.X_train, ds.y_train)
    assert search.best_estimator_.predict(ds.X_test).shape == (len(ds.X_test),)
    # other weights, another file: other features
    other = FeatureExtractor(tiny_model(seed=1), size=32, cache_dir=tmp_path).fit(ds.X_train)
    assert other.spec_.backbone != fx.spec_.backbone and other.settings_ != fx.settings_


def test_a_model_that_cannot_be_a_backbone_is_one_line(tmp_path):
    vec = tmp_path / "vectors.keras"
    inp = keras.Input((8,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(vec)
    with pytest.raises(SettingsError, match=r"cannot be a backbone: it must take one input of images \(n, h, w, 3\)"):
        FeatureSpec(str(vec))
    wide = tmp_path / "wide.keras"
    inp = keras.Input((32, 48, 3))
    keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp)).save(wide)
    with pytest.raises(SettingsError, match="takes 32x48 images: featx feeds square images only"):
        FeatureSpec(str(wide))
    bad = tmp_path / "junk.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match=r"junk.keras. is not a Keras model file \(a .keras file is a zip archive\)"):
        FeatureSpec(str(bad))
    tiny_model().save(vec.with_name("square.keras"))
    assert FeatureSpec(str(vec.with_name("square.keras")), precision="bfloat16").precision == "bfloat16"


def test_backbones_lists_every_backbone(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip() and not line.startswith("(")}
    assert set(backbone_names()) <= set(rows)
    assert rows["inceptionv3"][1:5] == ["keras.applications", "299", "75", "tf"]
    assert rows["trunk"][1:6] == ["featx", "32", "32", "none", "trained"]


def test_readme_backbone_table_is_the_registry():
    text = README.read_text()
    rows = re.findall(r"^\| `([a-z0-9]+)` \| (\d+) \| (\d+) \| (\w+) \|", text, flags=re.M)
    assert rows, "README has no backbone table"
    listed = {name: (int(size), int(least), mode) for name, size, least, mode in rows}
    assert set(listed) == set(backbone_names())
    for name, row in listed.items():
        bb = get_backbone(name)
        assert row == (bb.default_size, bb.min_size, bb.preprocessing), name


def test_an_unbuilt_sequential_is_one_line_and_a_multi_output_model_takes_its_layers(tmp_path, capsys):
    from featx.errors import SettingsError

    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(SettingsError, match="does not know its input yet"):
        FeatureExtractor(unbuilt, size=32).fit(np.zeros((2, 32, 32, 3), np.uint8))
    inputs = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(4, 3, name="a")(inputs)
    b = keras.layers.Conv2D(6, 3, name="b")(a)
    two = keras.Model(inputs, [keras.layers.GlobalAveragePooling2D(name="ga")(a),
                               keras.layers.GlobalAveragePooling2D(name="gb")(b)])  # fmt: skip
    path = tmp_path / "two.keras"
    two.save(path)
    assert main(["layers", "--backbone", str(path)]) == 0  # the advice of the error can be followed
    assert "gb" in capsys.readouterr().out
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = Extractor(FeatureSpec(str(path), size=32, layers=["ga", "gb"], precision="float32")).transform(images)
    assert out.shape == (3, 10)
