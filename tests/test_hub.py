"""KerasHub backbones by preset: tiny random DINOv2, ViT, CLIP, SigLIP and ResNet configurations saved
as preset folders (``save_to_preset``), read back through the same path as a downloaded preset."""

import pickle

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from conftest import make_class_folders  # noqa: E402
from hub_presets import make_presets  # noqa: E402
from sklearn.base import clone  # noqa: E402

from featx import FeatureExtractor  # noqa: E402
from featx.backbones import get_backbone  # noqa: E402
from featx.errors import SettingsError, WeightsError  # noqa: E402
from featx.extractor import Extractor  # noqa: E402
from featx.spec import FeatureSpec  # noqa: E402

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    return {k: str(v) for k, v in make_presets(tmp_path_factory.mktemp("presets")).items()}


def _by_hand_input(preset, images):
    """The preset's own preprocessing, as its image converter does it (no featx layer)."""
    conv = keras_hub.layers.ImageConverter.from_preset(preset)
    x = images.astype("float32")
    return x * np.asarray(conv.scale, "float32") + np.asarray(conv.offset, "float32")


def test_token_models_give_the_class_token_and_the_mean_of_the_patches(presets):
    for kind, registers in (("dinov2", 1), ("vit", 0)):
        model = keras_hub.models.Backbone.from_preset(presets[kind])
        tokens = np.asarray(model(_by_hand_input(presets[kind], IMAGES)))
        patches = tokens.shape[1] - 1 - registers
        want = np.concatenate([tokens[:, 0], tokens[:, 1 + registers :].mean(1)], axis=1)
        assert patches == (32 // model.patch_size if kind == "dinov2" else 32 // model.patch_size[0]) ** 2
        got = Extractor(FeatureSpec(presets[kind], precision="float32")).transform(IMAGES)
        assert got.shape == (5, 2 * tokens.shape[-1])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind, extra", [("deit", 2), ("swin", 0), ("dinov3", 5)])
def test_other_token_models_class_token_and_patches(presets, kind, extra):
    """DeiT (class and distillation tokens), Swin (no class token: the mean of its last tokens),
    DINOv3 (class and 4 register tokens): the same rule, read from the number of tokens."""
    model = keras_hub.models.Backbone.from_preset(presets[kind])
    tokens = np.asarray(model(_by_hand_input(presets[kind], IMAGES)))
    mean = tokens[:, extra:].mean(1)
    want = np.concatenate([tokens[:, 0], mean], axis=1) if extra else mean
    got = Extractor(FeatureSpec(presets[kind], precision="float32")).transform(IMAGES)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_image_text_models_give_the_projected_image_embedding(presets):
    for kind in ("clip", "siglip"):
        model = keras_hub.models.Backbone.from_preset(presets[kind])
        want = np.asarray(model.get_vision_embeddings(_by_hand_input(presets[kind], IMAGES)))
        spec = FeatureSpec(presets[kind], precision="float32")
        assert spec.layers == ("embedding",)
        got = Extractor(spec).transform(IMAGES)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cnn_presets_are_pooled_and_tapped_like_keras_applications(presets):
    model = keras_hub.models.Backbone.from_preset(presets["resnet"])
    maps = np.asarray(model(_by_hand_input(presets["resnet"], IMAGES)))
    got = Extractor(FeatureSpec(presets["resnet"], layers="classic", precision="float32")).transform(IMAGES)
    np.testing.assert_allclose(got, maps.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    default = FeatureSpec(presets["resnet"], precision="float32")  # pretrained: the ends of its stages too
    assert default.layers == ("stack0_block0_add", "stack1_block0_add", "output")
    np.testing.assert_allclose(Extractor(default).transform(IMAGES)[:, -32:], got, atol=1e-5)
    inner = [n for n, s in get_backbone(presets["resnet"]).layer_shapes() if len(s) == 3][2]
    two = Extractor(FeatureSpec(presets["resnet"], layers=[inner, "output"], grid=2, precision="float32"))
    assert two.transform(IMAGES).shape[1] == 4 * (dict(get_backbone(presets["resnet"]).layer_shapes())[inner][-1] + 32)


def test_blocks_by_name_and_the_last_n(presets):
    bb = get_backbone(presets["dinov2"])
    assert [n for n, _ in bb.layer_shapes()] == ["stage1", "stage2", "stage3", "output"]
    spec = FeatureSpec(presets["dinov2"], layers="last2", precision="float32")
    assert spec.layers == ("stage2", "stage3")
    model = keras_hub.models.Backbone.from_preset(presets["dinov2"])
    import keras

    taps = keras.Model(model.inputs, model.pyramid_outputs["stage3"])
    normed = np.asarray(model.layernorm(taps(_by_hand_input(presets["dinov2"], IMAGES))))
    got = Extractor(spec).transform(IMAGES)
    assert got.shape == (5, 2 * 2 * 16)
    # The last block, normed as the output is, is the output: its half of the embedding equals the default.
    np.testing.assert_allclose(got[:, 32:], np.concatenate([normed[:, 0], normed[:, 2:].mean(1)], 1), atol=1e-4)
    np.testing.assert_allclose(got[:, 32:], Extractor(FeatureSpec(presets["dinov2"], precision="float32")).transform(IMAGES),
                               atol=1e-4)  # fmt: skip
    with pytest.raises(SettingsError, match="last1 to last3"):
        FeatureSpec(presets["dinov2"], layers="last9")
    with pytest.raises(SettingsError, match="exposes no blocks: --layers takes output only"):
        FeatureSpec(presets["vit"], layers="last2")
    grid = Extractor(FeatureSpec(presets["dinov2"], grid=2, precision="float32")).transform(IMAGES)
    assert grid.shape == (5, 16 * 5)  # class token and 2x2 cells of patch tokens
    np.testing.assert_allclose(grid[:, 16:].reshape(5, 4, 16).mean(1), got[:, 48:], atol=1e-4)
    with pytest.raises(SettingsError, match="finer than the 8x8 patches"):
        Extractor(FeatureSpec(presets["dinov2"], grid=9, precision="float32")).transform(IMAGES)


def test_cache_key_holds_the_preset_and_the_hash_of_its_weights(presets, tmp_path):
    import shutil

    ex = Extractor(FeatureSpec(presets["vit"], precision="float32"))
    assert ex.settings["backbone"] == "hub:tiny_vit"
    assert ex.settings["weights"].startswith("keras-hub:")
    copy = tmp_path / "tiny_vit"
    shutil.copytree(presets["vit"], copy)
    assert Extractor(FeatureSpec(str(copy), precision="float32")).settings == ex.settings  # same files: same key
    model = keras_hub.models.Backbone.from_preset(str(copy))
    model.weights[0].assign(np.asarray(model.weights[0]) + 1)
    model.save_to_preset(str(copy))
    get_backbone.__globals__["_named"].cache_clear()
    assert Extractor(FeatureSpec(str(copy), precision="float32")).settings["weights"] != ex.settings["weights"]


@pytest.mark.parametrize("kind", ["vit", "clip", "siglip", "dinov2"])
def test_a_second_size_interpolates_the_position_embeddings(presets, kind):
    native = Extractor(FeatureSpec(presets[kind], precision="float32")).transform(IMAGES)
    big = Extractor(FeatureSpec(presets[kind], size=48, precision="float32")).transform(IMAGES)
    assert big.shape == native.shape and np.isfinite(big).all() and not np.allclose(big, native, atol=1e-3)
    from featx.backbones.hub import _interpolate_positions

    bb = get_backbone(presets[kind])
    small, large = bb.build_base(32, "preset", 0), bb.build_base(48, "preset", 0)
    changed = [(a, b) for a, b in zip(small.weights, large.weights) if tuple(a.shape) != tuple(b.shape)]
    if kind == "dinov2":  # DINOv2 interpolates its own, from the position embeddings it was trained with
        assert [b.path.split("/", 1)[1] for a, b in changed] == ["interpolated_position_embeddings"]
        want = keras_hub.models.Backbone.from_preset(presets[kind], image_shape=(48, 48, 3))
        np.testing.assert_array_equal(np.asarray(changed[0][1]), np.asarray(want.embeddings.interpolated_position_embeddings))
    else:  # every other weight is the same; the position embeddings are those of the new grid of patches
        assert changed and all("int" in str(b.dtype) or "position" in b.path for a, b in changed)
        for a, b in changed:
            if "int" not in str(b.dtype):
                np.testing.assert_allclose(np.asarray(b), _interpolate_positions(np.asarray(a), tuple(b.shape), a.path))
    with pytest.raises(SettingsError, match="size must be an integer of at least"):
        FeatureSpec(presets[kind], size=2)
    if kind in ("vit", "dinov2"):
        patch = get_backbone(presets[kind]).patch
        with pytest.raises(SettingsError, match=f"size must be a multiple of {patch}"):
            FeatureSpec(presets[kind], size=32 + patch // 2)


def test_the_interpolation_keeps_a_grid_of_the_same_size():
    from featx.backbones.hub import _interpolate_positions

    pos = np.random.default_rng(0).normal(size=(1 + 16, 8)).astype("float32")
    np.testing.assert_allclose(_interpolate_positions(pos, (17, 8), "p"), pos, atol=1e-5)
    assert _interpolate_positions(pos, (1 + 36, 8), "p").shape == (37, 8)
    np.testing.assert_array_equal(_interpolate_positions(pos, (37, 8), "p")[0], pos[0])  # the class token stays


def test_bfloat16_is_close_to_float32(presets):
    for kind in ("dinov2", "clip", "resnet"):
        a = Extractor(FeatureSpec(presets[kind], precision="float32")).transform(IMAGES)
        b = Extractor(FeatureSpec(presets[kind], precision="bfloat16")).transform(IMAGES)
        assert b.dtype == np.float32
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.98, (kind, cos)


def test_bfloat16_on_a_users_model(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    path = tmp_path / "mine.keras"
    keras.Model(inputs, outputs).save(path)
    a = Extractor(FeatureSpec(str(path), size=32, precision="float32"))
    b = Extractor(FeatureSpec(str(path), size=32, precision="bfloat16"))
    assert a.settings != b.settings  # another cache file
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in b.model.layers[-1:] + b.model.layers)
    fa, fb = a.transform(IMAGES), b.transform(IMAGES)
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert fb.dtype == np.float32 and cos.min() > 0.99 and not np.array_equal(fa, fb)


def test_clone_pickle_and_grid_search(presets):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 12)
    X[y == 1, :, :, 0] = 255  # a class that is redder
    fx = FeatureExtractor(presets["dinov2"], precision="float32").fit(X)
    want = fx.transform(X)
    np.testing.assert_allclose(clone(fx).fit(X).transform(X), want, atol=1e-5)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fx)).transform(X), want, atol=1e-5)
    pipe = Pipeline([("features", FeatureExtractor(presets["clip"], precision="float32")),
                     ("clf", LogisticRegression(max_iter=300))])  # fmt: skip
    search = GridSearchCV(pipe, {"clf__C": [0.1, 10.0]}, cv=2, n_jobs=2).fit(X, y)
    assert search.best_score_ > 0.9


def test_fit_export_and_predict(presets, tmp_path):
    from featx.export import export_classifier, load_exported
    from featx.fit import fit_head
    from featx.images import load_image
    from featx.predict import predict_files

    data = make_class_folders(tmp_path / "ds", n_train=6, n_test=2)
    cache = tmp_path / "cache"
    spec = FeatureSpec(presets["dinov2"], precision="float32")
    result, _ = fit_head("logreg", spec, data, cache_dir=cache)
    assert len(result.y_test) == 6 and result.features.startswith("tiny_dinov2")
    files = sorted((data / "test").rglob("*.png"))
    by_head = list(predict_files(files, "logreg", spec, data, cache_dir=cache))
    X = np.stack([load_image(f, (32, 32)) for f in files])
    with pytest.raises(SettingsError, match="ONNX converter cannot express this backbone: its ops Erfc"):
        export_classifier(tmp_path / "clf.onnx", "logreg", spec, data, cache_dir=cache)  # DINOv2's exact GELU
    assert not (tmp_path / "clf.onnx").exists() and not list(tmp_path.glob(".clf.onnx.*"))  # nothing left
    fit_head("logreg", FeatureSpec(presets["resnet"], precision="float32"), data, cache_dir=cache)
    for fmt, bb in (("keras", "dinov2"), ("onnx", "resnet")):
        spec = FeatureSpec(presets[bb], precision="float32")
        by_head = list(predict_files(files, "logreg", spec, data, cache_dir=cache))
        out = export_classifier(tmp_path / f"clf.{fmt}", "logreg", spec, data, cache_dir=cache)
        model = load_exported(out)  # .keras in safe mode: KerasHub's and featx's layers are registered
        got = model.predict_proba(X)
        np.testing.assert_allclose(got.max(1), [p.score for p in by_head], atol=1e-5)
        assert [model.class_names[i] for i in got.argmax(1)] == [p.label for p in by_head]


def test_one_line_errors(presets, tmp_path):
    with pytest.raises(SettingsError, match="did you mean 'dinov2_small'"):
        get_backbone("dinov2_smal")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SettingsError, match="is a folder but no KerasHub preset"):
        get_backbone(str(tmp_path / "empty"))
    text = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=8)  # fmt: skip
    text.save_to_preset(str(tmp_path / "tiny_bert"))
    with pytest.raises(SettingsError, match="takes no images"):
        get_backbone(str(tmp_path / "tiny_bert"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="Could not read the KerasHub preset folder"):
        get_backbone(str(broken))


def test_a_preset_that_needs_a_download_says_how_to_pass_a_folder(monkeypatch):
    from keras_hub.src.utils import preset_utils

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    with pytest.raises(WeightsError, match="on a machine without network.*--backbone FOLDER"):
        get_backbone("dinov2_small")


def test_the_backbones_command_lists_image_presets_from_the_registry(capsys):
    from featx.cli import main

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert {"dinov2_small", "clip_vit_base_patch16", "siglip_base_patch16_224", "vit_base_patch16_224_imagenet",
            "resnet_50_imagenet"} <= listed  # fmt: skip
    assert "bert_base_en" not in listed and "gemma3_1b" not in listed  # text-only presets are not backbones
