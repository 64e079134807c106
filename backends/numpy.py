"""NumPy backend: BLAS norms and an update with no tree-sized temporary.

With SciPy installed (``lars-multi[scipy]``), a multiply-add ``a x + b y`` on a
large layer, in place, is one BLAS ``axpy`` pass (after one ``scal`` where
``a`` is not 1); without it, a cache-blocked pair of ufuncs does the same through
one small scratch block. Many small vectors are updated by BLAS ``scal`` and ``axpy``
calls mapped over their lists: a BLAS call through f2py costs a third of a
ufunc call, and the map spends no Python per array.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from lars_multi import _batching
from lars_multi._aliasing import elements_overlap, overlap_groups
from lars_multi._protocol import no_axis_name

try:  # (NumPy 2 moved it)
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # pragma: no cover - NumPy 1
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

try:  # bfloat16 for NumPy comes from ml_dtypes (a dependency of JAX and TF).
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _bfloat16 = None

FRAMEWORK = "numpy"
_NUMPY_TYPES = (np.ndarray, np.generic)
_HALF: frozenset[np.dtype] = frozenset(np.dtype(t) for t in (np.float16, _bfloat16) if t is not None)
_NATIVE_FLOATS: frozenset[np.dtype] = _HALF | {np.dtype(np.float32), np.dtype(np.float64)}
# Either byte order: the ufunc paths read swapped data; BLAS gets native data only.
FLOAT_DTYPES = _NATIVE_FLOATS | {d.newbyteorder("S") for d in _NATIVE_FLOATS if d.kind == "f"}
_FLOAT32 = np.dtype(np.float32)
# Computed in their own dtype, in native byte order: the small-array fast path of axpbys.
_PLAIN = frozenset({_FLOAT32, np.dtype(np.float64)})
# Halves (in either byte order) compute in float32, swapped floats in native order.
_COMPUTE = {
    d: _FLOAT32 if d.itemsize == 2 else d.newbyteorder("=") for d in FLOAT_DTYPES if d not in _NATIVE_FLOATS
}
_COMPUTE.update({d: _FLOAT32 for d in _HALF})
# Elements per block of a multiply-add: the scratch block stays in L2 cache, so
# a x + b y costs one read of x and y and one write of the result.
_BLOCK = 1 << 15
# Layers are stepped in batches of about this many bytes of weights (in their
# compute dtype): their norms are taken, then they are updated while still in
# cache. Halves, computed on float32 copies of a batch, in batches of the least.
_BATCH_BYTES = _batching.cpu_batch_bytes()
_HALF_BATCH_BYTES = _batching.CPU_BATCH_BYTES

# How hard np.shares_memory may work to tell two views of one buffer apart.
_OVERLAP_WORK = 1 << 16

# Read off many arrays at once (map: no Python per array).
_BASE = operator.attrgetter("base")
_DTYPE = operator.attrgetter("dtype")
_NDIM = operator.attrgetter("ndim")
_SIZE = operator.attrgetter("size")
_FLAG_BITS = operator.attrgetter("flags.num")
# Bits of ``flags.num`` (NumPy's NPY_ARRAY_* flags).
_CONTIGUOUS = 0x1 | 0x2  # C or Fortran order
_WRITEABLE = 0x400

# The most elements SciPy's BLAS takes: it counts them in a C int (scal took a larger
# array's count cut to 32 bits, axpy raised OverflowError after scal had written).
_BLAS_MOST = 2**31 - 1

try:  # BLAS axpy, y <- y + a x, and scal, x <- a x, in one pass each (f2py writes
    # a contiguous, aligned, native y or x in place, and returns it; else a new array).
    from scipy.linalg import blas as _blas

    _AXPY = {np.dtype(np.float32): _blas.saxpy, np.dtype(np.float64): _blas.daxpy}
    _SCAL = {np.dtype(np.float32): _blas.sscal, np.dtype(np.float64): _blas.dscal}
except ImportError:  # pragma: no cover - exercised only without SciPy
    _AXPY = {}
    _SCAL = {}


# Subclasses whose operators differ from an array's: a masked array skips its masked
# elements in some operations and not in others (a norm counts them), a matrix's ``*``
# is a matrix product. Refused as arrays (not silently stepped one way or the other),
# as is a subclass doing NumPy's operations its own way (see _own_operations).
_NOT_ARRAYS = (np.ma.MaskedArray, np.matrix)


def is_native(x: Any) -> bool:
    return isinstance(x, _NUMPY_TYPES) and not isinstance(x, _NOT_ARRAYS) and not _own_operations(type(x))


def _own_operations(cls: type) -> bool:
    """Whether an array subclass overrides NumPy's ufuncs or functions (a units array):
    what a step computes with it is the subclass's, which may refuse ``out=`` (after
    other layers were written) or give a result of its own kind."""
    return issubclass(cls, np.ndarray) and (
        cls.__array_ufunc__ is not np.ndarray.__array_ufunc__
        or cls.__array_function__ is not np.ndarray.__array_function__
    )


def unwritable(x: Any) -> str | None:
    """Why ``out=x`` cannot be written in place, or None."""
    if not isinstance(x, np.ndarray):
        return f"a NumPy scalar ({type(x).__name__})"
    flags = x.flags
    if not flags.writeable:
        return "a read-only NumPy array"
    if flags.c_contiguous or flags.f_contiguous or not elements_overlap(x.shape, x.strides, x.itemsize):
        return None
    return "a NumPy array whose elements share memory (a stride of 0, as broadcast_to gives, or overlapping)"


def all_writable(xs: Sequence[Any]) -> bool:
    """:func:`unwritable` of every array is None: asked of the list at once where
    each is a writeable, contiguous NumPy array (so no stride is 0)."""
    if list(map(type, xs)).count(np.ndarray) == len(xs) and all(
        bits & _WRITEABLE and bits & _CONTIGUOUS for bits in set(map(_FLAG_BITS, xs))
    ):
        return True
    return all([unwritable(x) is None for x in xs])


def memory_roots(xs: Sequence[Any]) -> list[int | None]:
    """The memory each array lies in: arrays with different roots share none.

    None for all where every array owns its memory (has no base: every way
    NumPy offers of wrapping other memory gives the array one), as then no two
    share it. Else each array's root is the array at the end of its chain of
    bases; where some of those hold memory from outside NumPy (a memoryview, a
    DLPack capsule, a torch tensor), which other objects may hold too, ends
    whose byte ranges meet share a root.
    """
    if _own_memory(xs):
        return [None] * len(xs)
    ends = [_chain_end(x) for x in xs]
    distinct = {id(end): end for end in ends}
    if _own_memory(distinct.values()):  # each end owns its memory: one root per end
        return [id(end) for end in ends]
    groups = overlap_groups({key: byte_bounds(end) for key, end in distinct.items()})
    return [groups[id(end)] for end in ends]


def _own_memory(xs: Iterable[Any]) -> bool:
    """Whether every array owns its memory (has no base), asked of the list at once."""
    return all(map(operator.is_, map(_BASE, xs), itertools.repeat(None)))


def _chain_end(x: Any) -> Any:
    """The last NumPy array on ``x``'s chain of bases (``x`` itself if it has none)."""
    while isinstance(x.base, np.ndarray):
        x = x.base
    return x


def overlaps(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` share an element's bytes (not merely their bounds: a
    matrix's columns share none); where that is too hard to tell, True."""
    try:
        # (NumPy's stubs name only -1 and 0; the documented max_work takes any bound)
        return bool(np.shares_memory(a, b, max_work=_OVERLAP_WORK))  # type: ignore[arg-type]
    except np.exceptions.TooHardError:
        return True


def byte_spans(xs: Sequence[Any]) -> list[tuple[int, int]]:
    """The address range each array reaches (where two meet, :func:`overlaps` asks more)."""
    return [byte_bounds(x) for x in xs]


def view_of(x: Any) -> Hashable | None:
    """The first element's address, the shape, the strides and the dtype: the elements read."""
    if not isinstance(x, np.ndarray):
        return None
    return (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype)


def dtype_name(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    order = {">": " (big-endian)", "<": " (little-endian)"}.get(dtype.byteorder, "")
    return dtype.name + order


def dtype_hint(got: Any, expected: Any) -> str:
    if got.kind == "f" and expected in _HALF and got.itemsize > expected.itemsize:
        return (
            f"; a {expected.name} layer's step is computed in float32 already, from {expected.name} "
            f"gradients: cast it (x.astype(w.dtype)), unscaling a loss-scaled gradient first (a value "
            f"beyond {expected.name}'s range becomes inf)"
        )
    if got.kind == "f" and expected.kind in "fV" and got.itemsize > expected.itemsize:
        return (
            f"; NumPy silently promotes {expected.name} arithmetic with {got.name} values, so cast it "
            f"back to the weights' dtype: x.astype(w.dtype)"
        )
    if got.newbyteorder("=") == expected.newbyteorder("="):
        return "; convert both to one byte order: x.astype(x.dtype.newbyteorder('='))"
    return ""


def largest(dtype: Any) -> float:
    return float(np.finfo(compute_dtype(np.dtype(dtype))).max)


def asarray(obj: Any, dtype: Any = None) -> np.ndarray:
    return np.asarray(obj, dtype=_bfloat16 if dtype == "bfloat16" else dtype)


def arithmetic() -> AbstractContextManager[Any]:
    """The step's arithmetic ignores NumPy's floating-point error settings: an
    underflow (``np.seterr(under="raise")``) or overflow raised halfway through a
    step would leave earlier layers written. Non-finite results are as on the other
    backends, which have no such settings. (One array's functional ``lars_update``,
    which writes nothing, runs without it: an ``errstate`` costs a tenth of it.)"""
    return np.errstate(all="ignore")


def zeros_like(x: Any) -> np.ndarray:
    return np.zeros_like(x)


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x)


def cast_like(value: Any, like: Any) -> Any:
    if isinstance(value, _NUMPY_TYPES) and value.dtype != like.dtype:
        return value.astype(like.dtype)
    return value


def where(cond: Any, x: Any, y: Any) -> Any:
    return np.where(cond, x, y)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    return _COMPUTE.get(dtype, dtype)


def norm(x: Any, axis_name: Any = None) -> np.generic:
    """:math:`\\lVert x \\rVert_2` through BLAS ``dot``; halves in float32; one
    element's, its magnitude. NumPy has no mesh axes: an ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    return _magnitude(x) if x.size == 1 else np.sqrt(_sum_of_squares(x))


def norms(xs: Sequence[Any], axis_names: Sequence[Any] | None = None) -> list[Any]:
    """The 2-norms of many arrays: their sums of squares (BLAS ``dot``), then one
    square root for all of them where they are many, of one dtype (the same
    values as :func:`norm` gives one by one)."""
    if axis_names is not None:
        for axis_name in axis_names:
            if axis_name is not None:
                raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    squares = [
        np.vdot(x, x) if x.dtype in _PLAIN and x.flags.c_contiguous else _sum_of_squares(x) for x in xs
    ]
    if len(squares) < 8 or len({s.dtype for s in squares}) != 1:  # (a few: one by one is faster)
        values = [np.sqrt(s) for s in squares]
    else:
        values = list(np.sqrt(np.array(squares)))
    sizes = list(map(_SIZE, xs))
    if 1 in sizes:  # (one element: its magnitude, as torch and XLA take it; its square may not be finite)
        for i, size in enumerate(sizes):
            if size == 1:
                values[i] = _magnitude(xs[i])
    return values


def _magnitude(x: Any) -> np.generic:
    """The norm of a one-element array: its magnitude, in the compute dtype, with no
    square to overflow (beyond about 1.8e19 in float32) or underflow."""
    return np.abs(to_compute(x).reshape(())[()])


def _sum_of_squares(x: Any) -> np.generic:
    """In the compute dtype: float32 for halves, native byte order for swapped floats.
    Through BLAS: ``vdot`` sums an array with a negative stride in one running float
    sum (1e-4 relative error on a million float32 elements, against 1e-6 through
    BLAS), so a layer that is dense in memory is read in memory order (a view),
    and one that is not as a copy (as ``vdot`` copies it; a 1-D strided one excepted)."""
    compute = _COMPUTE.get(x.dtype)
    if compute is not None:
        x = x.astype(compute)
    elif not x.flags.c_contiguous and not (x.ndim == 1 and x.strides[0] > 0):
        x = x.ravel(order="K")
    return np.vdot(x, x)


def to_compute(x: Any) -> Any:
    return x.astype(_FLOAT32) if _COMPUTE.get(x.dtype) is _FLOAT32 else x


def sin(x: Any) -> Any:
    return np.sin(x)


def stop_gradient(x: Any) -> Any:
    return x


def stop_gradients(xs: list[Any]) -> list[Any]:
    return xs  # (no autograd: nothing to cut)


def write(out: np.ndarray, value: Any) -> None:
    np.copyto(out, value)


def snapshot(x: np.ndarray) -> np.ndarray:
    return x.copy()


def stack(xs: Sequence[Any]) -> np.ndarray:
    return np.array(xs)


def unstack(vector: np.ndarray) -> list[float]:
    """Python floats (exact), as BLAS takes them (the small-array ufunc path
    converts them to 0-d arrays of the layers' dtype)."""
    return vector.tolist()


def batches(ws: Sequence[Any]) -> list[Sequence[int]]:
    """Consecutive layers of one dtype, in batches of about ``_BATCH_BYTES`` in
    their compute dtype (halves, computed on float32 copies, of ``_HALF_BATCH_BYTES``),
    counted in elements (an array's ``size`` is read faster than its ``nbytes``)."""
    return _batching.batches(ws, key=_DTYPE, size=_SIZE, budget=_batch_elements)


def _batch_elements(dtype: np.dtype) -> int:
    """How many elements of ``dtype`` a batch takes (see :func:`batches`)."""
    if dtype.itemsize == 2:  # (halves, in either byte order)
        return _HALF_BATCH_BYTES // 4
    return _BATCH_BYTES // dtype.itemsize


def axpby(a: Any, x: Any, b: Any, y: Any, out: Any = None) -> np.ndarray:
    """``a x + b y`` into ``out`` (a new array of ``x``'s dtype if None; it may be
    ``x`` itself) with no temporary larger than a cache-sized block where the
    arrays are contiguous (else one temporary the size of the layer).

    On a large, contiguous, aligned float32 or float64 layer (when SciPy is
    installed), ``x += b y`` is one BLAS ``axpy`` pass, and ``x <- a x + b y``
    in place a ``scal`` and an ``axpy``. A NumPy scalar ``x`` gives a scalar.
    """
    if out is None:
        if isinstance(x, np.generic):
            return axpby(a, np.asarray(x), b, y)[()]  # type: ignore[no-any-return]
        out = np.empty_like(x)
    one = type(a) is float and a == 1
    contiguous = out.flags.c_contiguous and x.flags.c_contiguous and y.flags.c_contiguous
    # (BLAS axpy skips a zero b: x + 0 y would keep x where y holds inf or NaN)
    blas = out.dtype in _AXPY and (one or (out is x and a != 0)) and b != 0
    large = _BLOCK < out.size <= _BLAS_MOST
    if blas and large and contiguous and _blas_takes(out, y):
        flat_out = out.reshape(-1)
        if out is not x:  # (then a is 1)
            np.copyto(flat_out, x.reshape(-1))
        _blas_in_place(a, [flat_out], [b], [y.reshape(-1)], [flat_out.size])
        return out
    if out.size <= _BLOCK or not contiguous:
        scaled = np.multiply(y, b, dtype=compute_dtype(out.dtype))  # the one temporary
        if one:
            np.add(x, scaled, out=out, casting="unsafe")
        else:
            scaled += np.multiply(x, a, dtype=scaled.dtype)
            np.copyto(out, scaled, casting="unsafe")
        return out
    cdt = compute_dtype(out.dtype)
    pair = _take_scratch(cdt)
    scratch, other = pair
    flat_x, flat_y, flat_out = x.reshape(-1), y.reshape(-1), out.reshape(-1)
    try:
        for start in range(0, flat_out.size, _BLOCK):
            stop = min(start + _BLOCK, flat_out.size)
            block = scratch[: stop - start]
            np.multiply(flat_y[start:stop], b, out=block, dtype=cdt)
            if one:
                np.add(flat_x[start:stop], block, out=flat_out[start:stop], dtype=cdt, casting="unsafe")
            else:
                block += np.multiply(flat_x[start:stop], a, out=other[: stop - start], dtype=cdt)
                np.copyto(flat_out[start:stop], block, casting="unsafe")
    finally:
        _keep_scratch(cdt, pair)
    return out


_THREAD = threading.local()


def _take_scratch(dtype: np.dtype) -> np.ndarray:
    """Two blocks of ``_BLOCK`` elements of ``dtype``, kept by this thread between
    calls: a blocked multiply-add allocates nothing. (Blocks of this size would each
    come from the system, ``mmap``-ed, where the C library's threshold is at its
    default, and cost a page fault per 4 KiB on every call.) Taken out of the store
    while in use: a call made meanwhile in this thread (a signal handler, a
    finalizer) gets blocks of its own, not these."""
    blocks: dict[np.dtype, np.ndarray] | None = getattr(_THREAD, "blocks", None)
    if blocks is None:
        blocks = _THREAD.blocks = {}
    pair = blocks.pop(dtype, None)
    return np.empty((2, _BLOCK), dtype=dtype) if pair is None else pair


def _keep_scratch(dtype: np.dtype, pair: np.ndarray) -> None:
    """Give the blocks of :func:`_take_scratch` back to this thread's store."""
    _THREAD.blocks[dtype] = pair


def axpbys(
    a: Any, xs: Sequence[Any], bs: Any, ys: Sequence[Any], outs: Any = None, scale: float = 1.0
) -> list[Any]:
    """:func:`axpby` of each array (``ys`` of the dtypes and shapes of ``xs``;
    ``outs`` overlap no ``y`` but their own ``x``, as the step ensures before it
    writes in place). Vectors of a native float dtype, written in place: one
    BLAS ``scal`` and one ``axpy`` call each (when SciPy is installed), mapped
    over the lists with no Python per array; else, small arrays in one to three
    ufunc calls each, with the coefficients as 0-d arrays of their dtype (a ufunc
    takes one faster than a Python float, and rounds it the same). ``scale``
    multiplies each coefficient first, as Python floats (one product, rounded
    once to the arrays' dtype, whether a ratio came as a NumPy scalar or in a list)."""
    coefficients = bs if isinstance(bs, list) else [bs] * len(xs)
    if scale != 1:
        coefficients = [scale * float(b) for b in coefficients]
    if outs is None and len(xs) == 1 and _small_alone(xs[0]):  # one array (lars_update's)
        x = xs[0]
        a_0d = None if type(a) is float and a == 1 else _as_0d(a, x.dtype)
        return [_new_by_ufuncs(a_0d, x, coefficients[0], ys[0])]
    in_place = outs is not None and (outs is xs or all(map(operator.is_, outs, xs)))
    if outs is not None and not in_place:
        return [axpby(a, x, b, y, out) for x, b, y, out in zip(xs, coefficients, ys, outs)]
    if not xs or xs[0].dtype not in _PLAIN:  # (halves are computed on float32 copies)
        return [axpby(a, x, b, y, x if in_place else None) for x, b, y in zip(xs, coefficients, ys)]
    dtype = xs[0].dtype
    blas = in_place and dtype in _AXPY and a != 0 and all(coefficients)  # (no zero b: see axpby)
    sizes = _blas_vector_sizes(xs, ys, dtype) if blas else None
    if sizes is not None:
        return _blas_in_place(a, xs, coefficients, ys, sizes)
    small = _Small(a, dtype)
    results = []
    for x, b, y in zip(xs, coefficients, ys):
        # (an equal dtype may be another object: an array from pickle has its own)
        if x.size > _BLOCK or (x.dtype is not dtype and x.dtype != dtype) or not x.ndim:
            results.append(axpby(a, x, b, y, x if in_place else None))
        elif small.axpy is None or x.ndim != 1 or not x.size or not b:
            results.append(small.by_ufuncs(x, b, y, in_place))
        else:
            results.append(small.by_blas(x, b, y, in_place))
    return results


class _Vectors(list[np.ndarray]):
    """Arrays the BLAS path has just written: non-empty NumPy vectors of ``dtype``,
    of ``sizes``. A later call given them as its ``ys`` (the step's next pass: the
    weights take the buffers just written) knows its ``xs``' dtype and sizes, which
    are the ``ys``', without reading them again."""

    def __init__(self, arrays: Sequence[np.ndarray], dtype: np.dtype, sizes: list[int]) -> None:
        super().__init__(arrays)
        self.dtype, self.sizes = dtype, sizes


def _blas_vector_sizes(xs: Sequence[Any], ys: Sequence[Any], dtype: np.dtype) -> list[int] | None:
    """The sizes of ``xs`` where every one is a non-empty NumPy vector of ``dtype``
    that BLAS takes as :func:`axpby` would, alone (f2py hands BLAS a small vector
    itself where it is contiguous and aligned, else a copy, written back); else None.
    The ``ys`` have the ``xs``' dtypes and shapes: where they are vectors just written,
    so are the ``xs``, with no need to look."""
    if type(ys) is _Vectors and ys.dtype is dtype:
        sizes = ys.sizes
    else:
        n = len(xs)
        if list(map(type, xs)).count(np.ndarray) != n:
            return None
        if not (list(map(_NDIM, xs)).count(1) == n and list(map(_DTYPE, xs)).count(dtype) == n):
            return None
        sizes = list(map(_SIZE, xs))  # (read faster than len)
        if 0 in sizes:
            return None
    largest = max(sizes)
    if largest > _BLAS_MOST:
        return None
    if largest > _BLOCK and not all(_blas_takes(x, y) for x, y, k in zip(xs, ys, sizes) if k > _BLOCK):
        return None  # (each takes its own path: a layer's result does not depend on its batch)
    return sizes


def _blas_takes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether :func:`axpby` gives a large vector ``x <- a x + b y`` to BLAS (else it
    takes ufuncs, which round ``b y`` before the sum: BLAS's multiply-add may not)."""
    return x.flags.c_contiguous and y.flags.c_contiguous and _blas_ready(x, y) and not overlaps(x, y)


def _blas_in_place(
    a: Any, xs: Sequence[Any], bs: list[Any], ys: Sequence[Any], sizes: list[int]
) -> list[Any]:
    """``x <- a x + b y`` for every array, by BLAS ``scal`` and ``axpy`` (whose
    multiply-add may be fused: one rounding)."""
    dtype = xs[0].dtype
    if not (type(a) is float and a == 1):
        _all_written(xs, map(_SCAL[dtype], itertools.repeat(a), xs))
    _all_written(xs, map(_AXPY[dtype], ys, xs, sizes, bs))
    return _Vectors(xs, dtype, sizes)


def _all_written(targets: Sequence[Any], results: Iterable[Any]) -> None:
    """BLAS calls' ``results`` in their ``targets`` (f2py worked on a copy where
    an array was not contiguous and aligned)."""
    results = list(results)
    if not all(map(operator.is_, results, targets)):
        for target, result in zip(targets, results):
            _written(target, result)


class _Small:
    """``a x + b y`` for the small arrays of one :func:`axpbys` call (of one native
    float dtype): vectors by BLAS, other arrays by ufuncs, the coefficients
    converted to 0-d arrays once."""

    __slots__ = ("_last", "a", "a_0d", "axpy", "dtype", "one", "scal")

    def __init__(self, a: Any, dtype: np.dtype) -> None:
        self.a, self.dtype, self.one = a, dtype, type(a) is float and a == 1
        self.a_0d: Any = None if self.one else _as_0d(a, dtype)  # (used only where a is not 1)
        self.axpy: Any = _AXPY.get(dtype)
        self.scal: Any = _SCAL.get(dtype)
        self._last: tuple[Any, Any] = (None, None)

    def by_blas(self, x: np.ndarray, b: Any, y: np.ndarray, in_place: bool) -> np.ndarray:
        """``scal`` then ``axpy`` (its multiply-add may be fused: one rounding)."""
        if not in_place:
            out = x.copy() if self.one else np.multiply(x, self.a_0d)
        else:
            out = x
            if not self.one:
                _written(out, self.scal(self.a, out))
        _written(out, self.axpy(y, out, y.size, b))
        return out

    def by_ufuncs(self, x: np.ndarray, b: Any, y: np.ndarray, in_place: bool) -> np.ndarray:
        b_0d = b
        if type(b) is float:  # as a 0-d array, once for a run of layers sharing it
            last, b_0d = self._last
            if b is not last:
                b_0d = _as_0d(b, self.dtype)
                self._last = (b, b_0d)
        if not in_place:
            return _new_by_ufuncs(None if self.one else self.a_0d, x, b_0d, y)
        if not self.one:
            x *= self.a_0d
        x += y * b_0d
        return x


def _small_alone(x: np.ndarray) -> bool:
    """Whether ``x`` takes the small-array ufuncs whatever the others (not a vector,
    which BLAS takes, nor 0-d, nor large, nor a half)."""
    return x.ndim > 1 and x.size <= _BLOCK and x.dtype in _PLAIN


def _new_by_ufuncs(a_0d: Any, x: np.ndarray, b: Any, y: np.ndarray) -> np.ndarray:
    """``a x + b y`` as a new array (``a_0d`` None for a = 1), the coefficients as
    0-d arrays of ``x``'s dtype."""
    b_0d = _as_0d(b, x.dtype)
    return x + y * b_0d if a_0d is None else x * a_0d + y * b_0d


def _written(target: np.ndarray, result: np.ndarray) -> None:
    """A BLAS call's ``result`` in ``target`` (f2py worked on a copy where it had to)."""
    if result is not target:
        np.copyto(target, result)


def _as_0d(value: Any, dtype: np.dtype) -> Any:
    """A Python float as a 0-d array of ``dtype`` (arrays pass through)."""
    return np.array(value, dtype) if type(value) is float else value


def _blas_ready(out: np.ndarray, y: np.ndarray) -> bool:
    """Whether f2py hands BLAS these very buffers: aligned, in native byte order
    (else it works on a copy, and the update of ``out`` would be lost)."""
    return out.flags.aligned and y.flags.aligned and out.dtype.isnative and y.dtype.isnative


def info() -> dict[str, str]:
    return {"version": np.__version__, "devices": "cpu"}
