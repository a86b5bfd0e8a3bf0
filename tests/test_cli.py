import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for cmd in ("data", "extract", "fit", "compare", "predict", "pretrain", "cache"):
        assert cmd in out


def test_data_command_describes_sample():
    res = run_cli("data", "--task", "target")
    assert res.returncode == 0, res.stderr
    assert "4800 train, 1200 test" in res.stdout and "horse" in res.stdout


def test_bad_path_is_one_clear_line():
    res = run_cli("data", "--data", "/no/such/place")
    assert res.returncode == 2
    assert res.stderr.startswith("error: Dataset not found") and "Traceback" not in res.stderr
