"""How sure a result is: accuracy intervals, paired tests between heads, calibration.

- :func:`accuracy_interval`: the exact binomial (Clopper-Pearson) interval of an
  accuracy measured on ``n`` test images: it covers the true accuracy at least
  95 % of the time, whatever ``n`` (no normal approximation).
- :func:`mcnemar`: McNemar's exact test of two classifiers on the same test
  images: only the images one got right and the other wrong count.
- :func:`calibration`: expected calibration error and the bins of a reliability
  diagram, from the probabilities of the predicted class.

>>> lo, hi = accuracy_interval(80, 100)
>>> round(lo, 3), round(hi, 3)
(0.708, 0.873)
>>> mcnemar(np.array([1, 1, 0, 1], bool), np.array([1, 1, 0, 1], bool))  # identical: no evidence of a difference
1.0
"""

from __future__ import annotations

import numpy as np

#: Level of every interval featx reports.
LEVEL = 0.95
#: p-value under which two heads are called distinguishable.
ALPHA = 0.05


def accuracy_interval(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial (Clopper-Pearson) interval of ``correct`` successes in ``n`` trials."""
    from scipy.stats import beta

    if n <= 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    lo = 0.0 if correct == 0 else float(beta.ppf(a, correct, n - correct + 1))
    hi = 1.0 if correct == n else float(beta.ppf(1 - a, correct + 1, n - correct))
    return lo, hi


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided p-value of McNemar's exact test: are ``a`` and ``b`` (right or wrong on the same
    test images, in the same order) equally accurate? Binomial on the discordant images."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar's test needs the same test images: {a.shape} and {b.shape} rows.")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def calibration(proba: np.ndarray, y_true: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error (equal-width confidence bins, weighted by their images) and the
    reliability diagram's bins: ``{"ece", "bins": [{"lo", "hi", "n", "confidence", "accuracy"}]}``.

    ``proba``: ``(n, classes)`` probabilities, columns in label order; ``y_true``: labels.
    """
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    right = proba.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out, ece = [], 0.0
    for i in range(bins):
        m = which == i
        if not m.any():
            continue
        c, a = float(conf[m].mean()), float(right[m].mean())
        ece += m.mean() * abs(c - a)
        out.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(m.sum()), "confidence": c, "accuracy": a})
    return {"ece": float(ece), "bins": out}
