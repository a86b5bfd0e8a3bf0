"""The nearest-neighbour search: blocked exact search equals a dense search; FAISS agrees; bounded."""

import h5py
import numpy as np
import pytest

from featx.errors import SettingsError
from featx.neighbors import NeighborSearch, faiss_available, nearest, recall, unit_rows

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")


def _dense(bank, queries, k, self_search, center=None):
    b, q = unit_rows(bank, center).astype(np.float64), unit_rows(queries, center).astype(np.float64)
    s = q @ b.T
    if self_search:
        np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 24)).astype(np.float32), rng.normal(size=(70, 24)).astype(np.float32)


@pytest.mark.parametrize("engine", ["numpy", pytest.param("faiss", marks=needs_faiss)])
@pytest.mark.parametrize("self_search", [True, False])
def test_blocked_search_equals_a_dense_search(data, engine, self_search):
    bank, queries = data
    search = NeighborSearch(engine=engine, block_rows=32, progress=False)  # many blocks, ragged last
    center = bank.mean(axis=0)
    s, i = nearest(bank, 7, None if self_search else queries, search=search, center=center)
    ds, di = _dense(bank, bank if self_search else queries, 7, self_search, center)
    np.testing.assert_array_equal(i, di)
    np.testing.assert_allclose(s, ds, atol=1e-5)
    if self_search:
        assert not (i == np.arange(len(bank))[:, None]).any()


class _Watched:
    """A bank that records the most rows read at once."""

    def __init__(self, X):
        self.X, self.shape, self.dtype, self.most = X, X.shape, X.dtype, 0

    def __len__(self):
        return len(self.X)

    def __getitem__(self, rows):
        out = self.X[rows]
        self.most = max(self.most, len(out))
        return out


@needs_faiss
@pytest.mark.parametrize("self_search", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_faiss_exact_search_reads_the_bank_a_block_at_a_time_without_a_copy(data, monkeypatch, self_search, dtype):
    import featx.neighbors as nb

    bank, queries = data
    monkeypatch.setattr(nb, "FAISS_BANK_BYTES", 40 * 4 * bank.shape[1])  # bank blocks of 40 rows
    monkeypatch.setattr(nb, "FAISS_QUERY_ROWS", 64)  # query blocks of 64 rows
    watched = _Watched(bank.astype(dtype))
    search = NeighborSearch(engine="faiss", block_rows=8, progress=False)
    s, i = nearest(watched, 7, None if self_search else queries, search=search)
    held = bank.astype(dtype).astype(np.float32)
    ds, di = _dense(held, held if self_search else queries, 7, self_search)
    np.testing.assert_array_equal(i, di)
    np.testing.assert_allclose(s, ds, atol=1e-5)
    assert watched.most == (64 if self_search else 40)  # never the whole bank (300 rows) at once


def test_a_self_search_keeps_an_exact_duplicate_and_drops_only_the_row_itself():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    X[30] = X[4]
    for engine in ["numpy"] + (["faiss"] if faiss_available() else []):
        s, i = nearest(X, 3, search=NeighborSearch(engine=engine, block_rows=16, progress=False))
        assert i[4, 0] == 30 and i[30, 0] == 4 and s[4, 0] == pytest.approx(1.0, abs=1e-6), engine
        assert (i != np.arange(50)[:, None]).all()


def test_float16_storage_and_hdf5_banks_give_the_same_neighbours(data, tmp_path):
    bank, queries = data
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["X"] = bank
    _, ref = nearest(bank, 5, queries, search=NeighborSearch(engine="numpy", progress=False))
    with h5py.File(tmp_path / "b.h5", "r") as f:
        _, i = nearest(
            f["X"], 5, queries, search=NeighborSearch(engine="numpy", block_rows=64, progress=False)
        )
    np.testing.assert_array_equal(i, ref)
    _, i16 = nearest(
        bank, 5, queries, search=NeighborSearch(engine="numpy", storage="float16", progress=False)
    )
    assert recall(i16, ref) > 0.97


def test_k_larger_than_the_bank_pads_with_minus_one(data):
    bank, _ = data
    s, i = nearest(bank[:4], 6, search=NeighborSearch(engine="numpy", progress=False))
    assert (i[:, :3] >= 0).all() and (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()


@needs_faiss
def test_the_approximate_index_finds_most_neighbours_of_clustered_rows():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(20, 32))
    X = (centers[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    _, exact = nearest(X, 10, X[:500], search=NeighborSearch(engine="numpy", progress=False))
    _, approx = nearest(X, 10, X[:500], search=NeighborSearch(method="approximate", nprobe=8, progress=False))
    assert recall(approx, exact) > 0.9
    assert recall(exact, exact) == 1.0


@pytest.mark.parametrize("bad", [dict(method="fuzzy"), dict(engine="gpu"), dict(block_rows=0),
                                 dict(storage="int8"), dict(nprobe=True)])  # fmt: skip
def test_bad_search_settings_are_one_line(bad):
    with pytest.raises(SettingsError):
        NeighborSearch(**bad)


def test_mismatched_widths_are_refused(data):
    bank, queries = data
    with pytest.raises(SettingsError, match="columns"):
        nearest(bank, 3, queries[:, :5], search=NeighborSearch(engine="numpy", progress=False))


def test_stacked_arrays_are_one_bank_without_a_copy(data):
    from featx.neighbors import Stacked

    bank, queries = data
    st = Stacked(bank, queries)
    both = np.concatenate([bank, queries])
    assert len(st) == 370 and st.shape == (370, 24)
    np.testing.assert_array_equal(st[290:310], both[290:310])
    rows = np.array([369, 0, 299, 300, 5])
    np.testing.assert_array_equal(st[rows], both[rows])
    np.testing.assert_array_equal(np.asarray(st), both)
    for engine in ["numpy"] + (["faiss"] if faiss_available() else []):
        _, i = nearest(st, 4, search=NeighborSearch(engine=engine, block_rows=50, progress=False))
        _, ref = nearest(both, 4, search=NeighborSearch(engine=engine, block_rows=50, progress=False))
        np.testing.assert_array_equal(i, ref)
