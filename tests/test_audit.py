"""The audit finds planted duplicates, leaks, flipped labels and outliers; few findings on clean data;
its page renders in a real browser; compare --exclude leaves the flagged images out; bad input is one line."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders, write_image

from featx.auditing import AuditSettings, audit, audit_features
from featx.errors import CacheError, DataError, HeadError, SettingsError
from featx.neighbors import NeighborSearch

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
QUIET = AuditSettings(search=NeighborSearch(progress=False), n_jobs=1)
FAST = dict(weights="none", size=32, batch_size=16, precision="float32")


def clusters(seed=0, n_classes=5, n_train=60, n_test=20, width=48):
    """Well-separated classes: centre ~ N(0, 1) per dimension plus N(0, 1) noise (within a class,
    the centred cosine of two rows is about 0.5: no two distinct rows are copies)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, width))

    def draw(n):
        y = np.repeat(np.arange(n_classes), n)
        return (centres[y] + rng.standard_normal((len(y), width))).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


def test_planted_faults_are_found_in_embeddings():
    X_train, y_train, X_test, y_test = clusters()
    rng = np.random.default_rng(1)
    X_train[7] = X_train[3]  # an exact duplicate within train
    X_train[40] = X_train[11] + 0.02 * rng.standard_normal(X_train.shape[1])  # a near duplicate (same class)
    X_train[100] = X_test[5] + 0.02 * rng.standard_normal(X_train.shape[1])  # a leak of a test image
    y_train[100] = y_test[5]
    flipped = np.array([20, 80, 140, 200, 260])
    y_train[flipped] = (y_train[flipped] + 2) % 5
    X_train[290] = 25 * rng.standard_normal(X_train.shape[1])  # far from everything
    res = audit_features(X_train, y_train, X_test, y_test, ("a", "b", "c", "d", "e"), settings=QUIET)
    dups = {(f.index, f.partner_index, f.exact) for f in res.of("duplicate")}
    assert {(7, 3, True), (40, 11, False)} <= dups and len(dups) == 2, dups
    assert [(f.split, f.index, f.partner_split, f.partner_index) for f in res.of("leak")] == [
        ("test", 5, "train", 100)
    ]
    labels = {f.index for f in res.of("label error") if f.split == "train"}
    assert set(flipped) <= labels and len(labels - set(flipped) - {290}) <= 2, labels
    flagged = next(f for f in res.of("label error") if f.index == 20)
    assert flagged.given == "c" and flagged.predicted == "a" and flagged.score < 0.5 < flagged.confidence
    assert 290 in {f.index for f in res.of("outlier")}
    assert res.exact_by == "embeddings" and "NumPy" in res.search or "FAISS" in res.search
    # what they change: the leaked test image is left out of the second row's scoring
    acc = {(a["train"], a["test"]): a for a in res.accuracy}
    assert acc[("all", "without leaked images")]["n_test"] == len(y_test) - 1
    assert acc[("without suspect labels", "all")]["n_train"] == len(y_train) - len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_data_gives_few_findings(seed):
    # the bound: no copies, and at most 1 % of the images flagged as label errors or outliers
    X_train, y_train, X_test, y_test = clusters(seed)
    res = audit_features(X_train, y_train, X_test, y_test, settings=QUIET, seed=seed)
    c = res.counts()
    assert c["leak"] == 0 and c["duplicate"] == 0, c
    assert c["label error"] + c["outlier"] <= 0.01 * (len(y_train) + len(y_test)), c


def test_exact_duplicates_are_judged_by_pixels_where_there_are_images():
    X_train, y_train, X_test, y_test = clusters(n_train=10, n_test=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8) for y in (y_train, y_test)]
    images[1][2] = images[0][4]  # same pixels, different embeddings: still an exact leak
    res = audit_features(X_train, y_train, X_test, y_test, settings=QUIET, images=images,
                         files=([f"tr{i}" for i in range(50)], [f"te{i}" for i in range(20)]))  # fmt: skip
    leak = res.of("leak")
    assert [(f.index, f.partner_index, f.exact, f.file, f.partner_file) for f in leak] == [
        (2, 4, True, "te2", "tr4")
    ]
    assert res.exact_by == "pixels"


def test_blocked_numpy_and_faiss_searches_give_the_same_audit():
    pytest.importorskip("faiss")
    X_train, y_train, X_test, y_test = clusters()
    X_train[9] = X_test[0]
    out = [
        audit_features(
            X_train,
            y_train,
            X_test,
            y_test,
            settings=AuditSettings(search=NeighborSearch(engine=e, block_rows=37, progress=False), n_jobs=1),
        )
        for e in ("numpy", "faiss")
    ]
    def key(res):
        return [(f.kind, f.split, f.index, f.partner_index, round(f.score, 4)) for f in res.findings]

    assert key(out[0]) == key(out[1]) and out[0].of("leak")


@pytest.mark.parametrize("bad, match", [
    (dict(threshold=1.5), "threshold"), (dict(threshold=-0.1), "threshold"), (dict(threshold=True), "threshold"),
    (dict(folds=1), "folds"), (dict(neighbors=0), "neighbors"), (dict(neighbors=10**6), "neighbors"), (dict(outlier_mads=0), "outlier_mads"),
])  # fmt: skip
def test_bad_audit_settings_are_one_line(bad, match):
    with pytest.raises(SettingsError, match=match):
        AuditSettings(**bad)


def test_a_head_gets_its_probabilities_where_they_are_optional():
    assert AuditSettings(head="svm").head_estimator().probability is True
    with pytest.raises(HeadError, match="Unknown head"):
        AuditSettings(head="forest").head_estimator()
    X_train, y_train, X_test, y_test = clusters(n_train=10, n_test=2)
    res = audit_features(X_train, y_train, X_test, y_test, settings=AuditSettings(head="svm", n_jobs=1,
                                                                                   search=NeighborSearch(progress=False)))  # fmt: skip
    assert len(res.accuracy) == 4


def test_data_an_audit_cannot_judge_is_one_line():
    X_train, y_train, X_test, y_test = clusters(n_train=10, n_test=2)
    with pytest.raises(DataError, match="at least 2 classes"):
        audit_features(X_train[:10], y_train[:10], X_test, y_test, settings=QUIET)
    with pytest.raises(DataError, match="test split of at least 2"):
        audit_features(X_train, y_train, X_test[:1], y_test[:1], settings=QUIET)
    with pytest.raises(DataError, match="fewer than the 5 cross-validation folds"):
        audit_features(X_train[::3], y_train[::3], X_test, y_test, settings=QUIET)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Class folders with a copied file (train -> test) and a train copy, audited before and after extraction
    (in-process), then from the CLI."""
    from featx.extract import extract_features

    tmp = tmp_path_factory.mktemp("audit")
    data = make_class_folders(tmp / "ds", n_train=8, n_test=3)
    shutil.copy(data / "train" / "cat" / "002.png", data / "test" / "cat" / "leaked.png")
    shutil.copy(data / "train" / "dog" / "001.png", data / "train" / "dog" / "copy.png")
    write_image(data / "train" / "eel" / "odd.png", 999)
    try:
        audit("trunk", data, "full", weights="none", cache_dir=tmp / "c", reports_dir=tmp / "r")
        missing = None
    except CacheError as exc:
        missing = str(exc)
    extract_features("trunk", data, "full", weights="none", cache_dir=tmp / "c", progress=False)
    common = ["--backbone", "trunk", "--weights", "none", "--data", str(data), "--task", "full",
              "--cache-dir", str(tmp / "c")]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "audit", *common, "--folds", "3", "--reports-dir",
                          str(tmp / "r")], capture_output=True, text=True, env=env)  # fmt: skip
    return data, tmp, missing, res


def test_audit_of_features_not_cached_yet_names_the_extract_to_run(audited):
    _, _, missing, _ = audited
    assert missing is not None and "No cached features" in missing
    assert "python cli.py extract --backbone trunk --data" in missing and "--weights none" in missing


def test_audit_from_the_command_line_writes_the_page_the_csv_and_a_summary(audited):
    data, tmp, _, res = audited
    assert res.returncode == 0, res.stderr[-3000:]
    for text in ("leaks (test images with a copy in train)", "duplicates within a split", "likely label errors",
                 "outliers", "test without leaked images", "train without suspect labels"):  # fmt: skip
        assert text in res.stdout
    rows = list(csv.DictReader(open(tmp / "r" / "audit.csv")))
    leak = [r for r in rows if r["kind"] == "leak"]
    assert [(r["file"], r["partner_file"], r["exact"]) for r in leak] == [
        ("test/cat/leaked.png", "train/cat/002.png", "True")
    ]
    dup = [r for r in rows if r["kind"] == "duplicate" and r["exact"] == "True"]
    assert [(r["file"], r["partner_file"]) for r in dup] == [("train/dog/copy.png", "train/dog/001.png")]
    page = (tmp / "r" / "audit.html").read_text()
    assert '<h2 id="leak">' in page and "test/cat/leaked.png" in page and "identical pixels" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_the_audit_page_renders_every_image_in_a_real_browser(audited, tmp_path):
    _, tmp, _, res = audited
    assert res.returncode == 0, res.stderr[-2000:]
    page = tmp / "r" / "audit.html"
    n_images = page.read_text().count("<img ")
    assert n_images >= 4
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    out = subprocess.run([BROWSER, *flags, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    body = re.search(r"<body[^>]*>", out.stdout)
    assert out.returncode == 0 and body, out.stderr[-2000:]
    assert f'data-images="{n_images}/{n_images}"' in body.group(0), body.group(0)
    assert "data-js-error" not in body.group(0)


def test_compare_exclude_leaves_out_what_the_audit_flagged(audited, tmp_path):
    from featx.compare import compare

    data, tmp, _, res = audited
    assert res.returncode == 0
    rows = list(csv.DictReader(open(tmp / "r" / "audit.csv")))
    n_test_out = len({r["index"] for r in rows if r["split"] == "test"})
    kw = dict(weights="none", cache_dir=tmp / "c", task="full", reference=False, n_jobs=1)
    full, _ = compare(["trunk"], ["centroid"], data, reports_dir=tmp_path / "a", **kw)
    out, paths = compare(
        ["trunk"], ["centroid"], data, reports_dir=tmp_path / "b", exclude=tmp / "r" / "audit.csv", **kw
    )
    assert len(out[0].y_test) == len(full[0].y_test) - n_test_out and n_test_out >= 1
    assert "audit.csv" in out[0].note and "without" in out[0].note
    # a list of files: the leaked test image alone, named by a longer path
    listed = tmp_path / "list.txt"
    listed.write_text(f"# leaked\n{data / 'test' / 'cat' / 'leaked.png'}\n")
    one, _ = compare(["trunk"], ["centroid"], data, reports_dir=tmp_path / "c", exclude=listed, **kw)
    assert (
        len(one[0].y_test) == len(full[0].y_test) - 1 and "without 0 train and 1 test images" in one[0].note
    )
    listed.write_text("test/cat/not-there.png\n")
    with pytest.raises(DataError, match="not-there.png"):
        compare(["trunk"], ["centroid"], data, reports_dir=tmp_path / "d", exclude=listed, **kw)


def test_an_audit_csv_of_other_data_without_files_is_refused(tmp_path):
    from featx.compare import compare

    X_train, y_train, X_test, y_test = clusters(n_train=10, n_test=4)
    np.savez(tmp_path / "e.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    (tmp_path / "a.csv").write_text("kind,split,index,file,data\nleak,test,3,,0123456789abcdef\n")
    with pytest.raises(DataError, match="made on other data"):
        compare(
            heads=["centroid"],
            features=tmp_path / "e.npz",
            exclude=tmp_path / "a.csv",
            reports_dir=tmp_path / "r",
        )
    # the audit of these embeddings, then compare without what it flagged: rows by index
    X_train[0] = X_test[1]
    np.savez(tmp_path / "e.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    result, paths = audit(features=tmp_path / "e.npz", reports_dir=tmp_path / "r", folds=3, n_jobs=1,
                          search=NeighborSearch(progress=False))  # fmt: skip
    assert [(f.index, f.exact) for f in result.of("leak")] == [(1, True)]
    res, _ = compare(
        heads=["centroid"], features=tmp_path / "e.npz", exclude=paths["csv"], reports_dir=tmp_path / "r"
    )
    assert len(res[0].y_test) == len(y_test) - len({f.index for f in result.findings if f.split == "test"})


def test_dataset_files_follow_the_rows_of_a_task(tmp_path):
    from featx.data import load_dataset

    data = make_class_folders(tmp_path / "ds", classes=("ant", "bee", "cow", "dog"), n_train=5, n_test=2)
    ds = load_dataset(data, "target", cache_dir=tmp_path / "c")
    assert len(ds.files[0]) == len(ds.y_train) and len(ds.files[1]) == len(ds.y_test)
    for split, y in ((0, ds.y_train), (1, ds.y_test)):
        for i in range(len(y)):
            assert ds.files[split][i].split("/")[1] == ds.class_names[y[i]]
