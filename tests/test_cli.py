import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


def test_help_lists_commands():
    import re

    out = run_cli("--help").stdout
    listed = re.findall(r"^ {4}(\w+) {2,}\S", out, flags=re.M)  # the command column, not the description
    assert listed == ["data", "extract", "pretrain", "fit", "compare", "audit", "predict", "export", "backbones", "layers",
                      "cache"]


def test_data_command_describes_sample():
    res = run_cli("data", "--task", "target")
    assert res.returncode == 0, res.stderr
    assert "4800 train, 1200 test" in res.stdout and "horse" in res.stdout


def test_bad_path_is_one_clear_line():
    res = run_cli("data", "--data", "/no/such/place")
    assert res.returncode == 2
    assert res.stderr.startswith("error: Dataset not found") and "Traceback" not in res.stderr


def test_fit_then_predict_from_the_command_line(tmp_path, capsys):
    import shutil

    from conftest import make_class_folders

    from featx.cache import read_features
    from featx.cli import main
    from featx.persistence import load_head

    root = make_class_folders(tmp_path / "ds")
    cache = ["--cache-dir", str(tmp_path / "c")]
    code = main(["fit", "--head", "logreg", "--backbone", "vgg19", "--weights", "none", "--size", "32",
                 "--data", str(root), "--param", "C=0.5", *cache])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "logreg" in out and "accuracy" in out and "saved logreg head" in out
    shutil.copy(root / "test" / "cat" / "000.png", tmp_path / "x.png")
    (tmp_path / "broken.png").write_bytes(b"x")
    code = main(["predict", "--head", "logreg", "--backbone", "vgg19", "--weights", "none", "--size", "32",
                 "--data", str(root), *cache, str(tmp_path / "x.png"), str(tmp_path / "broken.png")])  # fmt: skip
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and header == "file\tclass\tprobability" and len(lines) == 2
    # x.png is test/cat/000.png, the first test image: its row of the cached features
    est, rec = load_head(next((tmp_path / "c" / "heads").glob("logreg-*.skops")))
    proba = est.predict_proba(read_features(rec["features"]).load()[2][:1])[0]
    name, label, score = lines[0].split("\t")
    assert name == str(tmp_path / "x.png") and label == rec["class_names"][int(est.classes_[proba.argmax()])]
    assert float(score) == pytest.approx(proba.max(), abs=6e-4)  # printed to 3 decimals
    assert "error: Cannot read" in lines[1]
    assert main(["cache", *cache]) == 0
    out = capsys.readouterr().out
    assert "vgg19" in out and "complete" in out
