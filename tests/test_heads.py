import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.heads import HEADS, DenseClassifier, LinearSoftmaxHead, RBFSVMClassifier, make_head, parse_params

DENSE_XFAIL = {
    "check_sample_weight_equivalence_on_dense_data": "fit takes no sample_weight",
}


def _heads_for_checks():
    # Few epochs keep the Keras head's ~40 checks fast; the rest use their defaults.
    return [DenseClassifier(n_members=1, epochs=8, batch_size=32, learning_rate=0.05, random_state=0),
            LinearSoftmaxHead(epochs=8, batch_size=32, learning_rate=0.05, random_state=0),
            RBFSVMClassifier(), RBFSVMClassifier(max_exact_samples=10, n_components=20)] + [
        make_head(name) for name in ("logreg", "svm", "knn", "centroid")
    ]


@parametrize_with_checks(_heads_for_checks(), expected_failed_checks=lambda est: (
    DENSE_XFAIL if isinstance(est, DenseClassifier) else {}))  # the linear head is one too
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4, size=(3, 20))
    y = np.repeat(np.array(["cat", "dog", "eel"]), 40)
    X = centers[np.searchsorted(["cat", "dog", "eel"], y)] + rng.normal(size=(120, 20))
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_learns_string_labels(name, blobs):
    X, y = blobs
    head = make_head(name).fit(X[::2], y[::2])
    assert head.score(X[1::2], y[1::2]) > 0.9
    assert set(head.predict(X[:5])) <= {"cat", "dog", "eel"}


def test_dense_proba_follows_classes(blobs):
    X, y = blobs
    clf = DenseClassifier(n_members=1, epochs=20, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (120, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (clf.classes_[proba.argmax(1)] == clf.predict(X)).all()
    assert clf.n_features_in_ == 20 and len(clf.history_["loss"]) == 20


def test_dense_early_stopping_keeps_best():
    # Random labels: validation loss worsens at once, so training stops early.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 30)), rng.integers(0, 3, 200)
    clf = DenseClassifier(n_members=1, epochs=200, early_stopping=True, patience=2, random_state=0).fit(X, y)
    assert len(clf.history_["val_loss"]) < 200


def test_dense_is_reproducible_and_clonable(blobs):
    X, y = blobs
    a = DenseClassifier(n_members=2, epochs=5, random_state=3).fit(X, y).predict_proba(X)
    b = clone(DenseClassifier(n_members=2, epochs=5, random_state=3)).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_dense_survives_pickle_and_joblib(blobs, tmp_path, dump):
    X, y = blobs
    clf = DenseClassifier(n_members=2, epochs=5, random_state=0).fit(X, y)
    if dump == "pickle":
        state = clf.__getstate__()
        assert "model_" not in state and "models_" not in state
        assert len(state["_members_keras_bytes"]) == 2 and all(b[:2] == b"PK" for b in state["_members_keras_bytes"])
        again = pickle.loads(pickle.dumps(clf))
    else:
        joblib.dump(clf, tmp_path / "h.joblib")
        again = joblib.load(tmp_path / "h.joblib")
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=1e-6)
    assert again.get_params() == clf.get_params()


def test_rbf_switches_to_nystroem_when_large(blobs):
    X, y = blobs
    exact = RBFSVMClassifier().fit(X, y)
    approx = RBFSVMClassifier(max_exact_samples=50, n_components=30).fit(X, y)
    assert exact.solver_ == "exact SVC" and approx.solver_ == "Nystroem(30) + LinearSVC"
    assert approx.score(X, y) > 0.9


def test_params_from_strings():
    assert parse_params(["C=0.1", "epochs=20", "gamma=scale"]) == {"C": 0.1, "epochs": 20, "gamma": "scale"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_params(["C"])
    assert make_head("svm", C=2.0).C == 2.0
    assert make_head("dense", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="Known heads: dense, logreg, linear, svm, svm-rbf, knn, centroid. Received: head='kmeans'"):
        make_head("kmeans")
    with pytest.raises(ValueError, match="Unknown parameter 'epochs' for head 'logreg'. Its parameters: C"):
        make_head("logreg", epochs=3)
    with pytest.raises(ValueError, match="'C' parameter of LogisticRegressionHead must be a float"):
        make_head("logreg", C=-1)  # checked by scikit-learn's rules when made, not at fit


def test_dense_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        DenseClassifier().fit(np.ones((4, 2)), [1, 1, 1, 1])


def test_knn_votes_by_cosine_similarity_and_centroid_is_the_nearest_class_mean():
    from featx.heads import KNNClassifier, NearestCentroidHead

    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0.05]], dtype=np.float64)
    y = np.array(["a", "a", "b", "b", "b"])
    # scale does not matter (cosine); with k=1 the nearest row decides
    q = np.array([[10, 1], [0.2, 3], [-5, 0]])
    assert KNNClassifier(n_neighbors=1).fit(X, y).predict(q).tolist() == ["a", "b", "b"]
    knn = KNNClassifier(n_neighbors=3, temperature=0.1).fit(X, y)
    p = knn.predict_proba(q)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T
    top = np.argsort(-sims[0])[:3]
    w = np.exp(sims[0, top] / 0.1)
    assert p[0, 0] == pytest.approx(w[y[top] == "a"].sum() / w.sum())
    cen = NearestCentroidHead().fit(X, y)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    want = unit[y == "a"].mean(0)
    np.testing.assert_allclose(cen.centroids_[0], want / np.linalg.norm(want))
    assert cen.predict(q).tolist() == ["a", "b", "b"] and cen.predict_proba(q).argmax(1).tolist() == [0, 1, 1]


def test_dense_is_an_ensemble_whose_probabilities_are_the_members_mean(blobs):
    X, y = blobs
    ens = DenseClassifier(n_members=3, epochs=5, random_state=7).fit(X, y)
    singles = [DenseClassifier(n_members=1, epochs=5, random_state=7 + i).fit(X, y).predict_proba(X) for i in range(3)]
    np.testing.assert_allclose(ens.predict_proba(X), np.mean(singles, axis=0), atol=1e-6)
    assert len(ens.models_) == 3 and ens.model_ is ens.models_[0]
    # a head of one member saved by an earlier featx (no member list, no n_members) loads as one
    one = DenseClassifier(n_members=1, epochs=5, random_state=0).fit(X, y)
    state = one.__getstate__()
    state.pop("_members_keras_bytes")
    state.pop("n_members")
    old = DenseClassifier.__new__(DenseClassifier)
    old.__setstate__(state)
    assert old.n_members == 1 and len(old.models_) == 1
    np.testing.assert_allclose(old.predict_proba(X), one.predict_proba(X), rtol=1e-6)


# ------------------------------------------------------------------ the registry
def test_a_new_head_is_one_module_and_every_part_of_featx_finds_it(throwaway, tmp_path, capsys):
    from conftest import make_class_folders

    from featx.cli import build_parser
    from featx.compare import compare
    from featx.fit import find_head, fit_head
    from featx.heads import trusted_types
    from featx.options import RunOptions
    from featx.report import tradeoff_chart
    from featx.spec import FeatureSpec

    assert "shrunk-centroid" in HEADS and "throwaway_head.ShrunkCentroidHead" in trusted_types()
    # fit: fitted, saved as skops, found and loaded again (its type trusted because it is registered)
    data = make_class_folders(tmp_path / "ds", n_train=6, n_test=3)
    spec = FeatureSpec("trunk", weights="none")
    res, path = fit_head("shrunk-centroid", spec, data, cache_dir=tmp_path / "c", params={"shrink": 0.2})
    est, rec, found = find_head("shrunk-centroid", spec, data, options=RunOptions(cache_dir=tmp_path / "c"))
    assert found == path and isinstance(est, throwaway) and est.shrink == 0.2 and rec["head"] == "shrunk-centroid"
    assert res.note == "shrunk by 0.2"
    # compare and tune: its grid is searched on embeddings made elsewhere
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(90, 4)), np.repeat([0, 1, 2], 30)
    X[np.arange(90), y] += 3
    np.savez(tmp_path / "emb.npz", X_train=X[::2], y_train=y[::2], X_test=X[1::2], y_test=y[1::2])
    results, _ = compare(heads=["shrunk-centroid", "logreg"], features=tmp_path / "emb.npz", tune=True,
                         reports_dir=tmp_path / "r")  # fmt: skip
    mine = next(r for r in results if r.head == "shrunk-centroid")
    assert set(mine.params) == {"shrink"} and mine.params["shrink"] in (0.0, 0.5) and mine.accuracy > 0.8
    # the report draws it with its own marker
    fig = tradeoff_chart(results)
    markers = {line.get_marker() for line in fig.axes[0].lines}
    assert "X" in markers and "s" in markers
    # the CLI's help names it, with its description
    sub = build_parser()._subparsers._group_actions[0].choices
    assert "shrunk-centroid: nearest class mean, shrunk" in " ".join(sub["fit"].format_help().split())
    assert "shrunk-centroid" in sub["compare"].format_help()


def test_heads_saved_by_the_release_before_the_package_still_load_and_predict_the_same():
    from pathlib import Path

    from featx.persistence import load_head

    folder = Path(__file__).parent / "fixtures" / "saved-heads"
    want = np.load(folder / "expected.npz")
    for name in ("dense", "logreg", "svm", "svm-rbf", "knn", "centroid"):
        est, rec = load_head(folder / f"{name}.skops")
        assert isinstance(est, HEADS[name]) and rec["head"] == name
        np.testing.assert_array_equal(est.predict(want["X_query"]), want[f"{name}_pred"])
        np.testing.assert_allclose(est.predict_proba(want["X_query"]), want[f"{name}_proba"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("memory_mapped", [False, True])
def test_a_large_bank_is_saved_beside_skops_state_and_loads_the_same(tmp_path, monkeypatch, memory_mapped):
    import zipfile

    from featx import persistence, streaming
    from featx.errors import CacheError

    monkeypatch.setattr(persistence, "LARGE_ARRAY_BYTES", 4096)  # the bank below is 12,000 bytes
    if memory_mapped:  # no memory to spare: the bank is a memory-mapped temporary file
        monkeypatch.setattr(streaming, "available_memory", lambda: 1)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 20)).astype(np.float32), rng.integers(0, 3, 300)
    head = make_head("knn", n_neighbors=5, storage="float16")
    head.reserve(len(X))
    for start in range(0, 300, 100):
        head.partial_fit(X[start : start + 100], y[start : start + 100], classes=np.arange(3))
    assert isinstance(head._buffer, np.memmap) == memory_mapped
    path = persistence.save_head(tmp_path / "knn.skops", head, {"head": "knn"})
    assert head.train_.shape == (300, 20) and not list(tmp_path.glob(".*.tmp"))  # the head kept its bank
    with zipfile.ZipFile(path) as zf:
        assert "featx-arrays/train_.npy" in zf.namelist()
    loaded, rec = persistence.load_head(path)
    assert rec == {"head": "knn"} and type(loaded.train_) is np.ndarray and loaded.train_.dtype == np.float16
    np.testing.assert_array_equal(loaded.train_, head.train_)
    np.testing.assert_array_equal(loaded.predict_proba(X[:50]), head.predict_proba(X[:50]))
    # a damaged bank is one line, caught by the zip's CRC
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("featx-arrays/train_.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200 + info.file_size // 2] ^= 0xFF  # past the headers
    (tmp_path / "bad.skops").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="Cannot read saved head .*bad.skops"):
        persistence.load_head(tmp_path / "bad.skops")


@pytest.mark.parametrize("arrays", [["x"], {"train_": "../outside.npy"}, {"__class__": "featx-arrays/x.npy"},
                                    {"labels_": "featx-arrays/labels_.npy"}, {"train_": "featx-arrays/missing.npy"}])
def test_a_saved_head_whose_list_of_arrays_was_altered_is_one_line(tmp_path, arrays):
    import skops.io as sio

    from featx.errors import CacheError
    from featx.persistence import load_head

    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    est = make_head("knn", n_neighbors=3).fit(X, np.arange(50) % 2)
    est.train_ = est.train_[:0]  # as save_head leaves it in skops's state
    sio.dump({"estimator": est, "record": {}, "arrays": arrays}, tmp_path / "h.skops")
    with pytest.raises(CacheError, match=r"Cannot read saved head .*h\.skops .*fit it again"):
        load_head(tmp_path / "h.skops")


def test_saving_a_large_bank_holds_no_copy_of_it(tmp_path):
    # in a child process: the peak memory while save_head writes a 128 MiB bank, over what it held
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np
        import skops.io  # its imports are not the save's memory
        from featx.heads import make_head
        from featx.persistence import save_head

        def kib(key):
            return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
                        if l.startswith(key + ":"))

        head = make_head("knn", storage="float32")
        head.reserve(32768)
        rng = np.random.default_rng(0)
        for _ in range(4):
            head.partial_fit(rng.normal(size=(8192, 1024)).astype(np.float32), rng.integers(0, 3, 8192),
                             classes=np.arange(3))
        held = kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        save_head(Path(sys.argv[1]) / "knn.skops", head, {})
        print(head.train_.nbytes >> 10, kib("VmHWM") - held)
        """
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    bank_kib, added_kib = map(int, res.stdout.split())
    assert bank_kib == 128 << 10
    # skops alone: about 4 times the bank more; here numpy's 16 MiB pieces as they are written
    assert added_kib < bank_kib // 3, (bank_kib, added_kib)


def test_a_head_name_that_is_taken_is_refused():
    from sklearn.base import BaseEstimator, ClassifierMixin

    from featx.errors import HeadError
    from featx.heads import Head

    with pytest.raises(HeadError, match="The head name 'logreg' is taken by featx.heads.linear.LogisticRegressionHead"):

        class MyLogreg(Head, ClassifierMixin, BaseEstimator):
            name = "logreg"

    assert HEADS["logreg"].__module__ == "featx.heads.linear"


def test_knn_searches_in_blocks_and_equals_the_full_similarity_matrix():
    from featx.heads import KNNClassifier
    from featx.neighbors import faiss_available

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    y = rng.integers(0, 4, 700)
    X = (centers[y] + rng.normal(scale=1.5, size=(700, 16))).astype(np.float32)
    Xq = X[:150] + rng.normal(scale=0.1, size=(150, 16)).astype(np.float32)
    # the whole queries x rows matrix, in float64: what the head computed before it searched in blocks
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    q = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ unit.T.astype(np.float64)
    top = np.argsort(-sims, axis=1)[:, :20]
    s = np.take_along_axis(sims, top, axis=1)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / 0.07)
    want = np.zeros((150, 4))
    np.add.at(want, (np.repeat(np.arange(150), 20), y[top].ravel()), w.ravel())
    want /= want.sum(axis=1, keepdims=True)
    engines = ["numpy"] + (["faiss"] if faiss_available() else [])
    for engine in engines:
        got = KNNClassifier(batch_size=64, engine=engine).fit(X, y).predict_proba(Xq)  # blocks of 64 rows
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=engine)
    half = KNNClassifier(storage="float16", engine="numpy").fit(X, y)
    assert half.train_.dtype == np.float16 and half.train_.nbytes == unit.nbytes // 2
    assert np.mean(half.predict(Xq) == want.argmax(axis=1)) > 0.98
    if faiss_available():
        approx = KNNClassifier(method="approximate").fit(X, y)
        assert np.mean(approx.predict(Xq) == want.argmax(axis=1)) > 0.95


# ------------------------------------------------------------------ C chosen on held-out train rows
@pytest.fixture(scope="module")
def wide():
    """Few rows, many noisy columns: a weak penalty overfits, so the best C is small."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    X = rng.normal(size=(600, 200))
    X[:, :3] += 1.5 * np.eye(3)[y]
    return X, y


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_C_is_chosen_on_held_out_train_rows_then_fitted_on_all(name, wide):
    from sklearn.preprocessing import StandardScaler

    from featx.heads import regularisation

    X, y = wide
    head = make_head(name).fit(X, y)
    assert head.C == "auto" and head.C_ in regularisation.PATH and head.classifier_.C == head.C_
    # the same sweep by hand: the same held-out rows (seeded), the same classifier at each C
    fit_rows, held = regularisation.validation_rows(y, head._seed())
    assert head.C_path_["rows"] == len(held) == 120
    Xs = StandardScaler().fit(X).transform(X)
    by_hand = [np.mean(head._classifier(C=c).fit(Xs[fit_rows], y[fit_rows]).predict(Xs[held]) == y[held])
               for c in head.C_path_["C"]]
    np.testing.assert_allclose(head.C_path_["accuracy"], by_hand, atol=1e-6 if name == "svm" else 0.02)
    assert head.C_ == head.C_path_["C"][int(np.argmax(head.C_path_["accuracy"]))]
    assert head.C_ < 1.0 and len(head.C_path_["C"]) < len(regularisation.PATH)  # stopped past the best
    # then fitted on every train row: the fixed-C head of the chosen value predicts the same
    fixed = make_head(name, C=head.C_).fit(X, y)
    assert np.mean(fixed.predict(X) == head.predict(X)) > 0.99
    assert head.chosen_params() == {"C": head.C_} and fixed.chosen_params() == {}
    assert f"C={head.C_:.3g} chosen on 120 held-out train rows" in head.fit_note()
    assert not hasattr(fixed, "C_path_") and fixed.fit_note() == ""


def test_C_of_a_class_too_small_to_hold_rows_out_is_the_fallback():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 5)), np.array([0] * 396 + [1] * 4)
    head = make_head("logreg").fit(X, y)
    assert head.C_ == head.FALLBACK_C == 1.0 and head.C_path_ is None
    assert "too few train rows" in head.fit_note()
    small = make_head("svm").fit(X[:200], np.arange(200) % 2)  # 40 rows would be held out: too few
    assert small.C_ == small.FALLBACK_C == 0.01 and small.C_path_ is None


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_C_is_chosen_in_blocks_from_every_value_trained_at_once(name, wide):
    from featx.heads import regularisation
    from featx.heads.sgd import Minibatch
    from featx.streaming import fit_in_blocks

    X, y = wide
    head = make_head(name)
    head.MINIBATCH = Minibatch(epochs=10, min_steps=300, batch_size=64)
    head = fit_in_blocks(head, X.astype(np.float16), y, block_rows=256, progress=False)
    assert head.C_path_["C"] == list(regularisation.PATH) and head.C_path_["rows"] == 120
    assert head.C_ == head.C_path_["C"][int(np.argmax(head.C_path_["accuracy"]))] and head.C_ < 1.0
    assert f"C={head.C_:.3g} chosen on 120 held-out train rows" in head.fit_note()
    in_memory = make_head(name).fit(X, y)
    assert np.mean(head.predict(X) == in_memory.predict(X)) > 0.9


@pytest.mark.parametrize("loss", ["softmax", "squared_hinge"])
def test_values_trained_side_by_side_each_train_as_alone(loss):
    from featx.heads.sgd import Minibatch, _linear_model, fit_linear_in_blocks

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 1500)
    X = (rng.normal(size=(1500, 12)) + np.eye(3, 12)[y] * 2).astype(np.float32)
    settings = Minibatch(epochs=20, min_steps=0, batch_size=64)
    # the objective side by side is the sum of each layer's own (loss and penalty): gradients apart
    Cs, n = (1e-3, 10.0), 1200
    W = [rng.normal(size=(12, 3)).astype(np.float32) for _ in Cs]
    b = [rng.normal(size=3).astype(np.float32) for _ in Cs]
    both = _linear_model(12, 3, loss, Cs, n, settings, 10)
    both.layers[-1].set_weights([np.hstack(W), np.concatenate(b)])
    alone = []
    for k, c in enumerate(Cs):
        model = _linear_model(12, 3, loss, c, n, settings, 10)
        model.layers[-1].set_weights([W[k], b[k]])
        alone.append(float(model.evaluate(X[:256], y[:256], batch_size=256, verbose=0)))
    np.testing.assert_allclose(float(both.evaluate(X[:256], y[:256], batch_size=256, verbose=0)), sum(alone),
                               rtol=1e-5)  # fmt: skip
    # trained: each layer of the path ends where a layer trained alone does
    kw = dict(settings=settings, block_rows=512, label="t", progress=False, keep=np.arange(1500) % 5 != 0)
    Wp, bp, _ = fit_linear_in_blocks(X, y, 3, lambda a: a, loss=loss, C=Cs, **kw)
    assert Wp.shape == (2, 12, 3) and bp.shape == (2, 3)
    for k, c in enumerate(Cs):
        Wk, bk, _ = fit_linear_in_blocks(X, y, 3, lambda a: a, loss=loss, C=c, **kw)
        assert np.mean((X @ Wp[k] + bp[k]).argmax(1) == (X @ Wk + bk).argmax(1)) > 0.95
    assert np.abs(Wp[0]).sum() < np.abs(Wp[1]).sum()  # the strong penalty shrinks its own layer


# ------------------------------------------------------------------ memory set by the work
def test_centroid_and_knn_fitted_from_memory_copy_a_block_not_the_rows():
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 128)).astype(np.float16)  # 25.6 MB
    y = rng.integers(0, 10, len(X))
    for name, params, bank in (("centroid", {}, 0), ("knn", {"storage": "float16"}, X.nbytes)):
        tracemalloc.start()
        head = make_head(name, **params).fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # a float64 copy of the rows alone would be 4 times them; a block of 16,384 rows is 16.8 MB
        assert peak - bank < 1.5 * X.nbytes, (name, peak / 2**20)
    np.testing.assert_allclose(head.train_[:5], X[:5] / np.linalg.norm(X[:5].astype(np.float64), axis=1,
                                                                        keepdims=True), atol=2e-3)  # fmt: skip
