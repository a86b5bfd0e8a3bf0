"""Photos: decoded to a bounded size, aspect kept by a policy, streamed into a resumable pixel cache."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from featx import data as data_mod
from featx.data import load_dataset
from featx.data import pixel_cache as pixels
from featx.errors import CacheError, DataError, SettingsError
from featx.images import ImageOptions, image_size, load_image
from featx.persistence import load_head


def _scene(h: int, w: int, seed: int = 0, cell: int = 16) -> np.ndarray:
    """A smooth picture (resizing it is well defined): noise of ``cell``-pixel blobs, upscaled."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def _photo_folder(root: Path, shapes, fmt="JPEG", quality=92) -> Path:
    for i, (h, w) in enumerate(shapes):
        for c in ("cat", "dog"):
            p = root / c / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_scene(h, w, seed=i * 2 + (c == "dog"))).save(p, format=fmt, quality=quality)
    return root


# ------------------------------------------------------------------ the policy
def test_crop_keeps_the_centre_of_portrait_and_landscape_alike():
    obj = _scene(240, 240, seed=3)  # the object, square
    land = np.zeros((240, 400, 3), np.uint8)
    land[:, 80:320] = obj  # the same object with bands left and right
    port = np.zeros((400, 240, 3), np.uint8)
    port[80:320] = obj  # ... above and below
    png = {}
    for name, arr in (("obj", obj), ("land", land), ("port", port)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        png[name] = buf.getvalue()
    want = load_image(png["obj"], (64, 64), "crop").astype(int)
    for name in ("land", "port"):
        got = load_image(png[name], (64, 64), "crop").astype(int)
        assert np.abs(got - want).mean() < 1.0, name  # the same image up to the crop
    # squash distorts: the bands are squeezed in, the object squeezed
    squashed = load_image(png["land"], (64, 64), "squash").astype(int)
    assert np.abs(squashed - want).mean() > 10
    assert squashed[:, :8].max() < 30  # the black band is in the picture
    # pad keeps the whole landscape, with black bands above and below
    padded = load_image(png["land"], (64, 64), "pad")
    assert padded[:12].max() == 0 and padded[-12:].max() == 0 and padded[24:40].std() > 5
    assert padded[:, :8].max() < 30  # its own bands are there too: nothing cut


def test_target_size_rule():
    opts = ImageOptions()
    assert opts.target([(32, 32)] * 5) == (32, 32)  # CIFAR tiles: as they are
    assert opts.target([(200, 300)] * 5) == (200, 300)  # one size within the bound: as it is
    assert opts.target([(2000, 3000)] * 5) == (256, 256)  # photos: a square of the bound
    assert opts.target([(2000, 3000), (3000, 2000), (1080, 1920)]) == (256, 256)
    assert opts.target([(32, 32), (32, 32), (64, 48)]) == (32, 32)  # small images are not blown up
    assert ImageOptions(side=384).target([(2000, 3000)]) == (384, 384)
    with pytest.raises(SettingsError, match="image side must be an integer from 8 to 4096"):
        ImageOptions(side=100000)


def test_draft_decoding_matches_a_full_decode():
    buf = io.BytesIO()
    Image.fromarray(_scene(1200, 1800, seed=5, cell=100)).save(buf, format="JPEG", quality=95)
    fast = load_image(buf.getvalue(), (128, 128), "crop", draft=True).astype(int)
    slow = load_image(buf.getvalue(), (128, 128), "crop", draft=False).astype(int)
    assert fast.shape == slow.shape == (128, 128, 3)
    # the same picture: DCT-domain scaling and a crop box rounded at 1/8 scale differ by a few levels
    assert np.abs(fast - slow).mean() < 5.0
    assert np.corrcoef(fast.ravel(), slow.ravel())[0, 1] > 0.99


def test_exif_rotation_is_applied(tmp_path):
    arr = _scene(60, 100, seed=1)  # landscape as stored
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": a portrait photo from a phone
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif, quality=95)
    assert image_size(p) == (100, 60)
    out = load_image(p)
    assert out.shape == (100, 60, 3)
    assert np.abs(out.astype(int) - np.rot90(arr, -1).astype(int)).mean() < 4


# ------------------------------------------------------------ folders of photos
def test_photo_folder_is_stored_small_and_described(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(600, 900), (900, 600), (480, 640)])
    ds = load_dataset(root, images=ImageOptions(side=64))
    assert ds.X_train.shape[1:] == (64, 64, 3) and isinstance(ds.X_train, np.memmap)
    assert ds.info["stored"] == "64x64"
    assert ds.info["sizes"] == "min 480x640, median 600x900, max 900x600"
    assert ds.info["resized"].startswith("6 of 6 images to 64x64 by crop")
    assert ds.pixel_cache.parent.name == "pixels" and (ds.pixel_cache / "X_train.npy").exists()
    text = ds.describe()
    assert "sizes" in text and "stored       64x64" in text and f"MB in {ds.pixel_cache}" in text
    # policy and bound key the data: other settings are other pixels, under another fingerprint
    other = load_dataset(root, images=ImageOptions(side=64, aspect="pad"))
    assert other.fingerprint != ds.fingerprint and not np.array_equal(other.X_train, ds.X_train)
    assert other.images == ImageOptions(side=64, aspect="pad")


def test_archive_of_photos_matches_the_folder(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(300, 450), (450, 300)], fmt="PNG")
    arch = tmp_path / "photos.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(root, arcname="photos")
    a = load_dataset(root, images=ImageOptions(side=48))
    b = load_dataset(arch, images=ImageOptions(side=48))
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.X_train, b.X_train)


def test_unreadable_photo_is_named_before_any_decode(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(100, 150)] * 2)
    (root / "cat" / "001.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="Cannot read '.*cat/001.jpg' as an image"):
        load_dataset(root)


def test_corrupt_photo_is_named_and_the_rows_done_are_kept(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(100, 150)] * 3)
    bad = root / "dog" / "002.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # its header reads, its pixels do not: found while decoding
    cache = tmp_path / "cache"
    with mock.patch.object(pixels, "CHUNK", 2), pytest.raises(DataError, match="dog/002.jpg"):
        load_dataset(root, cache_dir=cache)
    part = next((cache / "pixels" / ".partial").glob("*-*[!k]"))
    assert np.load(part / "done.npy").sum() >= 2
    assert not [p for p in (cache / "pixels").iterdir() if not p.name.startswith(".")]  # no entry that looks complete


_CHILD = """
import sys, threading
from featx import data, images
from featx.data import pixel_cache as pixels
pixels.CHUNK = 2
real, calls, lock = images.load_image, [], threading.Lock()
def load_image(*a, **k):  # from the 9th image on, every decode stops: the parent kills the process there
    with lock:
        calls.append(1)
        if len(calls) == 9:
            print("stopped", flush=True)
    if len(calls) >= 9:
        threading.Event().wait()
    return real(*a, **k)
pixels.load_image = load_image
data.load_dataset(sys.argv[1], cache_dir=sys.argv[2], images=images.ImageOptions(side=40), progress=False)
"""


@pytest.mark.slow  # a real kill -9
def test_kill_9_during_a_decode_resumes_and_equals_a_clean_run(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(120, 180), (180, 120), (150, 150)] * 4)  # 24 photos
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(Path(data_mod.__file__).parents[2]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(cache)], env=env, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "stopped"  # 8 images decoded, the rest held
        deadline = time.monotonic() + 60
        # the chunks of the 8 decoded images are recorded as they are written: wait for the first
        while not (done := list((cache / "pixels" / ".partial").glob("*/done.npy"))) or np.load(done[0]).sum() < 2:
            assert time.monotonic() < deadline and child.poll() is None, "no chunk of the decode was recorded"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
    before = int(np.load(done[0]).sum())
    assert 2 <= before <= 8
    assert not [p for p in (cache / "pixels").iterdir() if not p.name.startswith(".")]
    with mock.patch.object(pixels, "load_image", wraps=pixels.load_image) as spy:
        resumed = load_dataset(root, cache_dir=cache, images=ImageOptions(side=40))
    assert spy.call_count == 24 - before  # only the images not done
    clean = load_dataset(root, cache_dir=tmp_path / "clean", images=ImageOptions(side=40))
    assert resumed.fingerprint == clean.fingerprint
    np.testing.assert_array_equal(resumed.X_train, clean.X_train)
    np.testing.assert_array_equal(resumed.X_test, clean.X_test)
    assert not [p for p in (cache / "pixels" / ".partial").iterdir() if p.is_dir()]  # the partial became the entry


def test_a_partial_decode_of_other_settings_is_not_reused(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(100, 150)] * 3)
    cache = tmp_path / "cache"
    first = load_dataset(root, cache_dir=cache, images=ImageOptions(side=32))
    entry = next(p for p in (cache / "pixels").iterdir() if not p.name.startswith("."))
    # a stale partial under the same name, from another plan: thrown away, not mixed in
    part = pixels.partial_dir(entry)
    part.mkdir()
    (part / "plan.json").write_text(json.dumps({"names": ["x"], "size": [9, 9]}))
    import shutil

    shutil.rmtree(entry)
    again = load_dataset(root, cache_dir=cache, images=ImageOptions(side=32))
    np.testing.assert_array_equal(first.X_train, again.X_train)


def test_sample_pixels_and_keys_are_unchanged():
    # fingerprints of the shipped sample before photos were decoded to a bound: old caches still hit
    fps = {t: load_dataset("sample", t).fingerprint for t in ("full", "target", "source")}
    assert fps == {"full": "a02268fb70cb5fee", "target": "86b048fad8ffc1da", "source": "8d5077efd1540fea"}
    ds = load_dataset("sample")
    assert "resized" not in ds.info and ds.info["stored"] == "32x32"


# ------------------------------------------------- the command line, fit and predict
def _run_cli(*args):
    root = Path(data_mod.__file__).parents[2]
    return subprocess.run([sys.executable, str(root / "cli.py"), *args], capture_output=True, text=True, cwd=root)


def test_data_command_says_what_it_found_and_stored(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(300, 450), (450, 300), (270, 480)])
    res = _run_cli("data", "--data", str(root), "--image-side", "64", "--cache-dir", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(None, 1) for line in res.stdout.splitlines() if line[:1].isalpha() and " " in line)
    assert lines["sizes"].strip() == "min 270x480, median 300x450, max 450x300"
    assert lines["stored"].strip() == "64x64"
    assert lines["resized"].startswith("6 of 6 images to 64x64 by crop (sizes seen: ")
    assert re_cache(lines["pixel"])
    res = _run_cli("data", "--data", str(root), "--aspect", "stretch")
    assert res.returncode == 2 and "invalid choice: 'stretch'" in res.stderr


def re_cache(text: str) -> bool:
    import re

    return re.fullmatch(r"cache\s+[\d.,]+ MB in .*pixels/photos-[0-9a-f]{16}", text.strip()) is not None


def test_predict_stores_a_photo_as_the_heads_training_images(tmp_path):
    from featx.extract import extract_features
    from featx.fit import fit_head
    from featx.predict import predict_files

    root = tmp_path / "photos"
    for split, n in (("train", 3), ("test", 2)):
        _photo_folder(root / split, [(300, 450), (450, 300), (330, 330)][:n])
    opts = dict(weights="none", size=32, aspect="pad", image_side=48, precision="float32", cache_dir=tmp_path / "c")
    _, path = fit_head("logreg", "vgg19", root, **opts)
    est = load_head(path)[0]
    X_train = extract_features("vgg19", root, **opts).load()[0]
    want = est.predict_proba(np.asarray(X_train[:2])).max(axis=1)  # train/cat/000.jpg, train/cat/001.jpg
    files = [root / "train" / "cat" / "000.jpg", root / "train" / "cat" / "001.jpg"]
    got = [p.score for p in predict_files(files, "logreg", "vgg19", root, **opts)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the head fitted on letterboxed photos is not the one for cropped ones: an error lists it
    with pytest.raises(CacheError, match="aspect pad"):
        list(predict_files(files, "logreg", "vgg19", root, **{**opts, "aspect": "crop"}))


def test_aspect_and_side_are_feature_settings_keyed_only_away_from_their_defaults():
    from featx.spec import FeatureSpec

    a = FeatureSpec("vgg19", size=64, precision="float32", layers="classic")
    assert "aspect" not in a.key_settings("w") and "image_side" not in a.key_settings("w")  # old caches hit
    b = a.replace(aspect="pad", image_side=384)
    assert b.key_settings("w")["aspect"] == "pad" and b.key_settings("w")["image_side"] == 384
    assert b.describe() == "vgg19 64px avg, imagenet, aspect pad, image_side 384"
    assert a.images == ImageOptions(256, "crop") and b.images == ImageOptions(384, "pad")
    assert FeatureSpec("vgg19", size=384, precision="float32").images.side == 384  # raised with the input size
    with pytest.raises(SettingsError, match="aspect must be one of crop, pad, squash"):
        a.replace(aspect="fill")


def test_decodes_of_other_settings_stay_side_by_side(tmp_path):
    root = _photo_folder(tmp_path / "photos", [(100, 150)] * 2)
    cache = tmp_path / "cache"
    load_dataset(root, cache_dir=cache, images=ImageOptions(side=32, aspect="pad"))
    load_dataset(root, cache_dir=cache, images=ImageOptions(side=32, aspect="crop"))
    entries = [p for p in (cache / "pixels").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2  # the crop decode did not throw the pad one away
    with mock.patch.object(pixels, "load_image", wraps=pixels.load_image) as spy:
        load_dataset(root, cache_dir=cache, images=ImageOptions(side=32, aspect="pad"))
    assert spy.call_count == 0
