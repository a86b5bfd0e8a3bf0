"""Scale-out on Dask: a real LocalCluster of 2 worker processes, on the shipped sample or tiny data."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_class_folders

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # a real Dask cluster of worker processes

from featx import cluster as cluster_mod  # noqa: E402
from featx import shards as shards_mod  # noqa: E402
from featx.compare import compare  # noqa: E402
from featx.data import Dataset, fingerprint_arrays, load_dataset  # noqa: E402
from featx.errors import ClusterError, SettingsError  # noqa: E402
from featx.extract import extract_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRUNK = dict(weights="none", progress=False)


@pytest.fixture(scope="module")
def client():
    with cluster_mod.connect("local", 2) as c:
        yield c


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 3 classes x (10 train + 4 test) PNG files: workers load them from the shared cache folder
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=10, n_test=4)


def subset(n_train: int, n_test: int, task: str = "target") -> Dataset:
    """A seeded part of the shipped sample, every class in it, as an in-memory Dataset (the driver
    sends its rows)."""
    ds = load_dataset("sample", task)
    rng = np.random.default_rng(0)
    tr = np.sort(rng.permutation(len(ds.X_train))[:n_train])
    te = np.sort(rng.permutation(len(ds.X_test))[:n_test])
    parts = ds.X_train[tr], ds.y_train[tr], ds.X_test[te], ds.y_test[te]
    return Dataset(f"sample-part-{n_train}-{n_test}", *parts, class_names=ds.class_names, task=task,
                   fingerprint=fingerprint_arrays(*parts, ds.class_names))  # fmt: skip


def assert_same_file(a, b):
    """A sharded feature file is the single-process one: name, key, settings, layout, rows."""
    assert a.path.name == b.path.name and a.settings == b.settings
    for x, y in zip(a.load(), b.load()):
        assert x.dtype == y.dtype and x.shape == y.shape
        # workers run one thread each: float32 sums in another order, at most an ulp of float16 storage apart
        tol = 2e-3 if x.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)
    with h5py.File(a.path) as fa, h5py.File(b.path) as fb:
        skip = {"info"}
        assert {k: v for k, v in fa.attrs.items() if k not in skip} == {k: v for k, v in fb.attrs.items() if k not in skip}
        for s in ("train", "test"):
            assert dict(fa[s].attrs) == dict(fb[s].attrs)
            assert fa[f"{s}/X"].chunks == fb[f"{s}/X"].chunks and fa[f"{s}/X"].maxshape == fb[f"{s}/X"].maxshape
    ia, ib = dict(a.info), dict(b.info)
    for k in ("class_names", "image_shape", "spec", "data_info", "compiled"):
        assert ia[k] == ib[k]


@pytest.mark.parametrize("data", ["folder", "memory"])
def test_sharded_extract_equals_single_process(client, tiny, tmp_path, data, caplog):
    ds = load_dataset(tiny) if data == "folder" else subset(90, 30)
    one = extract_features("trunk", ds, cache_dir=tmp_path / "one", **TRUNK)
    many = extract_features("trunk", ds, cache_dir=tmp_path / "many", cluster=client, shard_size=8, **TRUNK)
    assert_same_file(one, many)
    n = len(ds.X_train) + len(ds.X_test)
    run = many.info["cluster"]
    assert run["shards"] == run["shards_run"] == -(-len(ds.X_train) // 8) + -(-len(ds.X_test) // 8)
    assert run["shards_reused"] == 0 and run["shard_size"] == 8 and run["workers"] == 2
    assert run["data_from"] == ("workers" if data == "folder" else "driver")
    assert set(many.info["seconds"]) == {"shards", "assemble"}
    assert not shards_mod.shard_dir(many.path).exists()  # shards removed once assembled
    assert n == sum(x.shape[0] for x in many.load()[::2])
    # a second run finds the complete file, with or without the cluster
    assert extract_features("trunk", ds, cache_dir=tmp_path / "many", cluster=client, **TRUNK).path == many.path
    assert "already cached" in caplog.text


def test_a_cached_result_starts_no_local_cluster(tiny, tmp_path, monkeypatch, caplog):
    fs = extract_features("trunk", tiny, cache_dir=tmp_path, **TRUNK)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started for a cached result")

    monkeypatch.setattr(cluster_mod, "connect", no_cluster)
    again = extract_features("trunk", tiny, cache_dir=tmp_path, cluster="local", workers=2, **TRUNK)
    assert again.path == fs.path and "features already cached" in caplog.text
    with pytest.raises(AssertionError, match="a cluster was started"):  # force: the cluster does the work
        extract_features("trunk", tiny, cache_dir=tmp_path, cluster="local", force=True, **TRUNK)


def test_sharded_vgg19_and_float16_storage(client, tiny, tmp_path):
    kw = dict(weights="none", size=32, dtype="float16", progress=False)
    one = extract_features("vgg19", tiny, cache_dir=tmp_path / "one", **kw)
    many = extract_features("vgg19", tiny, cache_dir=tmp_path / "many", cluster=client, shard_size=16, **kw)
    assert_same_file(one, many)
    assert many.load()[0].dtype == np.float16


def test_sharded_keras_hub_preset(client, tiny, tmp_path):
    pytest.importorskip("keras_hub")
    from hub_presets import make_presets

    folder = str(make_presets(tmp_path / "presets")["dinov2"])  # workers load the preset folder themselves
    kw = dict(precision="float32", progress=False)
    one = extract_features(folder, tiny, cache_dir=tmp_path / "one", **kw)
    many = extract_features(folder, tiny, cache_dir=tmp_path / "many", cluster=client, shard_size=16, **kw)
    assert_same_file(one, many)
    assert one.settings["backbone"] == "hub:tiny_dinov2"


def send_plugin(client, plugin) -> None:
    """Register ``plugin`` on the workers: its class, of this test module, travels by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        client.register_plugin(plugin)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def kill_worker(client, address: str) -> None:
    """SIGKILL the process of the worker at ``address`` (its nanny starts another)."""
    os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)


class HoldOneTask(distributed.WorkerPlugin):
    """On the workers: the first call of ``module.function`` whose arguments ``when`` accepts says
    so (a Dask Event) and holds until its worker is killed; where it runs again, it runs."""

    name = "featx-test-hold-one-task"

    def __init__(self, module, function, when):
        self.module, self.function, self.when = module, function, when

    def setup(self, worker):
        import importlib

        mod = importlib.import_module(self.module)
        real = self.real = getattr(mod, self.function)
        when = self.when

        def held(*args):
            reached = distributed.Event("featx-test-task-held")
            if when(*args) and not reached.is_set():
                distributed.Variable("featx-test-holder").set(distributed.get_worker().address)
                reached.set()
                distributed.Event("featx-test-never").wait()
            return real(*args)

        setattr(mod, self.function, held)

    def teardown(self, worker):
        import importlib

        setattr(importlib.import_module(self.module), self.function, self.real)

    @staticmethod
    def holder(client, what: str = "the task") -> str:
        """The address of the worker that holds the task, once one does."""
        assert distributed.Event("featx-test-task-held", client=client).wait(120), f"no worker took {what}"
        return distributed.Variable("featx-test-holder", client=client).get(timeout=30)

    @classmethod
    def remove(cls, client) -> None:
        """Off the workers, and ready to hold a task again."""
        client.unregister_worker_plugin(cls.name)
        distributed.Event("featx-test-task-held", client=client).clear()


def test_killed_worker_mid_run_same_result(client, tmp_path):
    ds = subset(3000, 600)
    reference = extract_features("trunk", ds, cache_dir=tmp_path / "one", **TRUNK)
    out = {}

    def run():
        try:
            out["fs"] = extract_features("trunk", ds, cache_dir=tmp_path / "many", cluster=client, shard_size=300,
                                         **TRUNK)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    send_plugin(client, HoldOneTask("featx.shards", "embed_shard",
                                    lambda job, split, start, stop, rows: split == "train" and start == 600))
    t = threading.Thread(target=run)
    try:
        t.start()
        holder = HoldOneTask.holder(client, "the shard")
        folder = next((tmp_path / "many" / "features").glob("*.shards"))
        assert [p for p in folder.glob("*-*-*.h5") if ".partial" not in p.name]  # a shard done before, one running
        kill_worker(client, holder)
        t.join(300)
    finally:
        HoldOneTask.remove(client)
    assert "error" not in out, out.get("error")
    assert_same_file(reference, out["fs"])
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it


DRIVER = textwrap.dedent(
    """
    import sys, featx
    from featx.extract import extract_features
    sys.path.insert(0, sys.argv[3])
    from test_cluster import subset
    extract_features("trunk", subset(3000, 600), cache_dir=sys.argv[2], cluster=sys.argv[1], shard_size=300,
                     weights="none", progress=False)
    """
)


def test_killed_driver_reuses_complete_shards(client, tmp_path):
    cache_dir = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, client.scheduler.address, str(cache_dir),
                             str(ROOT / "tests")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen, deadline = [], time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        folder = next((cache_dir / "features").glob("*.shards"), None)
        seen = sorted(folder.glob("*-*-*.h5")) if folder else []
        seen = [p for p in seen if ".partial" not in p.name]
        if len(seen) >= 3:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()[-3000:]
    assert 3 <= len(seen) < 14 and not list((cache_dir / "features").glob("*-????????????????.h5"))
    done_before = len([p for p in folder.glob("*-*-*.h5") if ".partial" not in p.name])
    fs = extract_features("trunk", subset(3000, 600), cache_dir=cache_dir, cluster=client, shard_size=300, **TRUNK)
    run = fs.info["cluster"]
    assert run["shards"] == 12 and run["shards_run"] + run["shards_reused"] == 12
    # every shard complete when the driver died was reused, not run again
    assert run["shards_reused"] >= done_before >= 3 and run["shards_run"] <= 12 - done_before
    assert_same_file(extract_features("trunk", subset(3000, 600), cache_dir=tmp_path / "one", **TRUNK), fs)


def test_other_settings_never_reuse_shards(client, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(shards_mod, "remove_shards", lambda folder: None)  # keep A's shard files
    a = extract_features("trunk", tiny, cache_dir=tmp_path, cluster=client, shard_size=8, **TRUNK)
    b_kw = dict(TRUNK, grid=2)
    b_ref = extract_features("trunk", tiny, cache_dir=tmp_path / "ref", **b_kw)
    folder_b = shards_mod.shard_dir(tmp_path / "features" / b_ref.path.name)
    folder_b.mkdir(parents=True)
    copied = 0
    for p in shards_mod.shard_dir(a.path).glob("*-*-*.h5"):  # A's complete shards under B's names
        (folder_b / p.name).write_bytes(p.read_bytes())
        copied += 1
    assert copied >= 6
    b = extract_features("trunk", tiny, cache_dir=tmp_path, cluster=client, shard_size=8, **b_kw)
    assert b.info["cluster"]["shards_reused"] == 0 and b.info["cluster"]["shards_run"] == copied
    assert_same_file(b_ref, b)


def test_compare_on_the_cluster_gives_the_local_table(client, tmp_path):
    ds = subset(400, 150)
    kw = dict(heads=["logreg", "svm", "dense"], reference=False, weights="none", params={"dense": {"epochs": 3}})
    local, _ = compare(["trunk"], data=ds, cache_dir=tmp_path / "a", reports_dir=tmp_path / "ra", **kw)
    remote, paths = compare(["trunk"], data=ds, cache_dir=tmp_path / "b", reports_dir=tmp_path / "rb",
                            cluster=client, **kw)  # fmt: skip

    def table(results):
        return sorted((r.features, r.head, round(r.accuracy, 6), round(r.macro_f1, 6)) for r in results)

    assert table(local) == table(remote) and len(remote) == 3
    assert paths["html"].exists()


def test_heads_are_fitted_on_the_workers(client, tmp_path, monkeypatch):
    from featx import evaluation as fit_mod

    where = []
    real = fit_mod.evaluate_head

    def spy(*a, **k):  # runs where joblib sends it: records the process
        r = real(*a, **k)
        r.note = f"pid {os.getpid()}"
        return r

    monkeypatch.setattr(fit_mod, "evaluate_head", spy)
    res, _ = compare(["trunk"], ["logreg", "dense"], data=subset(200, 60), reference=False, weights="none",
                     params={"dense": {"epochs": 2}}, cache_dir=tmp_path, reports_dir=tmp_path / "r", cluster=client)  # fmt: skip
    worker_pids = set(client.run(os.getpid).values())
    where = {int(r.note.split()[1]) for r in res}
    assert where <= worker_pids and os.getpid() not in where


def test_worker_that_cannot_see_the_cache_folder(client, tmp_path):
    folder = tmp_path / "x.shards"
    folder.mkdir()
    (folder / shards_mod._PROBE).write_text("another driver's token")
    job = {"shard_dir": str(folder), "cache_dir": str(tmp_path), "token": "ours", "key": "k"}
    fut = client.submit(shards_mod.embed_shard, job, "train", 0, 8, pure=False)
    with pytest.raises(ClusterError, match=r"on worker tcp://.*cannot see the cache folder"):
        fut.result(timeout=60)


def test_worker_that_cannot_build_the_model(client, tiny, tmp_path):
    # the weights file is on the driver's disk when it names it, gone when the worker builds the model
    from featx.extractor import Extractor
    from featx.spec import FeatureSpec

    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"not weights")
    spec = FeatureSpec("vgg19", weights=str(weights), size=32)
    folder = tmp_path / "s.shards"
    folder.mkdir()
    (folder / shards_mod._PROBE).write_text("t")
    job = {"shard_dir": str(folder), "cache_dir": str(tmp_path), "token": "t", "key": "k", "batch_size": 8,
           "data": None, "extractor": Extractor(spec)}  # fmt: skip
    weights.unlink()
    rows = (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    fut = client.submit(shards_mod.embed_shard, job, "train", 0, 4, rows, pure=False)
    with pytest.raises(ClusterError, match=r"on worker tcp://\S+ \(.*\): .*w\.weights\.h5"):
        fut.result(timeout=120)  # a hang would be a TimeoutError, not this one line
    assert fut.status == "error"


@pytest.mark.parametrize("bad", ["foo", "tcp://", "tcp://host", "host:99999", "http//x:1", 8786, ["local"]])
def test_bad_cluster_names(bad):
    with pytest.raises(SettingsError, match="scheduler address|cluster must be"):
        cluster_mod.check_cluster(bad)


@pytest.mark.parametrize("kw", [dict(workers=2), dict(cluster="tcp://h:8786", workers=2),
                                dict(cluster="local", workers=0), dict(cluster="local", shard_size=0)])  # fmt: skip
def test_bad_run_options_fail_before_any_work(kw, tmp_path):
    with pytest.raises(SettingsError):
        extract_features("trunk", "no/such/data", cache_dir=tmp_path, **kw)


def test_unreachable_scheduler_fails_fast(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT", 2)
    t0 = time.time()
    with pytest.raises(ClusterError, match=f"No Dask scheduler answered at tcp://127.0.0.1:{port} within 2 s"):
        extract_features("trunk", "no/such/data", cluster=f"tcp://127.0.0.1:{port}")
    assert time.time() - t0 < 30


def test_something_else_at_the_address_is_one_line_not_a_hang(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(100):  # until it listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        t0 = time.time()
        with pytest.raises(ClusterError, match=f"Something listens at tcp://127.0.0.1:{port}, but it is not a Dask "
                                               "scheduler"):  # fmt: skip
            extract_features("trunk", "no/such/data", cluster=f"tcp://127.0.0.1:{port}")
        assert time.time() - t0 < 30
    finally:
        web.kill()
        web.wait()


def test_connect_to_a_scheduler_by_address(client, tiny, tmp_path, caplog):
    fs = extract_features("trunk", tiny, cache_dir=tmp_path, cluster=client.scheduler.address, **TRUNK)
    assert f"Dask scheduler {client.scheduler.address}, 2 workers" in caplog.text and fs.info["cluster"]["workers"] == 2


def test_pipeline_predicts_over_a_dask_array(client, tmp_path):
    import dask.array as da
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from featx import FeatureExtractor
    from featx.cache import EmbeddingCache

    ds = subset(300, 120)
    pipe = make_pipeline(FeatureExtractor("trunk", weights="none", cache_dir=tmp_path, progress=False),
                         LogisticRegression(max_iter=300))  # fmt: skip
    pipe.fit(ds.X_train, ds.y_train)
    images = da.from_array(ds.X_test, chunks=(30, 32, 32, 3))
    labels = images.map_blocks(pipe.predict, drop_axis=[1, 2, 3], dtype=np.int64)
    got = labels.compute()  # on the cluster: each worker embeds its blocks
    np.testing.assert_array_equal(got, pipe.predict(ds.X_test))
    # the workers wrote their blocks to the shared per-image cache
    ext = pipe[0]
    cache = EmbeddingCache(ext.settings_, ext.n_features_out_, cache_dir=tmp_path)
    assert len(cache) == 300 + 120


def test_gpu_workers_each_see_one_gpu():
    # one worker process per GPU id, each with CUDA_VISIBLE_DEVICES set to it (runs on a CPU too)
    with cluster_mod.gpu_cluster(["0", "1"]) as lc, distributed.Client(lc) as c:
        c.wait_for_workers(2, timeout=60)
        seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["0", "1"]


def test_without_a_cluster_dask_is_never_imported(tiny, tmp_path):
    code = textwrap.dedent(
        """
        import sys
        from featx.cli import main
        rc = main(["extract", "--backbone", "trunk", "--weights", "none", "--data", sys.argv[1],
                   "--cache-dir", sys.argv[2]])
        print("rc", rc, "dask" in sys.modules, "distributed" in sys.modules)
        """
    )
    res = subprocess.run([sys.executable, "-c", code, str(tiny), str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)  # fmt: skip
    assert res.stdout.strip().splitlines()[-1] == "rc 0 False False", res.stderr[-2000:]


def test_cli_cluster_local(tiny, tmp_path):
    res = subprocess.run([sys.executable, "cli.py", "extract", "--backbone", "trunk", "--weights", "none", "--data",
                          str(tiny), "--cache-dir", str(tmp_path), "--cluster", "local", "--workers", "1",
                          "--shard-size", "16"], capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "local Dask cluster, 1 CPU worker; dashboard" in res.stdout
    assert "3 shards of up to 16 images on 1 worker" in res.stdout
    assert "distributed." not in res.stderr  # Dask's own INFO log stays off the screen without -v
    [path] = (tmp_path / "features").glob("trunk-*.h5")
    with h5py.File(path) as f:
        assert json.loads(f.attrs["info"])["cluster"]["shards_run"] == 3


# ------------------------------------------------------------------ heads fitted from a cache on the workers
@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    """A float16 HDF5 file of 3-class rows, as a feature cache stores them, sorted by class."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = np.sort(rng.integers(0, 3, 2000))
    X = (centers[y] + rng.normal(scale=2.0, size=(2000, 16))).astype(np.float16)
    path = tmp_path_factory.mktemp("stream") / "features.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
    return path


@pytest.mark.parametrize("head, params, task", [("centroid", {}, "_part"), ("knn", {"storage": "float16"}, "_part"),
                                                ("dense", {"n_members": 2, "epochs": 2}, "_member_in_blocks"),
                                                ("logreg", {}, "_local_epoch"), ("svm", {}, "_local_epoch")])  # fmt: skip
def test_a_head_fitted_on_the_workers_from_the_file_equals_one_fitted_here(head, params, task, feature_file, client,
                                                                          monkeypatch):  # fmt: skip
    from distributed import get_task_stream

    from featx.cluster_fit import fit_on_cluster
    from featx.heads import HEADS, make_head
    from featx.heads.sgd import Minibatch
    from featx.streaming import fit_in_blocks

    if task == "_local_epoch":  # 10 rounds of tasks, not the 250 epochs that few rows would get
        monkeypatch.setattr(HEADS[head], "MINIBATCH", Minibatch(epochs=10, batch_size=64, min_steps=0))
    with h5py.File(feature_file) as f:
        X, y = f["X"], f["y"]
        here = fit_in_blocks(make_head(head, **params), X, y, block_rows=300, progress=False)
        with get_task_stream(client) as ts:
            there = fit_on_cluster(make_head(head, **params), X, y, client, block_rows=300, progress=False)
        Xq, yq = np.asarray(X[::7], dtype=np.float32), y[::7]
    ran = {t["key"].split("-")[0] for t in ts.data}
    workers = {t["worker"] for t in ts.data}
    assert task in ran, ran
    assert len(workers) == 2, workers  # both workers took a part
    if task == "_local_epoch":  # one model trained on both workers' shares, averaged each epoch: SGD's noise
        assert np.mean(there.predict(Xq) == here.predict(Xq)) > 0.9
        assert abs(there.score(Xq, yq) - here.score(Xq, yq)) < 0.03, (there.score(Xq, yq), here.score(Xq, yq))
        return
    np.testing.assert_allclose(there.predict_proba(Xq), here.predict_proba(Xq), atol=1e-6)
    if head == "knn":
        np.testing.assert_array_equal(there.train_, here.train_)
        np.testing.assert_array_equal(there.labels_, here.labels_)
    if head == "centroid":
        np.testing.assert_allclose(there.centroids_, here.centroids_, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("head, module, function, when", [
    ("centroid", "featx.cluster_fit", "_part", lambda est, X, y, classes, start, stop: start == 900),
    ("logreg", "featx.heads.sgd", "_local_epoch", lambda *args: args[-3] == 3 and args[-1] == 1),
])  # fmt: skip
def test_a_worker_killed_during_a_fit_on_the_workers_same_head(head, module, function, when, feature_file, client,
                                                               monkeypatch):  # fmt: skip

    from featx.cluster_fit import fit_on_cluster
    from featx.heads import HEADS, make_head
    from featx.heads.sgd import Minibatch

    monkeypatch.setattr(HEADS["logreg"], "MINIBATCH", Minibatch(epochs=6, batch_size=64, min_steps=0))
    with h5py.File(feature_file) as f:
        X, y = f["X"], f["y"]
        unharmed = fit_on_cluster(make_head(head), X, y, client, block_rows=300, progress=False)
        Xq = np.asarray(X[::7], dtype=np.float32)
        out = {}

        def run():
            try:
                out["head"] = fit_on_cluster(make_head(head), X, y, client, block_rows=300, progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                out["error"] = exc

        send_plugin(client, HoldOneTask(module, function, when))
        t = threading.Thread(target=run)
        try:
            t.start()
            kill_worker(client, HoldOneTask.holder(client))
            t.join(300)
        finally:
            HoldOneTask.remove(client)
            client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    assert "error" not in out, out.get("error")
    # Dask ran the lost worker's task again on a worker alive: the same head as a run without the kill
    np.testing.assert_allclose(out["head"].predict_proba(Xq), unharmed.predict_proba(Xq), atol=1e-5)


class KillEveryWorker(distributed.WorkerPlugin):
    """On the workers: ``featx.cluster_fit._part`` on the block at row 900 ends its worker's process."""

    name = "featx-test-kill-every-worker"

    def setup(self, worker):
        import featx.cluster_fit as cf

        real = self.real = cf._part

        def deadly(estimator, X, y, classes, start, stop):
            if start == 900:
                os._exit(1)
            return real(estimator, X, y, classes, start, stop)

        cf._part = deadly

    def teardown(self, worker):
        import featx.cluster_fit as cf

        cf._part = self.real


@pytest.mark.slow
def test_a_task_that_kills_every_worker_is_one_line(feature_file):
    import dask

    from featx.cluster_fit import fit_on_cluster
    from featx.heads import make_head

    # a cluster of its own (workers die here), whose scheduler gives a task up after its second lost worker
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), cluster_mod.connect("local", 2) as client:
        send_plugin(client, KillEveryWorker())
        with h5py.File(feature_file) as f, pytest.raises(ClusterError, match="lost every worker that ran it") as err:
            fit_on_cluster(make_head("centroid"), f["X"], f["y"], client, block_rows=300, progress=False)
    assert "\n" not in str(err.value) and "centroid" in str(err.value).lower()


@pytest.mark.slow
def test_a_cluster_closed_during_a_fit_is_one_line(feature_file):

    from featx.cluster_fit import fit_on_cluster
    from featx.heads import make_head

    out = {}
    with cluster_mod.connect("local", 2) as client, h5py.File(feature_file) as f:  # a cluster of its own: closed here

        def run():
            try:
                out["head"] = fit_on_cluster(make_head("centroid"), f["X"], f["y"], client, block_rows=300,
                                             progress=False)  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - checked below
                out["error"] = exc

        send_plugin(client, HoldOneTask("featx.cluster_fit", "_part", lambda *args: args[-2] == 900))
        t = threading.Thread(target=run)
        t.start()
        HoldOneTask.holder(client)
        client.cluster.close()
        t.join(120)
    assert "head" not in out and isinstance(out.get("error"), ClusterError), out
    assert "the cluster went away" in str(out["error"]) and "\n" not in str(out["error"])


class SlowToExit(distributed.WorkerPlugin):
    """On the workers: closing takes longer than a nanny waits for its worker process, as a worker
    of a busy machine may; the nanny then kills it, and says so."""

    name = "featx-test-slow-to-exit"

    def teardown(self, worker):
        time.sleep(60)


def test_a_local_cluster_closes_without_dask_on_the_screen():
    import logging

    seen = []

    class Seen(logging.Handler):
        def emit(self, record):
            seen.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Seen(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with cluster_mod.connect("local", 1) as client:  # a cluster of its own: its worker is killed on close
            send_plugin(client, SlowToExit())
            assert client.submit(sum, [1, 2]).result() == 3
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [line for line in seen if "distributed" in line], seen
    assert logging.getLogger("distributed.nanny").level != logging.CRITICAL  # the levels are given back


def test_compare_reads_a_large_cache_on_the_workers(feature_file, tmp_path, client):
    from featx.compare import compare as compare_features

    with h5py.File(feature_file) as f, h5py.File(tmp_path / "emb.h5", "w") as g:
        g["X_train"], g["y_train"] = f["X"][::2], f["y"][::2]
        g["X_test"], g["y_test"] = f["X"][1::2], f["y"][1::2]
    kw = dict(heads=["centroid", "linear"], features=tmp_path / "emb.h5", stream=True)
    local, _ = compare_features(reports_dir=tmp_path / "a", **kw)
    remote, _ = compare_features(reports_dir=tmp_path / "b", cluster=client, **kw)
    by = {r.head: r for r in local}
    for r in remote:
        assert r.note.startswith("read in blocks on the cluster's workers"), r.note
        assert r.accuracy == pytest.approx(by[r.head].accuracy, abs=1e-9)
