"""Exported classifiers equal featx's predictions, run without featx; heads are saved without pickle."""

import fractions
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders

from featx.errors import CacheError, HeadError, SettingsError
from featx.export import export_classifier, exportable, load_exported
from featx.extractor import Extractor
from featx.fit import fit_head
from featx.heads import trusted_types
from featx.images import load_image
from featx.persistence import load_head
from featx.predict import predict_files
from featx.spec import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]
SPEC = FeatureSpec("trunk", weights="none")
HEAD_PARAMS = {"dense": {"epochs": 3}, "svm-rbf": {"max_exact_samples": 1, "n_components": 20}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("export") / "ds", n_train=6, n_test=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def images(tiny):
    files = sorted((tiny / "test").rglob("*.png"))
    return files, np.stack([load_image(f, (32, 32)) for f in files])


def _featx_proba(head, tiny, cache, X):
    est, rec = load_head(fit_head(head, SPEC, tiny, cache_dir=cache, params=HEAD_PARAMS.get(head))[1])
    ex = Extractor(SPEC, cache_dir=cache)
    return est.predict_proba(ex.transform(X)), [rec["class_names"][int(c)] for c in est.classes_]


def test_every_head_featx_fits_can_be_exported_or_says_why():
    assert exportable() == ["dense", "logreg", "linear", "svm", "svm-rbf", "centroid"]


@pytest.mark.parametrize("fmt", ["keras", "onnx"])
@pytest.mark.parametrize("head", ["logreg", "svm", "svm-rbf", "dense", "linear", "centroid"])
def test_exported_probabilities_equal_featx_predict_proba(head, fmt, tiny, cache, images, tmp_path):
    files, X = images
    want, names = _featx_proba(head, tiny, cache, X)
    out = export_classifier(tmp_path / f"clf.{fmt}", head, SPEC, tiny, cache_dir=cache)
    model = load_exported(out)  # .keras: loaded with safe_mode on
    got = model.predict_proba(X)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all() and model.class_names == names
    # predict takes the exported model as it takes the saved head: same classes, same probabilities
    by_head = list(predict_files(files, head, SPEC, tiny, cache_dir=cache))
    by_model = list(predict_files(files, str(out)))
    assert [p.label for p in by_head] == [p.label for p in by_model]
    np.testing.assert_allclose([p.score for p in by_head], [p.score for p in by_model], atol=1e-5)


def test_the_onnx_file_runs_without_featx(tiny, cache, images, tmp_path):
    files, _ = images
    fit_head("logreg", SPEC, tiny, cache_dir=cache)
    out = export_classifier(tmp_path / "classifier.onnx", "logreg", SPEC, tiny, cache_dir=cache)
    script = f"""
import sys; sys.modules["featx"] = None  # featx cannot be imported here
import json, numpy as np, onnxruntime as ort
from PIL import Image
sess = ort.InferenceSession({str(out)!r})
names = json.loads(sess.get_modelmeta().custom_metadata_map["class_names"])
for f in {[str(f) for f in files]!r}:
    probs = sess.run(None, {{"images": np.asarray(Image.open(f).convert("RGB"))[None]}})[0][0]
    print(f"{{f}}\\t{{names[probs.argmax()]}}\\t{{probs.max():.3f}}")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    featx = [f"{p.file}\t{p.label}\t{p.score:.3f}" for p in predict_files(files, "logreg", SPEC, tiny, cache_dir=cache)]
    assert res.stdout.strip().splitlines() == featx


def test_a_saved_model_folder_too(tiny, cache, images, tmp_path):
    files, X = images
    want, _ = _featx_proba("logreg", tiny, cache, X)
    out = export_classifier(tmp_path / "clf", "logreg", SPEC, tiny, cache_dir=cache, format="saved_model")
    assert (out / "saved_model.pb").exists() and json.loads((out / "assets" / "featx.json").read_text())["class_names"]
    with pytest.raises(SettingsError, match="is a TensorFlow SavedModel: loading one runs the graph it holds"):
        load_exported(out)  # a SavedModel is a program: never run without the user's say
    np.testing.assert_allclose(load_exported(out, trust_saved_model=True).predict_proba(X), want, atol=1e-5)


def test_a_saved_model_that_writes_a_file_never_runs_untrusted(tmp_path, capsys):
    import tensorflow as tf

    from featx.cli import main

    target = tmp_path / "pwned.txt"

    class Evil(tf.Module):
        @tf.function(input_signature=[[tf.TensorSpec([None, 32, 32, 3], tf.uint8)]])
        def serve(self, x):
            tf.io.write_file(str(target), "ran")
            return tf.ones([tf.shape(x[0])[0], 2])

    folder = tmp_path / "evil"
    tf.saved_model.save(Evil(), str(folder))
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "featx.json").write_text(json.dumps({"class_names": ["a", "b"], "image_shape": [32, 32],
                                                               "aspect": "crop"}))  # fmt: skip
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["predict", "--head", str(folder), str(img)]) == 2
    assert "--trust-saved-model" in capsys.readouterr().err and not target.exists()


def test_heads_that_cannot_be_exported_say_so_in_one_line(tiny, cache, tmp_path):
    fit_head("svm-rbf", SPEC, tiny, cache_dir=cache)  # exact SVC on 18 rows
    with pytest.raises(HeadError, match=r"exact SVC solver .* fit it with max_exact_samples=1 .* or export logreg, "
                                        r"svm or dense"):  # fmt: skip
        export_classifier(tmp_path / "x.onnx", "svm-rbf", SPEC, tiny, cache_dir=cache)
    fit_head("svm", SPEC, tiny, cache_dir=cache, params={"probability": False})
    with pytest.raises(HeadError, match="fitted without probability=True: it has margins"):
        export_classifier(tmp_path / "x.keras", "svm", SPEC, tiny, cache_dir=cache)
    fit_head("knn", SPEC, tiny, cache_dir=cache)
    with pytest.raises(HeadError, match="The knn head cannot be exported: featx exports dense, logreg, linear, svm, svm-rbf, "
                                        "centroid"):  # fmt: skip
        export_classifier(tmp_path / "x.onnx", "knn", SPEC, tiny, cache_dir=cache)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_refuses_to_overwrite_and_checks_the_format(tiny, cache, tmp_path):
    fit_head("logreg", SPEC, tiny, cache_dir=cache)
    out = tmp_path / "clf.keras"
    out.write_text("mine")
    with pytest.raises(SettingsError, match="exists: pass another path, or --force"):
        export_classifier(out, "logreg", SPEC, tiny, cache_dir=cache)
    assert out.read_text() == "mine"
    with pytest.raises(SettingsError, match="A onnx model is a file ending in .onnx"):
        export_classifier(tmp_path / "clf.keras", "logreg", SPEC, tiny, cache_dir=cache, format="onnx", force=True)
    export_classifier(out, "logreg", SPEC, tiny, cache_dir=cache, force=True)
    assert load_exported(out).class_names == ["cat", "dog", "eel"]
    mine = tmp_path / "my-project"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "work.py").write_text("precious")
    with pytest.raises(SettingsError, match="is a folder that is not a SavedModel: featx never replaces it"):
        export_classifier(mine, "logreg", SPEC, tiny, cache_dir=cache, format="saved_model", force=True)
    assert (mine / "src" / "work.py").read_text() == "precious"
    # a SavedModel folder with the user's own files in it: --force replaces nothing there
    sm = export_classifier(tmp_path / "sm", "logreg", SPEC, tiny, cache_dir=cache, format="saved_model")
    (sm / "NOTES.md").write_text("kept")
    (sm / "assets" / "log.txt").write_text("kept too")
    with pytest.raises(SettingsError, match=r"holds files featx did not write \(NOTES.md, assets/log.txt\)"):
        export_classifier(sm, "logreg", SPEC, tiny, cache_dir=cache, format="saved_model", force=True)
    assert (sm / "NOTES.md").read_text() == "kept" and (sm / "saved_model.pb").exists()
    (sm / "NOTES.md").unlink()
    (sm / "assets" / "log.txt").unlink()
    assert export_classifier(sm, "logreg", SPEC, tiny, cache_dir=cache, format="saved_model", force=True) == sm


def test_export_from_the_command_line(tiny, cache, images, tmp_path, capsys):
    from featx.cli import main

    files, _ = images
    args = ["--backbone", "trunk", "--weights", "none", "--data", str(tiny), "--cache-dir", str(cache)]

    def cli(*a):  # the command line, in this process
        code = main(list(a))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(a, code, out.out, out.err)

    fit_head("logreg", SPEC, tiny, cache_dir=cache)  # as `fit --head logreg` with these options does
    res = cli("export", "--head", "logreg", *args, "--format", "onnx", str(tmp_path / "c.onnx"))
    assert res.returncode == 0 and "exported logreg head" in res.stdout, res.stderr[-2000:]
    res = cli("export", "--head", "logreg", *args, str(tmp_path / "c.onnx"))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "--force" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    a = cli("predict", "--head", "logreg", *args, str(files[0]))
    b = cli("predict", "--head", str(tmp_path / "c.onnx"), str(files[0]))
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout, (a.stderr, b.stderr)


# ------------------------------------------------------------- saved without pickle
def test_a_tampered_skops_head_is_refused_naming_the_type(tiny, cache, images, tmp_path):
    import skops.io as sio

    files, _ = images
    _, path = fit_head("logreg", SPEC, tiny, cache_dir=cache)
    est, rec = load_head(path)
    evil = tmp_path / "evil.skops"
    sio.dump({"estimator": est, "record": rec, "payload": fractions.Fraction(1, 3)}, evil)
    with pytest.raises(CacheError, match=r"holds a type featx does not trust: fractions.Fraction\. It was not made"):
        load_head(evil)
    backup = path.read_bytes()
    try:
        path.write_bytes(evil.read_bytes())  # in place of the good head: predict refuses it too
        with pytest.raises(CacheError, match="fractions.Fraction"):
            list(predict_files(files, "logreg", SPEC, tiny, cache_dir=cache))
    finally:
        path.write_bytes(backup)
    assert all(t.startswith(("featx.heads.", "sklearn.calibration.")) for t in trusted_types())


def test_a_pickled_head_loads_only_when_trusted(tiny, cache, tmp_path):
    import joblib

    _, path = fit_head("logreg", SPEC, tiny, cache_dir=cache)
    est, rec = load_head(path)
    old = tmp_path / "old.joblib"
    joblib.dump({"estimator": est, "record": rec}, old)
    with pytest.raises(CacheError, match="is a pickle .* run again with --trust-pickle"):
        load_head(old)
    again, rec2 = load_head(old, trust_pickle=True)
    assert rec2 == rec and type(again) is type(est)


@pytest.mark.parametrize("name", ["garbage.onnx", "garbage.keras", "missing.onnx"])
def test_a_file_that_is_no_exported_classifier_is_one_line(tmp_path, name):
    if not name.startswith("missing"):
        (tmp_path / name).write_bytes(b"not a model at all")
    with pytest.raises(SettingsError, match="(is not a classifier exported by featx|Exported model not found)"):
        load_exported(tmp_path / name)


def test_a_damaged_or_inconsistent_onnx_export_is_refused(tiny, cache, images, tmp_path):
    import onnx

    files, X = images
    out = export_classifier(tmp_path / "clf.onnx", "logreg", SPEC, tiny, cache_dir=cache)
    good = load_exported(out).predict_proba(X)
    proto = onnx.load(out)
    # damage in place: the weights change, the file still loads in onnxruntime
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(init.raw_data)
    raw[:64] = bytes(64)
    init.raw_data = bytes(raw)
    onnx.save(proto, tmp_path / "damaged.onnx")
    with pytest.raises(SettingsError, match="its weights are not those it was exported with"):
        load_exported(tmp_path / "damaged.onnx")
    for change, message in (({"class_names": ["a", "b", "c", "d", "e", "f", "g", "h"]}, "names 8 classes for a model of 3"),
                            ({"image_shape": [0, 32]}, "image_shape \\[0, 32\\] is not two sides"),
                            ({"aspect": "fill"}, "aspect 'fill' is none of crop, pad, squash")):  # fmt: skip
        proto = onnx.load(out)
        props = {m.key: m.value for m in proto.metadata_props}
        meta = {**json.loads(props["featx"]), **change}
        onnx.helper.set_model_props(proto, {**props, "featx": json.dumps(meta)})
        onnx.save(proto, tmp_path / "meta.onnx")
        with pytest.raises(SettingsError, match=message):
            load_exported(tmp_path / "meta.onnx")
    np.testing.assert_allclose(load_exported(out).predict_proba(X), good)  # the export itself is untouched


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(tiny, cache, tmp_path, monkeypatch):
    import keras

    from featx.errors import ResourceError

    fit_head("logreg", SPEC, tiny, cache_dir=cache)

    class ResourceExhaustedError(Exception):  # what TensorFlow raises, as it words it
        pass

    def full(self, *args, **kwargs):
        raise ResourceExhaustedError("/tmp/x/variables/variables_temp; No space left on device")

    monkeypatch.setattr(keras.Model, "export", full)
    with pytest.raises(ResourceError, match="No space left on device to write .*sm"):
        export_classifier(tmp_path / "sm", "logreg", SPEC, tiny, cache_dir=cache, format="saved_model")
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder


@pytest.mark.slow  # a real kill -9
def test_an_export_killed_mid_write_leaves_nothing_the_next_one_keeps(tiny, cache, tmp_path):
    import subprocess as sp

    fit_head("logreg", SPEC, tiny, cache_dir=cache)
    dead = sp.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is gone
    stage = tmp_path / f".clf.onnx.{dead.pid}.abc123"
    stage.mkdir()
    (stage / "clf.onnx").write_bytes(b"half")
    alive = tmp_path / f".clf.onnx.{os.getpid()}.def456"  # another export running now: left alone
    alive.mkdir()
    export_classifier(tmp_path / "clf.onnx", "logreg", SPEC, tiny, cache_dir=cache)
    assert not stage.exists() and alive.exists()


def test_export_over_a_plain_file_or_folder_names_the_users_path(tiny, cache, tmp_path):
    fit_head("logreg", SPEC, tiny, cache_dir=cache)
    plain = tmp_path / "plainfile"
    plain.write_text("mine")
    with pytest.raises(SettingsError, match=r"plainfile is a file, and a SavedModel is a folder") as err:
        export_classifier(plain, "logreg", SPEC, tiny, cache_dir=cache, force=True)
    assert f".{plain.name}." not in str(err.value)  # the user's path, never a staging one
    assert plain.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["plainfile"]
    folder = tmp_path / "clf.onnx"
    folder.mkdir()
    with pytest.raises(SettingsError, match=r"clf.onnx is a folder that is not a SavedModel: featx never replaces it"):
        export_classifier(folder, "logreg", SPEC, tiny, cache_dir=cache, force=True)
