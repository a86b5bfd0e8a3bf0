"""Nothing lost, nothing silently wrong: damaged caches, interrupted forced runs, other trunk settings."""

from unittest import mock

import h5py
import numpy as np
import pytest
from conftest import make_class_folders

from featx import extract as extract_mod
from featx.errors import CacheError
from featx.extract import extract_features
from featx.fit import fit_head

FAST = dict(weights="none", size=32, batch_size=8, precision="float32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("integrity") / "ds", n_train=10, n_test=4)


def _damage(path, dataset="train/X", nbytes=4096):
    """Overwrite bytes inside a dataset's first chunk: the file keeps its size."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(offset + 64)
        fh.write(np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    assert path.stat().st_size == size


def test_a_feature_file_damaged_in_place_is_found_and_recomputed(tiny, tmp_path, caplog):
    fs = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    good = fs.load()
    _damage(fs.path)
    with pytest.raises(CacheError, match=rf"corrupt cache file {fs.path}.*run again with --force"):
        fs.load()
    caplog.clear()
    again = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)  # found damaged: made again
    out = caplog.text
    assert "is damaged" in out and "rebuilding it" in out and "features cached" in out
    for a, b in zip(good, again.load()):
        np.testing.assert_array_equal(a, b)


def test_a_head_is_never_fitted_on_damaged_features(tiny, tmp_path):
    res, _ = fit_head("logreg", "vgg19", tiny, cache_dir=tmp_path, **FAST)
    (feature_file,) = (tmp_path / "features").glob("*.h5")
    _damage(feature_file, "test/X")
    with mock.patch.object(extract_mod, "_run", wraps=extract_mod._run) as ran:
        again, _ = fit_head("logreg", "vgg19", tiny, cache_dir=tmp_path, **FAST)
    assert ran.call_count == 1  # the damage was found and the features made again, not used
    assert again.accuracy == res.accuracy


def test_an_interrupted_forced_run_keeps_the_complete_file(tiny, tmp_path):
    fs = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    before = fs.load()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with mock.patch.object(extract_mod, "embed", side_effect=interrupted), pytest.raises(KeyboardInterrupt):
        extract_features("vgg19", tiny, cache_dir=tmp_path, force=True, **FAST)
    assert fs.path.exists()
    with mock.patch.object(extract_mod, "_run", side_effect=AssertionError("recomputed")):
        kept = extract_features("vgg19", tiny, cache_dir=tmp_path, **FAST)
    for a, b in zip(before, kept.load()):
        np.testing.assert_array_equal(a, b)


def test_a_trunk_trained_with_other_settings_never_replaces_the_default_one(tmp_path, capsys):
    from featx.cli import main

    folder = make_class_folders(tmp_path / "ds", classes=("a", "b", "c", "d"), n_train=6, n_test=2)
    common = ["pretrain", "--data", str(folder), "--cache-dir", str(tmp_path / "c")]
    assert main(common) == 0
    (default,) = (tmp_path / "c" / "trunk").glob("*.keras")
    made = default.read_bytes()
    assert main([*common, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    other = next((tmp_path / "c" / "trunk").glob("*-epochs1-batch100.keras"))
    assert default.read_bytes() == made and other != default
    assert f"use it with --weights {other}" in out
    assert main(common) == 0  # the same settings again: reused, not retrained
    assert "trunk already trained with these settings" in capsys.readouterr().out
    assert default.read_bytes() == made
    assert main([*common, "--force"]) == 0
    assert "validation accuracy" in capsys.readouterr().out


def test_a_batch_larger_than_the_data_is_not_padded_to_its_size(tiny, tmp_path):
    big = extract_features("vgg19", tiny, cache_dir=tmp_path / "a", **{**FAST, "batch_size": 100_000})
    small = extract_features("vgg19", tiny, cache_dir=tmp_path / "b", **FAST)
    np.testing.assert_allclose(big.load()[0], small.load()[0], rtol=1e-5, atol=1e-5)


def test_a_batch_that_cannot_fit_in_memory_is_one_line_before_it_runs(monkeypatch):
    from featx import embed as embed_mod
    from featx import runtime
    from featx.errors import ResourceError
    from featx.extractor import build_extractor
    from featx.spec import FeatureSpec

    monkeypatch.setattr(runtime, "_REPORT", {"device": "cpu", "cpu_flags": []})
    monkeypatch.setattr(embed_mod, "physical_memory", lambda: 8 * 2**30)
    model = build_extractor(FeatureSpec("vgg19", weights="none", size=224, precision="float32"))
    X = np.zeros((1000, 32, 32, 3), np.uint8)
    with pytest.raises(ResourceError, match=r"a batch of 1000 images needs at least 2\d\.\d GiB .* has 8\.0 GiB: "
                                            r"pass --batch-size 1\d\d or less"):  # fmt: skip
        next(embed_mod.embed(model, X, batch_size=1000))
    embed_mod.check_memory(model, 32)  # 0.8 GiB: fine


def test_out_of_memory_with_a_batch_size_given_is_one_line():
    from featx.embed import embed
    from featx.errors import ResourceError

    class ResourceExhaustedError(Exception):
        pass

    class Model:
        layers = []

        def _flatten_layers(self, include_self=False):
            return []

        def predict_on_batch(self, batch):
            raise ResourceExhaustedError("OOM when allocating tensor")

    with pytest.raises(ResourceError, match="a batch of 8 images did not fit in memory .* pass a smaller --batch-size"):
        list(embed(Model(), np.zeros((20, 32, 32, 3), np.uint8), batch_size=8))


def test_an_input_size_that_cannot_fit_is_one_line_and_writes_nothing(tiny, tmp_path, monkeypatch):
    from featx import embed as embed_mod
    from featx import runtime
    from featx.errors import ResourceError

    monkeypatch.setattr(runtime, "_REPORT", {"device": "cpu", "cpu_flags": []})
    monkeypatch.setattr(embed_mod, "physical_memory", lambda: 8 * 2**30)
    with pytest.raises(ResourceError, match=r"one image needs at least \d+\.\d GiB .* pass a smaller --size"):
        extract_features("vgg19", tiny, cache_dir=tmp_path, **{**FAST, "size": 100_000})
    assert not list((tmp_path / "features").glob("*.h5"))


def test_a_grid_finer_than_the_map_or_an_absurd_width_is_refused_before_anything_runs(tiny, tmp_path):
    from featx.errors import SettingsError

    with pytest.raises(SettingsError, match=r"grid 32 is finer than layer 'conv5_block3_out' of resnet50, whose map "
                                            r"is 1x1 at size 32: use --grid 1 or less there"):  # fmt: skip
        extract_features("resnet50", tiny, cache_dir=tmp_path, grid=32, **FAST)
    with pytest.raises(SettingsError, match=r"embeddings 802,816 wide .* more than featx takes \(500,000\)"):
        extract_features("vgg19", tiny, cache_dir=tmp_path, **{**FAST, "size": 224}, layers=["block3_conv4"],
                         pooling="flatten")  # fmt: skip
    assert not list((tmp_path / "features").glob("*.h5"))


def test_a_trunk_file_given_to_compare_is_used(tmp_path):
    from featx.backbones.trunk import build_trunk_classifier
    from featx.compare import compare

    folder = make_class_folders(tmp_path / "ds", classes=("a", "b", "c", "d"), n_train=6, n_test=2)
    mine = tmp_path / "mytrunk.keras"
    build_trunk_classifier(5, seed=7).save(mine)
    with mock.patch("featx.backbones.trunk.pretrain_trunk", side_effect=AssertionError("trained a trunk")):
        results, _ = compare(["trunk"], ["logreg"], folder, weights=mine, reference=False, cache_dir=tmp_path / "c",
                             reports_dir=tmp_path / "r")  # fmt: skip
    assert results[0].features.startswith("trunk 32px max, mytrunk.keras")


def test_heads_fitted_on_other_features_are_other_files_and_predict_takes_the_one_asked_for(tiny, tmp_path):
    from featx.predict import predict_files

    _, p32 = fit_head("logreg", "vgg19", tiny, cache_dir=tmp_path, **FAST)
    _, p64 = fit_head("logreg", "vgg19", tiny, cache_dir=tmp_path, **{**FAST, "size": 64})
    assert p32 != p64 and p32.exists() and p64.exists()  # the second did not replace the first
    img = tiny / "test" / "cat" / "000.png"
    from featx import fit as fit_mod

    with mock.patch.object(fit_mod, "load_head", wraps=fit_mod.load_head) as loaded:
        (out,) = predict_files([img], "logreg", "vgg19", tiny, cache_dir=tmp_path, **{**FAST, "size": 64})
    assert out.error is None and loaded.call_args_list[0].args[0] == p64
    with pytest.raises(CacheError, match=r"No logreg head fitted on resnet50 .*features of .* yet"):
        list(predict_files([img], "logreg", "resnet50", tiny, cache_dir=tmp_path, **FAST))
    with pytest.raises(CacheError, match=r"No logreg head fitted on vgg19 48px .*there are logreg heads fitted on: ") as e:
        list(predict_files([img], "logreg", "vgg19", tiny, cache_dir=tmp_path, **{**FAST, "size": 48}))
    assert "vgg19 32px avg, random init, seed 0" in str(e.value) and "vgg19 64px avg, random init, seed 0" in str(e.value)


def test_a_class_folder_without_images_is_named_at_every_load(tmp_path, caplog):
    from featx.data import load_dataset

    folder = make_class_folders(tmp_path / "ds", n_train=4, n_test=2, split=False)
    (folder / "zebra").mkdir()
    (folder / "zebra" / "readme.txt").write_text("photos to come")
    for _ in range(2):  # decoded, then from the pixel cache
        caplog.clear()
        ds = load_dataset(str(folder), cache_dir=tmp_path / "c")
        assert [r.levelname for r in caplog.records if "class folders with no images, left out: zebra" in r.message] == ["WARNING"]
    assert ds.class_names == ("cat", "dog", "eel") and ds.info["empty class folders"] == "zebra"


def test_predict_on_a_folder_without_images_is_an_error(tiny, tmp_path):
    from featx.errors import DataError
    from featx.predict import predict_files

    fit_head("logreg", "vgg19", tiny, cache_dir=tmp_path, **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No image files in .*empty"):
        list(predict_files([tmp_path / "empty"], "logreg", "vgg19", tiny, cache_dir=tmp_path, **FAST))


def test_reference_rows_say_what_made_them(tmp_path):
    from featx.compare import compare

    folder = make_class_folders(tmp_path / "ds", classes=("a", "b", "c", "d"), n_train=6, n_test=2)
    results, _ = compare(["trunk"], ["logreg"], folder, weights="none", cache_dir=tmp_path / "c",
                         reports_dir=tmp_path / "r")  # fmt: skip
    notes = {r.features: r.note for r in results}
    assert notes["trunk 32px flatten, random init"].startswith("reference: the trunk's 800-d flatten output (random init)")
    assert "split-CIFAR" not in " ".join(notes.values())
