"""What ``compare`` writes: a CSV and a JSON for scripts, two PNG charts, and one
self-contained HTML page to look at (``index.html``: every picture embedded, no
network, opens offline in any browser).

The page holds the results table (sortable, best first; every accuracy with
its 95 % exact binomial interval and McNemar's test against the best),
accuracy against fit time, the learning curves (where asked for), the
reliability diagram and calibration error of every head with probabilities,
per-class precision, recall and F1, the confusion matrix of every head, a grid
of misclassified test images, a 2-D map of the test embeddings of every feature
set, and the settings and library versions that made them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .heads import HEADS

#: At most this many misclassified test images in the page's grid.
MAX_MISCLASSIFIED = 48


#: Points of the report's map of the embeddings at most (a seeded sample of the test rows beyond).
MAX_MAP_POINTS = 10_000


def feature_map(X: np.ndarray, y: np.ndarray, *, seed: int = 0) -> dict:
    """A 2-D map of embeddings for the report: UMAP where ``umap-learn`` is
    installed, else PCA (scikit-learn). Returns ``{"xy", "y", "method"}``. Of more than
    :data:`MAX_MAP_POINTS` rows (an array or an HDF5 dataset), a seeded sample is mapped."""
    y = np.asarray(y)
    if len(y) > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(len(y), MAX_MAP_POINTS, replace=False))
        X, y = np.concatenate([np.asarray(X[rows[i : i + 1000]]) for i in range(0, len(rows), 1000)]), y[rows]
    X = np.asarray(X, dtype=np.float32)
    try:
        import umap  # optional

        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(X)
        method = "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(X)
        xy = pca.transform(X)
        method = f"PCA ({pca.explained_variance_ratio_.sum():.0%} of the variance)"
    return {"xy": np.asarray(xy, dtype=np.float64), "y": np.asarray(y), "method": method}


INTERVAL = "95% exact binomial (Clopper-Pearson) interval over the test images"
PAIRED = "McNemar's exact test against the best result, on the same test images"


def write_report(results, ds, reports_dir, feature_sets=(), curves=()) -> dict[str, Path]:
    """Write compare.csv, compare.json, accuracy.png, confusion.png and index.html (and, with
    ``curves``, the learning-curve rows of :func:`featx.curves.learning_curve`,
    learning_curve.csv and learning_curve.png).

    ``results`` are :class:`featx.compare.FitResult` objects, best first;
    ``ds`` the dataset they were measured on; ``feature_sets`` one dict per
    feature set: ``features`` (its one-line description), ``settings`` and
    ``info`` (as recorded in its cache file) and ``map`` (:func:`feature_map`
    of its test rows). Returns the paths written, by kind.
    """
    done = publish(reports_dir, lambda out: _write_all(out, results, ds, feature_sets, curves))
    for name in ("learning_curve.csv", "learning_curve.png"):
        if not any(p.name == name for p in done.values()):
            (Path(reports_dir) / name).unlink(missing_ok=True)  # an earlier run's: not this report's
    return done


def publish(reports_dir, write) -> dict[str, Path]:
    """Call ``write(folder)``, which writes a report's files into ``folder`` and returns their paths by
    kind, in a staging folder inside ``reports_dir``; then move each file into place (a rename each:
    no file is ever partly written, and a failed write leaves the previous report's files whole)."""
    final = Path(reports_dir)
    final.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(final)
    out = Path(tempfile.mkdtemp(prefix=f".report-{os.getpid()}-", dir=final))  # written whole here first
    try:
        paths = write(out)
        done = {}
        for kind, path in paths.items():
            done[kind] = final / path.name
            os.replace(path, done[kind])
        return done
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _remove_stale_stages(folder: Path) -> None:
    """Staging folders of reports whose process is gone (killed before moving its files into place)."""
    for stage in folder.glob(".report-*"):
        try:
            pid = int(stage.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _write_all(out: Path, results, ds, feature_sets, curves) -> dict[str, Path]:
    rows = [r.row() for r in results]
    paths = {"csv": out / "compare.csv", "json": out / "compare.json", "accuracy": out / "accuracy.png",
             "confusion": out / "confusion.png", "html": out / "index.html"}  # fmt: skip
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from .curves import summarize

    curves = list(curves)
    summary = summarize(curves)
    meta = {"data": ds.name, "task": ds.task, "classes": list(ds.class_names),
            "n_train": len(ds.y_train), "n_test": len(ds.y_test), "interval": INTERVAL, "paired_test": PAIRED,
            "results": rows,
            "per_class": [{"features": r.features, "head": r.head, "classes": r.per_class()} for r in results],
            "calibration": [{"features": r.features, "head": r.head, **cal} for r in results
                            if (cal := r.calibration) is not None],
            "confusion": [{"features": r.features, "head": r.head, "matrix": _confusion(r).tolist()}
                          for r in results],  # every class: the charts show at most 20
            "learning_curve": curves, "learning_curve_summary": summary}  # fmt: skip
    paths["json"].write_text(json.dumps(meta, indent=1))
    plt = _pyplot()
    if curves:
        paths["curve_csv"] = out / "learning_curve.csv"
        with open(paths["curve_csv"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(curves[0]))
            w.writeheader()
            w.writerows(curves)
        paths["curve"] = out / "learning_curve.png"
        fig = learning_curve_chart(summary, len(ds.class_names))
        fig.savefig(paths["curve"], dpi=100, bbox_inches="tight")
        plt.close(fig)
    fig = accuracy_chart(results, ds)
    fig.savefig(paths["accuracy"], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig = confusion_chart(results[0])
    fig.savefig(paths["confusion"], dpi=100, bbox_inches="tight")
    plt.close(fig)
    paths["html"].write_text(html_report(results, ds, feature_sets, summary), encoding="utf-8")
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r) -> str:
    return f"{r.features or r.backbone} + {r.head}"


def accuracy_chart(results, ds):
    """Horizontal bars: held-out accuracy of every result, in percent."""
    import matplotlib.ticker

    plt = _pyplot()
    labels = [_label(r) for r in results][::-1]
    # room for the longest label (about 0.075 inch a character at the default font size)
    fig, ax = plt.subplots(figsize=(4.5 + 0.075 * max(map(len, labels)), 1.2 + 0.4 * len(results)))
    accs = [r.accuracy for r in results][::-1]
    lo, hi = np.array([r.accuracy_interval for r in results][::-1]).T
    ax.barh(labels, accs, color="tab:blue", xerr=[np.subtract(accs, lo), np.subtract(hi, accs)], capsize=3,
            error_kw={"ecolor": "0.3"})  # fmt: skip
    for i, a in enumerate(accs):
        ax.text(hi[i], i, f" {a:.1%}", va="center")
    ax.set_xlim(0, 1.15)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("held-out accuracy (bars: 95% exact binomial interval)")
    ax.set_title(f"{ds.name} / {ds.task}: {len(ds.y_test)} test images")
    fig.tight_layout()
    return fig


#: Classes a confusion chart shows at most: beyond, the most confused of them (the whole matrix is in compare.json).
MAX_CONFUSION_CLASSES = 20


def _confusion(r) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(r.y_test, r.y_pred, labels=np.arange(len(r.class_names)))


def most_confused(cm: np.ndarray, k: int = MAX_CONFUSION_CLASSES) -> np.ndarray:
    """Indices of the ``k`` classes most involved in mistakes (as true or as predicted class), in class order."""
    if len(cm) <= k:
        return np.arange(len(cm))
    off = cm - np.diag(np.diag(cm))
    return np.sort(np.argsort(-(off.sum(0) + off.sum(1)), kind="stable")[:k])


def confusion_chart(r, title: bool = True):
    """The confusion matrix of one result, with its class names: of every class, or, past
    :data:`MAX_CONFUSION_CLASSES`, of the classes most involved in its mistakes (a picture of
    bounded size whatever the number of classes)."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    full = confusion_matrix(r.y_test, r.y_pred, labels=np.arange(len(r.class_names)))
    keep = most_confused(full)
    cm = full[np.ix_(keep, keep)]
    names = [r.class_names[i] for i in keep]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(cm), 1 + 0.6 * len(cm)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(cm)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(cm)), names)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        part = "" if len(keep) == len(full) else f" ({len(keep)} most confused of {len(full)} classes)"
        ax.set_title(f"{_label(r)}: {r.accuracy:.1%}{part}", fontsize=9)
    fig.tight_layout()
    return fig


def tradeoff_chart(results):
    """Accuracy (percent) against fit time (seconds, log scale), one point per result."""
    import matplotlib.ticker

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8 + 0.15 * len({r.features or r.backbone for r in results})))
    features = list(dict.fromkeys(r.features or r.backbone for r in results))
    for i, feat in enumerate(features):
        mine = [r for r in results if (r.features or r.backbone) == feat]
        for j, r in enumerate(mine):
            x = max(r.fit_seconds, 1e-3)
            lo, hi = r.accuracy_interval
            ax.errorbar(x, r.accuracy, yerr=[[r.accuracy - lo], [hi - r.accuracy]], color=f"C{i % 10}",
                        marker=HEADS[r.head].marker if r.head in HEADS else "o", markersize=7, capsize=3, linestyle="none",
                        label=feat if j == 0 else None)  # fmt: skip
            ax.annotate(r.head, (x, r.accuracy), textcoords="offset points", xytext=(6, 3), fontsize=8)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis, unit=" s")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("fit time (seconds, log scale)")
    ax.set_ylabel("held-out accuracy (bars: 95% exact binomial interval)")
    ax.set_title("accuracy against fit time (up and left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), title="features", title_fontsize=7)
    fig.tight_layout()
    return fig


def _plain_log_axis(axis, unit: str = "") -> None:
    """Tick labels of a log axis as plain numbers (0.5, 2, 30), not 2x10^0."""
    import matplotlib.ticker

    def fmt(v, _pos):
        return f"{v:g}{unit}"

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(fmt))
    axis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(fmt))


def learning_curve_chart(summary: list[dict], n_classes: int):
    """Accuracy against labelled images per class (log scale): a line per feature set and head,
    a band of one standard deviation over the repeats. ``summary``: :func:`featx.curves.summarize` rows."""
    import matplotlib.ticker

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups: dict = {}
    for row in summary:
        groups.setdefault((row["features"], row["head"]), []).append(row)
    feats = list(dict.fromkeys(f for f, _ in groups))
    styles = ["-", "--", ":", "-."]
    for i, ((feat, head), rows) in enumerate(groups.items()):
        rows = sorted(rows, key=lambda r: r["n_train"])
        # images per class: the size asked for ("all": the train rows per class, on average)
        x = np.array([r["per_class"] if r["per_class"] != "all" else r["n_train"] / max(1, n_classes) for r in rows],
                     dtype=float)  # fmt: skip
        m = np.array([r["accuracy_mean"] for r in rows])
        s = np.array([r["accuracy_std"] for r in rows])
        color = f"C{i % 10}"
        ax.plot(x, m, marker="o", color=color, linestyle=styles[feats.index(feat) % len(styles)],
                label=f"{head} on {feat}")  # fmt: skip
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("labelled training images per class (log scale)")
    ax.set_ylabel("test accuracy (band: ±1 s.d. over repeats)")
    ax.set_title("learning curves: accuracy against labelled images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return fig


def reliability_chart(results):
    """Reliability diagram: accuracy against confidence of the predicted class, a line per result
    with probabilities, the diagonal for perfect calibration; ECE in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.4))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for i, r in enumerate([r for r in results if r.proba is not None][:10]):
        cal = r.calibration
        conf = [b["confidence"] for b in cal["bins"]]
        acc = [b["accuracy"] for b in cal["bins"]]
        ax.plot(conf, acc, marker="o", markersize=3, color=f"C{i % 10}", label=f"{_label(r)} (ECE {cal['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class (15 bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # nothing cut at the edges
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(image: np.ndarray, side: int = 96) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if max(im.size) > side:
        im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def misclassified(r, limit: int = MAX_MISCLASSIFIED, seed: int = 0) -> np.ndarray:
    """Indices (into the test split) of up to ``limit`` images ``r`` got wrong,
    drawn at random (seeded) so that every kind of mistake can show."""
    wrong = np.flatnonzero(np.asarray(r.y_test) != np.asarray(r.y_pred))
    if len(wrong) > limit:
        wrong = np.sort(np.random.default_rng(seed).choice(wrong, limit, replace=False))
    return wrong


def _map_svg(fmap: dict, class_names, width: int = 420, height: int = 340) -> str:
    xy, y = fmap["xy"], fmap["y"]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pad = 10
    px = pad + (xy[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
    py = height - pad - (xy[:, 1] - lo[1]) / span[1] * (height - 2 * pad)
    radius = 3 if len(y) < 500 else 2
    dots = "".join(
        f'<circle class="pt" data-label="{int(k)}" cx="{a:.1f}" cy="{b:.1f}" r="{radius}" fill="{_color(int(k))}">'
        f"<title>{html.escape(str(class_names[int(k)]))}</title></circle>"
        for a, b, k in zip(px, py, y)
    )
    return (f'<svg class="map" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img"><rect width="100%" height="100%" fill="white" '
            f'stroke="#ccc"/>{dots}</svg>')  # fmt: skip


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]  # fmt: skip


def _color(k: int) -> str:
    return _PALETTE[k % len(_PALETTE)]


def _versions() -> dict:
    import h5py
    import keras
    import sklearn

    from . import __version__

    backend = keras.backend.backend()
    out = {"featx": __version__, "keras": keras.__version__, f"backend ({backend})": "", "scikit-learn": sklearn.__version__,
           "numpy": np.__version__, "h5py": h5py.__version__, "python": platform.python_version()}  # fmt: skip
    try:
        mod = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)
        out[f"backend ({backend})"] = __import__(mod).__version__
    except Exception:  # noqa: BLE001 - a version is nice to have, never worth failing the report
        out[f"backend ({backend})"] = "?"
    return out


def _kv_table(d: dict) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
        for k, v in d.items()
    )
    return f'<table class="kv">{cells}</table>'


def _fmt_params(r) -> str:
    chosen = " ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
    if r.cv_accuracy is not None:
        chosen += f" (cv {r.cv_accuracy:.2%})"
    return chosen


def _vs_best(r) -> tuple[object, str]:
    if r.p_vs_best is None:
        return -1.0, "best"
    word = "distinguishable" if r.distinguishable else "not distinguishable"
    return r.p_vs_best, f"{word} (p={r.p_vs_best:.2g})"


def html_report(results, ds, feature_sets=(), curves=()) -> str:
    """The report page as one HTML string (see the module's docstring); ``curves``: the rows of
    :func:`featx.curves.summarize`."""
    e = html.escape
    classes = list(ds.class_names)
    rows = []
    for rank, r in enumerate(results, 1):
        ext = getattr(r, "extract_seconds", None)
        lo, hi = r.accuracy_interval
        reps = np.asarray(r.repeat_accuracies, dtype=float)
        rep = (f"{reps.mean():.2%} ± {reps.std(ddof=1):.2%} ({len(reps)})" if len(reps) > 1 else "")
        cal = r.calibration
        p, vs = _vs_best(r)
        cells = [
            (rank, str(rank)), (r.backbone, e(r.backbone)), (r.features, e(r.features)), (r.head, e(r.head)),
            (r.accuracy, f"{r.accuracy:.2%}"), (lo, f"{lo:.1%} – {hi:.1%}"), (p, e(vs)),
            (reps.mean() if len(reps) > 1 else "", rep), ("" if cal is None else cal["ece"], "" if cal is None else f"{cal['ece']:.3f}"),
            (r.macro_f1, f"{r.macro_f1:.3f}"),
            ("" if ext is None else ext, "" if ext is None else f"{ext:.1f}"),
            (r.fit_seconds, f"{r.fit_seconds:.2f}"), (r.predict_ms_per_image, f"{r.predict_ms_per_image:.4f}"),
            (_fmt_params(r), e(_fmt_params(r))), (r.note, e(r.note)),
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f'<td data-sort="{e(str(v))}">{t}</td>' for v, t in cells) + "</tr>")
    head_cells = ["#", "backbone", "features", "head", "accuracy", "95% interval", "vs best", "mean ± sd (repeats)",
                  "ECE", "macro-F1", "extract s", "fit s", "predict ms/img", "chosen parameters", "note"]  # fmt: skip
    table = ('<table id="results" class="sortable"><thead><tr>'
             + "".join(f'<th title="click to sort">{h}</th>' for h in head_cells)
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")  # fmt: skip

    confusions = "".join(
        f'<figure class="confusion" data-head="{e(r.head)}" data-features="{e(r.features)}">'
        f'<img alt="confusion matrix of {e(_label(r))}" src="{_png(confusion_chart(r, title=False))}">'
        f"<figcaption>{e(_label(r))}: {r.accuracy:.1%}</figcaption></figure>"
        for r in results
    )

    best = results[0]
    has_pixels = len(ds.X_test) == len(best.y_test) and ds.X_test.size > 0
    wrong = misclassified(best) if has_pixels else []
    tiles = "".join(
        f'<figure class="miss" data-index="{i}" data-true="{int(best.y_test[i])}" data-pred="{int(best.y_pred[i])}">'
        f'<img alt="test image {i}" src="{_thumb(ds.X_test[i])}">'
        f"<figcaption>true {e(classes[int(best.y_test[i])])}<br>predicted "
        f"<b>{e(classes[int(best.y_pred[i])])}</b></figcaption></figure>"
        for i in wrong
    )
    n_wrong = int(np.sum(np.asarray(best.y_test) != np.asarray(best.y_pred)))

    legend = "".join(f'<span class="key"><i style="background:{_color(k)}"></i>{e(c)}</span>' for k, c in enumerate(classes))
    maps = "".join(
        f'<figure class="mapfig" data-features="{e(fs["features"])}">{_map_svg(fs["map"], classes)}'
        f'<figcaption>{e(fs["features"])}: {len(fs["map"]["y"])} test images, {e(fs["map"]["method"])}</figcaption></figure>'
        for fs in feature_sets
        if fs.get("map") is not None
    )
    settings = "".join(
        f'<details open><summary>{e(fs["features"])}</summary>'
        + _kv_table({**fs.get("settings", {}), "extract seconds": fs.get("info", {}).get("seconds", {}),
                     "extracted with": fs.get("info", {}).get("versions", {}),
                     "cache file": fs.get("path", "")})  # fmt: skip
        + "</details>"
        for fs in feature_sets
    )
    title = f"featx compare: {ds.name} / {ds.task}"
    return _PAGE.format(
        title=e(title),
        summary=e(f"{len(ds.y_train)} train and {len(ds.y_test)} test images, {len(classes)} classes "
                  f"({', '.join(classes)}). Made {time.strftime('%Y-%m-%d %H:%M')}."),  # fmt: skip
        table=table,
        tradeoff=f'<img id="tradeoff" alt="accuracy against fit time" src="{_png(tradeoff_chart(results))}">',
        confusions=confusions,
        miss_caption=e(f"{_label(best)} (the best result) got {n_wrong} of {len(best.y_test)} test images wrong; "
                       f"{len(wrong)} of them, drawn at random:"),  # fmt: skip
        tiles=tiles or ("<p>No test image was misclassified.</p>" if has_pixels else
                        "<p>No images to show: these embeddings came without them.</p>"),  # fmt: skip
        legend=legend,
        maps=maps or "<p>No feature map.</p>",
        settings=settings,
        versions=_kv_table(_versions()),
        check_script=CHECK_SCRIPT,
        interval=e(INTERVAL), paired=e(PAIRED),
        curves=(f'<img id="learning-curve" alt="learning curves" src="{_png(learning_curve_chart(curves, len(classes)))}">'
                + _curve_table(curves)) if curves else
        "<p>Not asked for: <code>compare --train-sizes 1,5,10,50,all</code> draws them from the cache.</p>",
        reliability=(f'<img id="reliability" alt="reliability diagram" src="{_png(reliability_chart(results))}">'
                     if any(r.proba is not None for r in results) else "<p>No head here has probabilities.</p>"),
        per_class="".join(
            f'<details{" open" if i == 0 else ""}><summary>{e(_label(r))}</summary>' + _per_class_table(r) + "</details>"
            for i, r in enumerate(results)
        ),
    )


def _curve_table(summary: list[dict]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(s['features']))}</td><td>{e(str(s['head']))}</td><td>{e(str(s['per_class']))}</td>"
        f"<td>{s['n_train']}</td><td>{s['accuracy_mean']:.2%}</td><td>{s['accuracy_std']:.2%}</td><td>{s['repeats']}</td></tr>"
        for s in summary
    )
    return ('<table id="curve-table"><thead><tr><th>features</th><th>head</th><th>per class</th><th>train images</th>'
            "<th>accuracy (mean)</th><th>s.d.</th><th>repeats</th></tr></thead><tbody>" + rows + "</tbody></table>")


def _per_class_table(r) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c['class'])}</td><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td>"
        f"<td>{c['support']}</td></tr>"
        for c in r.per_class()
    )
    return ('<table class="per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
            "<th>test images</th></tr></thead><tbody>" + rows + "</tbody></table>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }}
#results th {{ cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }}
#results td:nth-child(n+5):nth-child(-n+13) {{ text-align: right; font-variant-numeric: tabular-nums; }}
#results tbody tr:first-child {{ font-weight: 600; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; max-width: 440px; }} figure.confusion {{ max-width: 320px; }} figcaption {{ font-size: 12px; color: #444; }}
figure img {{ max-width: 100%; height: auto; }} .wide {{ overflow-x: auto; }}
.miss {{ width: 104px; text-align: center; }}
.miss img {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; }}
.key {{ margin-right: 12px; white-space: nowrap; }} .key i {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; }}
.kv th {{ font-weight: normal; color: #555; }} .kv td {{ font-family: monospace; font-size: 12px; word-break: break-all; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<h2>Results</h2>
<p>Best first; click a column to sort. Accuracy and macro-F1 on the held-out test split; extract s is the time the
features took when they were cached. 95% interval: the {interval}. vs best: {paired}; "not distinguishable" (p &ge;
0.05) means these test images cannot tell the two apart. mean &plusmn; sd: over seeded splits of the cached features
(<code>--repeats</code>). ECE: expected calibration error of the probabilities (15 bins).</p>
<div class="wide">{table}</div>
<h2>Accuracy against fit time</h2>
{tradeoff}
<h2>Learning curves</h2>
{curves}
<h2>Calibration</h2>
{reliability}
<h2>Per-class precision, recall and F1</h2>
{per_class}
<h2>Confusion matrices</h2>
<div class="figs">{confusions}</div>
<h2>Misclassified test images</h2>
<p>{miss_caption}</p>
<div class="figs" id="misclassified">{tiles}</div>
<h2>Test embeddings in 2-D</h2>
<p>{legend}</p>
<div class="figs">{maps}</div>
<h2>Feature settings</h2>
{settings}
<h2>Library versions</h2>
{versions}
<script>
{check_script}
document.querySelectorAll("table.sortable th").forEach(function (th, col) {{
  th.addEventListener("click", function () {{
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var asc = th.dataset.dir !== "asc"; th.dataset.dir = asc ? "asc" : "desc";
    rows.sort(function (a, b) {{
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    }});
    rows.forEach(function (r) {{ body.appendChild(r); }});
  }});
}});
</script>
</body></html>
"""

#: What every featx page runs: it records a script error and counts the images that decoded, on the
#: page's body (``data-js-error``, ``data-images``), for a browser check to read.
CHECK_SCRIPT = """window.addEventListener("error", function (ev) { document.body.dataset.jsError = String(ev.message); });
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.images = ok + "/" + imgs.length;
});"""
