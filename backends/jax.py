"""JAX backend: the LARS step compiled with ``jax.jit``, one XLA program per batch.

A batch is every layer of one dtype committed to one set of devices (half
layers: chunks of them). ``jax.jit``
caches a compiled program per tree structure, shapes and dtypes; Python-float
rates are traced (weakly typed), so a new rate never recompiles. With
``donate=True`` the weights' buffers are donated and reused for the result.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lars_multi import _batching
from lars_multi._container import Container
from lars_multi._errors import LarsMultiValueError
from lars_multi._protocol import Layout
from lars_multi._tree import Attribute, Flat, FlatIndex

# Containers are pytrees to JAX too, keyed by their names.
jax.tree_util.register_pytree_with_keys(
    Container,
    lambda c: ([(jax.tree_util.DictKey(k), v) for k, v in c.items()], tuple(c.keys())),
    lambda keys, children: Container(dict(zip(keys, children))),
)

FRAMEWORK = "jax"
COMPILES = True
_HALF = frozenset(np.dtype(t) for t in (jnp.float16, jnp.bfloat16))
FLOAT_DTYPES = _HALF | {np.dtype(jnp.float32), np.dtype(jnp.float64)}


def is_native(x: Any) -> bool:
    return isinstance(x, jax.Array)


def unwritable(x: Any) -> str | None:
    return "an immutable jax.Array"


def is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def device(x: Any) -> Any:
    """The devices an array is committed to (``jax.device_put`` to a device or a
    sharding, or computed from such arrays); None where JAX places it where it is used
    (an uncommitted array, a traced one)."""
    if isinstance(x, jax.core.Tracer) or not x.committed:
        return None
    mesh = getattr(x.sharding, "mesh", None)
    devices = tuple(sorted(x.sharding.device_set, key=lambda d: d.id))
    return _Devices(devices, devices if mesh is None else tuple(mesh.devices.flat))


@dataclass(frozen=True)
class _Devices:
    """The devices of a committed array: equal to another's where the sets are;
    named in the order of its mesh (one program takes arrays whose meshes order the
    same devices alike, and a gradient is resharded as its weights)."""

    devices: tuple[Any, ...]
    order: tuple[Any, ...] = field(compare=False)

    def __str__(self) -> str:
        return ", ".join(map(str, self.order))


def alike(xs: Sequence[Any], ws: Layout) -> bool:
    """Arrays of the weights' type, dtype and shape, each uncommitted or laid out as
    its weights (committed to their sharding)."""
    if not ws.matches(xs):
        return False
    return not _any_committed(xs) or all(map(_laid_out_as, xs, ws.arrays))


def _committed(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer) and x.committed


_COMMITTED = operator.attrgetter("committed")
_CONCRETE: list[type] = []  # a concrete array's type (a traced one has no placement), once known


def _concrete_type() -> type | None:
    """The type of a concrete JAX array, made under ``ensure_compile_time_eval`` (a
    concrete array inside a ``jax.jit`` trace); None where even that is a tracer
    (inside ``jax.shard_map``), and asked again next time."""
    if not _CONCRETE:
        with jax.ensure_compile_time_eval():
            kind = type(jnp.zeros(()))
        if issubclass(kind, jax.core.Tracer):
            return None
        _CONCRETE.append(kind)
    return _CONCRETE[0]


def _any_committed(xs: Sequence[Any]) -> bool:
    """Whether an array is committed to devices, asked of the list at once where every
    one is a concrete array (the common case: none is)."""
    kind = _concrete_type()
    if kind is not None and list(map(type, xs)).count(kind) == len(xs):
        return any(map(_COMMITTED, xs))
    return any(map(_committed, xs))


def _laid_out_as(x: Any, w: Any) -> bool:
    return not _committed(x) or (_committed(w) and x.sharding == w.sharding)


def conform(x: Any, w: Any) -> Any:
    """``x`` (checked like ``w``: on its devices) with ``w``'s sharding: the program's
    results then keep the weights' layout (XLA laid them out as it chose, replicated
    even, where a gradient had another layout over the same devices, or the same
    devices in another order), and uncommitted weights stay on their device (each
    gradient committed elsewhere would have drawn its layer there: layers of one
    program on two devices failed)."""
    if not _committed(x) or isinstance(w, jax.core.Tracer) or x.sharding == w.sharding:
        return x
    return jax.device_put(x, w.sharding)


def misplaced(value: Any, ws: Sequence[Any]) -> int | None:
    """The first of ``ws`` committed to other devices than a committed 0-d ``value``,
    or to its devices in another order (one program cannot take both)."""
    place = device(value)
    if place is None:
        return None
    for i, w in enumerate(ws):
        at = device(w)
        if at is not None and (at != place or at.order != place.order):
            return i
    return None


def largest(dtype: Any) -> float:
    return float(np.finfo(jnp.float32 if dtype in _HALF else dtype).max)


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def widest_float(like: Any) -> str:
    """float64 only with ``jax_enable_x64`` (JAX has no float64 arrays without it)."""
    return "float64" if jax.config.read("jax_enable_x64") else "float32"


def asarray(obj: Any, dtype: Any = None) -> jax.Array:
    return jnp.asarray(obj, dtype=dtype)


def scalar_for(value: Any, dtype: str, ws: Sequence[Any]) -> jax.Array:
    """``value`` placed beside ``ws`` where they are all committed to one device, or
    to one mesh (replicated over it), so that a jitted step moves nothing between
    devices (and passes ``jax.transfer_guard("disallow")``); elsewhere uncommitted,
    where jit places it beside the other arguments."""
    x = jnp.asarray(value, dtype=dtype)
    if not ws or isinstance(x, jax.core.Tracer) or device(ws[0]) is None:
        return x
    if not all(w.committed for w in ws):
        return x
    shardings = {w.sharding for w in ws}
    meshes = {getattr(s, "mesh", None) for s in shardings}
    mesh = meshes.pop() if len(meshes) == 1 else None
    if mesh is not None:
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    devices = {d for s in shardings for d in s.device_set}
    return jax.device_put(x, devices.pop()) if len(devices) == 1 else x


def zeros_like(x: Any) -> jax.Array:
    return jnp.zeros_like(x)


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x)


def cast_like(value: Any, like: Any) -> Any:
    if isinstance(value, jax.Array) and value.dtype != like.dtype:
        return value.astype(like.dtype)
    return value


def where(cond: Any, x: Any, y: Any) -> jax.Array:
    return jnp.where(cond, x, y)


@jax.custom_jvp
def _root(total: Any) -> jax.Array:
    """The square root of a sum of squares, whose derivative is 0 where the sum is
    (the subgradient torch takes at a zero norm; ``jnp.sqrt``'s is infinite there,
    and times the zero derivative of the sum it made the norm's gradient NaN)."""
    return jnp.sqrt(total)


@_root.defjvp
def _root_jvp(primals: tuple[Any], tangents: tuple[Any]) -> tuple[jax.Array, jax.Array]:
    root = _root(primals[0])
    positive = root > 0
    return root, jnp.where(positive, tangents[0] / (2 * jnp.where(positive, root, 1)), 0)


def norm(x: Any, axis_name: Any = None) -> jax.Array:
    """:math:`\\lVert x \\rVert_2`; halves accumulate in float32. With ``axis_name``
    (inside ``jax.shard_map``), the sum of squares is summed over that mesh axis
    (``lax.psum``) before the root: the norm of the whole array, not of the shard."""
    if x.dtype in _HALF:
        x = x.astype(jnp.float32)
    if axis_name is None:
        return _magnitude(x) if x.size == 1 else _root(jnp.sum(jnp.square(x)))
    return _root(jax.lax.psum(jnp.sum(jnp.square(x)), axis_name))


def norms(xs: Sequence[Any], axis_names: Sequence[Any] | None = None) -> list[jax.Array]:
    """:func:`norm` of each array; with ``axis_names`` (one name or None per array),
    the sums of squares sharing an axis are summed across devices in one ``psum``."""
    if axis_names is None:
        return [norm(x) for x in xs]
    sums = [jnp.sum(jnp.square(to_compute(x))) for x in xs]
    local = [i for i, name in enumerate(axis_names) if name is None and xs[i].size == 1]
    by_axis: dict[Any, list[int]] = {}
    for i, name in enumerate(axis_names):
        if name is not None:
            by_axis.setdefault(name, []).append(i)
    for name, indices in by_axis.items():
        totals = jax.lax.psum([sums[i] for i in indices], name)
        for i, total in zip(indices, totals):
            sums[i] = total
    roots = [_root(x) for x in sums]
    for i in local:  # (a whole one-element layer, not a shard)
        roots[i] = _magnitude(to_compute(xs[i]))
    return roots


def _magnitude(x: Any) -> jax.Array:
    """The norm of a one-element array: its magnitude, with no square to overflow (as
    XLA simplifies the root of the square under jit)."""
    return _abs(x.reshape(()))


@jax.custom_jvp
def _abs(x: Any) -> jax.Array:
    """``jnp.abs`` with the derivative ``sign(x)``: 0 where ``x`` is, as :func:`_root`'s
    (``jnp.abs``'s is 1 there)."""
    return jnp.abs(x)


@_abs.defjvp
def _abs_jvp(primals: tuple[Any], tangents: tuple[Any]) -> tuple[jax.Array, jax.Array]:
    return _abs(primals[0]), jnp.sign(primals[0]) * tangents[0]


def memory_roots(xs: Sequence[Any]) -> list[int | None]:
    """The device buffers holding each array, as one root: a second ``jax.Array``
    over a buffer, as ``jax.device_put(x, x.sharding)`` gives, shares it, so that
    buffer is not donated while the other is read. Arrays on several devices share a
    root where any of their shards' buffers is shared (transitively). None for a
    traced array (nothing is donated inside a trace) and a deleted one."""
    buffers = [_buffers(x) for x in xs]
    if all(b is None or len(b) == 1 for b in buffers):
        return [None if b is None else b[0] for b in buffers]
    parent: dict[int, int] = {}

    def root(pointer: int) -> int:
        while parent.setdefault(pointer, pointer) != pointer:
            pointer = parent[pointer] = parent[parent[pointer]]
        return pointer

    for b in buffers:
        if b is not None:
            for pointer in b[1:]:
                parent[root(pointer)] = root(b[0])  # (one array: one root for all its shards)
    return [None if b is None else root(b[0]) for b in buffers]


def _buffers(x: Any) -> tuple[int, ...] | None:
    """The address of each of ``x``'s device buffers (one per addressable shard)."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or x.is_deleted():
        return None
    try:
        return (x.unsafe_buffer_pointer(),)
    except jax.errors.JaxRuntimeError:  # (on several devices)
        return tuple(shard.data.unsafe_buffer_pointer() for shard in x.addressable_shards) or None


def check_axis_name(arg: Any, value: Any) -> None:
    """Every mesh axis name of ``value`` (one name, or a tree of names) must be bound
    where the step runs, by an enclosing ``jax.shard_map``, ``pmap`` or ``vmap``
    (inside ``shard_map``, ``lax.psum`` over an unknown name fails a bare assertion)."""
    for name in dict.fromkeys(jax.tree_util.tree_leaves(value)):
        try:
            jax.lax.axis_size(name)
        except NameError:
            raise LarsMultiValueError(
                f"{arg}: expected names of mesh axes bound here (by an enclosing jax.shard_map, pmap "
                f"or vmap), got {name!r}, which is not"
            ) from None


def to_compute(x: Any) -> jax.Array:
    return x.astype(jnp.float32) if x.dtype in _HALF else x


def sin(x: Any) -> jax.Array:
    return jnp.sin(x)


def compile(function: Any, donate: bool = False) -> Any:
    """``function`` jitted. A deleted (donated) input array raises JAX's ``RuntimeError``
    on every call: a program already compiled for its shapes raised XLA's bare
    ``ValueError`` (INVALID_ARGUMENT: Invalid buffer passed to Execute())."""
    compiled = jax.jit(function, donate_argnums=(0,) if donate else ())

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        try:
            return compiled(*args)
        except ValueError:
            deleted = [
                x for x in jax.tree_util.tree_leaves(args) if isinstance(x, jax.Array) and x.is_deleted()
            ]
            if not deleted:
                raise
            raise RuntimeError(
                f"Array has been deleted with shape={deleted[0].aval.str_short()}: an input was donated "
                "to a jitted function, or deleted, before this call"
            ) from None

    return run


def stop_gradient(x: Any) -> jax.Array:
    return jax.lax.stop_gradient(x)


def stack(xs: Sequence[Any]) -> jax.Array:
    return jnp.stack(xs)


def unstack(vector: Any) -> list[jax.Array]:
    return list(vector)


def _placement(w: Any) -> Any:
    """What one program needs its committed arrays to share: a mesh (its devices in its
    order), else the devices; None for an uncommitted array."""
    if not _committed(w):
        return None
    return getattr(w.sharding, "mesh", None) or device(w)


def batches(ws: Sequence[Any]) -> list[Sequence[int]]:
    """The layers by dtype and the devices they are committed to (one program takes
    arrays of one set of devices), each one program, half layers in chunks of about
    ``_batching.HALF_CHUNK_BYTES`` (one program over them all would hold float32 copies of
    every w and g at once). Already inside a trace: by dtype only."""
    traced = isinstance(ws[0], jax.core.Tracer)
    placed = _any_committed(ws)
    return _batching.batches(
        ws,
        key=lambda w: (w.dtype, _placement(w) if placed else None),
        size=lambda w: w.nbytes,
        budget=lambda key: _batching.HALF_CHUNK_BYTES if key[0] in _HALF and not traced else None,
    )


def _entry(key: Any) -> Any:
    """A JAX key path entry as a key, an index, an :class:`Attribute` or a
    :class:`FlatIndex` (which pairs only with the same structure)."""
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    if isinstance(key, jax.tree_util.SequenceKey):
        return key.idx
    if isinstance(key, jax.tree_util.GetAttrKey):
        return Attribute(key.name)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return FlatIndex(key.key)
    return key


def flatten(tree: Any) -> Flat:
    """``tree`` flattened by ``jax.tree_util``: every registered pytree (flax,
    equinox, ...) is a tree of layers; leaves that are not arrays come too."""
    with_paths, spec = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_entry(k) for k in path) for path, _ in with_paths]
    return Flat(
        [leaf for _, leaf in with_paths],
        paths,
        spec,
        jax.tree_util.tree_flatten,
        jax.tree_util.tree_unflatten,
        _children,
    )


def _children(node: Any) -> tuple[list[Any], list[Any], Any]:
    """A node's path entries, children and structure, one level down."""
    with_paths, spec = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return [_entry(path[0]) for path, _ in with_paths], [child for _, child in with_paths], spec


def info() -> dict[str, str]:
    return {"version": jax.__version__, "devices": ", ".join(str(d) for d in jax.devices())}
