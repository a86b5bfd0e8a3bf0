import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.heads import HEADS, DenseClassifier, RBFSVMClassifier, make_head, parse_params

DENSE_XFAIL = {
    "check_sample_weight_equivalence_on_dense_data": "fit takes no sample_weight",
}


def _heads_for_checks():
    # Few epochs keep the Keras head's ~40 checks fast; the rest use their defaults.
    return [DenseClassifier(n_members=1, epochs=30, batch_size=32, learning_rate=0.01, random_state=0),
            RBFSVMClassifier(), RBFSVMClassifier(max_exact_samples=10, n_components=20)] + [
        make_head(name) for name in ("logreg", "svm", "knn", "centroid")
    ]


@parametrize_with_checks(_heads_for_checks(), expected_failed_checks=lambda est: (
    DENSE_XFAIL if isinstance(est, DenseClassifier) else {}))
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
    clf = DenseClassifier(epochs=5, random_state=0).fit(X, y)
    if dump == "pickle":
        state = clf.__getstate__()
        assert "model_" not in state and "models_" not in state
        assert len(state["_members_keras_bytes"]) == 5 and all(b[:2] == b"PK" for b in state["_members_keras_bytes"])
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
    with pytest.raises(ValueError, match="Known heads: dense, logreg, svm, svm-rbf, knn, centroid. Received: head='kmeans'"):
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
    state = DenseClassifier(n_members=1, epochs=5, random_state=0).fit(X, y).__getstate__()
    state.pop("_members_keras_bytes")
    state.pop("n_members")
    old = DenseClassifier.__new__(DenseClassifier)
    old.__setstate__(state)
    assert old.n_members == 1 and len(old.models_) == 1 and old.predict_proba(X).shape == (len(X), 3)
