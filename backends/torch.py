"""PyTorch backend: ``torch.linalg`` norms and ``torch._foreach_*`` whole-tree updates.

Nothing here calls ``.item()``: the trust ratios stay on the device, so the
update never waits for the GPU and traces under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lars_multi import _registry
from lars_multi._algorithm import trust_ratio
from lars_multi._protocol import no_axis_name

FRAMEWORK = "torch"
_HALF = frozenset({torch.float16, torch.bfloat16})
FLOAT_DTYPES = _HALF | {torch.float32, torch.float64}
_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "bfloat16", "float32", "float64", "int32", "int64", "bool")
}


def is_native(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def unwritable(x: Any) -> str | None:
    """Why ``out=x`` cannot be written in place, or None.

    Storage queries cannot be traced: under ``torch.compile`` only the type is checked.
    """
    if not isinstance(x, torch.Tensor):
        return f"a {type(x).__name__}"
    if _registry.is_compiling():
        return None
    local = _local(x)
    if local.is_inference() and not torch.is_inference_mode_enabled():
        return "an inference tensor (made under torch.inference_mode), which cannot be written outside it"
    if torch._debug_has_internal_overlap(local) == 1:
        return "a tensor whose elements share memory (expanded, a stride of 0)"
    return None


def is_dense(x: torch.Tensor) -> bool:
    return x.layout == torch.strided


def matches(g: torch.Tensor, w: torch.Tensor) -> bool:
    return g.layout == torch.strided and g.device == w.device


def layout_name(x: torch.Tensor) -> str:
    return str(x.layout).removeprefix("torch.")


def device(x: torch.Tensor) -> torch.device:
    return x.device


def _local(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (its own ``data_ptr()`` is 0), else ``x``."""
    local = getattr(x, "_local_tensor", None)
    return x if local is None else local


def memory_root(x: torch.Tensor) -> tuple[torch.device, int] | None:
    """The device and storage holding ``x``; None while compiling (not traceable)."""
    if _registry.is_compiling():
        return None
    local = _local(x)
    if local.layout != torch.strided:
        return None
    return local.device, local.untyped_storage().data_ptr()


def _byte_span(x: torch.Tensor) -> tuple[int, int]:
    size = x.element_size()
    low = high = x.storage_offset()
    for length, stride in zip(x.shape, x.stride()):
        if length == 0:
            return 0, 0
        reach = (length - 1) * stride
        low, high = (low + reach, high) if reach < 0 else (low, high + reach)
    return int(low * size), int((high + 1) * size)


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges of ``a`` and ``b`` in their (common) storage meet."""
    (a_low, a_high), (b_low, b_high) = _byte_span(_local(a)), _byte_span(_local(b))
    return a_low < b_high and b_low < a_high


def largest(dtype: torch.dtype) -> float:
    return float(torch.finfo(torch.float32 if dtype in _HALF else dtype).max)


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def asarray(obj: Any, dtype: Any = None) -> torch.Tensor:
    if isinstance(dtype, str):
        dtype = _DTYPES[dtype]
    return torch.as_tensor(obj, dtype=dtype)


def zeros_like(x: Any) -> torch.Tensor:
    return torch.zeros_like(x)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    return x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()


def cast_like(value: Any, like: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype != like.dtype:
        return value.to(like.dtype)
    return value


def where(cond: Any, x: Any, y: Any) -> torch.Tensor:
    return torch.where(cond, x, y)


def norm(x: torch.Tensor, axis_name: Any = None) -> torch.Tensor:
    """:math:`\\lVert x \\rVert_2`; halves accumulate in float32.
    No mesh axes here (DTensor norms are global already): an ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    if x.dtype in _HALF:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    return torch.linalg.vector_norm(x)


def norms(xs: Sequence[torch.Tensor], axis_names: Sequence[Any] | None = None) -> list[torch.Tensor]:
    """The 2-norm of each array, in order, with few kernels and few collectives.

    Plain tensors: one ``torch._foreach_norm`` per (device, dtype), halves
    accumulated in float32. DTensors sharded over mesh dimensions: the squared
    norms of the local shards of all the arrays with the same mesh, placements and
    dtype are stacked into one tensor and summed over the sharded mesh dimensions
    in ONE all-reduce (a Partial DTensor redistributed to Replicate), instead of
    one reduction per array; each norm is returned as a replicated 0-d DTensor.
    Replicated DTensors need no collective. Anything else (Partial placements,
    sparse layouts) takes ``norm`` one array at a time. As ``norm``, an
    ``axis_name`` other than None raises."""
    if axis_names is not None:
        for a in axis_names:
            if a is not None:
                raise no_axis_name("axis_name", FRAMEWORK, a)
    out: list[Any] = [None] * len(xs)
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(xs):
        local = _local(x)
        if local.layout != torch.strided or local.dtype not in FLOAT_DTYPES:
            out[i] = norm(x)
            continue
        if local is x:
            key: Any = (None, None, x.device, x.dtype)
        else:
            dtensor: Any = x
            placements = tuple(dtensor.placements)
            if not all(p.is_shard() or p.is_replicate() for p in placements):
                out[i] = norm(x)
                continue
            key = (dtensor.device_mesh, placements, local.device, local.dtype)
        groups.setdefault(key, []).append(i)
    for (mesh, placements, _, dtype), indices in groups.items():
        locals_ = [_local(xs[i]) for i in indices]
        values = _foreach_norms(locals_, dtype)
        if mesh is None:
            for i, value in zip(indices, values):
                out[i] = value
            continue
        _dtensor_norms(out, indices, values, mesh, placements)
    return out


def _foreach_norms(xs: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    if dtype in _HALF:
        return list(torch._foreach_norm(xs, 2, dtype=torch.float32))
    return list(torch._foreach_norm(xs))


def _dtensor_norms(
    out: list[Any], indices: list[int], values: list[torch.Tensor], mesh: Any, placements: tuple
) -> None:
    """The whole layers' norms from their local shards' ``values``: squares summed
    over the sharded mesh dimensions in one all-reduce, as replicated 0-d DTensors."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    replicated = [Replicate()] * mesh.ndim
    stacked = torch.stack(values)
    if any(p.is_shard() for p in placements):
        partial = [Partial() if p.is_shard() else Replicate() for p in placements]
        squares = DTensor.from_local(stacked * stacked, mesh, partial, run_check=False)
        stacked = _local(squares.redistribute(mesh, replicated)).sqrt()
    for i, value in zip(indices, stacked.unbind()):
        out[i] = DTensor.from_local(value, mesh, replicated, run_check=False)


def update(w: torch.Tensor, g: torch.Tensor, lr_local: torch.Tensor) -> torch.Tensor:
    """:math:`w - \\eta_\\ell g` in one ``addcmul``; halves computed in float32."""
    if w.dtype in _HALF:
        return torch.addcmul(w.float(), g.float(), lr_local, value=-1).to(w.dtype)
    return torch.addcmul(w, g, lr_local, value=-1)


def to_compute(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF else x


def cos(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x)


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    return x.detach() if x.requires_grad else x


def update_into(out: torch.Tensor, w: torch.Tensor, g: torch.Tensor, lr_local: torch.Tensor) -> None:
    """:math:`w - \\eta_\\ell g` written into ``out`` (which may be ``w``), not differentiable."""
    with torch.no_grad():
        if w.dtype in _HALF:
            out.copy_(update(w, g, lr_local))
        elif out is w:
            out.addcmul_(g, lr_local, value=-1)
        else:
            torch.addcmul(w, g, lr_local, value=-1, out=out)


def write(out: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        out.copy_(value)


def lars_tree(
    ws: Sequence[torch.Tensor],
    gs: Sequence[torch.Tensor],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    outs: Sequence[torch.Tensor] | None = None,
    donate: bool = False,
) -> list[torch.Tensor]:
    """Every layer in a few ``_foreach`` kernels per (device, dtype) group.

    Norms: ``_foreach_norm``; rates: :func:`trust_ratio` on the stacked norms;
    update: ``_foreach_addcmul`` (new tensors), ``_foreach_addcmul_`` into the
    weights when ``outs`` is ``ws`` (no temporary the size of the tree).
    """
    ops = _SELF
    results: list[Any] = [None] * len(ws)
    no_grad = stop_gradients or outs is not None
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for indices in _indices_by_device_and_dtype(ws):
            group_w = [ws[i] for i in indices]
            group_g = [gs[i] for i in indices]
            half = group_w[0].dtype in _HALF
            accumulate = torch.float32 if half else None
            w_norms = torch.stack(torch._foreach_norm(group_w, dtype=accumulate))
            g_norms = torch.stack(torch._foreach_norm(group_g, dtype=accumulate))
            rates = trust_ratio(ops, w_norms, g_norms, lr, decay_lambda).unbind()
            group_out = None if outs is None else [outs[i] for i in indices]
            in_place = group_out is not None and not half and all(o is w for o, w in zip(group_out, group_w))
            if in_place:
                torch._foreach_addcmul_(group_w, group_g, rates, value=-1)
                new = group_w
            elif half:  # written into group_out chunk by chunk, if given
                new = _half_update(group_w, group_g, rates, group_out)
            else:
                new = list(torch._foreach_addcmul(group_w, group_g, rates, value=-1))
            if group_out is not None and not in_place and not half:
                torch._foreach_copy_(group_out, new)
                new = group_out
            for i, n in zip(indices, new):
                results[i] = n
    return results


# Half layers are computed in float32 a chunk of layers at a time: about this
# many bytes of weights (or one layer, if larger), so that the float32
# temporaries stay within about twice the chunk, whatever the size of the tree.
_HALF_CHUNK_BYTES = 4 << 20


def _half_update(
    ws: Sequence[torch.Tensor],
    gs: Sequence[torch.Tensor],
    rates: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
) -> list[torch.Tensor]:
    """:math:`w - \\eta_\\ell g` for half layers, in float32 rounded once, one chunk
    at a time: each chunk is written into ``outs`` (or new tensors) before the next
    is converted. One float32 copy of the chunk's weights is the only temporary."""
    new: list[torch.Tensor] = []
    for chunk in _half_chunks(ws):
        computed = [ws[i].float() for i in chunk]
        torch._foreach_addcmul_(computed, [gs[i] for i in chunk], [rates[i] for i in chunk], value=-1)
        if outs is None:
            new.extend(c.to(ws[i].dtype) for c, i in zip(computed, chunk))
        else:
            targets = [outs[i] for i in chunk]
            torch._foreach_copy_(targets, computed)
            new.extend(targets)
        del computed
    return new


def _half_chunks(ws: Sequence[torch.Tensor]) -> list[range]:
    """Consecutive layers, at most ``max(_HALF_CHUNK_BYTES, largest layer)`` bytes each."""
    sizes = [w.nelement() * w.element_size() for w in ws]
    budget = max(_HALF_CHUNK_BYTES, max(sizes))
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total + size > budget:
            chunks.append(range(start, i))
            start, total = i, 0
        total += size
    chunks.append(range(start, len(sizes)))
    return chunks


def _indices_by_device_and_dtype(ws: Sequence[torch.Tensor]) -> list[Sequence[int]]:
    if len({(w.device, w.dtype) for w in ws}) == 1:
        return [range(len(ws))]
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, w in enumerate(ws):
        groups.setdefault((w.device, w.dtype), []).append(i)
    return list(groups.values())


def info() -> dict[str, str]:
    cuda = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    devices = ["cpu", *cuda]
    return {"version": torch.__version__, "devices": ", ".join(devices)}


def axpby(a: Any, x: torch.Tensor, b: Any, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a x + b y`` in one ``addcmul`` (``a`` and ``b`` may be 0-d tensors: no host
    read); into ``out`` (which may be ``x``) in place."""
    tensor = isinstance(b, torch.Tensor)
    one = type(a) is float and a == 1
    if out is None:
        base = x if one else x * a
        return torch.addcmul(base, y, b) if tensor else torch.add(base, y, alpha=b)
    with torch.no_grad():
        if out is not x:
            torch.mul(x, a, out=out)
        elif not one:
            out.mul_(a)
        return out.addcmul_(y, b) if tensor else out.add_(y, alpha=b)


_SELF = sys.modules[__name__]  # the module as ``ops``: sys.modules cannot be read while compiling
_registry.is_compiling = torch.compiler.is_compiling
