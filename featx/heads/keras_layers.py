"""The Keras layers that a fitted head becomes in an exported classifier (each head's
``to_keras``): fixed Dense layers, a standardisation, a sigmoid calibration."""

from __future__ import annotations

import numpy as np


def linear_decision(classifier) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel (d, k), bias (k,))`` of a fitted linear classifier's decision function."""
    return np.asarray(classifier.coef_, dtype=np.float64).T, np.asarray(
        classifier.intercept_, dtype=np.float64
    )


def fold_scaler(scaler, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel, bias)`` acting on raw features as ``kernel``, ``bias`` act on standardised ones."""
    mean = scaler.mean_ if scaler.with_mean else np.zeros(kernel.shape[0])
    scale = scaler.scale_ if scaler.with_std else np.ones(kernel.shape[0])
    return kernel / scale[:, None], bias - (mean / scale) @ kernel


def standardize(x, scaler):
    """``scaler`` as a layer: a BatchNormalization at inference, its statistics the scaler's (its
    weights are variables, which every export format keeps; Keras's Normalization holds constants
    that the ONNX export takes for inputs)."""
    import keras

    eps = 1e-12
    layer = keras.layers.BatchNormalization(epsilon=eps, name="standardize")
    y = layer(x)
    d = len(scaler.scale_)
    mean = scaler.mean_ if scaler.with_mean else np.zeros(d)
    var = np.maximum(np.asarray(scaler.scale_, dtype=np.float64) ** 2 - eps, 0.0)
    layer.set_weights(
        [np.ones(d, np.float32), np.zeros(d, np.float32), mean.astype(np.float32), var.astype(np.float32)]
    )
    return y


def dense_layer(x, kernel: np.ndarray, bias: np.ndarray, name: str, activation=None):
    """A Dense layer of fixed ``kernel`` and ``bias`` on ``x``, in float32."""
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    y = layer(x)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return y


def calibrated_probabilities(x, W: np.ndarray, b: np.ndarray, calibrator, n_classes: int):
    """scikit-learn's sigmoid calibration of a one-vs-rest decision ``x @ W + b``, as layers.

    Each class's probability is ``sigmoid(-(a f + b'))`` of its decision ``f``, an affine map of
    ``x`` again (so one Dense layer holds both); the probabilities are then divided by their sum,
    which is the softmax of their logarithms. Binary: ``[1 - p, p]``, the same softmax of
    ``log_sigmoid(-z), log_sigmoid(z)``.
    """
    import keras

    cals = calibrator.calibrated_classifiers_[0].calibrators
    a = np.array([c.a_ for c in cals], dtype=np.float64)
    c0 = np.array([c.b_ for c in cals], dtype=np.float64)
    W, b = W * -a, -(a * b + c0)  # z = -(a f + b'): p = sigmoid(z)
    if n_classes == 2:
        W, b = np.hstack([-W, W]), np.concatenate([-b, b])
    z = dense_layer(x, W, b, "calibrated_logits", "log_sigmoid")
    return keras.layers.Activation("softmax", name="probabilities")(z)
