import csv
import json

import numpy as np
import pytest
from conftest import make_class_folders
from PIL import Image

from featx.cache import read_features
from featx.compare import compare
from featx.errors import CacheError
from featx.fit import fit_head
from featx.persistence import load_head
from featx.predict import predict_files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=12, n_test=4)


def test_compare_writes_table_and_pictures(tiny, tmp_path):
    results, paths = compare(["vgg19", "trunk"], ["logreg", "svm", "dense"], tiny, weights="none", size=32,
                             cache_dir=tmp_path / "c", reports_dir=tmp_path / "rep", n_jobs=2, task="full",
                             reference=False)
    assert len(results) == 6
    accs = [r.accuracy for r in results]
    assert accs == sorted(accs, reverse=True)  # best first
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [(r["backbone"], r["head"]) for r in rows] == [(r.backbone, r.head) for r in results]
    assert {"accuracy", "macro_f1", "fit_seconds", "predict_ms_per_image"} <= set(rows[0])
    meta = json.loads(paths["json"].read_text())
    assert meta["classes"] == ["cat", "dog", "eel"] and meta["n_test"] == 12
    assert meta["results"][0]["accuracy"] == pytest.approx(results[0].accuracy, abs=1e-4)
    for kind in ("accuracy", "confusion"):
        img = Image.open(paths[kind])
        assert img.format == "PNG" and img.size[0] > 200
        assert np.asarray(img.convert("L")).std() > 10  # something is drawn


def _row(root, file) -> int:
    """The row of ``file`` (a path under ``root``) in its split of the features of ``root``."""
    from featx.data import load_dataset

    train, test = load_dataset(root).files
    name = file.relative_to(root).as_posix()
    return (train if name.startswith("train/") else test).index(name)


def test_compare_rejects_unknown_head_before_work(tiny, tmp_path):
    with pytest.raises(ValueError, match="Known heads"):
        compare(["vgg19"], ["kmeans"], tiny, weights="none", size=32, cache_dir=tmp_path)
    assert not (tmp_path / "features").exists()


def test_fit_saves_head_with_its_feature_record(tiny, tmp_path):
    res, path = fit_head("logreg", "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path,
                         params={"C": 0.5})
    assert path.suffix == ".skops"  # not a pickle
    est, rec = load_head(path)
    assert rec["params"] == {"C": 0.5} and est.C == 0.5
    assert rec["feature_settings"]["backbone"] == "vgg19" and rec["features"].endswith(".h5")
    assert rec["metrics"]["accuracy"] == pytest.approx(res.accuracy, abs=1e-4)
    _, _, X_test, y_test = read_features(rec["features"]).load()
    assert np.array_equal(est.predict(X_test), res.y_pred) and np.array_equal(res.y_test, y_test)
    assert res.accuracy == np.mean(res.y_pred == y_test) and res.fit_seconds > 0


def test_predict_images_with_a_bad_file(tiny, tmp_path):
    _, head_file = fit_head("logreg", "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path)
    good = [tiny / "test" / "dog" / "000.png", tiny / "train" / "eel" / "001.png"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = list(predict_files([*good, bad], "logreg", "vgg19", tiny, cache_dir=tmp_path, weights="none", size=32))
    by_file = {o[0]: o for o in out}
    assert "Cannot read" in by_file[str(bad)][3]
    # The saved head is the fitted one: it scores on the cached test features what fit measured.
    est, rec = load_head(head_file)
    X_train, y_train, X_test, y_test = read_features(rec["features"]).load()
    for g, X in zip(good, (X_test, X_train)):
        _, label, proba, err, kind = by_file[str(g)]
        row = _row(tiny, g)
        want = est.predict_proba(X[row : row + 1])[0]
        assert err is None and kind == "probability" and label == rec["class_names"][int(est.classes_[want.argmax()])]
        assert proba == pytest.approx(want.max(), rel=1e-5)
    assert est.score(X_test, y_test) == pytest.approx(rec["metrics"]["accuracy"], abs=1e-4)
    folder = list(predict_files([tiny / "test" / "cat"], "logreg", "vgg19", tiny, cache_dir=tmp_path, weights="none",
                                size=32))  # fmt: skip
    assert len(folder) == 4


@pytest.mark.parametrize("head", ["svm", "svm-rbf"])
def test_svm_heads_predict_a_calibrated_probability(head, tiny, tmp_path):
    res, path = fit_head(head, "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path)
    est, rec = load_head(path)
    assert est.probability and rec["params"]["probability"] is True
    # the calibration does not change the classifier: same predictions as without it
    plain, _ = fit_head(head, "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path, save=False)
    assert np.array_equal(res.y_pred, plain.y_pred)
    files = sorted((tiny / "test").rglob("*.png"))
    out = list(predict_files(files, head, "vgg19", tiny, cache_dir=tmp_path, weights="none", size=32))
    assert {p.score_name for p in out} == {"probability"}
    X_test = read_features(rec["features"]).load()[2]
    want = est.predict_proba(X_test[[_row(tiny, f) for f in files]])
    np.testing.assert_allclose([p.score for p in out], want.max(axis=1), rtol=1e-5)
    # a head saved without a calibration says its column is a margin
    fit_head(head, "vgg19", tiny, weights="none", size=32, cache_dir=tmp_path, params={"probability": False})
    out = list(predict_files(files, head, "vgg19", tiny, cache_dir=tmp_path, weights="none", size=32))
    assert {p.score_name for p in out} == {"margin"}


def test_predict_without_a_fitted_head_says_what_to_run(tiny, tmp_path):
    with pytest.raises(CacheError, match="python cli.py fit --head svm"):
        list(predict_files([tiny], "svm", "vgg19", tiny, cache_dir=tmp_path))


def test_the_table_fits_the_terminal_with_a_legend_of_feature_sets():
    from featx.compare import format_table
    from featx.fit import FitResult

    def row(features, head, acc, note=""):
        return FitResult(backbone="trunk", head=head, accuracy=acc, macro_f1=0.7, fit_seconds=2.5,
                         predict_ms_per_image=0.02, estimator=None, y_test=np.zeros(1), y_pred=np.zeros(1),
                         note=note, features=features)  # fmt: skip

    long = "trunk 32px max, trained, layers conv1+pool+flatten, grid 4, flip"
    results = [row(long, "dense", 0.79), row("trunk 32px flatten, trained", "svm", 0.70, "reference: split-CIFAR protocol"),
               row(long, "logreg", 0.75, "C=0.1 (cv 74.00%) and a long note that goes on and on and on")]  # fmt: skip
    wide = format_table(results, 200).splitlines()
    assert wide[2].startswith(long) and "[1]" not in "\n".join(wide)
    narrow = format_table(results, 95).splitlines()
    assert all(len(line) <= 95 for line in narrow)
    assert [line.split()[0] for line in narrow[2:5]] == ["[1]", "[2]", "[1]"]
    assert narrow[-2:] == [f"[1] {long}", "[2] trunk 32px flatten, trained"]
    assert "reference: sp" in narrow[3] and narrow[4].endswith("…")  # notes cut to the room left


def _residual_model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    x = keras.layers.Add(name="a1")([x, keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)])
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Add(name="a2")([x, keras.layers.Conv2D(8, 3, padding="same", name="c3")(x)])
    return keras.Model(inp, keras.layers.Conv2D(16, 1, name="top")(x))


def test_a_pretrained_cnn_gets_the_linear_probe_as_reference_without_a_second_pass(tiny, tmp_path):
    from featx.extract import extract_features
    from featx.spec import FeatureSpec

    path = tmp_path / "res.keras"
    _residual_model().save(path)
    spec = FeatureSpec(str(path), size=32)
    assert spec.layers == ("a1", "a2", "top")  # the ends of its two stages and its last layer
    results, paths = compare([str(path)], ["logreg"], tiny, size=32, cache_dir=tmp_path / "c",
                             reports_dir=tmp_path / "rep")  # fmt: skip
    ref = [r for r in results if "reference: linear probe" in r.note]
    assert len(results) == 2 and len(ref) == 1 and ref[0].features == "res.keras 32px avg, saved"
    assert len(list((tmp_path / "c" / "features").glob("*.h5"))) == 1  # one extraction: its columns were taken
    # the reference row is what the classic embedding alone gives, extracted on its own
    alone = fit_head("logreg", spec.replace(layers="classic"), tiny, cache_dir=tmp_path / "other")[0]
    assert alone.accuracy == ref[0].accuracy and (alone.y_pred == ref[0].y_pred).all()
    full, part = (extract_features(s, tiny, cache_dir=tmp_path / "other").load()[0]
                  for s in (spec, spec.replace(layers="classic")))  # fmt: skip
    np.testing.assert_allclose(full[:, spec.replace(layers="classic").columns_in(spec)], part, atol=1e-6)
    # a random init has no reference row (its default is the last layer already)
    assert FeatureSpec(str(path), size=32, weights="none").reference() is None


def test_a_head_file_copied_over_another_heads_name_is_refused(tiny, tmp_path):
    import shutil

    from featx.errors import CacheError

    kw = dict(weights="none", cache_dir=tmp_path / "c")
    _, logreg = fit_head("logreg", "trunk", tiny, **kw)
    _, svm = fit_head("svm", "trunk", tiny, **kw)
    _, other = fit_head("logreg", "trunk", tiny, layers=["flatten"], flip=False, **kw)
    files = sorted((tiny / "test").rglob("*.png"))[:2]
    shutil.copy(svm, logreg)  # an svm under the logreg's name
    with pytest.raises(CacheError, match="is a svm head, not logreg: it was copied or renamed over"):
        list(predict_files(files, "logreg", "trunk", tiny, **kw))
    shutil.copy(other, logreg)  # a logreg of other features under this one's name
    with pytest.raises(CacheError, match="fitted on trunk 32px flatten, random init, not trunk 32px max"):
        list(predict_files(files, "logreg", "trunk", tiny, **kw))
