"""``logreg`` and ``svm``: standardisation, then a linear classifier."""

from __future__ import annotations

import warnings
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import HeadError
from .calibration import PROBABILITY_DOC, OptionalProbability, calibrated_fit
from .keras_layers import calibrated_probabilities, dense_layer, fold_scaler, linear_decision
from .sgd import Minibatch


class _ScaledLinear(OptionalProbability):
    """Standardise, then a linear classifier; the fitted parts end in ``_``."""

    #: The loss :meth:`fit_blocks` minimises (:data:`featx.heads.sgd.LOSSES`).
    LOSS = "softmax"
    #: How :meth:`fit_blocks` trains: the linear head's settings.
    MINIBATCH = Minibatch()

    def _classifier(self):
        raise NotImplementedError

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """The rows in float64, standardised, and cut into the rows fitted and held out (``C="auto"``)."""
        return 24 * rows * width

    #: Whether the solver goes on from the last fit along the path of ``C="auto"`` (lbfgs can).
    WARM_STARTS = False
    #: The solver's tolerance along the path of ``C="auto"`` (None: the classifier's own).
    PATH_TOL: float | None = None
    #: ``C`` where too few train rows leave none to choose it on (:mod:`.regularisation`).
    FALLBACK_C = 1.0

    def fit(self, X, y):
        """Standardise, then fit the classifier; with ``C="auto"``, its ``C`` is chosen first on
        held-out train rows (:mod:`featx.heads.regularisation`) and the chosen one fitted on all."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        start = self._choose_C(Xs, y) if self.C == "auto" else None
        classifier = self._classifier()
        if start is not None:  # lbfgs goes on from the path's solution at the chosen C
            classifier.set_params(warm_start=True)
            classifier.coef_, classifier.intercept_ = start
        self.classifier_, self.calibrator_ = calibrated_fit(classifier, Xs, y, getattr(self, "probability", False))
        if start is not None:
            self.classifier_.set_params(warm_start=False)
        self.classes_ = self.classifier_.classes_
        self.n_iter_ = int(np.max(self.classifier_.n_iter_))
        return self

    def _choose_C(self, Xs, y):
        """Set ``C_`` (and ``C_path_``): the ``C`` of the best of :data:`~.regularisation.PATH` on
        held-out rows of ``Xs``, ``y``. Returns the classifier's weights at that ``C`` (a warm start
        for the fit on all rows, where the solver takes one), else None."""
        from . import regularisation

        split = regularisation.validation_rows(y, self._seed())
        if split is None:
            self.C_, self.C_path_ = self.FALLBACK_C, None
            return None
        fit_rows, held = split
        Xf, yf, Xv, yv = Xs[fit_rows], y[fit_rows], Xs[held], y[held]
        classifier, warm = self._classifier(C=regularisation.PATH[0]), self.WARM_STARTS
        if warm:
            classifier.set_params(warm_start=True)
        if self.PATH_TOL is not None:  # only to choose: the fit on all rows solves to the head's own tolerance
            classifier.set_params(tol=self.PATH_TOL)
        weights = {}

        def fit_score(c):
            classifier.set_params(C=c).fit(Xf, yf)
            weights[c] = (classifier.coef_.copy(), np.atleast_1d(classifier.intercept_).copy())
            return float(np.mean(classifier.predict(Xv) == yv))

        with warnings.catch_warnings():  # weakly penalised fits past the best may stop short: not kept
            warnings.simplefilter("ignore", ConvergenceWarning)
            path = regularisation.sweep(fit_score, len(held))
        self.C_, self.C_path_ = path.chosen, path.as_dict()
        return weights[path.chosen] if warm else None

    def _seed(self) -> int:
        """The seed of the held-out rows and of the minibatches (``random_state`` None: a fresh one)."""
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _C(self) -> float:
        """The ``C`` the classifier is fitted with: the one given, else the one chosen."""
        return self.C_ if self.C == "auto" else self.C

    def chosen_params(self) -> dict:
        """What the fit chose (``C``, with ``C="auto"``), for results tables and saved heads."""
        return {"C": float(self.C_)} if self.C == "auto" and hasattr(self, "C_") else {}

    def fit_blocks(self, X, y, *, block_rows: int = 65_536, progress: bool | None = None, mapper=None):
        """Fit on rows read a block at a time from ``X`` (an HDF5 dataset, a memmap or an array),
        never all in memory: the standardisation from one pass, then the same objective as
        :meth:`fit` (the loss plus the L2 penalty of ``C``) minimised by minibatch
        (:func:`featx.heads.sgd.fit_linear_in_blocks`, :attr:`MINIBATCH`) instead of solved on
        every row; with ``probability``, a sigmoid calibration on a sample of 20,000 training rows.
        ``mapper``: Dask workers' (:func:`featx.cluster_fit.fit_on_cluster`), which train on
        their shares of the file at once, averaged each epoch.
        The fitted parts are the same kinds as :meth:`fit`'s (``classifier_`` a scikit-learn
        classifier with its ``coef_``), so predicting and exporting do not change."""
        from ..streaming import Transformed, scaler_in_blocks
        from .calibration import calibrate_sample
        from .sgd import block_labels, fit_linear_in_blocks

        self._validate_params()
        classes, y_idx = block_labels(self, y)
        self.n_features_in_ = int(X.shape[1])
        self.scaler_ = scaler_in_blocks(X, block_rows=block_rows, progress=progress)
        seed = self._seed()
        settings = replace(self.MINIBATCH, seed=seed)
        if self.C == "auto":
            self._choose_C_in_blocks(X, y_idx, len(classes), settings, block_rows, progress, mapper)
        W, b, epochs = fit_linear_in_blocks(X, y_idx, len(classes), self._scale32, loss=self.LOSS, C=self._C(),
                                            settings=settings, block_rows=block_rows, label=self.name,
                                            progress=progress, mapper=mapper)  # fmt: skip
        if len(classes) == 2:  # scikit-learn's binary form: one column, for the second class
            W, b = (W[:, 1:] - W[:, :1], b[1:] - b[:1]) if self.LOSS == "softmax" else (W[:, 1:], b[1:])
        self.classifier_ = self._classifier()
        self.classifier_.classes_, self.classifier_.coef_, self.classifier_.intercept_ = classes, W.T, b
        self.classifier_.n_features_in_ = self.n_features_in_
        self.classifier_.n_iter_ = np.array([epochs])
        self.classes_, self.n_iter_ = classes, epochs
        self.calibrator_ = None
        if getattr(self, "probability", False):
            self.calibrator_ = calibrate_sample(self.classifier_, Transformed(X, self._scale32), classes[y_idx], seed)
        self.solver_ = f"minibatch SGD, {epochs} epochs, in blocks"
        return self

    def _choose_C_in_blocks(self, X, y_idx, n_classes, settings, block_rows, progress, mapper) -> None:
        """Set ``C_`` (and ``C_path_``) from the rows of ``X`` read in blocks: every value of
        :data:`~.regularisation.PATH` trained at once on the rows kept, scored on the held out."""
        from . import regularisation
        from .sgd import fit_linear_in_blocks

        split = regularisation.validation_rows(y_idx, settings.seed)
        if split is None:
            self.C_, self.C_path_ = self.FALLBACK_C, None
            return
        keep = np.ones(len(y_idx), dtype=bool)
        keep[split[1]] = False
        W, b, _ = fit_linear_in_blocks(X, y_idx, n_classes, self._scale32, loss=self.LOSS, C=regularisation.PATH,
                                       settings=settings, block_rows=block_rows, label=f"{self.name}, choosing C",
                                       progress=progress, mapper=mapper, keep=keep)  # fmt: skip
        scores = regularisation.held_out_accuracy(X, y_idx, split[1], W, b, self._scale32, block_rows)
        path = regularisation.choose(regularisation.PATH, scores, len(split[1]))
        self.C_, self.C_path_ = path.chosen, path.as_dict()

    def fit_note(self) -> str:
        how = getattr(self, "solver_", "")
        if self.C != "auto" or not hasattr(self, "C_"):
            return how
        if self.C_path_ is None:
            chose = f"C={self.C_:g}: too few train rows to choose it on held-out rows"
        else:
            chose = (f"C={self.C_:.3g} chosen on {self.C_path_['rows']:,} held-out train rows "
                     f"({len(self.C_path_['C'])} values of C tried)")  # fmt: skip
        return "; ".join(filter(None, [chose, how]))

    def _scale32(self, X):
        return self.scaler_.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)

    def _transform(self, X):
        check_is_fitted(self)
        return self.scaler_.transform(validate_data(self, X, dtype=np.float64, reset=False))

    def decision_function(self, X):
        Xt = self._transform(X)
        return self.classifier_.decision_function(Xt)

    def predict(self, X):
        Xt = self._transform(X)
        return self.classifier_.predict(Xt)

    def to_keras(self, features):
        """The fitted head as one Dense layer (the scaler and, for the SVM, its sigmoid calibration
        folded in) and the activations that make its probabilities."""
        check_is_fitted(self)
        W, b = fold_scaler(self.scaler_, *linear_decision(self.classifier_))
        if isinstance(self.classifier_, LogisticRegression):
            if W.shape[1] == 1:  # binary: p = sigmoid(z) = softmax([0, z])
                W, b = np.hstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
            return dense_layer(features, W, b, "probabilities", "softmax")
        if not getattr(self, "probability", False):
            raise HeadError(
                "This svm head was fitted without probability=True: it has margins, not probabilities, to "
                "export. Fit it again with probability=True (featx fit does so)."
            )
        return calibrated_probabilities(features, W, b, self.calibrator_, len(self.classes_))


_LINEAR_CONSTRAINTS: dict = {
    "C": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
}


class LogisticRegressionHead(_ScaledLinear):
    """Standardisation + multinomial logistic regression (lbfgs).

    Parameters
    ----------
    C : float or "auto", default="auto"
        Inverse regularisation strength; "auto": chosen on held-out train rows, then refitted on
        all (:mod:`featx.heads.regularisation`, the standard linear probe's protocol).
    max_iter : int, default=1000
    random_state : int or None, default=None
        The held-out rows of ``C="auto"`` and the minibatches of a fit in blocks.

    Attributes
    ----------
    classes_, n_features_in_, scaler_, classifier_
    C_ : float
        With ``C="auto"``: the ``C`` chosen (the classifier's).
    C_path_ : dict or None
        With ``C="auto"``: the values tried and their held-out accuracy (None: too few rows).
    """

    name = "logreg"
    description = "standardise + multinomial logistic regression"
    search = {"C": [0.01, 0.1, 1.0]}
    marker = "s"
    rank = 1
    defaults = {"random_state": 0}  # the held-out rows of C="auto" and the minibatches: the same each run

    _parameter_constraints: dict = dict(_LINEAR_CONSTRAINTS)

    def __init__(self, C: float | str = "auto", max_iter: int = 1000, random_state: int | None = None):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _classifier(self, C: float | None = None):
        return LogisticRegression(C=self._C() if C is None else C, max_iter=self.max_iter,
                                  random_state=self.random_state)  # fmt: skip

    #: lbfgs along the path to 1e-3, ten times its default: the same C chosen, the fit 1.3 to 2.4
    #: times faster (BENCHMARKS.md, "The linear probe with its C swept").
    PATH_TOL = 1e-3
    WARM_STARTS = True

    def predict_proba(self, X):
        Xt = self._transform(X)
        return self.classifier_.predict_proba(Xt)


class LinearSVMHead(_ScaledLinear):
    """Standardisation + linear SVM (one-vs-rest, squared hinge).

    Parameters
    ----------
    C : float or "auto", default="auto"
        Inverse regularisation strength; "auto": chosen on held-out train rows, then refitted on
        all (:mod:`featx.heads.regularisation`).
    max_iter : int, default=2000
    random_state : int or None, default=0
    %s
    Attributes
    ----------
    classes_, n_features_in_, scaler_, classifier_
    calibrator_ : CalibratedClassifierCV
        With ``probability=True`` only.
    C_, C_path_
        With ``C="auto"``: the ``C`` chosen, and the values tried with their held-out accuracy.
    """

    name = "svm"
    description = "standardise + linear SVM"
    search = {"C": [0.001, 0.01, 0.1]}
    marker = "^"
    rank = 3
    LOSS = "squared_hinge"

    _parameter_constraints: dict = {**_LINEAR_CONSTRAINTS, "probability": ["boolean"]}

    FALLBACK_C = 0.01  # a small C suits thousands of dense, correlated embedding dimensions

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """As ``logreg``'s, and liblinear's own copy of the rows fitted (an index and a float64 a value)."""
        return 40 * rows * width

    def __init__(self, C: float | str = "auto", max_iter: int = 2000, random_state: int | None = 0,
                 probability: bool = False):  # fmt: skip
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.probability = probability

    def _classifier(self, C: float | None = None):
        return LinearSVC(C=self._C() if C is None else C, max_iter=self.max_iter, random_state=self.random_state)


LinearSVMHead.__doc__ %= PROBABILITY_DOC
