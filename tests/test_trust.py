"""Results a practitioner can trust: intervals, paired tests, repeats, learning curves, calibration,
embeddings from anywhere."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders

from featx.compare import compare, mark_vs_best
from featx.curves import balanced_subset, learning_curve, parse_train_sizes, summarize
from featx.errors import DataError, SettingsError
from featx.evaluation import FitResult, LabelledFeatures
from featx.heads import make_head
from featx.stats import accuracy_interval, calibration, mcnemar

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _result(y_test, y_pred, head="logreg", proba=None):
    return FitResult(backbone="b", head=head, accuracy=float(np.mean(y_test == y_pred)), macro_f1=0.0,
                     fit_seconds=0.1, predict_ms_per_image=0.01, estimator=None, y_test=np.asarray(y_test),
                     y_pred=np.asarray(y_pred), class_names=("a", "b"), proba=proba)  # fmt: skip


# ------------------------------------------------------------------ statistics
def test_the_interval_covers_the_estimate_and_narrows_with_more_test_images():
    widths = []
    for n in (50, 500, 5000):
        lo, hi = accuracy_interval(int(0.8 * n), n)
        assert lo < 0.8 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert accuracy_interval(10, 10)[1] == 1.0 and accuracy_interval(0, 10)[0] == 0.0
    # the same through a result: covers its accuracy
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pred = np.where(rng.random(300) < 0.85, y, 1 - y)
    r = _result(y, pred)
    lo, hi = r.accuracy_interval
    assert lo < r.accuracy < hi and r.row()["accuracy_ci_low"] == round(lo, 4)


def test_exact_coverage_is_at_least_95_percent():
    # Clopper-Pearson is conservative: over many simulated test splits it covers the truth >= 95 %
    rng = np.random.default_rng(1)
    hits = [lo <= 0.7 <= hi for lo, hi in (accuracy_interval(int(k), 200) for k in rng.binomial(200, 0.7, 400))]
    assert np.mean(hits) >= 0.95


def test_the_paired_test_calls_two_identical_heads_indistinguishable():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    pred = np.where(rng.random(400) < 0.8, y, 1 - y)
    a, b = _result(y, pred, "logreg"), _result(y, pred.copy(), "svm")
    mark_vs_best([a, b])
    assert b.p_vs_best == 1.0 and b.distinguishable is False and a.distinguishable is None
    assert b.row()["distinguishable_from_best"] == "no" and a.row()["distinguishable_from_best"] == "best"
    # one that is wrong on 80 more images is told apart
    worse = pred.copy()
    worse[np.flatnonzero(pred == y)[:80]] = 1 - y[np.flatnonzero(pred == y)[:80]]
    c = _result(y, worse, "knn")
    mark_vs_best([a, c])
    assert c.p_vs_best < 1e-6 and c.distinguishable is True
    assert mcnemar(pred == y, pred == y) == 1.0


def test_calibration_error_of_a_perfectly_calibrated_and_an_overconfident_head():
    rng = np.random.default_rng(3)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    y = np.zeros(n, int)
    right = rng.random(n) < conf  # right exactly as often as it says
    pred = np.where(right, 0, 1)
    proba = np.where(pred[:, None] == 0, np.c_[conf, 1 - conf], np.c_[1 - conf, conf])
    assert calibration(proba, y)["ece"] < 0.02
    over = np.where(pred[:, None] == 0, np.c_[np.ones(n), np.zeros(n)], np.c_[np.zeros(n), np.ones(n)])
    cal = calibration(over, y)
    assert cal["ece"] > 0.2 and sum(b["n"] for b in cal["bins"]) == n


# ------------------------------------------------------------ learning curves
def test_balanced_subsets_and_sizes():
    y = np.repeat([0, 1, 2], [10, 3, 7])
    idx = balanced_subset(y, 5, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 3, 5]  # a class with fewer gives all it has
    assert not np.array_equal(idx, balanced_subset(y, 5, seed=1)) and len(balanced_subset(y, "all", 0)) == 20
    assert parse_train_sizes("50,all,5") == [5, 50, "all"]
    with pytest.raises(ValueError, match="images per class"):
        parse_train_sizes("5,0")


def test_learning_curve_rises_with_labelled_images():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=1.0, size=(4, 30))
    y = rng.integers(0, 4, 1200)
    X = centers[y] + rng.normal(size=(1200, 30))
    rows = learning_curve(make_head("logreg"), LabelledFeatures(X[:1000], y[:1000], X[1000:], y[1000:]), [1, 10, "all"],
                          repeats=3)
    assert len(rows) == 9 and {r["repeat"] for r in rows} == {0, 1, 2}
    means = {s["per_class"]: s["accuracy_mean"] for s in summarize(rows)}
    assert means[1] < means[10] < means["all"]


# ------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def curves_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curves")
    import contextlib
    import io

    from featx.cli import main

    tiny = make_class_folders(tmp / "ds", n_train=12, n_test=6)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # the command line, in this process
        code = main(["compare", "--backbones", "trunk", "--weights", "none", "--heads", "knn,logreg,dense",
                     "--param", "dense:n_members=1", "--train-sizes", "2,5,all", "--repeats", "3", "--no-reference",
                     "--data", str(tiny), "--task", "full", "--cache-dir", str(tmp / "c"),
                     "--reports-dir", str(tmp / "rep")])  # fmt: skip
    res = subprocess.CompletedProcess("featx compare", code, out.getvalue(), err.getvalue())
    assert res.returncode == 0, res.stderr[-3000:]
    return res, tmp / "rep"


def test_compare_with_repeats_and_train_sizes_writes_the_curve(curves_run):
    res, rep = curves_run
    assert "95% CI" in res.stdout and "mean±sd" in res.stdout and "McNemar" in res.stdout
    rows = list(csv.DictReader(open(rep / "compare.csv")))
    assert len(rows) == 3
    for row in rows:
        assert float(row["accuracy_ci_low"]) <= float(row["accuracy"]) <= float(row["accuracy_ci_high"])
        assert row["repeats"] == "3" and row["accuracy_std"] != "" and row["distinguishable_from_best"] in ("best", "yes", "no")
    assert [r["distinguishable_from_best"] for r in rows].count("best") == 1
    curve = list(csv.DictReader(open(rep / "learning_curve.csv")))
    assert len(curve) == 3 * 3 * 3  # heads x sizes x repeats
    assert {r["per_class"] for r in curve} == {"2", "5", "all"} and {r["head"] for r in curve} == {"knn", "logreg", "dense"}
    meta = json.loads((rep / "compare.json").read_text())
    assert len(meta["learning_curve_summary"]) == 9 and meta["interval"].startswith("95% exact binomial")
    assert {c["head"] for c in meta["calibration"]} == {"knn", "logreg", "dense"}
    assert all(len(p["classes"]) == 3 for p in meta["per_class"])
    text = (rep / "index.html").read_text()
    assert 'id="learning-curve"' in text and 'id="reliability"' in text and 'id="curve-table"' in text
    assert (rep / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_the_learning_curve_page_loads_in_a_real_browser(curves_run, tmp_path):
    _, rep = curves_run
    text = (rep / "index.html").read_text()
    n = len(re.findall(r"<img ", text))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    out = subprocess.run([BROWSER, *flags, "--dump-dom", (rep / "index.html").resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    body = re.search(r"<body[^>]*>", out.stdout)
    assert out.returncode == 0 and body, out.stderr[-2000:]
    assert f'data-images="{n}/{n}"' in body.group(0) and "data-js-error" not in body.group(0)
    assert 'id="learning-curve"' in out.stdout


# ------------------------------------------------------- embeddings from anywhere
def _npz(path, **changes):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(3, 16))
    ytr, yte = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
    arrays = {"X_train": centers[ytr] + rng.normal(size=(90, 16)), "y_train": ytr,
              "X_test": centers[yte] + rng.normal(size=(30, 16)), "y_test": yte,
              "class_names": np.array(["ant", "bee", "cow"])}  # fmt: skip
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_compare_on_embeddings_made_elsewhere(tmp_path):
    path = _npz(tmp_path / "emb.npz")
    results, paths = compare(heads=["logreg", "centroid"], features=path, reports_dir=tmp_path / "rep")
    assert {r.head for r in results} == {"logreg", "centroid"} and results[0].accuracy > 0.9
    assert results[0].class_names == ("ant", "bee", "cow") and results[0].features == "emb.npz (16-d)"
    text = paths["html"].read_text()
    assert "No images to show" in text and "ant" in text
    # .h5 too, string labels too
    import h5py

    with h5py.File(tmp_path / "emb.h5", "w") as f:
        with np.load(path) as z:
            for k in ("X_train", "X_test"):
                f[k] = z[k]
            for k in ("y_train", "y_test"):
                f[k] = np.array(["ant", "bee", "cow"])[z[k]].astype("S")
    again, _ = compare(heads=["logreg"], features=tmp_path / "emb.h5", reports_dir=tmp_path / "rep2")
    assert again[0].accuracy == pytest.approx(next(r.accuracy for r in results if r.head == "logreg"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"y_test": None}, r"lacks y_test: it must hold X_train, y_train, X_test, y_test"),
    ({"y_train": np.zeros(89, int)}, r"X_train has 90 rows but y_train 89 labels"),
    ({"X_test": np.zeros((30, 15))}, r"X_train has 16 features and X_test 15"),
    ({"y_test": np.full(30, 7)}, r"integer labels must index class_names \(0 to 2\)"),
    ({"y_test": np.array(["ant"] * 30)}, r"y_train holds number labels and y_test text labels: both must be"),
    ({"class_names": np.array(["ant", "bee", "ant"])}, r"class_names names 'ant' more than once"),
    ({"y_train": np.array(["ant", "bee", "cow"] * 30), "y_test": np.array(["ant", "eel"] * 15),
      "class_names": np.array(["ant", "bee", "cow"])}, r"labels 'eel' are not in class_names"),
])  # fmt: skip
def test_bad_embedding_files_are_one_line(tmp_path, changes, message):
    path = _npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(DataError, match=message):
        compare(heads=["logreg"], features=path, reports_dir=tmp_path / "rep")
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "compare", "--features", str(path), "--heads", "logreg",
                          "--reports-dir", str(tmp_path / "rep")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_labels_are_classes_by_their_values(tmp_path):
    from featx.data import load_embeddings

    base = _npz(tmp_path / "base.npz", class_names=None)
    with np.load(base) as z:
        arrays = dict(z)
    # 1-based labels: no phantom class "0"; labels times 300: 3 classes, not 601; a label of 10**9: no MemoryError
    for scale, shift in ((1, 1), (300, 0), (10**9 // 2, 0)):
        path = tmp_path / f"s{scale}.npz"
        np.savez(path, **{**arrays, "y_train": arrays["y_train"] * scale + shift, "y_test": arrays["y_test"] * scale + shift})
        ds, (_, y_tr, _, y_te) = load_embeddings(path)
        assert ds.class_names == tuple(str(v * scale + shift) for v in (0, 1, 2))
        assert set(y_tr) == {0, 1, 2} and (y_tr == arrays["y_train"]).all() and (y_te == arrays["y_test"]).all()
    # HDF5 strings are bytes: decoded, for labels and class names alike
    import h5py

    with h5py.File(tmp_path / "b.h5", "w") as f:
        for k in ("X_train", "X_test"):
            f[k] = arrays[k]
        for k in ("y_train", "y_test"):
            f[k] = np.array(["ant", "bee", "cow"])[arrays[k]].astype("S")
        f["class_names"] = np.array(["ant", "bee", "cow"]).astype("S")
    ds, (_, y_tr, _, _) = load_embeddings(tmp_path / "b.h5")
    assert ds.class_names == ("ant", "bee", "cow") and (y_tr == arrays["y_train"]).all()


def test_bad_repeats_and_sizes_fail_before_any_work(tmp_path):
    with pytest.raises(SettingsError, match="repeats must be an integer from 1 to 100"):
        compare(heads=["logreg"], features=tmp_path / "x.npz", repeats=0)
    with pytest.raises(SettingsError, match="images per class"):
        compare(heads=["logreg"], features=tmp_path / "x.npz", train_sizes="5,-1")
