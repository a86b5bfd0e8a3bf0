"""The HTML report that `compare` writes: its content, and the page in a real browser."""

import base64
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders

from featx.compare import compare
from featx.report import MAX_MISCLASSIFIED

ROOT = Path(__file__).resolve().parent.parent
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


class Page(HTMLParser):
    """The elements of the page, as (tag, attrs, text-after) tuples."""

    def __init__(self, text):
        super().__init__()
        self.elements = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def find(self, tag, **attrs):
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    tiny = make_class_folders(tmp / "ds", n_train=10, n_test=6)
    results, paths = compare(["vgg19", "trunk"], ["logreg", "svm"], tiny, weights="none", size=32, task="full",
                             cache_dir=tmp / "c", reports_dir=tmp / "rep", reference=False)  # fmt: skip
    return results, paths, paths["html"].read_text()


def test_report_holds_the_table_the_matrices_the_mistakes_and_the_maps(report):
    results, paths, text = report
    page = Page(text)
    assert paths["html"].name == "index.html"
    # the table: one row per result, best first, with every column
    rows = re.findall(r"<tr><td data-sort=\"(\d+)\">", text)
    assert rows == [str(i) for i in range(1, len(results) + 1)] and len(results) == 4
    for column in ("accuracy", "macro-F1", "extract s", "fit s", "predict ms/img", "chosen parameters"):
        assert f">{column}</th>" in text
    assert all(r.extract_seconds and r.extract_seconds > 0 for r in results)
    # one confusion matrix per head and feature set
    confusions = page.find("figure", **{"class": "confusion"})
    assert sorted((c["data-head"], c["data-features"]) for c in confusions) == sorted(
        (r.head, r.features) for r in results
    )
    # the misclassified grid holds only misclassified images of the best result
    best = results[0]
    tiles = page.find("figure", **{"class": "miss"})
    wrong = np.flatnonzero(best.y_test != best.y_pred)
    assert len(tiles) == min(len(wrong), MAX_MISCLASSIFIED) > 0
    for t in tiles:
        i = int(t["data-index"])
        assert t["data-true"] != t["data-pred"] and int(t["data-true"]) == best.y_test[i]
        assert int(t["data-pred"]) == best.y_pred[i]
    # one map per feature set, one point per test image, coloured by its true class
    maps = re.findall(r'<figure class="mapfig" data-features="([^"]+)">(.*?)</figure>', text, re.S)
    assert sorted(f for f, _ in maps) == sorted({r.features for r in results})
    for _, svg in maps:
        labels = re.findall(r'<circle class="pt" data-label="(\d)"', svg)
        assert len(labels) == len(best.y_test) and sorted(map(int, labels)) == sorted(best.y_test.tolist())
    # every picture is embedded (a PNG in a data: URL), nothing is fetched
    imgs = page.find("img")
    assert len(imgs) == 2 + len(results) + len(tiles)  # accuracy/time, reliability, confusions, mistakes
    for im in imgs:
        assert im["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(im["src"].split(",", 1)[1])[:4] == b"\x89PNG"
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    # the settings that made the features, and the library versions
    assert text.count("<details") == 2 + len(results) and "random-init-seed0" in text and "scikit-learn" in text
    for section in ("Results", "Accuracy against fit time", "Learning curves", "Calibration",
                    "Per-class precision, recall and F1", "Confusion matrices", "Misclassified test images",
                    "Test embeddings in 2-D", "Feature settings", "Library versions"):  # fmt: skip
        assert f"<h2>{section}</h2>" in text


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_report_loads_in_a_real_browser_with_every_image(report, tmp_path):
    _, paths, text = report
    n_images = len(Page(text).find("img"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    res = subprocess.run([BROWSER, *flags, "--dump-dom", paths["html"].resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    body = re.search(r"<body[^>]*>", res.stdout)
    assert res.returncode == 0 and body, res.stderr[-2000:]
    # the page's own script counts the images that decoded, and records any script error
    assert f'data-images="{n_images}/{n_images}"' in body.group(0), body.group(0)
    assert "data-js-error" not in body.group(0)
    assert "Uncaught" not in res.stderr


def test_compare_from_the_command_line_prints_no_backend_noise(tmp_path):
    tiny = make_class_folders(tmp_path / "ds", n_train=4, n_test=2)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "compare", "--backbones", "vgg19", "--weights", "none", "--size", "32",
         "--heads", "logreg,svm,dense", "--n-jobs", "2", "--data", str(tiny), "--cache-dir", str(tmp_path / "c"),
         "--reports-dir", str(tmp_path / "rep")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "index.html" in res.stdout and (tmp_path / "rep" / "index.html").exists()
    for noise in ("absl::InitializeLog", "cuda drivers", "cuInit", "oneDNN", "cpu_feature_guard"):
        assert noise not in res.stderr, res.stderr


def test_a_report_that_cannot_be_written_whole_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from conftest import make_class_folders

    from featx import report as report_mod
    from featx.compare import compare

    data = make_class_folders(tmp_path / "ds", n_train=6, n_test=2)
    kw = dict(weights="none", cache_dir=tmp_path / "c", reports_dir=tmp_path / "rep", reference=False, task="full")
    _, first = compare(["trunk"], ["logreg"], data, **kw)
    before = {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_mod, "html_report", full_disk)  # the last file of the report fails
    with pytest.raises(OSError, match="No space left"):
        compare(["trunk"], ["centroid"], data, **kw)
    after = {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()}
    assert after == before  # every file of the first report, unchanged; no staging folder left


def test_two_hundred_classes_make_pictures_of_bounded_size(tmp_path):
    import json

    from PIL import Image

    from featx.compare import compare

    rng = np.random.default_rng(0)
    k, d = 200, 32
    centers = rng.normal(scale=2, size=(k, d))
    ytr, yte = np.repeat(np.arange(k), 3), np.repeat(np.arange(k), 1)
    path = tmp_path / "many.npz"
    np.savez(path, X_train=centers[ytr] + rng.normal(size=(len(ytr), d)), y_train=ytr,
             X_test=centers[yte] + rng.normal(size=(len(yte), d)), y_test=yte)  # fmt: skip
    _, paths = compare(heads=["centroid"], features=path, reports_dir=tmp_path / "rep")
    w, h = Image.open(paths["confusion"]).size
    assert w < 2000 and h < 2000  # the 20 most confused classes, not 200
    assert paths["confusion"].stat().st_size < 500_000 and paths["html"].stat().st_size < 5_000_000
    matrix = json.loads(paths["json"].read_text())["confusion"][0]["matrix"]
    assert len(matrix) == k and sum(map(sum, matrix)) == k  # the whole matrix is kept in the JSON
