"""What every head is: the :class:`Head` mixin, the registry its subclasses join, and
:func:`make_head`.

A head family is one class in one module of :mod:`featx.heads`. The class says what featx knows
about it (its registry ``name``, ``description``, the ``search`` grid that ``--tune`` runs, the
``marker`` of its points in the report's charts, whether it fits ``in_process``, whether it
``exports``), and defining it registers it: fit, compare, tune, the report, trusted loading and
the CLI's help all read the registry, :data:`HEADS`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import ClassVar

from sklearn.utils._param_validation import InvalidParameterError

from ..errors import HeadError


class _Registry(Mapping):
    """Head classes by name, in the order of their ``rank`` (then of definition)."""

    def __init__(self):
        self._classes: dict[str, type] = {}

    def add(self, cls: type) -> None:
        """Register ``cls`` under its name; a name that another class holds is refused (the same
        class defined again, as a reloaded module does, takes its place)."""
        held = self._classes.get(cls.name)
        if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
            raise HeadError(f"The head name {cls.name!r} is taken by {held.__module__}.{held.__qualname__}: give "
                            f"{cls.__qualname__} another name.")  # fmt: skip
        self._classes[cls.name] = cls

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    def _ordered(self) -> list[str]:
        names = list(self._classes)
        return sorted(names, key=lambda n: (self._classes[n].rank, names.index(n)))

    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __iter__(self):
        return iter(self._ordered())

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"HEADS({', '.join(self)})"


#: Every head class, by name (``HEADS["logreg"]`` is :class:`~featx.heads.LogisticRegressionHead`).
HEADS = _Registry()


class Head:
    """The mixin of a featx head: put it first among a scikit-learn classifier's bases and give
    the class a ``name``; it then joins :data:`HEADS`.

    Class attributes
    ----------------
    name : str
        The registry name (``--head NAME``). A class without one (a base) is not registered.
    description : str
        One line for listings and ``--help``.
    search : dict
        The grid that ``tune`` searches: parameter -> values (a few around the default).
    marker : str
        The Matplotlib marker of the head's points in the report's charts.
    in_process : bool
        Fit in the calling process, never in a joblib worker (the Keras head keeps thread pools
        of its own).
    defaults : dict
        featx's defaults, where they differ from the class's own (``make_head`` applies them).
    rank : int
        Position in listings (lower first).

    A head that can become Keras layers defines ``to_keras(features)``; :meth:`exports` says so.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    search: ClassVar[dict] = {}
    marker: ClassVar[str] = "o"
    in_process: ClassVar[bool] = False
    defaults: ClassVar[dict] = {}
    rank: ClassVar[int] = 100
    #: scikit-learn's checks of the parameters, made when the head is made (none: a head of yours
    #: that gives none is checked by its own ``fit``).
    _parameter_constraints: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            HEADS.add(cls)

    @classmethod
    def streams(cls) -> bool:
        """Whether a head of this family can learn from a cache read a block of rows at a time
        (``fit_blocks`` or scikit-learn's ``partial_fit``: :func:`featx.streaming.fit_in_blocks`)."""
        return callable(getattr(cls, "fit_blocks", None)) or callable(getattr(cls, "partial_fit", None))

    @classmethod
    def working_set(cls, rows: int, width: int, n_classes: int) -> int:
        """Bytes that fitting a head of this family on ``rows`` x ``width`` features held in memory
        takes beyond those rows (and scoring as many), which decides whether it is fitted from
        memory or a block at a time (:func:`featx.streaming.fits_in_memory`). By default what a
        scikit-learn estimator takes: a float64 copy of the rows and one transformed copy."""
        return 16 * rows * width

    @classmethod
    def exports(cls) -> bool:
        """Whether a fitted head of this family can become Keras layers (``export``)."""
        return callable(getattr(cls, "to_keras", None))

    def fit_note(self) -> str:
        """A note on how the fitted head was fitted, for results tables ("" when nothing to say)."""
        return ""

    def chosen_params(self) -> dict:
        """The parameters that the fit itself chose (``logreg``'s ``C="auto"``: the ``C`` it took),
        shown with the results and saved with the head ({} when none)."""
        return {}


def head_class(name: str) -> type:
    """The head class registered as ``name``; else a one-line error listing them."""
    if name not in HEADS:
        raise HeadError(f"Unknown head. Known heads: {', '.join(HEADS)}. Received: head={name!r}")
    return HEADS[name]


def make_head(name: str, **params):
    """A fresh head by name, with featx's defaults and ``params`` set on it.

    Examples
    --------
    >>> make_head("logreg", C=0.1).C
    0.1
    """
    cls = head_class(name)
    names = sorted(cls._get_param_names())
    unknown = [k for k in params if k not in names]
    if unknown:
        raise HeadError(
            f"Unknown parameter {unknown[0]!r} for head {name!r}. Its parameters: {', '.join(names)}."
        )
    est = cls(**{**cls.defaults, **params})
    try:
        est._validate_params()  # scikit-learn's own checks, before any work rather than at fit
    except InvalidParameterError as exc:
        raise HeadError(f"Bad parameter for head {name!r}: {exc}") from None
    return est


def heads_help() -> str:
    """Every head with its description, for ``--help``."""
    return "; ".join(f"{name}: {cls.description}" for name, cls in HEADS.items())


def trusted_types() -> list[str]:
    """The type names a saved head may hold besides scikit-learn's and NumPy's: every registered
    head class, under its module and under ``featx.heads`` (the name heads were saved under when
    they all lived in one module; the package still exports those), and the parts of
    scikit-learn's calibration."""
    names = {"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"}
    for cls in HEADS.values():
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        if cls.__module__.startswith(f"{__package__}."):
            names.add(f"{__package__}.{cls.__name__}")
    return sorted(names)


def parse_params(items: list[str] | None) -> dict:
    """Parse ``["C=0.1", "epochs=20"]`` into ``{"C": 0.1, "epochs": 20}`` (Python literals, else strings)."""
    params = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise HeadError(f"A head parameter looks like NAME=VALUE, e.g. C=0.1. Received: {item!r}")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            params[key.strip()] = raw.strip()
    return params
