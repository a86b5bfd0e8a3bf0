"""Training in blocks, by minibatch: how the Keras heads learn from a cache read a block at a time,
and how the linear heads (``logreg``, ``svm``, ``svm-rbf``'s linear SVM) learn when their rows do
not fit in memory, on their own objective.

:func:`train_batches` steps a compiled Keras model through a batch source (``train_on_batch``);
:func:`fit_linear_in_blocks` fits one linear layer, ``W`` and ``b``, to minimise the head's own
loss over every row plus its L2 penalty, by Adam with a cosine-decaying step, on shuffled batches of
the cache (:func:`featx.streaming.shuffled_batches`). scikit-learn's ``LogisticRegression(C)``
minimises ``C * sum(loss) + |W|^2 / 2``; divided by ``C * n`` that is the mean loss plus
``|W|^2 / (2 C n)``, the penalty that the layer here carries. The solution is approached by SGD, not
solved to a tolerance as lbfgs and liblinear do (BENCHMARKS.md measures the gap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The losses :func:`fit_linear_in_blocks` minimises: a softmax's cross-entropy (multinomial
#: logistic regression) and one-vs-rest squared hinge (scikit-learn's ``LinearSVC``).
LOSSES = ("softmax", "squared_hinge")


@dataclass(frozen=True)
class Minibatch:
    """How a linear layer is trained by minibatch: ``epochs`` passes over the rows in batches of
    ``batch_size`` (more passes where that would be under ``min_steps`` steps: few rows), Adam from
    ``learning_rate`` decaying to 0 (cosine), a seed for the order and the starting weights."""

    epochs: int = 10
    min_steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-2
    seed: int = 0


def block_labels(head, y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, each label's index in them)`` of the labels ``y`` of a fit in blocks (read
    whole: labels are small), checked as scikit-learn checks them; one class is a
    :class:`~featx.errors.DataError`."""
    from sklearn.utils.multiclass import check_classification_targets

    from ..errors import DataError

    y = np.asarray(y[:])
    check_classification_targets(y)
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{type(head).__name__} needs at least 2 classes in y; got 1 class: {classes[0]!r}.")
    return classes, y_idx


def train_batches(model, source, steps: int, epochs: int, label: str, progress: bool | None = None) -> dict:
    """Train ``model`` on ``steps`` batches of ``source`` per epoch with ``train_on_batch``; a
    progress bar per epoch named ``label`` (``progress`` None: on a terminal). Returns the history, as ``Model.fit``'s: each
    metric's mean over each epoch's rows (``train_on_batch`` reports one batch's).

    Not ``Model.fit`` on a generator: TensorFlow's generator dataset kept about 400 MiB per model
    after its fit (five networks on 320,000 rows outgrew 4 GiB); batch by batch, memory stays flat
    from one model to the next.
    """
    from tqdm.auto import tqdm

    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        rows = 0
        with tqdm(total=steps, desc=f"{label}, epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                  disable=None if progress is None else not progress) as bar:  # fmt: skip
            for _ in range(steps):
                xb, yb = next(source)
                for key, value in model.train_on_batch(xb, yb, return_dict=True).items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(xb)
                rows += len(xb)
                bar.update()
        for key, total in sums.items():
            history.setdefault(key, []).append(total / max(rows, 1))
    return history


def _squared_hinge(n_classes: int):
    """One-vs-rest squared hinge, summed over the classes: ``sum_k max(0, 1 - t_k f_k)^2`` with
    ``t_k`` = +1 for the row's class and -1 for the others."""
    from keras import ops

    def loss(y_true, y_pred):
        t = 2.0 * ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_classes) - 1.0
        return ops.sum(ops.square(ops.relu(1.0 - t * y_pred)), axis=-1)

    return loss


def _path_loss(loss: str, n_classes: int, k: int):
    """The ``loss`` of ``k`` linear layers side by side (``k * n_classes`` outputs), summed: each
    layer's gradient is its own, so each trains as it would alone, on the same batches."""
    from keras import ops

    def total(y_true, y_pred):
        z = ops.reshape(y_pred, (-1, k, n_classes))
        onehot = ops.expand_dims(ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_classes), 1)
        if loss == "softmax":
            each = ops.logsumexp(z, axis=-1) - ops.sum(z * onehot, axis=-1)
        else:
            each = ops.sum(ops.square(ops.relu(1.0 - (2.0 * onehot - 1.0) * z)), axis=-1)
        return ops.sum(each, axis=-1)

    return total


def _path_penalty(Cs, n: int, n_classes: int):
    """The L2 penalty ``|W_k|^2 / (2 C_k n)`` of each of the layers side by side, summed."""
    import keras
    from keras import ops

    scale = np.repeat(1.0 / (2.0 * np.asarray(Cs, dtype=np.float64) * n), n_classes).astype(np.float32)

    class PathL2(keras.regularizers.Regularizer):
        def __call__(self, x):
            return ops.sum(ops.square(x) * ops.convert_to_tensor(scale))

    return PathL2()


def _linear_model(width: int, n_classes: int, loss: str, C, n: int, settings: Minibatch, decay_steps: int):
    """One Dense layer, compiled: the ``loss``, the L2 penalty ``|W|^2 / (2 C n)``, Adam with a
    cosine-decaying step over ``decay_steps``. ``C`` a sequence of values: one layer of
    ``n_classes`` outputs for each, side by side in one Dense layer, each with its own penalty."""
    import keras

    from ..runtime import seeded_build

    if loss not in LOSSES:
        raise ValueError(f"loss is one of {LOSSES}: got {loss!r}")  # featx's own call: a bug, not bad input
    path = np.ndim(C) > 0
    with seeded_build(settings.seed):
        if path:
            dense = keras.layers.Dense(n_classes * len(C), kernel_regularizer=_path_penalty(C, n, n_classes))
        else:
            dense = keras.layers.Dense(n_classes, kernel_regularizer=keras.regularizers.L2(1 / (2 * C * n)))
        model = keras.Sequential([keras.Input(shape=(width,)), dense])
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=max(1, decay_steps))
    if path:
        objective = _path_loss(loss, n_classes, len(C))
    else:
        objective = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss == "softmax"
                     else _squared_hinge(n_classes))  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=objective)
    model.optimizer.build(model.trainable_variables)
    return model


def _per_value(W: np.ndarray, b: np.ndarray, C, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A path's weights as ``(values, width, n_classes)`` and ``(values, n_classes)``; one ``C``: as trained."""
    if np.ndim(C) == 0:
        return W, b
    k = len(C)
    return W.reshape(W.shape[0], k, n_classes).transpose(1, 0, 2), b.reshape(k, n_classes)


def fit_linear_in_blocks(X, y_idx: np.ndarray, n_classes: int, transform, *, loss: str, C,
                         settings: Minibatch, block_rows: int, width: int | None = None, label: str = "linear",
                         progress: bool | None = None, mapper=None,
                         keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """``(W, b, epochs)``: ``W`` and ``b`` of shape ``(width, n_classes)``, ``(n_classes,)``
    minimising the mean ``loss`` of the rows of ``X`` (``transform``-ed; ``width`` columns after
    it, default ``X``'s) plus ``|W|^2 / (2 C n)``, trained on shuffled batches read a block at a
    time, for ``epochs`` passes.

    ``C`` a sequence of values (a regularisation path, :mod:`featx.heads.regularisation`): one
    layer for each, all trained at once on the same batches, ``W`` and ``b`` of shape
    ``(values, width, n_classes)``, ``(values, n_classes)``. ``keep``: a boolean per row, the rows
    to train on (the others are held out; ``n`` counts the kept ones).

    With a ``mapper`` that has ``parts`` > 1 (:func:`featx.cluster_fit.fit_on_cluster`'s: one
    part per Dask worker), each epoch runs on the parts at once, each part a share of the file's
    chunks from all over it (every ``parts``-th), from the same weights and optimizer state; the
    parts' weights and Adam moments are then averaged (local SGD, averaged each epoch). The
    minimum is the same; the path to it differs, so the result equals one process's within the
    noise of SGD (BENCHMARKS.md measures it), not to the digit.
    """
    from ..streaming import shuffled_batches

    n, width = (len(y_idx) if keep is None else int(np.count_nonzero(keep))), int(width or X.shape[1])
    parts = int(getattr(mapper, "parts", 1)) if mapper is not None else 1
    source, steps = shuffled_batches(X, y_idx, transform, batch_size=settings.batch_size, block_rows=block_rows,
                                     seed=settings.seed, keep=keep)  # fmt: skip
    epochs = max(settings.epochs, -(-settings.min_steps // max(steps, 1)))
    if parts > 1:
        source.close()
        W, b = _fit_linear_in_parts(X, y_idx, n_classes, transform, loss=loss, C=C, settings=settings,
                                    block_rows=block_rows, width=width, epochs=epochs, mapper=mapper, parts=parts,
                                    label=label, progress=progress, keep=keep, n=n)  # fmt: skip
        return (*_per_value(W, b, C, n_classes), epochs)
    model = _linear_model(width, n_classes, loss, C, n, settings, steps * epochs)
    try:
        train_batches(model, source, steps, epochs, label, progress)
    finally:
        source.close()
    W, b = (np.asarray(w, dtype=np.float64) for w in model.layers[-1].get_weights())
    return (*_per_value(W, b, C, n_classes), epochs)


def _fit_linear_in_parts(X, y_idx, n_classes, transform, *, loss, C, settings, block_rows, width, epochs, mapper,
                         parts, label, progress, keep, n):  # fmt: skip
    """Local SGD: each epoch, every part trains from the same state on its share; states averaged."""
    from functools import partial

    from tqdm.auto import tqdm

    from ..streaming import shuffled_batches

    steps = max(shuffled_batches(X, y_idx, batch_size=settings.batch_size, block_rows=block_rows,
                                 part=(k, parts), keep=keep)[1] for k in range(parts))  # fmt: skip
    state = None
    with tqdm(total=epochs, desc=f"{label} on {parts} workers", unit="epoch", leave=False,
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        for epoch in range(epochs):
            run = partial(_local_epoch, state, X, y_idx, n_classes, transform, loss, C, settings, block_rows, width,
                          keep, n, steps * epochs, epoch, parts)  # fmt: skip
            states = list(mapper(run, range(parts)))
            state = [np.mean([s[i] for s in states], axis=0) for i in range(len(states[0]))]
            bar.update()
    W, b = state[0], state[1]
    return np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)


def _local_epoch(state, X, y_idx, n_classes, transform, loss, C, settings, block_rows, width, keep, n, decay_steps,
                 epoch, parts, k):  # fmt: skip
    """A task: one epoch of part ``k`` of the rows from ``state`` (the layer's weights, then Adam's
    variables; None at the start). Returns the state after it."""
    from dataclasses import replace

    from ..streaming import shuffled_batches

    model = _linear_model(width, n_classes, loss, C, n, settings, decay_steps)
    variables = model.optimizer.variables
    if state is not None:
        model.layers[-1].set_weights(state[:2])
        for v, value in zip(variables, state[2:]):
            v.assign(np.asarray(np.round(value) if "int" in str(v.dtype) else value).astype(str(v.dtype)))
    local = replace(settings, seed=settings.seed + 7919 * epoch + k)
    source, steps = shuffled_batches(X, y_idx, transform, batch_size=local.batch_size, block_rows=block_rows,
                                     seed=local.seed, part=(k, parts), keep=keep)  # fmt: skip
    try:
        train_batches(model, source, steps, 1, f"part {k}", False)
    finally:
        source.close()
        if hasattr(X, "close"):
            X.close()
    return [*model.layers[-1].get_weights(), *(np.asarray(v) for v in variables)]
