"""Ship the classifier: the frozen backbone and a fitted head as one model.

:func:`export_classifier` takes a head saved by :func:`featx.fit.fit_head`,
rebuilds the backbone its features came from, turns the head into Keras layers
(each head's ``to_keras``: ``dense`` as it is, ``logreg`` and ``svm`` as one
Dense layer with the scaler and the SVM's sigmoid calibration folded in,
``svm-rbf`` as its Nystroem RBF map plus one Dense layer) and writes

- ``keras``: a ``.keras`` file (Keras's own format; loads with ``safe_mode``),
- ``onnx``: an ``.onnx`` file through Keras's own ``export(format="onnx")``,
  which runs with ``onnxruntime`` alone, without featx,
- ``saved_model``: a TensorFlow SavedModel folder.

The model takes uint8 RGB images ``(n, h, w, 3)`` of any size (resized inside,
as in extraction) and returns class probabilities ``(n, classes)``. What it
needs beside the weights travels with it as JSON (:data:`META`): the class names
in output order, the size and aspect policy of the images the head was trained
on, the features and the head: inside the ``.keras`` zip as ``featx.json``, in
the ONNX file's metadata (``class_names`` and ``featx``), in the SavedModel's
``assets/featx.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HeadError, ResourceError, SettingsError
from .extractor import Extractor
from .fit import load_fitted
from .heads import HEADS
from .options import RunOptions, as_options, split_kwargs
from .spec import FeatureSpec, as_spec

#: Export formats, by the name ``--format`` takes.
FORMATS = ("keras", "onnx", "saved_model")
#: The JSON that travels with an exported model.
META = "featx.json"
_INSTALL = "pip install 'featx[export]'"


def export_classifier(out, head: str = "logreg", spec: FeatureSpec | str = "vgg19", data=None, task: str = "full", *,
                      format: str | None = None, force: bool = False, trust_pickle: bool = False,
                      options: RunOptions | None = None, **kwargs) -> Path:  # fmt: skip
    """Export the saved ``head`` and its backbone as one model at ``out``; return its path.

    ``head``, ``spec`` (or a backbone and feature settings among ``kwargs``),
    ``data``, ``task`` and the options' seed find the head as
    :func:`featx.predict.predict_files` does. ``format``: one of
    :data:`FORMATS` (default: from ``out``'s ending: ``.keras``, ``.onnx``, else
    a SavedModel folder). An existing ``out`` is replaced only with ``force``.

    Examples
    --------
    >>> path = export_classifier("classifier.onnx", "logreg", "trunk")  # doctest: +SKIP
    """
    settings, run = split_kwargs(kwargs)
    spec = as_spec(spec, **settings)
    opts = as_options(options, **run)
    out = Path(out).expanduser()
    fmt = _format(out, format)
    if out.exists() and not force:
        raise SettingsError(f"{out} exists: pass another path, or --force (force=True) to replace it.")
    if out.is_dir() and not (out / "saved_model.pb").exists():
        raise SettingsError(f"{out} is a folder that is not a SavedModel: featx never replaces it, even with "
                            "--force. Pass a new path.")  # fmt: skip
    if fmt == "saved_model" and out.exists() and not out.is_dir():
        raise SettingsError(f"{out} is a file, and a SavedModel is a folder: featx does not replace one with the "
                            "other. Pass a new path (or a name ending in .keras or .onnx for a file).")  # fmt: skip
    if fmt != "saved_model" and out.is_dir():
        raise SettingsError(f"{out} is a folder, and a {fmt} model is a file: pass a new path.")
    if out.is_dir():
        theirs = _not_ours(out)
        if theirs:
            raise SettingsError(
                f"{out} holds files featx did not write ({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}): "
                "featx never deletes them, even with --force. Move them out, or pass a new path."
            )
    _check_installed(fmt)
    if head in HEADS and not HEADS[head].exports():  # before loading anything
        raise HeadError(f"The {head} head cannot be exported: featx exports {', '.join(exportable())}.")
    est, rec, _, extractor, fitted_spec = load_fitted(head, spec, data, task, options=opts, trust_pickle=trust_pickle)
    if not hasattr(est, "to_keras"):
        raise HeadError(f"The {head} head cannot be exported: featx exports {', '.join(exportable())}.")
    model = classifier_model(extractor, est)
    shape = list(rec.get("image_shape", [32, 32, 3]))[:2]
    meta = {"class_names": [str(rec["class_names"][int(c)]) for c in est.classes_], "image_shape": shape,
            "aspect": fitted_spec.aspect, "head": head, "features": fitted_spec.describe(),
            "input": "uint8 RGB images (n, h, w, 3), any size: resized inside",
            "output": "class probabilities (n, classes), in class_names order"}  # fmt: skip
    return _write(model, meta, out, fmt)


def exportable() -> list[str]:
    """The heads that :func:`export_classifier` can export."""
    return [name for name, cls in HEADS.items() if cls.exports()]


def classifier_model(extractor: Extractor, estimator):
    """The Keras model ``uint8 images -> class probabilities``: ``extractor``'s frozen model, then
    the fitted ``estimator`` as layers."""
    import keras

    base = extractor.model
    probs = estimator.to_keras(base.output)
    model = keras.Model(base.inputs, probs, name="featx_classifier")
    model.trainable = False
    return model


@dataclass
class ExportedModel:
    """A classifier exported by featx, loaded: ``predict_proba(uint8 images)`` and what travels with it."""

    path: Path
    class_names: list
    image_shape: tuple
    aspect: str
    run: object

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(np.asarray(images, dtype=np.uint8)), dtype=np.float64)


def is_exported(head) -> bool:
    """Whether ``head`` names an exported model (a path to a .keras or .onnx file or a SavedModel folder)."""
    if not isinstance(head, (str, os.PathLike)):
        return False
    p = Path(head).expanduser()
    return p.suffix in (".keras", ".onnx") or (p.is_dir() and (p / "saved_model.pb").exists())


def load_exported(path, *, trust_saved_model: bool = False) -> ExportedModel:
    """Load a classifier written by :func:`export_classifier` (``.keras`` with ``safe_mode`` on;
    ``.onnx`` with onnxruntime; a SavedModel with TensorFlow, only with ``trust_saved_model``:
    a SavedModel is a program, its graph can do anything when it runs)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SettingsError(f"Exported model not found: {p}. Export one with `python cli.py export`.")
    if p.is_dir() and not trust_saved_model:
        raise SettingsError(
            f"{p} is a TensorFlow SavedModel: loading one runs the graph it holds, which can do anything a "
            "program can (write files, open connections). Load it only if you made it or trust who did: "
            "--trust-saved-model (trust_saved_model=True). A .keras or .onnx export runs no code of its own."
        )
    try:
        if p.suffix == ".keras":
            import zipfile

            import keras

            from .layers import featx_layers

            featx_layers()  # featx's layers, registered for safe_mode
            with zipfile.ZipFile(p) as zf:
                meta = json.loads(zf.read(META))
            model = keras.saving.load_model(p, safe_mode=True)
            outputs = model.output.shape[-1]

            def run(x):
                return model.predict_on_batch([x])
        elif p.suffix == ".onnx":
            import onnx
            import onnxruntime as ort

            proto = onnx.load(str(p))
            meta = json.loads({m.key: m.value for m in proto.metadata_props}[META.split(".")[0]])
            if "weights_sha256" in meta and onnx_weights_digest(proto) != meta["weights_sha256"]:
                raise _Damaged("its weights are not those it was exported with (the file was changed or damaged)")
            sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            outputs = sess.get_outputs()[0].shape[-1]

            def run(x):
                return sess.run(None, {name: x})[0]
        else:
            import tensorflow as tf

            meta = json.loads((p / "assets" / META).read_text())
            loaded = tf.saved_model.load(str(p))
            outputs = None

            def run(x):
                return loaded.serve([x]).numpy()  # the signature takes the list of inputs
        names, shape, aspect = _checked_meta(meta, outputs)
    except ImportError as exc:
        raise SettingsError(f"Loading {p.name} needs {exc.name}: {_INSTALL}.") from None
    except _Damaged as exc:
        raise SettingsError(f"{p} cannot be used: {exc}. Export it again.") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file, whatever its reader raised: one line
        text = " ".join(str(exc).split())[:200]
        raise SettingsError(f"{p} is not a classifier exported by featx ({exc.__class__.__name__}: {text}).") from None
    return ExportedModel(p, names, shape, aspect, run)


class _Damaged(Exception):
    """An exported file that reads, but is not what was exported."""


def _checked_meta(meta: dict, outputs) -> tuple[list[str], tuple[int, int], str]:
    """The class names, image shape and aspect of an export's metadata, checked against the model."""
    from .images import ASPECTS

    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _Damaged("its class names are not a list of distinct names")
    if isinstance(outputs, int) and outputs != len(names):
        raise _Damaged(f"it names {len(names)} classes for a model of {outputs} outputs")
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and 0 < v <= 4096 for v in shape)):
        raise _Damaged(f"its image_shape {shape!r} is not two sides in pixels")
    aspect = meta.get("aspect", "crop")
    if aspect not in ASPECTS:
        raise _Damaged(f"its aspect {aspect!r} is none of {', '.join(ASPECTS)}")
    return names, tuple(shape), aspect


def onnx_weights_digest(proto) -> str:
    """sha256 of an ONNX model's weights (its initializers, names and contents)."""
    import hashlib

    h = hashlib.sha256()
    for init in proto.graph.initializer:
        h.update(init.name.encode())
        h.update(init.SerializeToString())
    return h.hexdigest()


def _format(out: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = {".keras": "keras", ".onnx": "onnx"}.get(out.suffix, "saved_model")
    if fmt not in FORMATS:
        raise SettingsError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    want = {"keras": ".keras", "onnx": ".onnx"}.get(fmt)
    if want and out.suffix != want:
        raise SettingsError(f"A {fmt} model is a file ending in {want}. Received: {out}")
    if fmt == "saved_model" and out.suffix in (".keras", ".onnx"):
        raise SettingsError(f"A SavedModel is a folder, not a {out.suffix} file. Received: {out}")
    return fmt


def _not_ours(folder: Path) -> list[str]:
    """What a SavedModel folder holds besides what an export writes (a user's notes, logs, ...)."""
    ours = {"saved_model.pb", "fingerprint.pb", "variables", "assets"}
    theirs = [p.name for p in folder.iterdir() if p.name not in ours]
    if (folder / "variables").is_dir():
        theirs += [f"variables/{p.name}" for p in (folder / "variables").iterdir()
                   if not p.name.startswith("variables.")]  # fmt: skip
    if (folder / "assets").is_dir():
        theirs += [f"assets/{p.name}" for p in (folder / "assets").iterdir() if p.name != META]
    return sorted(theirs)


def _check_installed(fmt: str) -> None:
    import importlib.util

    import keras

    need = {"onnx": ["onnx", "onnxruntime"], "saved_model": ["tensorflow"], "keras": []}[fmt]
    backend = keras.backend.backend()
    if fmt == "onnx":  # the converter Keras's ONNX export uses on each backend
        need.append({"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "torch"}.get(backend, "tf2onnx"))
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        how = f"pip install {' '.join(missing)}" if "jax2onnx" in missing else _INSTALL
        raise SettingsError(f"Exporting to {fmt} under the {backend} Keras backend needs {', '.join(missing)}: "
                            f"{how} (or export from the TensorFlow backend: KERAS_BACKEND=tensorflow).")  # fmt: skip


def _check_onnx(proto, model, meta: dict) -> None:
    """Refuse an ONNX graph that the converter could not express in ONNX (it writes the ops it does
    not know as they are, and the file then fails to load), and one whose outputs are not the model's."""
    import onnx

    unknown = sorted({n.op_type for n in proto.graph.node if not onnx.defs.has(n.op_type, n.domain or "")})
    if unknown:
        raise SettingsError(
            f"The ONNX converter cannot express this backbone: its ops {', '.join(unknown)} have no ONNX "
            "equivalent here (Erfc is the exact GELU of transformers such as DINOv2 and ViT). Export to .keras "
            "or a SavedModel folder instead."
        )
    import onnxruntime as ort

    x = np.random.default_rng(0).integers(0, 256, (2, *meta["image_shape"], 3), dtype=np.uint8)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = np.asarray(model([x]) if isinstance(model.inputs, list) else model(x))
    if not np.allclose(got, want, atol=1e-4):
        raise SettingsError(
            f"The ONNX converter changed this classifier's outputs (by up to {np.abs(got - want).max():.2g}): "
            "export to .keras or a SavedModel folder instead."
        )


def _write(model, meta: dict, out: Path, fmt: str) -> Path:
    """Write ``model`` and ``meta`` beside ``out``, then give them ``out``'s name: complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", dir=out.parent))
    try:
        tmp = tmp_dir / out.name
        model([np.zeros((1, *meta["image_shape"], 3), np.uint8)])  # traced once: export needs a called model
        if fmt == "keras":
            import zipfile

            model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr(META, json.dumps(meta, indent=1))
        elif fmt == "onnx":
            import onnx

            with warnings.catch_warnings():  # Keras's ONNX module probes numpy for np.object
                warnings.simplefilter("ignore", FutureWarning)
                model.export(tmp, format="onnx", verbose=False)
            proto = onnx.load(tmp)
            _check_onnx(proto, model, meta)
            meta = {**meta, "weights_sha256": onnx_weights_digest(proto)}  # checked at every load
            onnx.helper.set_model_props(proto, {"class_names": json.dumps(meta["class_names"]),
                                                META.split(".")[0]: json.dumps(meta)})  # fmt: skip
            onnx.save(proto, tmp)
        else:
            model.export(tmp, format="tf_saved_model", verbose=False)
            (tmp / "assets").mkdir(exist_ok=True)
            (tmp / "assets" / META).write_text(json.dumps(meta, indent=1))
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except Exception as exc:
        if _no_space(exc):  # TensorFlow says it as a ResourceExhaustedError, h5py and zipfile as OSError
            raise ResourceError(f"No space left on device to write {out}: free some space or pass a path on "
                                "another disk. Nothing was written there.") from None  # fmt: skip
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _remove_stale_stages(out: Path) -> None:
    """Staging folders of earlier exports to ``out`` whose process is gone (killed mid-write)."""
    for stage in out.parent.glob(f".{out.name}.*"):
        pid = stage.name[len(out.name) + 2 :].split(".")[0]
        if not (stage.is_dir() and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except OSError:
            continue


def _no_space(exc: BaseException) -> bool:
    """Whether an error from any writer (Python, h5py, TensorFlow, onnx) is a full disk."""
    import errno

    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)
