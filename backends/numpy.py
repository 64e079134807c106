"""NumPy backend: BLAS norms and an update with no tree-sized temporary.

With SciPy installed (``lars-multi[scipy]``), the update of a large layer is
one BLAS ``axpy`` pass, :math:`w \\leftarrow w - \\eta_\\ell g`, in place;
without it, a cache-blocked pair of ufuncs does the same through one small
scratch block.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from lars_multi._algorithm import trust_ratio
from lars_multi._protocol import no_axis_name

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
# Halves (in either byte order) compute in float32, swapped floats in native order.
_COMPUTE = {
    d: _FLOAT32 if d.itemsize == 2 else d.newbyteorder("=") for d in FLOAT_DTYPES if d not in _NATIVE_FLOATS
}
_COMPUTE.update({d: _FLOAT32 for d in _HALF})
# Elements per block of the update: the scratch block stays in L2 cache, so
# w - r g costs one read of w and g and one write of the result.
_BLOCK = 1 << 15
# Layers are processed in batches of about this many bytes of weights: their
# norms are taken, then they are updated while still in cache.
_BATCH_BYTES = 1 << 22

try:  # BLAS axpy, y <- y + a x in one pass (f2py writes contiguous y in place).
    from scipy.linalg import blas as _blas

    _AXPY = {np.dtype(np.float32): _blas.saxpy, np.dtype(np.float64): _blas.daxpy}
except ImportError:  # pragma: no cover - exercised only without SciPy
    _AXPY = {}


def is_native(x: Any) -> bool:
    return isinstance(x, _NUMPY_TYPES)


def unwritable(x: Any) -> str | None:
    """Why ``out=x`` cannot be written in place, or None."""
    if isinstance(x, np.ndarray) and x.flags.writeable and 0 not in x.strides:
        return None
    if not isinstance(x, np.ndarray):
        return f"a NumPy scalar ({type(x).__name__})"
    if not x.flags.writeable:
        return "a read-only NumPy array"
    if any(stride == 0 and size > 1 for stride, size in zip(x.strides, x.shape)):
        return "a NumPy array whose elements share memory (a stride of 0, as from broadcast_to)"
    return None


def memory_root(x: Any) -> int:
    """The object owning ``x``'s memory (the end of its chain of bases)."""
    while isinstance(x, np.ndarray) and x.base is not None:
        x = x.base
    return id(x)


def overlaps(a: Any, b: Any) -> bool:
    return bool(np.may_share_memory(a, b))


def dtype_name(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    order = {">": " (big-endian)", "<": " (little-endian)"}.get(dtype.byteorder, "")
    return dtype.name + order


def dtype_hint(got: Any, expected: Any) -> str:
    if got.kind == "f" and expected.kind in "fV" and got.itemsize > expected.itemsize:
        return (
            f"; NumPy silently promotes {expected.name} arithmetic with {got.name} values, so cast the "
            f"gradient back: dcdw.astype(w.dtype)"
        )
    if got.newbyteorder("=") == expected.newbyteorder("="):
        return "; convert both to one byte order: x.astype(x.dtype.newbyteorder('='))"
    return ""


def largest(dtype: Any) -> float:
    return float(np.finfo(compute_dtype(np.dtype(dtype))).max)


def asarray(obj: Any, dtype: Any = None) -> np.ndarray:
    return np.asarray(obj, dtype=_bfloat16 if dtype == "bfloat16" else dtype)


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
    """:math:`\\lVert x \\rVert_2` through BLAS ``dot``; halves in float32.
    NumPy has no mesh axes: an ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    return np.sqrt(_sum_of_squares(x))


def _sum_of_squares(x: Any) -> np.generic:
    """In the compute dtype: float32 for halves, native byte order for swapped floats."""
    compute = _COMPUTE.get(x.dtype)
    if compute is not None:
        x = x.astype(compute)
    return np.vdot(x, x)


def to_compute(x: Any) -> Any:
    return x.astype(_FLOAT32) if _COMPUTE.get(x.dtype) is _FLOAT32 else x


def cos(x: Any) -> Any:
    return np.cos(x)


def stop_gradient(x: Any) -> Any:
    return x


def write(out: np.ndarray, value: Any) -> None:
    np.copyto(out, value)


def update(w: Any, g: Any, lr_local: Any) -> np.ndarray:
    """:math:`w - \\eta_\\ell g` in a new array of ``w``'s dtype."""
    out = np.empty_like(w)
    update_into(out, w, g, lr_local)
    return out


def update_into(out: np.ndarray, w: Any, g: Any, rate: Any) -> None:
    """``out[...] = w - rate * g`` with no temporary larger than a cache-sized block.

    ``out`` may be ``w`` or ``g`` themselves: each block is read before it is
    written. Halves are computed in float32 and rounded once; large float32
    and float64 layers go through BLAS ``axpy`` when SciPy is installed.
    """
    half = compute_dtype(w.dtype) != w.dtype
    contiguous = out.flags.c_contiguous and w.flags.c_contiguous and g.flags.c_contiguous
    axpy = _AXPY.get(w.dtype)
    if axpy is not None and w.size > _BLOCK and contiguous and _blas_ready(out, g) and not overlaps(out, g):
        flat_out = out.reshape(-1)
        if out is not w:
            np.copyto(flat_out, w.reshape(-1))
        axpy(g.reshape(-1), flat_out, a=-rate)
        return
    if not half and (w.size <= _BLOCK or not contiguous):
        np.subtract(w, np.multiply(g, rate), out=out)
        return
    if not contiguous:  # a strided half: one float32 temporary
        np.subtract(w, np.multiply(g, rate, dtype=np.float32), out=out, dtype=np.float32, casting="unsafe")
        return
    cdt = compute_dtype(w.dtype)
    scratch = np.empty(_BLOCK, dtype=cdt)
    flat_w, flat_g, flat_out = w.reshape(-1), g.reshape(-1), out.reshape(-1)
    for start in range(0, flat_w.size, _BLOCK):
        stop = min(start + _BLOCK, flat_w.size)
        block = scratch[: stop - start]
        np.multiply(flat_g[start:stop], rate, out=block, dtype=cdt)
        np.subtract(flat_w[start:stop], block, out=flat_out[start:stop], dtype=cdt, casting="unsafe")


def _blas_ready(out: np.ndarray, g: np.ndarray) -> bool:
    """Whether f2py hands BLAS these very buffers: aligned, in native byte order
    (else it works on a copy, and the update of ``out`` would be lost)."""
    return out.flags.aligned and g.flags.aligned and out.dtype.isnative and g.dtype.isnative


def lars_tree(
    ws: Sequence[Any],
    gs: Sequence[Any],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    outs: Sequence[Any] | None = None,
    donate: bool = False,
) -> list[Any]:
    """All layers at once: one vector of trust ratios per dtype, then each
    layer's update written straight into its output (``outs``, or new arrays)
    while the batch is still in cache."""
    results = list(outs) if outs is not None else [np.empty_like(w) for w in ws]
    ops = sys.modules[__name__]
    for indices in _indices_by_dtype(ws):
        cdt = compute_dtype(ws[indices[0]].dtype)
        for batch in _cache_batches(indices, ws):
            w_norms = np.sqrt(np.array([_sum_of_squares(ws[i]) for i in batch], dtype=cdt))
            g_norms = np.sqrt(np.array([_sum_of_squares(gs[i]) for i in batch], dtype=cdt))
            rates = trust_ratio(ops, w_norms, g_norms, lr, decay_lambda)
            for i, rate in zip(batch, rates.tolist()):
                update_into(results[i], ws[i], gs[i], rate)
    return results


def _cache_batches(indices: Sequence[int], ws: Sequence[Any]) -> list[list[int]]:
    """Consecutive layers in batches of about ``_BATCH_BYTES`` of weights."""
    batches, batch, size = [], [], 0
    for i in indices:
        batch.append(i)
        size += ws[i].nbytes
        if size >= _BATCH_BYTES:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    return batches


def _indices_by_dtype(ws: Sequence[Any]) -> list[Sequence[int]]:
    if len({w.dtype for w in ws}) == 1:
        return [range(len(ws))]
    groups: dict[np.dtype, list[int]] = {}
    for i, w in enumerate(ws):
        groups.setdefault(w.dtype, []).append(i)
    return list(groups.values())


def axpby(a: Any, x: Any, b: Any, y: Any, out: Any = None) -> Any:
    """``a x + b y``; into ``out`` (which may be ``x``) through cache-sized blocks."""
    one = type(a) is float and a == 1
    if out is None:
        return (x if one else a * x) + b * y
    if out is not x:
        np.multiply(x, a, out=out)
    elif not one:
        np.multiply(out, a, out=out)
    update_into(out, out, y, -b)
    return out


def info() -> dict[str, str]:
    return {"version": np.__version__, "devices": "cpu"}
