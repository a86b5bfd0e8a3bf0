"""Precision, device and batch size: resolved from what the hardware reports."""

import keras
import numpy as np
import pytest
from conftest import make_class_folders

from featx import runtime
from featx.errors import ResourceError, SettingsError
from featx.extract import embed, extract_features
from featx.extractor import build_extractor
from featx.spec import FeatureSpec

CPU_PLAIN = {"device": "cpu", "cpu_flags": ["avx2", "fma"]}
CPU_BF16 = {"device": "cpu", "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "fma"]}
H100 = {"device": "gpu", "name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0), "memory_bytes": 80 * 2**30}
V100 = {"device": "gpu", "name": "Tesla V100", "compute_capability": (7, 0), "memory_bytes": 16 * 2**30}


@pytest.mark.parametrize(
    "report, precision",
    [(CPU_PLAIN, "float32"), (CPU_BF16, "float32"), ({"device": "cpu", "cpu_flags": ["amx_bf16"]}, "float32"),
     (H100, "bfloat16"), (V100, "float32"), ({"device": "gpu", "compute_capability": None}, "float32")],
)  # fmt: skip
def test_auto_precision_follows_the_hardware_report(report, precision, monkeypatch):
    chosen, why = runtime.auto_precision(report)
    assert chosen == precision and why
    # and a spec resolves "auto" by this machine's report, for every backbone but the trunk
    monkeypatch.setattr(runtime, "_REPORT", {**report, "cpu_flags": report.get("cpu_flags", [])})
    assert FeatureSpec("resnet50").precision == precision
    assert FeatureSpec("trunk").precision == "float32"


def test_a_cpu_with_native_bfloat16_makes_the_same_default_features_as_one_without(monkeypatch):
    keys = []
    for report in (CPU_PLAIN, CPU_BF16):
        monkeypatch.setattr(runtime, "_REPORT", report)
        keys.append(FeatureSpec("resnet50", weights="none").key_settings("w"))
    assert keys[0] == keys[1] and "precision" not in keys[0]  # the caches of one are found on the other
    assert "--precision bfloat16 is faster here" in runtime.auto_precision(CPU_BF16)[1]


def test_auto_batch_size_is_small_on_a_cpu_and_sized_by_gpu_memory():
    assert runtime.auto_batch_size(224, CPU_BF16) == 32
    assert runtime.auto_batch_size(224, H100) == 1024
    assert runtime.auto_batch_size(224, V100) == 256
    assert runtime.auto_batch_size(32, H100) == 4096  # small inputs: more per batch, capped


def test_precision_is_checked_and_enters_the_cache_key():
    f32 = FeatureSpec("vgg19", weights="none", size=32, precision="float32")
    bf16 = f32.replace(precision="bfloat16")
    assert "precision" not in f32.key_settings("w")  # float32: keys of caches made before are unchanged
    assert bf16.key_settings("w")["precision"] == "bfloat16" and "precision bfloat16" in bf16.describe()
    with pytest.raises(SettingsError, match="precision must be one of auto, float32, bfloat16, float16"):
        FeatureSpec("vgg19", precision="fp8")
    with pytest.raises(SettingsError, match="The trunk runs in float32 only"):
        FeatureSpec("trunk", precision="bfloat16")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_lower_precision_embeddings_agree_with_float32(precision):
    X = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    spec = FeatureSpec("resnet50", weights="none", size=32, layers=["conv5_block3_out"], precision="float32")
    ref = np.asarray(build_extractor(spec, seed=0).predict_on_batch(X))
    model = build_extractor(spec.replace(precision=precision), seed=0)
    low = np.asarray(model.predict_on_batch(X))
    assert low.dtype == np.float32 and model.layers[-1].name == "to_float32"
    assert any(layer.dtype_policy.name == f"mixed_{precision}" for layer in model.layers)
    # Same weights, arithmetic in 8 (bfloat16) or 11 (float16) mantissa bits: the embeddings
    # point the same way (cosine > 0.999) and differ by under 2% of their scale.
    cos = np.sum(ref * low, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(low, axis=1)
    assert cos.min() > 0.999
    assert np.abs(ref - low).max() < 0.02 * np.abs(ref).max()
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was


def test_a_batch_that_does_not_fit_is_halved_and_the_run_goes_on(tmp_path, caplog):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("simulates TensorFlow's out-of-memory error")
    tiny = make_class_folders(tmp_path / "ds", n_train=12, n_test=4)
    spec = FeatureSpec("vgg19", weights="none", size=32, layers=["block5_pool"])
    first = extract_features(spec, tiny, cache_dir=tmp_path / "a", batch_size=8)
    fresh = first.load()
    # Keras's compilation choice on a CPU-only TensorFlow: a graph, not XLA; said and recorded
    assert first.info["compiled"] == "graph" and "(tensorflow, graph): precision" in caplog.text
    model = build_extractor(spec, seed=0)
    assert runtime.compilation(model) == "graph"
    model.jit_compile = True
    assert runtime.compilation(model) == "XLA"
    real = keras.Model.predict_on_batch
    seen = []

    def spy(self, x):
        seen.append(len(x))
        if len(x) > 8:  # the device "has room" for 8 images
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(self, x)

    runtime._REPORT = {**H100}  # "auto" on a GPU asks for a large batch
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(keras.Model, "predict_on_batch", spy)
            mp.setattr(runtime, "auto_batch_size", lambda size, report=None: 32)
            fs = extract_features(spec.replace(precision="float32"), tiny, cache_dir=tmp_path / "b")
    finally:
        runtime._REPORT = None
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert "a batch of 32 images did not fit in device memory: going on with 16" in warned
    assert "a batch of 16 images did not fit in device memory: going on with 8" in warned and seen[:3] == [32, 16, 8] and max(seen[3:]) == 8
    for a, b in zip(fs.load(), fresh):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a fixed batch size is the user's: an out-of-memory error is one line that says what to do, not worked around
    X = np.zeros((16, 32, 32, 3), np.uint8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.Model, "predict_on_batch", spy)
        with pytest.raises(ResourceError, match="a batch of 16 images did not fit in memory"):
            list(embed(build_extractor(spec, seed=0), X, batch_size=16))
