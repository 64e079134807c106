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

FRAMEWORK = "jax"
_HALF = frozenset(np.dtype(t) for t in (jnp.float16, jnp.bfloat16))
FLOAT_DTYPES = _HALF | {np.dtype(jnp.float32), np.dtype(jnp.float64)}


def is_native(x: Any) -> bool:
    return isinstance(x, jax.Array)


def is_writable(x: Any) -> bool:
    return False  # jax arrays are immutable


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


def norm(x: Any) -> jax.Array:
    """:math:`\\lVert x \\rVert_2`; halves accumulate in float32."""
    if x.dtype in _HALF:
        x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def update(w: Any, g: Any, lr_local: Any) -> jax.Array:
    """:math:`w - \\eta_\\ell g`; halves computed in float32 (XLA fuses the casts)."""
    if w.dtype in _HALF:
        return (w.astype(jnp.float32) - lr_local * g.astype(jnp.float32)).astype(w.dtype)
    return w - lr_local * g


def stop_gradient(x: Any) -> jax.Array:
    return jax.lax.stop_gradient(x)


@functools.cache
def _compiled(tree: bool, donate: bool) -> Any:
    ops = sys.modules[__name__]
    rule = _algorithm.lars_layers if tree else _algorithm.lars_layer
    return jax.jit(
        functools.partial(rule, ops),
        static_argnames="stop_gradients",
        donate_argnums=(0,) if donate else (),
    )


def lars_layer(w: Any, g: Any, lr: Any, decay_lambda: Any, stop_gradients: bool) -> jax.Array:
    """One layer in one compiled call (eager JAX would dispatch seven ops)."""
    return _compiled(False, False)(w, g, lr, decay_lambda, stop_gradients=stop_gradients)


def lars_tree(
    ws: Sequence[Any],
    gs: Sequence[Any],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    outs: Sequence[Any] | None = None,
    donate: bool = False,
) -> list[jax.Array]:
    """Every layer in one compiled call; ``donate`` reuses the weights' buffers."""
    return _compiled(True, donate)(list(ws), list(gs), lr, decay_lambda, stop_gradients=stop_gradients)


def info() -> dict[str, str]:
    return {"version": jax.__version__, "devices": ", ".join(str(d) for d in jax.devices())}
