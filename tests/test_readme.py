"""Every Python block of README.md runs, in order, in one fresh process, as written.

Two things a README example may use cannot be had here, and get stand-ins in
every process of the run (the joblib and Dask workers too, through a
``sitecustomize`` on their path):

- ImageNet weights (no network): Keras's download is answered with a file of
  random weights in Keras's own ImageNet file format, under the name Keras asks for.
- The full shipped sample at 224x224 (CPU hours): "sample" is a small one cut from
  it, 10 images per class.

and one substitution is made in the text, an address that cannot exist here:
``Client("tcp://10.0.0.5:8786")`` becomes a local cluster, as README says.
"""

import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

from mktestdocs import grab_code_blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SUBSTITUTIONS = {'Client("tcp://10.0.0.5:8786")': "Client(n_workers=1, threads_per_worker=1, dashboard_address=None)"}

SITECUSTOMIZE = '''
import os
from pathlib import Path


def _imagenet_stand_in():
    from keras.src.utils import file_utils

    real = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        if not (fname or "").endswith("_notop.h5"):
            return real(fname, origin, *args, **kwargs)
        path = Path(os.environ["KERAS_HOME"]) / "models" / fname
        if not path.exists():
            import h5py
            import keras
            from keras.src.legacy.saving import legacy_h5_format

            name = fname.split("_weights")[0]  # vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
            ctor = {n.lower(): f for n, f in vars(keras.applications).items() if n[:1].isupper()}[name]
            model = ctor(include_top=False, weights=None)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with h5py.File(tmp, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
            os.replace(tmp, path)
        return str(path)

    file_utils.get_file = get_file


def _small_sample():
    import featx.data
    import featx.data.loading

    featx.data.loading.sample_path = featx.data.sample_path = lambda: Path(os.environ["README_SAMPLE"])


if os.environ.get("README_SAMPLE"):
    _imagenet_stand_in()
    _small_sample()
'''


def small_sample(dest: Path, per_class: int = 10) -> Path:
    """The first ``per_class`` images of each class of the shipped sample (8 train, 2 test)."""
    from featx.data import sample_path

    taken: dict = {}
    with tarfile.open(sample_path()) as src, tarfile.open(dest, "w:gz") as out:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            key = (split, cls)
            if taken.get(key, 0) >= (per_class * 4 // 5 if split == "train" else per_class // 5):
                continue
            taken[key] = taken.get(key, 0) + 1
            out.addfile(member, src.extractfile(member))
    return dest


def test_readme_python_blocks_run(tmp_path):
    text = README.read_text()
    for old in SUBSTITUTIONS:
        assert old in text, f"README no longer holds {old!r}: update SUBSTITUTIONS"
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new)
    blocks = grab_code_blocks(text, lang="python")  # mktestdocs, the markdown reader of embetter's docs
    assert len(blocks) >= 8
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    work = tmp_path / "work"
    (work / "more-photos").mkdir(parents=True)
    from PIL import Image

    for name in ("photo.jpg", "more-photos/cat.png"):
        Image.new("RGB", (64, 48), (200, 120, 40)).save(work / name)
    program = "import time\n_t0 = time.perf_counter()\n" + "\n".join(
        f"print(f'--- README block {i} at {{time.perf_counter() - _t0:.1f}} s', flush=True)\n{block}"
        for i, block in enumerate(blocks, 1)
    )
    main = f"if __name__ == '__main__':\n{textwrap.indent(program, '    ')}\n    print('ALL BLOCKS RAN')\n"
    (work / "readme_blocks.py").write_text(main)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), KERAS_HOME=str(tmp_path / "keras"),
               README_SAMPLE=str(small_sample(tmp_path / "small-sample.tar.gz")),
               FEATX_CACHE_DIR=str(work / "cache"), KERAS_BACKEND="tensorflow")  # fmt: skip
    res = subprocess.run([sys.executable, "readme_blocks.py"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    print("\n".join(line for line in res.stdout.splitlines() if line.startswith("--- README block")))
    last = [line for line in res.stdout.splitlines() if line.startswith("--- README block")][-1:]
    assert res.returncode == 0 and "ALL BLOCKS RAN" in res.stdout, (last, res.stderr[-3000:])
