"""Run options as one object: checked once, handed on by every entry point."""

from unittest import mock

import numpy as np
import pytest

from featx import extract as extract_mod
from featx.compare import compare
from featx.data import Dataset
from featx.errors import SettingsError
from featx.extract import extract_features
from featx.fit import fit_head
from featx.options import RunOptions, as_options, split_kwargs


def probe() -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    return Dataset("probe", X[:30], y[:30], X[30:], y[30:], tuple("abcd"), fingerprint="probe000000000001")


def test_trunk_features_keep_their_cache_keys(tmp_path):
    """The keys of featx's earlier trunk features, written out: a change to them is caught."""
    ds = probe()
    for kw, name in [({}, "trunk-probe-full-f85ff82f65960d99.h5"),
                     (dict(layers=["flatten"], flip=False), "trunk-probe-full-9c6d8883a17bb3ce.h5"),
                     (dict(grid=2), "trunk-probe-full-1e1910e666e7bfa6.h5")]:  # fmt: skip
        assert extract_features("trunk", ds, weights="none", cache_dir=tmp_path, **kw).path.name == name


@pytest.mark.parametrize(
    "kw, match",
    [(dict(batch_size=0), "batch_size must be a positive integer or 'auto'"),
     (dict(shard_size="big"), "shard_size must be a positive integer or 'auto'"),
     (dict(seed=-1), "seed must be an integer from 0 to 2\\*\\*32-1"),
     (dict(force="yes"), "force must be True or False"),
     (dict(progress=1), "progress must be True, False or None"),
     (dict(lock_timeout=-5), "lock_timeout must be a number of seconds"),
     (dict(cache_dir=3), "cache_dir must be a folder path"),
     (dict(workers=2), "workers is the size of cluster='local'"),
     (dict(cluster="not an address"), "Not a Dask scheduler address")],
)  # fmt: skip
def test_bad_options_fail_when_made(kw, match):
    with pytest.raises(SettingsError, match=match):
        RunOptions(**kw)


def test_keywords_and_the_object_are_the_same_options():
    opts = RunOptions(batch_size=16, seed=2)
    assert as_options(opts, force=True) == RunOptions(batch_size=16, seed=2, force=True)
    assert split_kwargs({"size": 64, "seed": 1, "layers": ["x"]}) == ({"size": 64, "layers": ["x"]}, {"seed": 1})
    with pytest.raises(TypeError, match="Unknown run option 'speed'"):
        opts.replace(speed=3)
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        as_options({"seed": 1})


def test_fit_head_and_compare_pass_force_progress_and_lock_timeout_to_the_extraction(tmp_path):
    ds = probe()
    extract_features("trunk", ds, weights="none", cache_dir=tmp_path)
    seen = []
    real = extract_mod._run

    def spy(extractor, ds, settings, path, opts):
        seen.append(opts)
        return real(extractor, ds, settings, path, opts)

    with mock.patch.object(extract_mod, "_run", side_effect=spy):
        fit_head("logreg", "trunk", ds, weights="none", cache_dir=tmp_path, force=True, progress=False,
                 lock_timeout=30, save=False)  # fmt: skip
        assert len(seen) == 1  # cached, and recomputed all the same: force reached the extraction
        opts = RunOptions(cache_dir=tmp_path, force=True, progress=False, lock_timeout=30, batch_size=8)
        compare(["trunk"], ["logreg"], ds, weights="none", reference=False, reports_dir=tmp_path / "r", options=opts)
    assert len(seen) == 2
    assert all((o.force, o.progress, o.lock_timeout) == (True, False, 30) for o in seen)
    assert seen[1].batch_size == 8
