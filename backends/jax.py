"""JAX backend: the LARS rule compiled with ``jax.jit``, one XLA program per tree.

``jax.jit`` caches a compiled program per tree structure, shapes and dtypes;
Python-float rates are traced (weakly typed), so a new rate never recompiles.
With ``donate=True`` the weights' buffers are donated and reused for the result.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lars_multi import _algorithm
from lars_multi._container import Container
from lars_multi._tree import Attribute, Flat

# Containers are pytrees to JAX too, keyed by their names.
jax.tree_util.register_pytree_with_keys(
    Container,
    lambda c: ([(jax.tree_util.DictKey(k), v) for k, v in c.items()], tuple(c.keys())),
    lambda keys, children: Container(dict(zip(keys, children))),
)

FRAMEWORK = "jax"
_HALF = frozenset(np.dtype(t) for t in (jnp.float16, jnp.bfloat16))
FLOAT_DTYPES = _HALF | {np.dtype(jnp.float32), np.dtype(jnp.float64)}


def is_native(x: Any) -> bool:
    return isinstance(x, jax.Array)


def unwritable(x: Any) -> str | None:
    return "an immutable jax.Array"


def largest(dtype: Any) -> float:
    return float(np.finfo(jnp.float32 if dtype in _HALF else dtype).max)


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def asarray(obj: Any, dtype: Any = None) -> jax.Array:
    return jnp.asarray(obj, dtype=dtype)


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


def norm(x: Any, axis_name: Any = None) -> jax.Array:
    """:math:`\\lVert x \\rVert_2`; halves accumulate in float32. With ``axis_name``
    (inside ``jax.shard_map``), the sum of squares is summed over that mesh axis
    (``lax.psum``) before the root: the norm of the whole array, not of the shard."""
    if x.dtype in _HALF:
        x = x.astype(jnp.float32)
    if axis_name is None:
        return jnp.sqrt(jnp.sum(jnp.square(x)))
    return jnp.sqrt(jax.lax.psum(jnp.sum(jnp.square(x)), axis_name))


def norms(xs: Sequence[Any], axis_names: Sequence[Any] | None = None) -> list[jax.Array]:
    """:func:`norm` of each array; with ``axis_names`` (one name or None per array),
    the sums of squares sharing an axis are summed across devices in one ``psum``."""
    if axis_names is None:
        return [norm(x) for x in xs]
    sums = [jnp.sum(jnp.square(to_compute(x))) for x in xs]
    by_axis: dict[Any, list[int]] = {}
    for i, name in enumerate(axis_names):
        if name is not None:
            by_axis.setdefault(name, []).append(i)
    for name, indices in by_axis.items():
        totals = jax.lax.psum([sums[i] for i in indices], name)
        for i, total in zip(indices, totals):
            sums[i] = total
    return [jnp.sqrt(x) for x in sums]


def check_axis_name(arg: Any, value: Any) -> None:
    """Mesh axis names are JAX's own: every name is accepted (JAX checks it when tracing)."""


def update(w: Any, g: Any, lr_local: Any) -> jax.Array:
    """:math:`w - \\eta_\\ell g`; halves computed in float32 (XLA fuses the casts)."""
    if w.dtype in _HALF:
        return (w.astype(jnp.float32) - lr_local * g.astype(jnp.float32)).astype(w.dtype)
    return w - lr_local * g


def to_compute(x: Any) -> jax.Array:
    return x.astype(jnp.float32) if x.dtype in _HALF else x


def cos(x: Any) -> jax.Array:
    return jnp.cos(x)


def compile(function: Any) -> Any:
    return jax.jit(function)


def stop_gradient(x: Any) -> jax.Array:
    return jax.lax.stop_gradient(x)


@functools.cache
def _compiled(tree: bool, donate: bool, sharded: bool = False) -> Any:
    """The rule under ``jax.jit``; ``sharded``: with the (static) mesh axis names too."""
    ops = sys.modules[__name__]
    rule = _algorithm.lars_layers if tree else _algorithm.lars_layer
    axes = ("axis_names" if tree else "axis_name",) if sharded else ()
    return jax.jit(
        functools.partial(rule, ops),
        static_argnames=("stop_gradients", *axes),
        donate_argnums=(0,) if donate else (),
    )


def lars_layer(
    w: Any, g: Any, lr: Any, decay_lambda: Any, stop_gradients: bool, axis_name: Any = None
) -> jax.Array:
    """One layer in one compiled call (eager JAX would dispatch seven ops)."""
    if axis_name is None:
        return _compiled(False, False)(w, g, lr, decay_lambda, stop_gradients=stop_gradients)
    return _compiled(False, False, True)(
        w, g, lr, decay_lambda, stop_gradients=stop_gradients, axis_name=axis_name
    )


def lars_tree(
    ws: Sequence[Any],
    gs: Sequence[Any],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    outs: Sequence[Any] | None = None,
    donate: bool = False,
    axis_names: Sequence[Any] | None = None,
) -> list[jax.Array]:
    """Every layer in one compiled call; ``donate`` reuses the weights' buffers;
    ``axis_names`` (one mesh axis name or None per layer, inside ``jax.shard_map``)
    sums the norms over the layers' mesh axes.

    Half layers go in chunks of separate calls (see :func:`_half_chunks`): one
    program over them all would hold float32 copies of every w and g at once.
    """
    if axis_names is None:
        run = _compiled(True, donate)
    else:
        run = functools.partial(_compiled(True, donate, True), axis_names=tuple(axis_names))
    if _HALF.isdisjoint({w.dtype for w in ws}) or isinstance(ws[0], jax.core.Tracer):
        return run(list(ws), list(gs), lr, decay_lambda, stop_gradients=stop_gradients)
    results = list(ws)
    rest = [i for i, w in enumerate(ws) if w.dtype not in _HALF]
    for part in ([rest] if rest else []) + _half_chunks(ws):
        if axis_names is not None:
            run = functools.partial(
                _compiled(True, donate, True), axis_names=tuple(axis_names[i] for i in part)
            )
        new = run(
            [ws[i] for i in part], [gs[i] for i in part], lr, decay_lambda, stop_gradients=stop_gradients
        )
        for i, n in zip(part, new):
            results[i] = n
    return results


# Half layers are compiled in chunks of about this many bytes of weights (or
# one layer, if larger): XLA on CPU keeps float32 copies of w and g for the
# norms, so a chunk holds about 4 times its bytes in temporaries.
_HALF_CHUNK_BYTES = 2 << 20


def _half_chunks(ws: Sequence[Any]) -> list[list[int]]:
    """The half layers' indices, consecutive, at most ``max(_HALF_CHUNK_BYTES, largest)`` bytes a chunk."""
    half = [i for i, w in enumerate(ws) if w.dtype in _HALF]
    budget = max(_HALF_CHUNK_BYTES, max(ws[i].nbytes for i in half))
    chunks: list[list[int]] = [[]]
    total = 0
    for i in half:
        if total + ws[i].nbytes > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += ws[i].nbytes
    return chunks


def _entry(key: Any) -> Any:
    """A JAX key path entry as a key, an index or an :class:`Attribute`."""
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    if isinstance(key, jax.tree_util.SequenceKey):
        return key.idx
    if isinstance(key, jax.tree_util.GetAttrKey):
        return Attribute(key.name)
    return key  # FlattenedIndexKey: pairs only with the same structure


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
    )


def info() -> dict[str, str]:
    return {"version": jax.__version__, "devices": ", ".join(str(d) for d in jax.devices())}
