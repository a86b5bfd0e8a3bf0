"""Heads fitted on a cache a block of rows at a time equal the heads fitted on all of it."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featx.errors import DataError, HeadError
from featx.heads import make_head
from featx.streaming import fit_in_blocks, predict_proba_in_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A float16 HDF5 file of 3-class rows, as a feature cache stores them."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32))
    y = rng.integers(0, 3, 3000)
    X = (centers[y] + rng.normal(scale=2.0, size=(3000, 32))).astype(np.float16)
    path = tmp_path_factory.mktemp("stream") / "features.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
    return path


@pytest.mark.parametrize("head", ["centroid", "knn"])
def test_a_head_fitted_in_blocks_equals_the_head_fitted_on_everything(head, cache):
    with h5py.File(cache) as f:
        X, y = f["X"], f["y"]
        streamed = fit_in_blocks(make_head(head), X, y, block_rows=700)  # blocks that miss a class are fine too
        whole = make_head(head).fit(np.asarray(X, dtype=np.float32), y[:])
        Xq = np.asarray(X[:500], dtype=np.float32)
        np.testing.assert_allclose(predict_proba_in_blocks(streamed, X[:500], block_rows=128),
                                   whole.predict_proba(Xq), atol=1e-9)  # fmt: skip
    if head == "centroid":
        np.testing.assert_allclose(streamed.centroids_, whole.centroids_, atol=1e-12)
    else:
        np.testing.assert_array_equal(streamed.train_, whole.train_)


def test_knn_holds_a_bank_too_large_for_memory_in_float16_then_in_a_mapped_file(cache, monkeypatch, caplog):
    from featx import streaming
    from featx.heads import cosine

    with h5py.File(cache) as f:
        X, y = f["X"], f["y"]
        whole = make_head("knn", storage="float16").fit(np.asarray(X[:], dtype=np.float32), y[:])
        assert make_head("knn").fit(X[:100], y[:100]).storage_ == "float32"  # room to spare: float32
        bank32 = 3000 * 32 * 4
        monkeypatch.setattr(streaming, "available_memory", lambda: cosine.BANK_HEADROOM + bank32 - 1)
        small = fit_in_blocks(make_head("knn"), X, y, block_rows=700)
        assert small.storage_ == "float16" and not isinstance(small.train_, np.memmap)
        monkeypatch.setattr(streaming, "available_memory", lambda: cosine.BANK_HEADROOM + bank32 // 2 - 1)
        mapped = fit_in_blocks(make_head("knn"), X, y, block_rows=700)
        assert isinstance(mapped.train_, np.memmap) and "memory-mapped temporary file" in caplog.text
        Xq = np.asarray(X[:300], dtype=np.float32)
    for head in (small, mapped):
        np.testing.assert_array_equal(head.train_, whole.train_)
        np.testing.assert_allclose(head.predict_proba(Xq), whole.predict_proba(Xq), atol=1e-12)
    import pickle

    again = pickle.loads(pickle.dumps(mapped))  # saved as an array, not as a mapping
    assert type(again.train_) is np.ndarray and np.array_equal(again.train_, whole.train_)


def test_a_cache_damaged_after_its_check_is_a_cache_error_when_read_in_blocks(tmp_path):
    from featx.errors import CacheError

    rng = np.random.default_rng(0)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=rng.normal(size=(4000, 64)).astype(np.float32), chunks=(500, 64), compression="gzip")
        f["y"] = rng.integers(0, 2, 4000)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = bytes(4096)  # zeros over compressed chunks mid-file
    path.write_bytes(bytes(raw))
    with h5py.File(path) as f, pytest.raises(CacheError, match=r"Could not read rows of .*f\.h5.*extract the features again"):
        fit_in_blocks(make_head("centroid"), f["X"], f["y"], block_rows=500)


def test_a_head_that_cannot_stream_says_so(cache, throwaway):
    with h5py.File(cache) as f, pytest.raises(HeadError, match="has no partial_fit"):
        fit_in_blocks(make_head("shrunk-centroid"), f["X"], f["y"])


@pytest.mark.parametrize("head, params", [("logreg", {}), ("logreg", {"C": 0.01}), ("svm", {"probability": True}),
                                          ("svm-rbf", {"max_exact_samples": 100, "n_components": 300, "probability": True})])  # fmt: skip
def test_the_linear_heads_in_blocks_reach_the_solution_they_reach_in_memory(head, params, cache):
    """logreg, svm and svm-rbf (Nystroem) read in blocks minimise the same objective by minibatch:
    their predictions agree with the solvers' on all rows, and they export the same way."""
    import keras

    with h5py.File(cache) as f:
        X, y = f["X"], f["y"]
        streamed = fit_in_blocks(make_head(head, **params), X, y, block_rows=512)
        X_all, y_all = np.asarray(X[:], dtype=np.float32), y[:]
    whole = make_head(head, **params).fit(X_all, y_all)
    assert "in blocks" in streamed.fit_note() and type(streamed.classes_) is np.ndarray
    Xq = X_all[:1000]
    agree = np.mean(streamed.predict(Xq) == whole.predict(Xq))
    assert agree > 0.97, agree
    p = streamed.predict_proba(Xq)
    assert np.abs(p - whole.predict_proba(Xq)).mean() < 0.03
    inputs = keras.Input(shape=(32,))
    exported = keras.Model(inputs, streamed.to_keras(inputs))
    np.testing.assert_allclose(exported.predict(Xq, verbose=0), p, atol=1e-4)


CHILD = """
import json, resource, sys
import h5py, numpy as np
from featx.heads import make_head
from featx.streaming import fit_in_blocks
with h5py.File(sys.argv[1]) as f:
    X, y = f["X"], f["y"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    head = fit_in_blocks(make_head(sys.argv[2], **json.loads(sys.argv[3])), X, y, block_rows=8192)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mib": (after - before) / 1024, "float32_mib": X.shape[0] * X.shape[1] * 4 / 2**20}))
"""


@pytest.mark.parametrize("head, params", [("centroid", {}), ("knn", {"storage": "float16"})])
def test_a_float16_cache_is_fitted_without_a_float32_copy(head, params, tmp_path):
    rng = np.random.default_rng(1)
    n, d = 200_000, 256  # 98 MiB in float16, 195 MiB as float32
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        X = f.create_dataset("X", (n, d), dtype=np.float16)
        for a in range(0, n, 50_000):
            X[a : a + 50_000] = rng.normal(size=(50_000, d)).astype(np.float16)
        f["y"] = rng.integers(0, 5, n)
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), head, json.dumps(params)], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # the peak grows by a block or two (and, for knn, its float16 bank: half the float32 size), never by
    # the whole cache in float32
    assert out["grew_mib"] < (0.75 if head == "knn" else 0.25) * out["float32_mib"], out


def test_shuffled_batches_give_every_row_once_an_epoch_and_mix_a_sorted_cache():
    from featx.streaming import shuffled_batches

    X = np.arange(20_000, dtype=np.float32)[:, None]
    y = np.repeat(np.arange(4), 5000)  # sorted by class, as a cache of class folders is
    source, steps = shuffled_batches(X, y, batch_size=512, block_rows=8192, seed=0)
    batches = [next(source) for _ in range(steps)]
    rows = np.concatenate([b[0][:, 0] for b in batches]).astype(int)
    assert sorted(rows) == list(range(20_000))
    assert all(np.array_equal(yb, y[xb[:, 0].astype(int)]) for xb, yb in batches)
    assert np.mean([len(np.unique(yb)) for _, yb in batches]) > 2.5  # batches of several classes


@pytest.mark.parametrize("head", ["linear", "dense"])
def test_the_keras_heads_train_from_a_cache_in_blocks_as_well_as_from_memory(head, cache):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32))  # the fixture's
    yq = np.random.default_rng(9).integers(0, 3, 1000)
    Xq = (centers[yq] + np.random.default_rng(10).normal(scale=2.0, size=(1000, 32))).astype(np.float32)
    params = {"epochs": 5, "n_members": 1}
    with h5py.File(cache) as f:
        X, y = f["X"], f["y"]
        streamed = fit_in_blocks(make_head(head, **params), X, y, block_rows=1024)
        X_all, y_all = np.asarray(X[:], dtype=np.float32), y[:]
    whole = make_head(head, **params).fit(X_all, y_all)
    a, b = streamed.score(Xq, yq), whole.score(Xq, yq)
    assert streamed.n_features_in_ == 32 and streamed.scaler_.n_samples_seen_ == 3000
    np.testing.assert_allclose(streamed.scaler_.mean_, X_all.astype(np.float64).mean(axis=0), atol=1e-5)
    assert abs(a - b) < 0.03 and b > 0.8, (a, b)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import make_class_folders

    return make_class_folders(tmp_path_factory.mktemp("tiny") / "ds", n_train=12, n_test=4)


def test_compare_reads_features_too_large_for_memory_in_blocks(tiny, tmp_path, monkeypatch, throwaway):
    from featx import streaming
    from featx.compare import compare

    kw = dict(weights="none", cache_dir=tmp_path / "c", reference=False, task="full")
    heads = ["centroid", "knn", "linear", "svm"]
    held, _ = compare(["trunk"], heads, tiny, reports_dir=tmp_path / "a", **kw)
    monkeypatch.setattr(streaming, "available_memory", lambda: 1 << 20)  # 1 MiB: these features do not fit
    streamed, paths = compare(["trunk"], heads, tiny, reports_dir=tmp_path / "b", **kw)
    by = {r.head: r for r in held}
    for r in streamed:
        assert r.note.startswith("read in blocks") and "read in blocks" not in by[r.head].note
        if r.head in ("centroid", "knn"):  # one pass, the same sums and bank: the same predictions
            assert np.array_equal(r.y_pred, by[r.head].y_pred) and r.accuracy == by[r.head].accuracy
    assert paths["html"].exists()
    with pytest.raises(HeadError, match=r"read in blocks \(.*GiB as float32\), and shrunk-centroid needs all of them"):
        compare(["trunk"], ["centroid", "shrunk-centroid"], tiny, reports_dir=tmp_path / "c", **kw)
    monkeypatch.undo()
    from featx.errors import SettingsError

    with pytest.raises(SettingsError, match="--tune, --repeats and --train-sizes need them in memory"):
        compare(["trunk"], ["centroid"], tiny, reports_dir=tmp_path / "d", stream=True, repeats=2, **kw)


def test_fit_streams_when_asked_and_its_head_predicts(tiny, tmp_path):
    from featx.fit import fit_head
    from featx.predict import predict_files

    kw = dict(weights="none", cache_dir=tmp_path)
    res, path = fit_head("centroid", "trunk", tiny, stream=True, **kw)
    again, _ = fit_head("centroid", "trunk", tiny, stream=False, save=False, **kw)
    assert res.note == "read in blocks" and np.array_equal(res.y_pred, again.y_pred)
    files = sorted((tiny / "test").rglob("*.png"))[:2]
    assert [p.label for p in predict_files(files, "centroid", "trunk", tiny, **kw)] == [
        res.class_names[i] for i in res.y_pred[:2]]
    # an svm fitted in blocks is saved with its calibrated probabilities, and predicts with them
    res, path = fit_head("svm", "trunk", tiny, stream=True, **kw)
    assert res.note.startswith("read in blocks; C=0.01: too few train rows") and "minibatch SGD" in res.note
    assert res.estimator.calibrator_ is not None
    out = predict_files(files, "svm", "trunk", tiny, **kw)
    assert [p.label for p in out] == [res.class_names[i] for i in res.y_pred[:2]]
    assert all(0 < p.probability <= 1 for p in out)


def embeddings_file(path, seed: int):
    """An embeddings ``.h5`` of 900 train and 300 test float16 rows of 3 classes, width 24."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 24))
    with h5py.File(path, "w") as f:
        for split, n in (("train", 900), ("test", 300)):
            y = rng.integers(0, 3, n)
            f[f"X_{split}"], f[f"y_{split}"] = (centers[y] + rng.normal(scale=1.5, size=(n, 24))).astype(np.float16), y
    return path


def test_compare_on_an_embeddings_file_reads_it_in_blocks(tmp_path):
    from featx.compare import compare

    path = embeddings_file(tmp_path / "emb.h5", seed=3)
    held, _ = compare(heads=["centroid", "knn"], features=path, reports_dir=tmp_path / "a", stream=False)
    streamed, _ = compare(heads=["centroid", "knn"], features=path, reports_dir=tmp_path / "b", stream=True)
    by = {r.head: r for r in held}
    for r in streamed:
        assert r.note == "read in blocks" and np.array_equal(r.y_pred, by[r.head].y_pred)
    with h5py.File(path, "a") as f:
        f["X_test"][5, 3] = np.nan
    with pytest.raises(DataError, match="X_test holds NaN"):  # checked a block at a time too
        compare(heads=["centroid"], features=path, reports_dir=tmp_path / "c", stream=True)


@pytest.mark.parametrize("version", [1, 2])
def test_a_cgroup_limit_counts_use_but_not_the_page_cache_of_files_read(version, tmp_path):
    """Memory available under a cgroup limit: the limit minus use, where the file pages that use
    counts (a cache's blocks just read) are given back, since the kernel takes them when needed."""
    from featx.streaming import _cgroup_room

    gib = 1 << 30
    (tmp_path / "cgroup").write_text("0::/job\n" if version == 2 else "4:memory:/job\n3:cpu:/job\n")
    base = tmp_path / "fs" / ("job" if version == 2 else "memory/job")
    base.mkdir(parents=True)
    names = ("memory.max", "memory.current") if version == 2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (base / names[0]).write_text(f"{4 * gib}\n")
    (base / names[1]).write_text(f"{3 * gib}\n")  # 1 GiB of the process, 2 GiB of file pages
    prefix = "" if version == 2 else "total_"
    (base / "memory.stat").write_text(f"{prefix}active_file {gib}\n{prefix}inactive_file {gib}\nanon {gib}\n")
    assert _cgroup_room(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == 3 * gib
    (base / "memory.stat").unlink()  # unreadable: use as it is counted
    assert _cgroup_room(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == gib
    (base / names[0]).write_text("max\n" if version == 2 else f"{1 << 62}\n")  # no limit
    assert _cgroup_room(str(tmp_path / "cgroup"), str(tmp_path / "fs")) is None


def test_svm_rbf_maps_the_rows_it_scores_a_chunk_at_a_time(cache, monkeypatch):
    """The Nystroem map of 65,536 rows at once would hold a float64 kernel of 1 GiB: svm-rbf scores
    4,096 rows at a time, with the same result."""
    import featx.heads.rbf as rbf

    with h5py.File(cache) as f:
        X, y = np.asarray(f["X"][:], dtype=np.float32), f["y"][:]
    head = make_head("svm-rbf", max_exact_samples=100, n_components=50, probability=True).fit(X[:1000], y[:1000])
    whole = head.decision_function(X), head.predict_proba(X), head.predict(X)
    monkeypatch.setattr(rbf, "CHUNK_ROWS", 128)
    for a, b in zip(whole, (head.decision_function(X), head.predict_proba(X), head.predict(X))):
        np.testing.assert_allclose(a, b, atol=1e-12) if a.dtype.kind == "f" else np.testing.assert_array_equal(a, b)


def test_each_head_is_fitted_from_memory_where_its_own_working_set_fits(tmp_path, monkeypatch):
    from featx import streaming
    from featx.compare import compare
    from featx.heads import HEADS
    from featx.heads.sgd import Minibatch

    path = embeddings_file(tmp_path / "emb.h5", seed=4)
    rows, width, held = 1200, 24, 1200 * 24 * 2  # held as stored: float16
    assert HEADS["centroid"].working_set(rows, width, 3) < 550_000 < HEADS["logreg"].working_set(rows, width, 3)
    monkeypatch.setattr(HEADS["logreg"], "MINIBATCH", Minibatch(epochs=2, min_steps=0, batch_size=64))
    monkeypatch.setattr(streaming, "available_memory", lambda: int((held + 550_000) / streaming.MEMORY_FRACTION))
    results, _ = compare(heads=["centroid", "logreg"], features=path, reports_dir=tmp_path / "a", n_jobs=1)
    by = {r.head: r for r in results}
    assert by["centroid"].note == "" and by["logreg"].note.startswith("read in blocks")
    assert "C" in by["logreg"].params  # the C chosen on held-out rows, shown with the result
    # too little even for the rows: both read from the file
    monkeypatch.setattr(streaming, "available_memory", lambda: int(held / streaming.MEMORY_FRACTION) - 1)
    results, _ = compare(heads=["centroid"], features=path, reports_dir=tmp_path / "b", n_jobs=1)
    assert results[0].note == "read in blocks"
