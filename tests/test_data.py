import io
import os
import pickle
import tarfile
import zipfile
from unittest import mock

import numpy as np
import pytest
from conftest import make_class_folders, write_image
from PIL import Image

from featx import data as data_mod
from featx.data import CIFAR10_CLASSES, folders, load_dataset, make_task, stratified_split
from featx.errors import DataError


# ------------------------------------------------------------------ the sample
@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


def test_sample_is_real_balanced_cifar(sample):
    assert sample.class_names == CIFAR10_CLASSES
    assert sample.X_train.shape == (10000, 32, 32, 3) and sample.X_test.shape == (2000, 32, 32, 3)
    assert sample.X_train.dtype == np.uint8
    assert np.bincount(sample.y_train).tolist() == [1000] * 10
    assert np.bincount(sample.y_test).tolist() == [200] * 10
    # Real photographs: varied pixels, natural colour statistics, no blank or duplicate images.
    flat = sample.X_train.reshape(len(sample.X_train), -1)
    assert flat.std(axis=1).min() > 3
    assert 90 < sample.X_train.mean() < 150
    assert len(np.unique(flat[:2000], axis=0)) == 2000


def test_sample_is_default_and_reproducible(sample):
    again = load_dataset()
    assert again.name == "sample" and again.fingerprint == sample.fingerprint
    np.testing.assert_array_equal(again.X_test, sample.X_test)


def test_sample_archive_stays_small():
    assert data_mod.sample_path().stat().st_size < 12e6


# ----------------------------------------------------------------------- tasks
def test_source_and_target_tasks(sample):
    src = make_task(sample, "source")
    tgt = make_task(sample, "target")
    assert src.class_names == CIFAR10_CLASSES[:5] and tgt.class_names == CIFAR10_CLASSES[5:]
    for ds in (src, tgt):
        assert set(np.unique(ds.y_train)) == set(range(5))
        assert len(ds.X_train) == 4800 and len(ds.X_test) == 1200  # 80/20 of pooled 6,000
        assert np.bincount(ds.y_test).tolist() == [240] * 5
    # target images really are the dogs (class 5) of the full dataset
    dogs = sample.X_train[sample.y_train == 5]
    assert any((tgt.X_train[tgt.y_train == 0][0] == d).all() for d in dogs[:1000])
    assert src.fingerprint != tgt.fingerprint != sample.fingerprint


def test_task_split_is_seeded(sample):
    a = make_task(sample, "target", seed=0)
    b = make_task(sample, "target", seed=0)
    c = make_task(sample, "target", seed=1)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.X_test, c.X_test)


def test_unknown_task():
    with pytest.raises(ValueError, match="Received: task='middle'"):
        load_dataset("sample", task="middle")


def test_stratified_split_is_disjoint_and_covering():
    y = np.repeat(np.arange(3), [10, 20, 5])
    tr, te = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    assert np.bincount(y[te]).tolist() == [2, 4, 1]


# -------------------------------------------------------------- local sources
def test_folder_with_train_test(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    ds = load_dataset(root)
    assert ds.class_names == ("cat", "dog", "eel")
    assert ds.X_train.shape == (12, 32, 32, 3) and ds.X_test.shape == (6, 32, 32, 3)
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # lossless PNG: pixels are exactly those written
    expected = write_image(tmp_path / "x.png", seed=0)
    np.testing.assert_array_equal(ds.X_train[0], expected)


def test_folder_of_classes_only_is_split(tmp_path):
    root = make_class_folders(tmp_path / "ds", n_train=8, n_test=2, split=False)
    ds = load_dataset(root, seed=0)
    assert len(ds.X_train) == 24 and len(ds.X_test) == 6
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]
    assert "stratified" in ds.info["split"]


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "tar"])
def test_archives_match_folder(tmp_path, kind):
    root = make_class_folders(tmp_path / "ds")
    arch = tmp_path / f"ds.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(arch, "w") as zf:
            for p in sorted(root.rglob("*.png")):
                zf.write(p, "ds/" + p.relative_to(root).as_posix())
    else:
        with tarfile.open(arch, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(root, arcname="ds")
    a, b = load_dataset(root), load_dataset(arch)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.X_train, b.X_train)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


def _write_cifar_batches(folder):
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(4, i)))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 9)))
    names = [c.encode() for c in CIFAR10_CLASSES]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_cifar_batches_folder_and_archive(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(folder)
    ds = load_dataset(folder)
    assert ds.X_train.shape == (20, 32, 32, 3) and ds.X_test.shape == (3, 32, 32, 3)
    b1 = _cifar_batch(4, 1)
    # channel-first rows become HWC images
    np.testing.assert_array_equal(ds.X_train[0], b1[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.class_names == CIFAR10_CLASSES
    arch = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    assert load_dataset(arch).fingerprint == ds.fingerprint


def test_cifar10_offline_says_what_to_do(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match=r"--data PATH.*cifar-10-batches-py"):
        load_dataset("cifar10")


# ------------------------------------------------------------------ bad input
def test_missing_path():
    with pytest.raises(DataError, match="Dataset not found: 'no/such/dir'"):
        load_dataset("no/such/dir")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No image files"):
        load_dataset(tmp_path / "empty")


def test_single_class(tmp_path):
    make_class_folders(tmp_path / "ds", classes=("cat",), split=False)
    with pytest.raises(DataError, match="single class .'cat'."):
        load_dataset(tmp_path / "ds")


def test_corrupt_image_is_named(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg.*remove it"):
        load_dataset(root)


def test_non_image_files_are_skipped_and_recorded(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    ds = load_dataset(root)
    assert len(ds.X_train) == 12
    assert "notes.txt" in ds.info["skipped"]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_colour_modes_become_rgb(tmp_path, mode):
    from PIL import Image

    root = make_class_folders(tmp_path / "ds")
    path = root / "train" / "cat" / "odd.png"
    rgb = np.random.default_rng(99).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "I;16":  # a real 16-bit image: 0..65535
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(rgb).convert(mode).save(path)
    want = {"L": np.repeat(grey[..., None], 3, axis=2), "RGBA": rgb, "I;16": np.repeat(grey[..., None], 3, axis=2),
            "P": np.asarray(Image.open(path).convert("RGB"))}[mode]  # fmt: skip
    assert Image.open(path).mode == mode
    ds = load_dataset(root)
    assert ds.X_train.shape == (13, 32, 32, 3)
    img = ds.X_train[ds.files[0].index("train/cat/odd.png")]
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, want)


def test_grayscale_pixels_are_replicated(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    write_image(root / "train" / "cat" / "zz.png", seed=5, mode="L")
    ds = load_dataset(root)
    img = ds.X_train[4]
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_other_sizes_are_resized_and_recorded(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    write_image(root / "train" / "dog" / "big.png", seed=7, size=(64, 48))
    ds = load_dataset(root)
    assert ds.X_train.shape[1:] == (32, 32, 3)
    assert "1 of 19 images to 32x32 by crop" in ds.info["resized"] and "64x48" in ds.info["resized"]
    ds2 = load_dataset(root, image_size=(40, 40))
    assert ds2.X_train.shape[1:] == (40, 40, 3)


def test_image_outside_class_folder(tmp_path):
    root = make_class_folders(tmp_path / "ds", split=False)
    write_image(root / "stray.png", seed=1)
    with pytest.raises(DataError, match="stray.png', which is not inside a class folder"):
        load_dataset(root)


def test_train_without_test(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    for p in (root / "test").rglob("*.png"):
        p.unlink()
    for d in sorted((root / "test").rglob("*"), reverse=True):
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="no 'test' folder"):
        load_dataset(root)


def test_train_and_test_classes_differ(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    write_image(root / "test" / "fox" / "0.png", seed=3)
    with pytest.raises(DataError, match="fox is in only one"):
        load_dataset(root)


def test_truncated_archive(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    arch = tmp_path / "ds.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(root, arcname="ds")
    arch.write_bytes(arch.read_bytes()[: arch.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(arch)


def test_not_an_archive(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n")
    with pytest.raises(DataError, match="expected a folder or an archive"):
        load_dataset(f)


# --------------------------------------------------------- decoded-pixel cache
def test_pixel_cache_hit_and_invalidation(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    arch = tmp_path / "ds.tar"
    with tarfile.open(arch, "w") as tf:
        tf.add(root, arcname="ds")
    cache = tmp_path / "cache"
    with mock.patch.object(folders, "_read_source", wraps=folders._read_source) as spy:
        first = load_dataset(arch, cache_dir=cache)
        second = load_dataset(arch, cache_dir=cache)
        assert spy.call_count == 1  # second load came from the cache
        np.testing.assert_array_equal(first.X_train, second.X_train)
        assert first.fingerprint == second.fingerprint

        # Change the source: one more image, new mtime.
        write_image(root / "train" / "cat" / "new.png", seed=42)
        with tarfile.open(arch, "w") as tf:
            tf.add(root, arcname="ds")
        os.utime(arch, ns=(0, arch.stat().st_mtime_ns + 10**9))
        third = load_dataset(arch, cache_dir=cache)
        assert spy.call_count == 2
        assert len(third.X_train) == 13 and third.fingerprint != first.fingerprint
    # The stale entry was replaced, not kept beside the new one.
    assert len([p for p in (cache / "pixels").iterdir() if not p.name.startswith(".")]) == 1


def test_folder_cache_notices_changed_file(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    a = load_dataset(root)
    write_image(root / "train" / "cat" / "000.png", seed=1234)
    b = load_dataset(root)
    assert a.fingerprint != b.fingerprint
    assert not np.array_equal(a.X_train[0], b.X_train[0])


def test_unreadable_pixel_cache_is_rebuilt(tmp_path):
    root = make_class_folders(tmp_path / "ds")
    cache = tmp_path / "cache"
    a = np.array(load_dataset(root, cache_dir=cache).X_train)  # a copy: the file is damaged in place below
    entry = next(p for p in (cache / "pixels").iterdir() if not p.name.startswith("."))
    (entry / "X_train.npy").write_bytes(b"garbage")
    b = load_dataset(root, cache_dir=cache)
    np.testing.assert_array_equal(a, b.X_train)


def test_describe_lists_classes(sample):
    text = sample.describe()
    assert "10000 train, 2000 test" in text and "32x32x3" in text and "truck" in text


def test_io_bytes_decode():
    from PIL import Image

    from featx.images import decode_image

    buf = io.BytesIO()
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(buf, format="PNG")
    img = decode_image(buf.getvalue())
    assert img.shape == (4, 5, 3) and img[0, 0].tolist() == [10, 20, 30]


def test_16_bit_and_float_images_are_scaled_by_their_formats_range(tmp_path):
    from featx.images import decode_image

    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256).astype(np.uint16)  # max 255
    brighter = ramp.copy()
    brighter[0, 0] = 256  # one pixel above 255 must not change how the others look
    full = np.full((32, 32), 65535, np.uint16)
    half = np.full((32, 32), 32896, np.uint16)  # 128 * 257
    for name, arr in (("ramp", ramp), ("brighter", brighter), ("full", full), ("half", half)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    got = {n: decode_image(tmp_path / f"{n}.png")[..., 0].astype(int) for n in ("ramp", "brighter", "full", "half")}
    np.testing.assert_array_equal(got["ramp"], np.rint(ramp / 257))
    np.testing.assert_array_equal(got["brighter"].ravel()[1:], got["ramp"].ravel()[1:])
    assert (got["full"] == 255).all() and (got["half"] == 128).all()
    Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).save(tmp_path / "float.tif")
    f = decode_image(tmp_path / "float.tif")[..., 0]
    assert f.min() == 0 and f.max() == 255 and abs(int(f[16, 0]) - 128) <= 1  # 0..1 is the float range


def test_every_format_pillow_opens_is_an_image_avif_and_jfif_too(tmp_path):
    from PIL import features

    root = make_class_folders(tmp_path / "ds")
    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "train" / "cat" / "photo.jfif", format="JPEG")
    (root / "train" / "cat" / "notes.h5").write_bytes(b"not an image")  # HDF5: Pillow has only a stub for it
    added = 1
    if features.check("avif"):
        for split in ("train", "test"):
            (root / split / "avif").mkdir()
            for i in range(3):
                Image.fromarray(rgb).save(root / split / "avif" / f"{i}.avif", format="AVIF")
        added += 3
    ds = load_dataset(root)
    assert len(ds.X_train) == 12 + added
    if features.check("avif"):
        assert "avif" in ds.class_names  # a class folder of AVIF photos is a class, not dropped


def test_a_decompression_bomb_is_named_in_one_line_and_predict_classifies_the_others(tmp_path):
    import zlib

    from featx.images import decode_image

    # a 20000x20000 grayscale PNG of a few hundred KB: its header claims 400 million pixels
    w = h = 20000
    raw = zlib.compress(b"".join(b"\x00" + bytes(w) for _ in range(h)), 9)

    def chunk(kind, data):
        import struct

        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    import struct

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + \
        chunk(b"IEND", b"")  # fmt: skip
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png)
    with pytest.raises(DataError, match=r"'.*bomb.png' claims more pixels than any photo has"):
        decode_image(bomb)
    from featx.fit import fit_head
    from featx.predict import predict_files

    root = make_class_folders(tmp_path / "ds")
    fit_head("logreg", "trunk", root, weights="none", cache_dir=tmp_path / "c")
    good = sorted((root / "test").rglob("*.png"))[0]
    preds = list(predict_files([good, bomb], "logreg", "trunk", root, weights="none", cache_dir=tmp_path / "c"))
    assert preds[0].error is None and preds[0].label in ("cat", "dog", "eel")
    assert "claims more pixels" in preds[1].error and preds[1].label is None
    (root / "train" / "cat" / "bomb.png").write_bytes(png)
    with pytest.raises(DataError, match=r"bomb.png' claims more pixels"):
        load_dataset(root)


def test_a_folder_of_mixed_small_sizes_is_stored_at_its_most_common_shorter_side(tmp_path):
    root = tmp_path / "mixed"
    seed = 0
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                write_image(root / split / c / f"{i}.png", seed, size=(150, 200) if i else (300, 400))
                seed += 1
    ds = load_dataset(root)
    assert ds.X_train.shape[1:] == (150, 150, 3) and ds.info["stored"] == "150x150"  # as README says
