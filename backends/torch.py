"""PyTorch backend: ``torch._foreach_*`` norms and multiply-adds over lists of tensors.

Nothing here calls ``.item()``: the trust ratios stay on the device, so the
step never waits for the GPU and traces under ``torch.compile``. On CPUs the
layers are stepped in cache-sized batches (each ``_foreach`` kernel streams
its whole list); on GPUs in one batch per device, dtype and kind of tensor
(plain or DTensor), half layers in batches of bounded size.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.autograd import forward_ad

from lars_multi import _batching, _registry
from lars_multi._aliasing import elements_overlap, overlap_groups
from lars_multi._container import Container
from lars_multi._protocol import Layout, no_axis_name
from lars_multi.optim import LarsState

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
    if _in_transform():
        return "a tensor inside a torch.func transform (vmap, grad), which cannot be written in place"
    if not is_dense(x):
        return f"a {layout_name(x)} tensor"
    if x.is_neg() or x.is_conj():  # (the _foreach kernels cannot write such lazy views)
        return "a tensor with torch's negative or conjugate bit set (resolve_neg() or resolve_conj() it)"
    local = _local(x)
    if local.is_inference() and not torch.is_inference_mode_enabled():
        return "an inference tensor (made under torch.inference_mode), which cannot be written outside it"
    if shares_elements(local):
        return "a tensor whose elements share memory (expanded: a stride of 0; or strides that overlap)"
    return None


def shares_elements(x: torch.Tensor) -> bool:
    """Whether two elements of ``x`` share memory: as torch says, or, where it cannot
    tell (a strided view), as the strides say."""
    overlap = torch._debug_has_internal_overlap(x)  # 0: no, 1: yes, 2: torch cannot tell
    if overlap != 2:
        return overlap == 1
    size = x.element_size()
    return elements_overlap(x.shape, [stride * size for stride in x.stride()], size)


def is_flat_param(x: torch.Tensor) -> bool:
    """Whether ``x`` is a flattened FSDP parameter (FSDP1 with ``use_orig_params=False``):
    many layers in one tensor, whose one norm would span them all."""
    return bool(getattr(x, "_is_flat_param", False))


def is_dense(x: torch.Tensor) -> bool:
    """Strided, not nested, and one layer: not a flattened FSDP parameter (FSDP1 with
    ``use_orig_params=False``), whose one norm would span every layer it holds."""
    return x.layout == torch.strided and not x.is_nested and not is_flat_param(x)


def all_dense(xs: Sequence[torch.Tensor]) -> bool:
    return all(map(is_dense, xs))


def alike(xs: Sequence[Any], ws: Layout) -> bool:
    """Tensors of the weights' type, dtype and shape, dense and on their devices
    (DTensors: on their meshes, with their placements). A nested tensor has no shape
    to compare (torch raises): not alike, so the checks with messages name it."""
    try:
        return all(
            [
                type(x) is type(w)
                and x.dtype is w.dtype
                and x.shape == w.shape
                and x.layout == torch.strided
                and x.device == w.device
                and (type(w) in PLAIN_TYPES or device(x) == device(w))
                for x, w in zip(xs, ws.arrays)
            ]
        )
    except RuntimeError:
        return False


# The types of plain tensors (not DTensors or other subclasses).
PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})


def tensor_kind(t: torch.Tensor) -> type:
    """The kind of tensor that one ``_foreach`` kernel takes together with ``t``: its
    type, a parameter being a plain tensor (a DTensor, even as a parameter, is a DTensor)."""
    return torch.Tensor if type(t) in PLAIN_TYPES else type(t)


def layout_name(x: torch.Tensor) -> str:
    if is_flat_param(x):
        return "flattened FSDP (use_orig_params=False; shard with fully_shard)"
    return "nested" if x.is_nested else str(x.layout).removeprefix("torch.")


def device(x: torch.Tensor) -> Any:
    """Where ``x`` lives: its device, or a DTensor's device mesh and placements (so a
    plain tensor paired with a DTensor, or DTensors on other meshes or placements, are
    refused, naming both, where torch would raise from a kernel ("got mixed
    torch.Tensor and DTensor", "in-place operations that require placement changes"),
    maybe after other layers were written)."""
    mesh = getattr(x, "device_mesh", None)
    return x.device if mesh is None else _MeshOf(mesh, tuple(x.placements))  # type: ignore[attr-defined]


def misplaced(value: torch.Tensor, ws: Sequence[torch.Tensor]) -> int | None:
    """The first of ``ws`` that a 0-d ``value`` cannot be combined with: a CPU
    tensor goes with any (torch passes it to kernels as a number, and DTensors
    replicate it); another plain tensor only with tensors on its device, or DTensors
    on a mesh of its device type; a DTensor only with DTensors on its mesh."""
    mesh = getattr(value, "device_mesh", None)
    if mesh is None and value.device.type == "cpu":
        return None
    return next((i for i, w in enumerate(ws) if not _reads(w, value, mesh)), None)


def _reads(w: torch.Tensor, value: torch.Tensor, mesh: Any) -> bool:
    w_mesh = getattr(w, "device_mesh", None)
    if mesh is not None:
        return w_mesh == mesh
    if w_mesh is not None:
        return w_mesh.device_type == value.device.type
    return w.device == value.device


class _MeshOf(NamedTuple):
    """A DTensor's device mesh and placements, as messages name them."""

    mesh: Any
    placements: tuple[Any, ...]

    def __str__(self) -> str:
        return f"a DTensor's {self.mesh} with placements {self.placements}"


def _local(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (its own ``data_ptr()`` is 0), else ``x``."""
    local = getattr(x, "_local_tensor", None)
    return x if local is None else local


def _storage(x: torch.Tensor) -> Any:
    """``x``'s storage, or None where it has none to show (sparse, or wrapped by torch.func)."""
    try:
        return x.untyped_storage()
    except NotImplementedError:
        return None


def memory_roots(xs: Sequence[torch.Tensor]) -> list[int | None]:
    """The memory each tensor lies in: its storage's address (devices share one
    address space: CUDA's unified addressing). Storages that hold memory from
    elsewhere (``torch.from_numpy``, ``frombuffer``, DLPack, a memory-mapped file:
    not resizable) may share it with other storages, so then storages whose byte
    ranges meet share a root. None for a sparse tensor, one that torch.func wraps
    (under ``vmap``: its memory cannot be seen, and is never written in place), one that holds no memory
    (a meta tensor's storage, an empty one's: address 0), and for all while
    compiling (storages cannot be traced)."""
    if _registry.is_compiling():
        return [None] * len(xs)
    locals_ = xs if set(map(type, xs)) <= PLAIN_TYPES else list(map(_local, xs))
    try:
        storages: list[Any] = list(map(torch.Tensor.untyped_storage, locals_))
    except NotImplementedError:  # a sparse tensor has none, nor one that torch.func wraps (vmap)
        storages = list(map(_storage, locals_))
    present = [s for s in storages if s is not None] if type(None) in map(type, storages) else storages
    addresses: list[int] = list(map(torch.UntypedStorage.data_ptr, present))
    starts: list[Any] = addresses
    if not all(map(torch.UntypedStorage.resizable, present)):  # not each its own allocation
        # Keyed by the whole range: two storages may start at one address and end apart.
        spans = list(zip(addresses, map(operator.add, addresses, map(torch.UntypedStorage.nbytes, present))))
        groups = overlap_groups(dict(zip(spans, spans)))
        starts = list(map(groups.__getitem__, spans))
    if 0 in addresses:  # (no memory: nothing to share)
        starts = [None if address == 0 else start for address, start in zip(addresses, starts)]
    if present is storages:
        return starts
    found = iter(starts)
    return [None if s is None else next(found) for s in storages]


def _byte_span(x: torch.Tensor) -> tuple[int, int]:
    """The addresses ``[low, high)`` of the bytes ``x`` reaches (empty: ``(0, 0)``)."""
    size = x.element_size()
    low = high = x.storage_offset()
    for length, stride in zip(x.shape, x.stride()):
        if length == 0:
            return 0, 0
        reach = (length - 1) * stride
        low, high = (low + reach, high) if reach < 0 else (low, high + reach)
    start = x.untyped_storage().data_ptr()
    return start + int(low * size), start + int((high + 1) * size)


def byte_spans(xs: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """The addresses each tensor reaches (of one device's memory: the arrays compared
    lie in one storage)."""
    return [_byte_span(_local(x)) for x in xs]


def view_of(x: torch.Tensor) -> Hashable | None:
    """The first element's address and device, the shape, the strides and the dtype of a
    plain tensor: the elements read (a DTensor, or a tensor with the negative or conjugate
    bit: None, known by the object)."""
    if type(x) not in PLAIN_TYPES or x.is_neg() or x.is_conj():
        return None
    return (x.data_ptr(), x.device, x.shape, x.stride(), x.dtype)


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` reach a common byte (of one device)."""
    local_a, local_b = _local(a), _local(b)
    if local_a.device != local_b.device:
        return False
    (a_low, a_high), (b_low, b_high) = _byte_span(local_a), _byte_span(local_b)
    return a_low < b_high and b_low < a_high


def largest(dtype: torch.dtype) -> float:
    return float(torch.finfo(torch.float32 if dtype in _HALF else dtype).max)


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def widest_float(like: torch.Tensor) -> str:
    """float64, except on Apple's GPUs (MPS), which have no float64."""
    return "float32" if like.device.type == "mps" else "float64"


def asarray(obj: Any, dtype: Any = None) -> torch.Tensor:
    """``obj`` as a tensor; a tensor stays on its device (``torch.as_tensor`` alone
    would move it to the default device, where ``torch.set_default_device`` set one)."""
    dtype = _torch_dtype(dtype)
    if not isinstance(obj, torch.Tensor):
        obj = np.asarray(obj)  # (NumPy reads the dtype a buffer or its scalars carry)
        if obj.dtype.name == "bfloat16":  # (ml_dtypes' bfloat16, which torch cannot read: its bits)
            obj = torch.from_numpy(obj.view(np.uint16).copy()).view(torch.bfloat16)
    if isinstance(obj, torch.Tensor):
        return obj if dtype is None or obj.dtype == dtype else obj.to(dtype)
    return torch.as_tensor(obj, dtype=dtype)


def _torch_dtype(dtype: Any) -> torch.dtype | None:
    """A dtype given by name (``"complex64"``) or as NumPy's, as torch's."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype):
        raise TypeError(f"torch has no dtype {name!r}")
    return found


def scalar_for(value: Any, dtype: str, ws: Sequence[torch.Tensor]) -> torch.Tensor:
    """``value`` on the one device of ``ws``, or on the CPU where they are on several
    (a CPU scalar goes with any): not on torch's default device, which may be
    another (``torch.set_default_device("cuda")`` with the parameters on the CPU)."""
    devices = {w.device for w in ws}
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    return torch.as_tensor(value, dtype=_DTYPES[dtype], device=device)


def zeros_like(x: Any) -> torch.Tensor:
    return torch.zeros_like(x)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """``x``'s values; a bfloat16 tensor's in NumPy's bfloat16 of ml_dtypes (as the
    other backends give them), or in float32 where ml_dtypes is not installed (NumPy
    has no bfloat16 of its own)."""
    x = x.detach().cpu()
    if x.dtype != torch.bfloat16:
        return x.numpy()
    values = x.float().numpy()  # (exact: a bfloat16 is a float32 cut short)
    try:
        from ml_dtypes import bfloat16
    except ImportError:
        return values
    return values.astype(bfloat16)


def cast_like(value: Any, like: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype != like.dtype:
        return value.to(like.dtype)
    return value


# Numbers as 0-d tensors, by (value, dtype, device): see constant.
_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def constant(value: float, like: Any) -> Any:
    """``value`` as a cached 0-d tensor of ``like``'s dtype and device: an operator
    given a Python number wraps it in a new tensor at every call (1.4 µs of the
    2.7 µs that adding a number to a 0-d tensor takes on a CPU), and rounds it to
    that dtype as this does. The number itself under ``torch.compile`` (a
    constant of the graph), and beside anything but a plain tensor. Entries are
    never freed (a captured CUDA graph may read one): the number itself once 64
    are kept, while a CUDA graph is captured (no copy to the device then) and
    inside a ``torch.func`` transform (its tensors belong to the transform)."""
    if type(like) is not torch.Tensor or _registry.is_compiling():
        return value
    key = (value, like.dtype, like.device)
    found = _CONSTANTS.get(key)
    if found is None:
        capturing = like.is_cuda and torch.cuda.is_current_stream_capturing()
        if len(_CONSTANTS) >= 64 or capturing or _in_transform():
            return value
        with torch.inference_mode(False):  # usable outside inference mode, where made inside it
            found = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return found


def where(cond: Any, x: Any, y: Any) -> torch.Tensor:
    return torch.where(cond, x, y)


def norm(x: torch.Tensor, axis_name: Any = None) -> torch.Tensor:
    """:math:`\\lVert x \\rVert_2`; halves accumulate in float32.
    No mesh axes here (DTensor norms are global already): an ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    if x.dtype in _HALF:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    if x.dtype == torch.float32 and _in_transform():
        # Batched, torch.dot sums in one running float32 sum (2e-4 relative error on a million
        # elements) and vector_norm in few (1e-5): accumulated in float64, rounded once.
        return torch.linalg.vector_norm(x, dtype=torch.float64).to(torch.float32)
    if x.is_cpu and x.layout == torch.strided and _local(x) is x:
        value = _blas_norm(x)
        if value is not None:
            return value
    return torch.linalg.vector_norm(x)


def _in_transform() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``) is running: its
    tensors have no batching rules for the ``_foreach`` kernels (each tensor then
    takes its own), and cannot be written in place. (Not asked while Dynamo traces:
    it cannot trace the query.)"""
    return not _registry.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def readable() -> bool:
    """Values cannot be read on the host inside ``torch.vmap`` (they are batched), nor
    while ``torch.compile`` traces (a read is a graph break)."""
    return not _registry.is_compiling() and not _in_transform()


def norms(xs: Sequence[torch.Tensor], axis_names: Sequence[Any] | None = None) -> list[torch.Tensor]:
    """The 2-norm of each array, in order, with few kernels and few collectives.

    Plain tensors: one ``torch._foreach_norm`` per (device, dtype), halves
    accumulated in float32. DTensors sharded over mesh dimensions: the squared
    norms of the local shards of all the arrays with the same mesh, placements and
    dtype are stacked into one tensor and summed over the sharded mesh dimensions
    in ONE all-reduce per sharded mesh dimension (a Partial DTensor redistributed to
    Replicate), instead of one reduction per array; each norm is returned as a
    replicated 0-d DTensor.
    Replicated DTensors need no collective. Anything else (Partial placements,
    sparse layouts) takes ``norm`` one array at a time. As ``norm``, an
    ``axis_name`` other than None raises."""
    if axis_names is not None:
        for a in axis_names:
            if a is not None:
                raise no_axis_name("axis_name", FRAMEWORK, a)
    first = xs[0]
    dtype = first.dtype
    if dtype in FLOAT_DTYPES and first.layout == torch.strided:
        device = first.device
        if all([type(x) is torch.Tensor and x.dtype is dtype and x.device == device for x in xs]):
            # the common case: plain tensors of one device and dtype
            try:
                return _foreach_norms(list(xs), dtype, first.is_cpu)
            except RuntimeError:  # (asked only then: the query costs a tiny step 2%)
                # inside torch.func, or with forward-mode tangents: _foreach_norm has no rule
                if not (_in_transform() or _forward_ad_on()):
                    raise
                return [norm(x) for x in xs]
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
            if dtensor.numel() == 1:  # one element: its magnitude, as a plain tensor's (no square)
                out[i] = norm(_replicated(dtensor))
                continue
            if not all(p.is_shard() or p.is_replicate() for p in placements):
                out[i] = norm(x)
                continue
            key = (dtensor.device_mesh, placements, local.device, local.dtype)
        groups.setdefault(key, []).append(i)
    for (mesh, placements, _, dtype), indices in groups.items():
        locals_ = [_local(xs[i]) for i in indices]
        values = _foreach_norms(locals_, dtype, locals_[0].is_cpu)
        if mesh is None:
            for i, value in zip(indices, values):
                out[i] = value
            continue
        _dtensor_norms(out, indices, values, mesh, placements)
    return out


def _replicated(x: Any) -> Any:
    """A DTensor replicated over its mesh."""
    from torch.distributed.tensor import Replicate

    return x.redistribute(x.device_mesh, [Replicate()] * x.device_mesh.ndim)


def _foreach_norms(xs: list[torch.Tensor], dtype: torch.dtype, cpu: bool) -> list[torch.Tensor]:
    """Halves accumulated in float32; on a CPU, large layers that fill their memory
    by BLAS ``dot`` (:func:`_blas_norm`), the others in one ``_foreach_norm``."""
    if dtype in _HALF:
        return list(torch._foreach_norm(xs, 2, dtype=torch.float32))
    if not cpu or max(map(torch.Tensor.numel, xs)) < _DOT_ELEMENTS:
        return list(torch._foreach_norm(xs))
    if _in_transform():
        return [norm(x) for x in xs]
    large = [i for i, x in enumerate(xs) if x.numel() >= _DOT_ELEMENTS]
    out: list[Any] = [None] * len(xs)
    for i in large:
        out[i] = _blas_norm(xs[i])
    small = [i for i, value in enumerate(out) if value is None]
    if small:
        for i, value in zip(small, torch._foreach_norm([xs[i] for i in small])):
            out[i] = value
    return out


# A CPU layer of at least this many elements takes its norm from BLAS ``dot``.
_DOT_ELEMENTS = 1 << 14


def _blas_norm(x: torch.Tensor) -> torch.Tensor | None:
    """The norm of a large CPU layer whose elements fill their memory (contiguous, or
    transposed: contiguous once its dimensions are put in the order of their
    strides) by BLAS ``dot`` of a 1-D view of it: it reads memory more than twice as
    fast as ``vector_norm`` and rounds far better than a reduction over a transposed
    layer (2e-4 relative error on a million float32 elements, against 1e-6). A vector
    with a stride goes to BLAS as it is; a layer with gaps between its elements (a
    block of a fused weight, a slice with a step) or a stride of 0 (expanded) as a
    copy in memory order, the price of that accuracy: ``vector_norm`` over such a view
    of nine million elements erred by 2e-3. (MKL's ``dot`` sums in an order set by
    the data's alignment: a layer at the same offset of its allocation gets the same
    norm on every run.) None for a small layer, or while Dynamo traces one that is
    not contiguous."""
    if x.numel() < _DOT_ELEMENTS or _differentiated(x):
        return None
    if x.is_contiguous():
        flat = x.view(-1)
    elif _registry.is_compiling():
        return None
    elif x.ndim == 1 and x.stride(0) > 0:
        flat = x
    else:
        ordered = x.permute(sorted(range(x.ndim), key=x.stride, reverse=True))
        flat = (ordered if ordered.is_contiguous() else ordered.contiguous()).view(-1)
    return torch.dot(flat, flat).sqrt()


def _differentiated(x: torch.Tensor) -> bool:
    """Whether a norm of ``x`` is differentiated: autograd records it, or ``x`` carries
    a forward-mode tangent. (``sqrt`` of a zero ``dot`` has an infinite derivative, and
    a NaN gradient; ``vector_norm``'s is 0 there.)"""
    if x.requires_grad and torch.is_grad_enabled():
        return True
    return _forward_ad_on() and forward_ad.unpack_dual(x).tangent is not None


def _forward_ad_on() -> bool:
    """Whether forward-mode AD is on (inside ``torch.autograd.forward_ad.dual_level``;
    its level is private: where it is gone, taken as on)."""
    return getattr(forward_ad, "_current_level", 0) >= 0


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


def to_compute(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF else x


def sin(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    return x.detach() if x.requires_grad else x


def stop_gradients(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`stop_gradient` of each tensor, written out (not the default's call per
    tensor: lars_update's one-tensor path is a microsecond faster)."""
    return [x.detach() if x.requires_grad else x for x in xs]


_GRAD_OFF_ALREADY = contextlib.nullcontext()


def _no_grad() -> contextlib.AbstractContextManager[Any]:
    """``torch.no_grad()`` where gradients are recorded, else nothing to do (an
    optimizer's step runs under it already: entering it again costs 2 µs a call)."""
    return torch.no_grad() if torch.is_grad_enabled() else _GRAD_OFF_ALREADY


def write(out: torch.Tensor, value: torch.Tensor) -> None:
    with _no_grad():
        out.copy_(value)


def snapshot(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone()


def stack(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(xs))


def unstack(vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return vector.unbind()


# Layers of a CPU batch: about this many bytes (or one layer, if larger), so that
# a batch stays in cache from its norms to its last pass. Half layers are batched
# on every device at about _HALF_BATCH_BYTES in float32: each batch is computed on
# float32 copies, the only temporaries, whatever the size of the tree.
_CPU_BATCH_BYTES = _batching.cpu_batch_bytes()
_HALF_BATCH_BYTES = _batching.CPU_BATCH_BYTES


def batches(ws: Sequence[torch.Tensor]) -> list[Sequence[int]]:
    """The layers by (device, dtype, kind of tensor: a ``_foreach`` kernel takes plain
    tensors or DTensors, not both; and a DTensor's mesh: the norms of a batch are
    stacked, which DTensors on two meshes cannot be, as FSDP2 with tensor parallelism
    places some layers on the 2-D mesh and others on its data-parallel mesh); on CPUs
    and for halves, in consecutive batches of about ``_CPU_BATCH_BYTES`` (halves:
    ``_HALF_BATCH_BYTES`` in float32)."""
    return _batching.batches(
        ws,
        key=lambda w: (w.device, w.dtype, tensor_kind(w), getattr(w, "device_mesh", None)),
        size=lambda w: w.nelement() * (4 if w.dtype in _HALF else w.element_size()),
        budget=_batch_bytes,
    )


def _batch_bytes(key: tuple[Any, ...]) -> int | None:
    """The bytes of a batch of layers of ``key`` (device, dtype, ...; see :func:`batches`)."""
    if key[1] in _HALF:
        return _HALF_BATCH_BYTES
    return _CPU_BATCH_BYTES if key[0].type == "cpu" else None


def axpbys(
    a: Any,
    xs: Sequence[torch.Tensor],
    bs: Any,
    ys: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None = None,
    scale: float = 1.0,
) -> list[torch.Tensor]:
    """``a x_i + s b_i y_i`` for every tensor, in two ``_foreach`` kernels; ``bs`` is
    one number or 0-d tensor, or a list of them (0-d tensors broadcast: no host
    read), and the number ``s`` (``scale``) is the kernels' own multiplier; written
    into ``outs`` (which may be ``xs``) in place when given."""
    if _registry.is_compiling():
        coefficients = bs if isinstance(bs, list) else [bs] * len(xs)
        targets = [None] * len(xs) if outs is None else list(outs)
        return [_traced_axpby(a, x, b, y, t, scale) for x, b, y, t in zip(xs, coefficients, ys, targets)]
    if len(xs) == 1:  # one tensor: its own kernels (a _foreach call costs more)
        b = bs[0] if isinstance(bs, list) else bs
        return [axpby(a, xs[0], b, ys[0], None if outs is None else outs[0], scale=scale)]
    xs, ys = list(xs), list(ys)
    if isinstance(bs, list):
        numbers = [i for i, b in enumerate(bs) if not isinstance(b, torch.Tensor)]
        if numbers and len(numbers) < len(bs):  # tensors and numbers: two calls
            return _split(a, xs, bs, ys, outs, numbers, scale)
    if outs is None:
        try:
            # (a tensor a as a list: torch differentiates _foreach_mul by a list, not by one tensor)
            factor = [a] * len(xs) if isinstance(a, torch.Tensor) else a
            base = xs if type(a) is float and a == 1 else list(torch._foreach_mul(xs, factor))
            return list(_foreach_add_scaled(base, ys, bs, scale, in_place=False))
        except RuntimeError:
            if not _in_transform():
                raise
            coefficients = bs if isinstance(bs, list) else [bs] * len(xs)
            return [axpby(a, x, b, y, scale=scale) for x, b, y in zip(xs, coefficients, ys)]
    with _no_grad():
        targets = list(outs)
        if not all(map(operator.is_, targets, xs)):
            torch._foreach_copy_(targets, axpbys(a, xs, bs, ys, scale=scale))
            return targets
        if not (type(a) is float and a == 1):
            torch._foreach_mul_(targets, a)
        _foreach_add_scaled(targets, ys, bs, scale, in_place=True)
        return targets


def _foreach_add_scaled(
    xs: list[torch.Tensor], ys: list[torch.Tensor], bs: Any, scale: float, in_place: bool
) -> Any:
    """``x_i + s b_i y_i``, ``bs`` one value or a list of all tensors or all numbers."""
    if isinstance(bs, torch.Tensor):
        bs = [bs] * len(ys)
    if isinstance(bs, list) and isinstance(bs[0], torch.Tensor) and not _fits(scale, ys[0].dtype):
        # addcmul rounds its value= to the tensors' dtype, and refused one beyond it (after
        # earlier kernels had written): the product, in float64, is the coefficient instead
        bs, scale = [b.double() * scale for b in bs], 1.0
    if isinstance(bs, list):
        if isinstance(bs[0], torch.Tensor):
            return (torch._foreach_addcmul_ if in_place else torch._foreach_addcmul)(xs, ys, bs, value=scale)
        if bs.count(bs[0]) == len(bs):  # one number (layers not adapted): no scaled copies
            return _foreach_add_scaled(xs, ys, bs[0], scale, in_place)
        scaled = torch._foreach_mul(ys, bs if scale == 1 else [scale * b for b in bs])
        return (torch._foreach_add_ if in_place else torch._foreach_add)(xs, scaled)
    return (torch._foreach_add_ if in_place else torch._foreach_add)(xs, ys, alpha=scale * bs)


def _fits(scale: float, dtype: torch.dtype) -> bool:
    """Whether the number ``scale`` is finite in ``dtype`` (a kernel's scalar), asked of
    ``torch.finfo`` only beyond float16's range, which every floating dtype holds."""
    return -65504.0 <= scale <= 65504.0 or abs(scale) <= torch.finfo(dtype).max or not math.isfinite(scale)


def _split(
    a: Any,
    xs: list[Any],
    bs: list[Any],
    ys: list[Any],
    outs: Sequence[Any] | None,
    numbers: list[int],
    scale: float,
) -> list[torch.Tensor]:
    """:func:`axpbys` of the layers with number coefficients, then of those with tensors."""
    chosen = set(numbers)
    others = [i for i in range(len(xs)) if i not in chosen]
    results: list[Any] = [None] * len(xs)
    for part in (numbers, others):
        new = axpbys(
            a,
            [xs[i] for i in part],
            [bs[i] for i in part],
            [ys[i] for i in part],
            None if outs is None else [outs[i] for i in part],
            scale,
        )
        for i, value in zip(part, new):
            results[i] = value
    return results


def info() -> dict[str, str]:
    cuda = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    devices = ["cpu", *cuda]
    return {"version": torch.__version__, "devices": ", ".join(devices)}


def axpby(
    a: Any, x: torch.Tensor, b: Any, y: torch.Tensor, out: torch.Tensor | None = None, *, scale: float = 1.0
) -> torch.Tensor:
    """``a x + s b y`` in one ``addcmul`` (``a`` and ``b`` may be 0-d tensors: no host
    read; ``s``, ``scale``, a number); into ``out`` (which may be ``x``) in place."""
    if _registry.is_compiling():
        return _traced_axpby(a, x, b, y, out, scale)
    tensor = isinstance(b, torch.Tensor)
    if tensor and not _fits(scale, y.dtype):  # (see _foreach_add_scaled)
        b, scale = b.double() * scale, 1.0
    one = type(a) is float and a == 1
    if out is None:
        base = x if one else x * a
        return torch.addcmul(base, y, b, value=scale) if tensor else torch.add(base, y, alpha=scale * b)
    with _no_grad():
        if out is not x:
            out.copy_(axpby(a, x, b, y, scale=scale))
            return out
        if not one:
            out.mul_(a)
        return out.addcmul_(y, b, value=scale) if tensor else out.add_(y, alpha=scale * b)


def _traced_axpby(a: Any, x: torch.Tensor, b: Any, y: torch.Tensor, out: Any, scale: Any) -> torch.Tensor:
    """:func:`axpby` as torch.compile traces it: with ``*`` and ``+`` only, no number
    given to a kernel as its scalar argument (``alpha=``, ``value=``, a ``_foreach``
    scalar). Where a float hyper-parameter has become dynamic (a SymFloat: changed
    between calls, as a weight-decay schedule changes it) and the graph also computes
    with it, torch 2.13's Inductor kept such arguments at an earlier value, silently;
    multiplied in, it is read right. Inductor fuses the operations alike."""
    value = (x if type(a) is float and a == 1 else x * a) + y * (b * scale)
    if out is None:
        return value
    with torch.no_grad():  # (under torch.compile: the context Dynamo traces)
        return out.copy_(value)


def _traced() -> bool:
    """Whether this call is traced: by Dynamo (torch.compile, strict export), or by
    torch.export's default non-strict tracing, which only its process-wide flag tells.
    (Not torch.compiler.is_compiling(): one flag for the whole process, set while any
    thread compiles, so another thread's compile turned off the memory checks of every
    eager call here, and an output sharing memory with an input was written silently.)"""
    return torch.compiler.is_dynamo_compiling() or torch.compiler.is_exporting()


_registry.set_tracer("torch", _traced, torch.compiler.is_dynamo_compiling)
# An optimizer state saved with torch.save loads with torch.load's defaults (weights only),
# of parameters in a dict or an lm.Container (torch's weights-only loading cannot fill a defaultdict).
torch.serialization.add_safe_globals([LarsState, Container])
