"""What ``audit`` writes: ``audit.csv`` (one row per flagged image), ``audit.json`` (the same, with
the counts, the accuracy with and without the flagged images, and the settings) and ``audit.html``,
one self-contained page to check the findings by eye: each kind ranked, every image a thumbnail,
pairs side by side with their similarity (no network: it opens offline in any browser)."""

from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .report import CHECK_SCRIPT, INTERVAL, _kv_table, _thumb, _versions, publish

#: At most this many findings of each kind on the page (all of them are in the CSV).
MAX_SHOWN = 60

_SECTIONS = {
    "leak": ("Leaks: test images with a copy in train",
             "Each test image beside its most similar train image. A leaked test image inflates the test accuracy: "
             "the head has seen it, or its twin, in training."),
    "duplicate": ("Duplicates within a split",
                  "The later image of each pair is flagged: leaving the flagged images out keeps one of each."),
    "label error": ("Likely label errors",
                    "Images whose given label the head's out-of-sample probabilities contradict (cleanlab's confident "
                    "learning), least likely label first. P(given): the head's probability of the given label."),
    "outlier": ("Outliers",
                "Images far from every other image: the mean cosine distance to their nearest images, farthest first."),
}  # fmt: skip


def write_audit_report(result, ds, reports_dir) -> dict[str, Path]:
    """Write audit.csv, audit.json and audit.html to ``reports_dir`` (whole, or not at all). ``result``:
    a :class:`featx.auditing.AuditResult`; ``ds``: the dataset audited, for the thumbnails (None for
    embeddings that came without images)."""
    return publish(reports_dir, lambda out: _write_all(out, result, ds))


def _write_all(out: Path, result, ds) -> dict[str, Path]:
    paths = {"csv": out / "audit.csv", "json": out / "audit.json", "html": out / "audit.html"}
    fields = result.csv_fields()
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({**x.row(), "data": result.data} for x in result.findings)
    meta = {"data": result.data, "features": result.features, "n_train": result.n_train, "n_test": result.n_test,
            "classes": list(result.class_names), "counts": result.counts(), "accuracy": result.accuracy,
            "interval": INTERVAL, "search": result.search, "exact_by": result.exact_by,
            "settings": _settings(result), "seconds": result.seconds,
            "findings": [x.row() for x in result.findings]}  # fmt: skip
    paths["json"].write_text(json.dumps(meta, indent=1, default=str))
    paths["html"].write_text(audit_page(result, ds), encoding="utf-8")
    return paths


def _similarity(f, exact_by: str) -> str:
    """How alike a pair is: identical (pixels, or embeddings where no images came with them), or the
    cosine similarity of the embeddings (and of the thumbnails, where they found the pair)."""
    if f.exact:
        return f"identical {exact_by}"
    text = f"cosine {f.score:.3f}"
    return text + (f", thumbnails {f.pixels:.3f}" if f.pixels == f.pixels else "")


def _settings(result) -> dict:
    s = asdict(result.settings)
    s["search"] = result.search
    return s


def audit_page(result, ds) -> str:
    """The page as one HTML string (see the module's docstring)."""
    e = html.escape
    pixels = ds is not None and getattr(ds, "X_train", np.zeros(0)).size > 0
    counts = result.counts()

    def image(split: str, i: int) -> str:
        if not pixels or i < 0:
            return f'<div class="noimg">{e(split)} #{i}</div>'
        X = ds.X_train if split == "train" else ds.X_test
        return f'<img alt="{e(split)} image {i}" src="{_thumb(X[i])}">'

    def caption(split: str, i: int, file: str) -> str:
        return f"{e(split)} #{i}" + (f"<br><code>{e(file)}</code>" if file else "")

    sections = []
    for kind in counts:
        title, text = _SECTIONS[kind]
        found = result.of(kind)
        shown = found[:MAX_SHOWN]
        more = (
            f" The first {len(shown)} of {len(found)} are shown; audit.csv lists all."
            if len(found) > len(shown)
            else ""
        )
        if kind in ("leak", "duplicate"):
            cards = "".join(
                f'<div class="pair" data-kind="{e(kind)}" data-score="{f.score:.4f}">'
                f"<figure>{image(f.split, f.index)}<figcaption>{caption(f.split, f.index, f.file)}</figcaption></figure>"
                f"<figure>{image(f.partner_split, f.partner_index)}"
                f"<figcaption>{caption(f.partner_split, f.partner_index, f.partner_file)}</figcaption></figure>"
                f'<p class="sim">{_similarity(f, result.exact_by)}</p></div>'
                for f in shown
            )
        elif kind == "label error":
            cards = "".join(
                f'<figure class="one" data-kind="{e(kind)}" data-score="{f.score:.4f}">{image(f.split, f.index)}'
                f"<figcaption>{caption(f.split, f.index, f.file)}<br>given <b>{e(f.given)}</b>, "
                f"P(given) {f.score:.3f}<br>predicted <b>{e(f.predicted)}</b> ({f.confidence:.2f})</figcaption></figure>"
                for f in shown
            )
        else:
            cards = "".join(
                f'<figure class="one" data-kind="{e(kind)}" data-score="{f.score:.4f}">{image(f.split, f.index)}'
                f"<figcaption>{caption(f.split, f.index, f.file)}<br>distance {f.score:.3f}</figcaption></figure>"
                for f in shown
            )
        body = f'<div class="figs">{cards}</div>' if found else "<p>None found.</p>"
        sections.append(
            f'<h2 id="{kind.replace(" ", "-")}">{e(title)} ({len(found)})</h2><p>{e(text)}{e(more)}</p>{body}'
        )

    rows = "".join(
        f"<tr><td>{e(r['train'])}</td><td>{e(r['test'])}</td><td>{r['n_train']}</td><td>{r['n_test']}</td>"
        f"<td>{r['accuracy']:.2%}</td><td>{r['low']:.1%} – {r['high']:.1%}</td></tr>"
        for r in result.accuracy
    )
    table = ('<table id="accuracy"><thead><tr><th>trained on train images</th><th>scored on test images</th>'
             "<th>train</th><th>test</th><th>accuracy</th><th>95% interval</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>")  # fmt: skip
    listing = "".join(
        f'<li><a href="#{k.replace(" ", "-")}">{e(_SECTIONS[k][0])}</a>: {counts[k]}</li>' for k in counts
    )
    title = f"featx audit: {ds.name if ds is not None else result.features}"
    summary = (f"{result.n_train} train and {result.n_test} test images, {len(result.class_names)} classes; features: "
               f"{result.features}. Copies: cosine similarity &ge; {result.settings.threshold:g} of the embeddings "
               f"(train mean subtracted), exact copies by identical {result.exact_by}. Made {time.strftime('%Y-%m-%d %H:%M')}.")  # fmt: skip
    return _PAGE.format(
        title=e(title), summary=summary, listing=listing, table=table, interval=e(INTERVAL),
        head=e(result.settings.head), sections="".join(sections),
        settings=_kv_table({**_settings(result), "exact copies by": result.exact_by, "features": result.features,
                            "data fingerprint": result.data, "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}),
        versions=_kv_table(_versions()),
        check_script=CHECK_SCRIPT,
    )  # fmt: skip


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; text-align: center; }} figcaption {{ font-size: 12px; color: #444; max-width: 200px; word-break: break-all; }}
figure img, .noimg {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; }}
.noimg {{ display: flex; align-items: center; justify-content: center; font-size: 12px; color: #666; background: #f6f6f6; }}
.pair {{ display: flex; gap: 4px; align-items: flex-start; border: 1px solid #e4e4e4; padding: 4px; flex-wrap: wrap; width: 212px; }}
.pair figure {{ width: 102px; }} .pair figcaption {{ font-size: 11px; }}
.pair .sim {{ width: 100%; margin: 0; font-size: 12px; text-align: center; font-weight: 600; }}
.one {{ width: 150px; }}
.kv th {{ font-weight: normal; color: #555; }} .kv td {{ font-family: monospace; font-size: 12px; word-break: break-all; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<ul>{listing}</ul>
<h2>What the findings change</h2>
<p>Test accuracy of the {head} head, trained on every train image or without those whose labels look wrong, and
scored on every test image or without the leaked ones. Interval: the {interval}.</p>
{table}
{sections}
<h2>Settings</h2>
{settings}
<h2>Library versions</h2>
{versions}
<script>
{check_script}
</script>
</body></html>
"""
