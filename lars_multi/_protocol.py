"""What a backend module provides: :class:`Backend`, and defaults for the optional parts.

A backend is a module (see :mod:`lars_multi.backends`) that satisfies the
:class:`Backend` protocol: primitives on arrays and on lists of arrays, with
which :mod:`lars_multi._step` writes the LARS step once. A backend says how
to compute, never what LARS is. The optional primitives have defaults that
fit a framework with one device, dense arrays and no way to share memory
between arrays (the list primitives loop over the one-array ones);
:func:`complete` gives a module what it does not define itself.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Protocol

from . import _batching, _registry
from ._errors import LarsMultiTypeError, LarsMultiValueError, type_name


class Backend(Protocol):
    """The primitives a backend module provides (after :func:`complete`)."""

    FRAMEWORK: str
    FLOAT_DTYPES: Collection[Any]

    def __hash__(self) -> int: ...

    def is_native(self, x: Any) -> bool: ...
    def dtype_name(self, dtype: Any) -> str: ...
    def asarray(self, obj: Any, dtype: Any = None) -> Any: ...
    def zeros_like(self, x: Any) -> Any: ...
    def to_numpy(self, x: Any) -> Any: ...
    def norm(self, x: Any, axis_name: Any = None) -> Any: ...
    def cast_like(self, value: Any, like: Any) -> Any: ...
    def where(self, cond: Any, x: Any, y: Any) -> Any: ...
    def stack(self, xs: Sequence[Any]) -> Any: ...
    def unstack(self, vector: Any) -> Sequence[Any]: ...
    def stop_gradient(self, x: Any) -> Any: ...
    def info(self) -> dict[str, str]: ...

    # Required too: is_writable(x) -> bool, unless the module defines unwritable (below).

    # Optional, with defaults (see _defaults below; COMPILES: whether the module's compile
    # gives another function, asked once).
    COMPILES: bool

    def write(self, out: Any, value: Any) -> None: ...
    def snapshot(self, x: Any) -> Any: ...
    def unwritable(self, x: Any) -> str | None: ...
    def all_writable(self, xs: Sequence[Any]) -> bool: ...
    def is_dense(self, x: Any) -> bool: ...
    def all_dense(self, xs: Sequence[Any]) -> bool: ...
    def alike(self, xs: Sequence[Any], ws: Layout) -> bool: ...
    def densify(self, x: Any, like: Any) -> Any: ...
    def conform(self, x: Any, w: Any) -> Any: ...
    def layout_name(self, x: Any) -> str: ...
    def dtype_hint(self, got: Any, expected: Any) -> str: ...
    def device(self, x: Any) -> Any: ...
    def shape(self, x: Any) -> Any: ...
    def assert_same_shape(self, x: Any, w: Any, message: str) -> Any: ...
    def is_traced(self, x: Any) -> bool: ...
    def misplaced(self, value: Any, ws: Sequence[Any]) -> int | None: ...
    def memory_roots(self, xs: Sequence[Any]) -> list[Hashable | None]: ...
    def overlaps(self, a: Any, b: Any) -> bool: ...
    def byte_spans(self, xs: Sequence[Any]) -> list[tuple[int, int]] | None: ...
    def view_of(self, x: Any) -> Hashable | None: ...
    def norms(self, xs: Sequence[Any], axis_names: Sequence[Any] | None = None) -> list[Any]: ...
    def stop_gradients(self, xs: list[Any]) -> list[Any]: ...
    def check_axis_name(self, arg: Any, value: Any) -> None: ...
    def to_compute(self, x: Any) -> Any: ...
    def compile(self, function: Any, donate: bool = False) -> Any: ...
    def largest(self, dtype: Any) -> float: ...
    def constant(self, value: float, like: Any) -> Any: ...
    def scalar_for(self, value: Any, dtype: str, ws: Sequence[Any]) -> Any: ...
    def arithmetic(self) -> AbstractContextManager[Any]: ...
    def widest_float(self, like: Any) -> str: ...
    def readable(self) -> bool: ...
    def sin(self, x: Any) -> Any: ...
    def axpby(self, a: Any, x: Any, b: Any, y: Any, out: Any = None) -> Any: ...
    def axpbys(
        self,
        a: Any,
        xs: Sequence[Any],
        bs: Any,
        ys: Sequence[Any],
        outs: Sequence[Any] | None = None,
        scale: float = 1.0,
    ) -> list[Any]: ...
    def batches(self, ws: Sequence[Any]) -> Sequence[Sequence[int]]: ...

    # Optional: None where the framework has no trees of its own.
    flatten: Callable[[Any], Any] | None


_OPTIONAL = ("flatten",)


class Layout(Sequence[Any]):
    """The weights of a step as the checks compare other lists with them: each
    weight's type, dtype and shape, read once (a NumPy array builds its shape
    tuple at every read) however many lists are compared with them. A sequence
    of the weights too, for a backend's ``alike`` written for a list of them."""

    __slots__ = ("_columns", "arrays")

    def __init__(self, arrays: Sequence[Any]) -> None:
        self.arrays = arrays
        self._columns: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: Any) -> Any:
        return self.arrays[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.arrays)

    @property
    def types(self) -> list[type]:
        return self._column("type")

    @property
    def dtypes(self) -> list[Any]:
        return self._column("dtype")

    @property
    def shapes(self) -> list[Any]:
        return self._column("shape")

    def _column(self, attribute: str) -> list[Any]:
        column = self._columns.get(attribute)
        if column is None:
            column = self._columns[attribute] = read_all(attribute, self.arrays)
        return column

    def matches(self, xs: Sequence[Any]) -> bool:
        """Whether every ``x`` has the type, dtype and shape of the weights beside
        it, asked of the lists at once (loops in C, not one in Python over the pairs:
        2,000 arrays in a fifth of the time; one array, with no list built)."""
        if len(xs) == 1 and len(self.arrays) == 1:
            x, w = xs[0], self.arrays[0]
            return type(x) is type(w) and x.dtype == w.dtype and x.shape == w.shape
        return (
            read_all("type", xs) == self.types
            and read_all("dtype", xs) == self.dtypes
            and read_all("shape", xs) == self.shapes
        )


_READERS: dict[str, Callable[[Any], Any]] = {
    "type": type,
    "dtype": operator.attrgetter("dtype"),
    "shape": operator.attrgetter("shape"),
}


def read_all(attribute: str, xs: Sequence[Any]) -> list[Any]:
    """The ``attribute`` (``"type"``, ``"dtype"`` or ``"shape"``) of every array, read
    in C (one reader mapped over the list) except where Dynamo traces the step: it
    cannot trace an attribute getter."""
    if _registry.is_compiling():
        return [type(x) if attribute == "type" else getattr(x, attribute) for x in xs]
    return list(map(_READERS[attribute], xs))


def _defaults(module: ModuleType) -> dict[str, Callable[..., Any]]:
    def unwritable(x: Any) -> str | None:
        """Why ``x`` cannot be written in place, or None when it can."""
        return None if module.is_writable(x) else f"an immutable {type_name(x)}"

    def all_writable(xs: Sequence[Any]) -> bool:
        """Whether every array can be written in place (``unwritable`` of each is None)."""
        unwritable = module.unwritable
        return all([unwritable(x) is None for x in xs])

    def is_dense(x: Any) -> bool:
        return True

    def alike(xs: Sequence[Any], ws: Layout) -> bool:
        """A fast check that every ``x`` is an array of its weight's type, dtype and
        shape needing no other check (dense, on the weight's device), asked of the
        lists at once; False sends each through every check, with messages."""
        return ws.matches(xs)

    def all_dense(xs: Sequence[Any]) -> bool:
        """Whether every array is dense, asked of the list at once: here, where every
        array is, True."""
        return True

    def conform(x: Any, w: Any) -> Any:
        """``x`` (a gradient or buffer, checked like the weights ``w``) laid out as ``w``,
        where the framework would lay results out as it chose: here ``x`` itself."""
        return x

    def densify(x: Any, like: Any) -> Any:
        """A dense native array for a framework's sparse gradient of the weights
        ``like``, or None; a ``ValueError`` giving the reason where ``x`` is one
        that cannot be densified as given."""
        return None

    def layout_name(x: Any) -> str:
        return "dense"

    def dtype_hint(got: Any, expected: Any) -> str:
        """Advice appended to a dtype mismatch message."""
        return ""

    def device(x: Any) -> Any:
        return None

    def shape(x: Any) -> Any:
        """``x``'s shape as far as it is known now (traced dimensions may be None)."""
        return x.shape

    def assert_same_shape(x: Any, w: Any, message: str) -> Any:
        """``x``, checked to have ``w``'s shape when a traced program runs where the
        shapes are known only then (failing with ``message``), as the array to use in
        its place; here shapes are known: ``x`` itself."""
        return x

    def is_traced(x: Any) -> bool:
        """Whether ``x`` is a value of a program being traced (``jax.jit``,
        ``tf.function``), which exists only inside that trace: here, never."""
        return False

    def misplaced(value: Any, ws: Sequence[Any]) -> int | None:
        """The index of the first of ``ws`` whose arithmetic cannot read the 0-d
        array ``value`` where it lives (another device); None where all can."""
        return None

    def memory_roots(xs: Sequence[Any]) -> list[Hashable | None]:
        """The identity of the buffer holding each array; None where the array shares
        memory with no other of ``xs`` except by being the same object."""
        return [None] * len(xs)

    def overlaps(a: Any, b: Any) -> bool:
        return True

    def byte_spans(xs: Sequence[Any]) -> list[tuple[int, int]] | None:
        """The address range ``[low, high)`` each array reaches, where ``overlaps`` is
        decided by them (then many arrays of one buffer are compared in address
        order, not pair by pair); None: ask ``overlaps``."""
        return None

    def view_of(x: Any) -> Hashable | None:
        """The elements ``x`` reads, as a key: two arrays with one key are the same
        elements in the same order (two objects over one memory, as a ``state_dict``
        holds tied weights), one array for the aliasing checks. None: known by the
        object alone."""
        return None

    def norms(xs: Any, axis_names: Any = None) -> list[Any]:
        """The 2-norm of each array (halves accumulate in float32); with
        ``axis_names``, one mesh axis name (or None) per array (see ``norm``)."""
        if axis_names is None:
            return [module.norm(x) for x in xs]
        return [module.norm(x, a) if a is not None else module.norm(x) for x, a in zip(xs, axis_names)]

    def stop_gradients(xs: list[Any]) -> list[Any]:
        """``stop_gradient`` of each array."""
        return [module.stop_gradient(x) for x in xs]

    def check_axis_name(arg: Any, value: Any) -> None:
        """Raise unless the backend sums norms over named mesh axes (``axis_name``)."""
        raise no_axis_name(arg, module.FRAMEWORK, value)

    def to_compute(x: Any) -> Any:
        """``x`` in the dtype updates are computed in (float32 for halves); ``x``
        itself where that is its own. Decided by the dtype alone."""
        return x

    def compile(function: Any, donate: bool = False) -> Any:
        """``function`` (of lists of arrays) compiled by the framework, where it compiles;
        ``donate``: its first argument's buffers may be reused for the results."""
        return function

    def largest(dtype: Any) -> float:
        """The largest finite value of the dtype the rate is computed in."""
        return float("inf")

    def readable() -> bool:
        """Whether array values can be read on the host now (an optimizer's step count,
        timm's first-step flags); where not, the step takes them as traced values."""
        return True

    def constant(value: float, like: Any) -> Any:
        """The number ``value`` as arithmetic with arrays like ``like`` takes it fastest:
        here the number itself."""
        return value

    def widest_float(like: Any) -> str:
        """The name of the widest floating dtype arrays beside ``like`` can have now
        (a schedule's rate is computed in it, and cast to each layer's)."""
        return "float64"

    def arithmetic() -> AbstractContextManager[Any]:
        """The context the step's arithmetic runs in: here none."""
        return contextlib.nullcontext()

    def scalar_for(value: Any, dtype: str, ws: Sequence[Any]) -> Any:
        """A 0-d array of ``value`` (``dtype``: a dtype's name) that arithmetic with
        each of ``ws`` can read: state kept beside them (a step count, a flag)."""
        return module.asarray(value, dtype)

    def write(out: Any, value: Any) -> None:
        """Copy ``value`` into ``out`` in place (called only where ``unwritable`` is None)."""
        raise TypeError(f"{type_name(out)} cannot be written in place")

    def snapshot(x: Any) -> Any:
        """``x``'s values now, kept whatever is later written into its memory: here
        ``x`` itself, as nothing can be."""
        return x

    def sin(x: Any) -> Any:
        return math.sin(x)

    def axpby(a: Any, x: Any, b: Any, y: Any, out: Any = None) -> Any:
        """``a x + b y`` (``a`` a number, ``b`` a number or 0-d array), written into
        ``out`` when given (which may be ``x``)."""
        result = (x if type(a) is float and a == 1 else a * x) + b * y
        if out is None:
            return result
        module.write(out, result)
        return out

    def axpbys(
        a: Any, xs: Sequence[Any], bs: Any, ys: Sequence[Any], outs: Any = None, scale: float = 1.0
    ) -> list[Any]:
        """``axpby`` of each array: ``a x_i + s b_i y_i`` (``bs``: one value, or a list
        with one per array; ``s``: ``scale``, a Python number), into ``outs`` when given."""
        coefficients = bs if isinstance(bs, list) else [bs] * len(xs)
        if scale != 1:
            coefficients = [scale * b for b in coefficients]
        targets = outs if outs is not None else [None] * len(xs)
        return [module.axpby(a, x, b, y, t) for x, b, y, t in zip(xs, coefficients, ys, targets)]

    def batches(ws: Sequence[Any]) -> Sequence[Sequence[int]]:
        """The layers in the groups the step runs over, each of one dtype, in order:
        here, one group per dtype."""
        return _batching.batches(ws, key=lambda w: w.dtype, size=lambda w: 0, budget=lambda dtype: None)

    # Every public function defined above, by name.
    return {name: f for name, f in locals().items() if inspect.isfunction(f) and not name.startswith("_")}


def no_axis_name(arg: Any, framework: str, value: Any) -> LarsMultiValueError:
    """The error for an ``axis_name`` given to a backend without named mesh axes."""
    return LarsMultiValueError(
        f"{arg}: supported on JAX only (norms summed over a named mesh axis of jax.shard_map); "
        f"{framework} has no named mesh axes, got {value!r}"
    )


# What a backend module must define itself (see lars_multi.backends).
_REQUIRED = (
    "FRAMEWORK",
    "FLOAT_DTYPES",
    "is_native",
    "dtype_name",
    "asarray",
    "zeros_like",
    "to_numpy",
    "norm",
    "cast_like",
    "where",
    "stack",
    "unstack",
    "stop_gradient",
    "info",
)


def _nothing() -> None:
    """A function for a backend's ``compile``, to tell whether it compiles."""


def complete(module: ModuleType) -> Backend:
    """Give ``module`` the optional primitives it does not define (and None for
    the optional parts it lacks): then it is a :class:`Backend`. A module that
    lacks a required one is refused, before any call uses it."""
    missing = [name for name in _REQUIRED if not hasattr(module, name)]
    if not (hasattr(module, "is_writable") or hasattr(module, "unwritable")):
        missing.append("is_writable (or unwritable)")
    if missing:
        raise LarsMultiTypeError(
            f"backend module {module.__name__}: expected the required primitives of lars_multi.backends, "
            f"missing {', '.join(missing)}"
        )
    if hasattr(module, "cos") and not hasattr(module, "sin"):
        raise LarsMultiTypeError(
            f"backend module {module.__name__}: defines cos, which lars_multi 0.3.21 replaced by "
            "sin(x), the sine of a schedule's array: define sin"
        )
    if not hasattr(module, "COMPILES"):  # (asked once: whether its compile gives another function)
        module.COMPILES = hasattr(module, "compile") and module.compile(_nothing) is not _nothing  # type: ignore[attr-defined]
    for name, default in _defaults(module).items():
        if not hasattr(module, name):
            setattr(module, name, default)
    for name in _OPTIONAL:
        if not hasattr(module, name):
            setattr(module, name, None)
    # Not typing.cast: torch.compile would take its result for a new, sourceless object.
    return module  # type: ignore[return-value]
