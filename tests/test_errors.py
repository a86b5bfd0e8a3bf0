"""Every bad input the CLI can be given ends in one line on stderr and exit code 2; a bug in featx
ends in exit code 1 with its traceback kept."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders

from featx import cli
from featx.runtime import STARTUP_NOISE, filtered_native_stderr

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=3, n_test=1)


def run_main(capsys, *argv):
    """``featx ARGV`` in this process: (exit code, stderr lines)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors exit
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


VGG = ["--backbone", "vgg19", "--weights", "none", "--size", "32"]

# (arguments, what the one line says); TINY in the arguments is replaced by a tiny dataset's path.
BAD_INPUTS = {
    # wrong type / out of range, caught by the parser
    "batch size 0": (["extract", *VGG, "--batch-size", "0"], "--batch-size: must be a positive integer"),
    "batch size not a number": (["extract", "--batch-size", "many"], "--batch-size: must be a positive integer"),
    "negative seed": (["data", "--seed", "-1"], "--seed: must be an integer from 0"),
    "n-jobs 0": (["compare", "--n-jobs", "0"], "--n-jobs: must be a positive integer, or -1"),
    "epochs 0": (["pretrain", "--epochs", "0"], "--epochs: must be a positive integer"),
    "size not a number": (["extract", "--size", "big"], "--size: invalid int value"),
    "shard size 0": (["extract", "--cluster", "local", "--shard-size", "0"], "--shard-size: must be a positive integer or auto"),
    "workers 0": (["fit", "--cluster", "local", "--workers", "0"], "--workers: must be a positive integer"),
    # unknown names
    "unknown task": (["data", "--task", "all"], "--task: invalid choice: 'all'"),
    "unknown backbone": (["extract", "--backbone", "vit"], "Known: trunk and the"),
    "backbone in capitals": (["extract", "--backbone", "ResNet50"], "names are lower case: 'resnet50'"),
    "missing model file": (["extract", "--backbone", "no/such.keras"], "No Keras model file at"),
    "unknown backbone in a list": (["compare", "--backbones", "trunk,vit"], "Known: trunk and the"),
    "unknown pooling": (["extract", "--pooling", "median"], "--pooling: invalid choice"),
    "unknown dtype": (["extract", "--dtype", "int8"], "--dtype: invalid choice"),
    "unknown option": (["fit", "--heads", "logreg"], "unrecognized arguments: --heads"),
    "unknown command": (["train"], "invalid choice: 'train'"),
    "unknown head": (["fit", "--head", "kmeans"], "Unknown head. Known heads: dense, logreg"),
    "unknown heads": (["compare", "--heads", "foo"], "Unknown head. Known heads"),
    "unknown layer": (["extract", "--backbone", "trunk", "--layers", "conv9"], "Unknown layer 'conv9' for trunk"),
    "unknown head parameter": (["fit", "--head", "logreg", "--param", "foo=1"], "Unknown parameter 'foo' for head 'logreg'"),
    "not a scheduler address": (["fit", "--cluster", "my-cluster"], "Not a Dask scheduler address: 'my-cluster'"),
    "named weights of another backbone": (["extract", "--weights", "trained"], "weights for vgg19 must be 'imagenet'"),
    # bad values
    "size too small": (["extract", "--backbone", "trunk", "--size", "16"], "size must be an integer of at least 32"),
    "size of a fixed-size backbone": (["extract", "--backbone", "trunk", "--size", "64"], "only runs at 32x32"),
    "grid 0": (["fit", "--backbone", "trunk", "--grid", "0"], "grid must be an integer from 1 to 32"),
    "head parameter of the wrong type": (["fit", "--head", "svm", "--param", "C=abc"], "'C' parameter of LinearSVMHead must be a float"),
    "head parameter out of range": (["fit", "--head", "dense", "--param", "epochs=0"], "'epochs' parameter of DenseClassifier"),
    "head parameter without a value": (["fit", "--param", "C"], "looks like NAME=VALUE"),
    "compare parameter without a head": (["compare", "--param", "C=1"], "compare's --param is HEAD:NAME=VALUE"),
    "parameters of a head not compared": (["compare", "--data", "TINY", "--param", "lgreg:C=1"],
                                          "Parameters are given for head 'lgreg', which is not compared here"),
    "a trained trunk on too few classes": (["extract", "--backbone", "trunk", "--data", "TINY"],
                                           "has 3, too few (at least 4). Pass --weights none"),
    "an input size no memory holds": (["extract", *VGG[:4], "--size", "100000", "--data", "TINY"],
                                      "pass a smaller --size"),
    "a grid finer than the map": (["extract", "--backbone", "resnet50", "--weights", "none", "--size", "32",
                                   "--grid", "32", "--data", "TINY"], "grid 32 is finer than layer 'conv5_block3_out'"),
    "one weights file for two backbones": (["compare", "--backbones", "trunk,vgg19", "--weights", "FILE"],
                                           "One weights file cannot be the weights of 2 backbones"),
    # empty
    "empty layers": (["extract", "--layers", ""], "layers must be a non-empty list"),
    "no heads": (["compare", "--heads", ","], "No heads to fit"),
    "no backbones": (["compare", "--backbones", ""], "No backbones to compare"),
    # conflicting
    "a tuned parameter given by hand": (["fit", "--head", "logreg", "--tune", "--param", "C=1"], "both given and tuned"),
    "same in compare": (["compare", "--heads", "svm", "--tune", "--param", "svm:C=1"], "both given and tuned"),
    "workers without a cluster": (["compare", "--workers", "4"], "pass cluster='local' (--cluster local) too"),
    "workers of a running cluster": (["extract", "--cluster", "tcp://h:8786", "--workers", "2"], "cluster='local' only"),
    # paths
    "missing data": (["data", "--data", "/no/such/place"], "Dataset not found"),
    "missing weights file": (["extract", "--weights", "/no/such.weights.h5"], "path of a weights file that exists"),
    "predict before fit": (["predict", "--data", "TINY", "--head", "svm", "x.png"], "No svm head fitted"),
    "reports folder under a file": (["compare", "--data", "TINY", "--reports-dir", "FILE/reports"], "Not a directory"),
    "cache folder is a file": (["extract", *VGG, "--data", "TINY", "--cache-dir", "FILE"], "Not a directory"),
}


def test_verbose_after_the_command_shows_the_traceback_too(capsys):
    code, lines = run_main(capsys, "data", "--data", "/no/such/place", "-v")
    assert code == 2 and any("Traceback" in line for line in lines) and lines[-1].startswith("error: Dataset not found")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, capsys, tiny, tmp_path):
    args, message = BAD_INPUTS[case]
    (tmp_path / "file").write_text("not a folder")
    args = [a.replace("TINY", str(tiny)).replace("FILE", str(tmp_path / "file")) for a in args]
    if "--cache-dir" not in args:
        args += ["--cache-dir", str(tmp_path / "cache")]
    code, lines = run_main(capsys, *args)
    errors = [line for line in lines if not line.startswith("WARNING ")]  # logged warnings may come before
    assert code == 2, (case, lines)
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], (case, lines)
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize("bug", ["reshape", "type", "key", "runtime"])
def test_a_bug_in_featx_exits_1_and_points_to_its_traceback(bug, capsys, monkeypatch, tmp_path):
    import featx.data

    def broken(*args, **kwargs):  # a bug deep in featx: what the data command calls
        if bug == "reshape":
            np.zeros(2).reshape(3)  # a ValueError, which once passed for bad input
        elif bug == "type":
            len(5)
        elif bug == "key":
            {}["split"]
        raise RuntimeError("a bug")

    monkeypatch.setattr(featx.data, "load_dataset", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    code, lines = run_main(capsys, "data")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: featx hit a bug (") and "not a mistake of yours" in lines[0]
    [kept] = tmp_path.glob("featx-bug-*.txt")
    assert str(kept) in lines[0]
    text = kept.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text and "argv" in text
    code, lines = run_main(capsys, "-v", "data")  # -v: the traceback on stderr too
    assert code == 1 and lines[0].startswith("Traceback") and lines[-1].startswith("error: featx hit a bug")


def test_bad_input_from_python_is_featx_s_own_error_and_still_a_value_or_type_error():
    from featx.errors import ArgumentError, DataError, FeatxError, SettingsError
    from featx.options import as_options
    from featx.spec import as_spec

    with pytest.raises(ArgumentError) as info:
        as_spec(3.5)
    assert isinstance(info.value, TypeError) and isinstance(info.value, FeatxError)
    with pytest.raises(ArgumentError):
        as_options("fast")
    from featx.data import load_dataset

    with pytest.raises(DataError) as info:
        load_dataset("sample", "everything")
    assert isinstance(info.value, ValueError)
    from featx.curves import parse_train_sizes

    with pytest.raises(SettingsError):
        parse_train_sizes("0")


def test_cli_start_up_prints_featx_output_only():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "data"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("dataset      sample")
    assert res.stderr == "", res.stderr  # no oneDNN notice, no "Could not find cuda drivers", no absl line
    # and so for a program that imports featx, then TensorFlow through Keras, and runs an op
    code = "import featx, keras; print(float(keras.ops.sum(keras.ops.ones(3))))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "3.0\n" and res.stderr == "", res.stderr
    # a look-up before the import (PyTorch's compiler probes modules so) leaves the import quiet
    code = "import featx, importlib.util as u; assert u.find_spec('tensorflow'); import tensorflow; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "ok\n" and res.stderr == "", res.stderr


def test_start_up_filter_keeps_real_errors(capfd):
    with filtered_native_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"E0000 something real went wrong\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["E0000 something real went wrong", "from python"]
    assert STARTUP_NOISE.search("cpu_feature_guard.cc:227] This TensorFlow binary is optimized")


@pytest.mark.parametrize("args", [["data", "--data", "~nosuchuser/photos"], ["cache", "--cache-dir", "~nosuchuser/c"],
                                  ["predict", "--head", "~nosuchuser/clf.onnx", "x.jpg"]])  # fmt: skip
def test_a_path_in_the_home_of_an_unknown_user_is_one_line(args, capsys):
    from featx.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "home folder of a user this machine does not have" in err


def test_a_keras_backend_that_is_not_installed_is_one_line(monkeypatch, capsys):
    import importlib.util

    from featx.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # as in a fresh process, before Keras is imported
    assert main(["cache"]) == 2
    assert "KERAS_BACKEND=torch, but torch is not installed here" in capsys.readouterr().err


def test_onnx_export_under_jax_without_its_converter_fails_before_any_work(monkeypatch):
    import importlib.util

    import keras

    from featx import export
    from featx.errors import SettingsError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax2onnx" else real(name, *a))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(SettingsError, match="under the jax Keras backend needs jax2onnx"):
        export._check_installed("onnx")


def test_an_empty_cache_folder_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from featx.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["extract", "--backbone", "trunk", "--weights", "none", "--cache-dir", ""]) == 2
    assert "The cache folder is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no features/, heads/ or pixels/ in the current folder


def test_cache_calls_a_random_init_trunk_what_fit_calls_it(tmp_path, capsys):
    from featx.cli import main

    data = make_class_folders(tmp_path / "ds", n_train=4, n_test=2)
    common = ["--backbone", "trunk", "--weights", "none", "--data", str(data), "--task", "full",
              "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    assert main(["extract", *common]) == 0
    capsys.readouterr()
    assert main(["cache", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "trunk weights" not in out


def test_tune_with_too_few_images_and_an_empty_test_split_fail_before_any_work(tmp_path):
    from unittest import mock

    from featx import extract as extract_mod
    from featx.errors import DataError
    from featx.fit import fit_head

    one = make_class_folders(tmp_path / "one", n_train=1, n_test=1)
    with mock.patch.object(extract_mod, "_run", side_effect=AssertionError("features were made")):
        with pytest.raises(DataError, match=r"--tune cross-validates .* in 3 folds: every class needs 3 train images"):
            fit_head("logreg", "trunk", one, task="full", weights="none", tune=True, cache_dir=tmp_path / "c")
    from featx.data import Dataset, load_dataset

    full = load_dataset(make_class_folders(tmp_path / "ds", n_train=3, n_test=1))
    empty = full.X_test[:0]
    ds = Dataset("no-test", full.X_train, full.y_train, empty, full.y_test[:0], full.class_names, "no-test-fp",
                 "full", {})  # fmt: skip
    with mock.patch.object(extract_mod, "_run", side_effect=AssertionError("features were made")):
        with pytest.raises(DataError, match="The test split is empty"):
            fit_head("logreg", "trunk", ds, weights="none", cache_dir=tmp_path / "c")
