import subprocess
import sys
from pathlib import Path

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


def test_fit_then_predict_from_the_command_line(tmp_path):
    import shutil

    from conftest import make_class_folders

    root = make_class_folders(tmp_path / "ds")
    cache = ["--cache-dir", str(tmp_path / "c")]
    res = run_cli("fit", "--head", "logreg", "--backbone", "vgg19", "--weights", "none", "--size", "32",
                  "--data", str(root), "--param", "C=0.5", *cache)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "logreg" in res.stdout and "accuracy" in res.stdout and "saved logreg head" in res.stdout
    shutil.copy(root / "test" / "cat" / "000.png", tmp_path / "x.png")
    (tmp_path / "broken.png").write_bytes(b"x")
    res = run_cli("predict", "--head", "logreg", "--backbone", "vgg19", "--weights", "none", "--size", "32",
                  "--data", str(root), *cache,
                  str(tmp_path / "x.png"), str(tmp_path / "broken.png"))
    header, *lines = res.stdout.strip().splitlines()
    assert res.returncode == 1 and header == "file\tclass\tprobability" and len(lines) == 2
    assert lines[0].startswith(str(tmp_path / "x.png")) and lines[0].split("\t")[1] in ("cat", "dog", "eel")
    assert 0 < float(lines[0].split("\t")[2]) <= 1
    assert "error: Cannot read" in lines[1]
    res = run_cli("cache", *cache)
    assert "vgg19" in res.stdout and "complete" in res.stdout
