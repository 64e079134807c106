"""TensorFlow backend: eager kernels for one layer, one ``tf.function`` per tree.

The tree function is traced once per structure, shapes and dtypes: rates
enter as tensors, never as Python numbers, so a new rate never retraces.
(Not ``reduce_retracing``: its generalised traces kept an earlier variable's
rank and took norms over the wrong axes.)
``tf.Variable`` outputs are updated in the graph, ``assign_sub`` in place.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from lars_multi import _algorithm
from lars_multi._protocol import no_axis_name

FRAMEWORK = "tensorflow"
_HALF = frozenset({tf.float16, tf.bfloat16})
FLOAT_DTYPES = _HALF | {tf.float32, tf.float64}


def is_native(x: Any) -> bool:
    return isinstance(x, tf.Tensor | tf.Variable)


def unwritable(x: Any) -> str | None:
    return None if isinstance(x, tf.Variable) else f"an immutable {type(x).__name__} (use a tf.Variable)"


def densify(x: Any) -> Any:
    """``tf.IndexedSlices`` gradients (embeddings, gathers) as dense tensors, as Keras does."""
    return tf.convert_to_tensor(x) if isinstance(x, tf.IndexedSlices) else None


def largest(dtype: Any) -> float:
    return float((tf.float32 if dtype in _HALF else tf.as_dtype(dtype)).max)


def dtype_name(dtype: Any) -> str:
    return tf.as_dtype(dtype).name


def asarray(obj: Any, dtype: Any = None) -> tf.Tensor:
    if isinstance(obj, tf.Tensor | tf.Variable):
        return tf.identity(obj) if dtype is None else tf.cast(obj, dtype)
    return tf.convert_to_tensor(np.asarray(obj), dtype=dtype)


def zeros_like(x: Any) -> tf.Tensor:
    return tf.zeros_like(x)


def to_numpy(x: Any) -> np.ndarray:
    values = x.numpy()
    return values.astype(np.float32) if x.dtype == tf.bfloat16 else values


def cast_like(value: Any, like: Any) -> Any:
    if isinstance(value, tf.Tensor | tf.Variable) and value.dtype != like.dtype:
        return tf.cast(value, like.dtype)
    return value


def where(cond: Any, x: Any, y: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return tf.where(cond, x, tf.cast(y, x.dtype))


def norm(x: Any, axis_name: Any = None) -> tf.Tensor:
    """:math:`\\lVert x \\rVert_2` in one kernel; halves accumulate in float32.
    No mesh axes here: an ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    if x.dtype in _HALF:
        x = tf.cast(x, tf.float32)
    return tf.math.reduce_euclidean_norm(x)


def update(w: Any, g: Any, lr_local: Any) -> tf.Tensor:
    """:math:`w - \\eta_\\ell g`; halves computed in float32."""
    if w.dtype in _HALF:
        return tf.cast(tf.cast(w, tf.float32) - lr_local * tf.cast(g, tf.float32), w.dtype)
    return w - lr_local * g


def to_compute(x: Any) -> tf.Tensor:
    return tf.cast(x, tf.float32) if x.dtype in _HALF else x


def cos(x: Any) -> tf.Tensor:
    return tf.math.cos(x)


def compile(function: Any) -> Any:
    """``function`` as one ``tf.function``; Python-float rates enter as tensors (no
    retracing), distributed variables as their values (a trace would keep the first)."""
    traced = tf.function(function)

    def argument(value: Any) -> Any:
        if type(value) is float:
            return tf.constant(value, tf.float32)
        if isinstance(value, list):
            return [
                tf.convert_to_tensor(x) if isinstance(x, tf.distribute.DistributedValues) else x
                for x in value
            ]
        return value

    def run(*args: Any) -> Any:
        return traced(*[argument(a) for a in args])

    return run


def stop_gradient(x: Any) -> tf.Tensor:
    return tf.stop_gradient(x)


def update_into(out: tf.Variable, w: Any, g: Any, lr_local: Any) -> None:
    """:math:`w - \\eta_\\ell g` assigned to the variable ``out`` (``assign_sub`` when it is ``w``)."""
    if out is w and w.dtype not in _HALF:
        out.assign_sub(lr_local * g)
    else:
        out.assign(update(w, g, lr_local))


def write(out: tf.Variable, value: Any) -> None:
    out.assign(value)


@tf.function
def _tree(ws: list, gs: list, lr: Any, decay_lambda: Any, stop_gradients: bool) -> list:
    ops = sys.modules[__name__]
    return _algorithm.lars_layers(ops, ws, gs, lr, decay_lambda, stop_gradients)


@tf.function
def _tree_subtract(variables: list, gs: list, lr: Any, decay_lambda: Any) -> None:
    """``w.assign_sub(lr_local * g)`` for variables that are their own output."""
    ops = sys.modules[__name__]
    for w, g in zip(variables, gs):
        w.assign_sub(_algorithm.trust_ratio(ops, norm(w), norm(g), lr, decay_lambda) * g)


@tf.function
def _tree_assign(outs: list, ws: list, gs: list, lr: Any, decay_lambda: Any) -> None:
    """``out.assign(new_w)`` for the other outputs (and half precision ones)."""
    ops = sys.modules[__name__]
    for out, w, g in zip(outs, ws, gs):
        out.assign(update(w, g, _algorithm.trust_ratio(ops, norm(w), norm(g), lr, decay_lambda)))


# Half layers are computed in float32 a chunk of about this many bytes of
# weights (or one layer, if larger) at a time: each chunk waits for the one
# before, so only one chunk's float32 temporaries exist at once.
_HALF_CHUNK_BYTES = 2 << 20


def _half_chunks(ws: Sequence[Any]) -> tuple[int, ...]:
    """The lengths of consecutive chunks of ``ws``, at most ``max(_HALF_CHUNK_BYTES, largest)`` bytes each."""
    sizes = [w.shape.num_elements() * w.dtype.size for w in ws]
    budget = max(_HALF_CHUNK_BYTES, max(sizes))
    lengths, total = [0], 0
    for size in sizes:
        if total + size > budget:
            lengths.append(0)
            total = 0
        lengths[-1] += 1
        total += size
    return tuple(lengths)


@tf.function
def _tree_half(ws: list, gs: list, lr: Any, decay_lambda: Any, stop_gradients: bool, chunks: tuple) -> list:
    """:func:`_tree` for half layers, one chunk after the other."""
    ops = sys.modules[__name__]
    new: list = []
    done: list = []
    start = 0
    for length in chunks:
        with tf.control_dependencies(done):
            done = _algorithm.lars_layers(
                ops, ws[start : start + length], gs[start : start + length], lr, decay_lambda, stop_gradients
            )
        new += done
        start += length
    return new


@tf.function
def _tree_assign_half(outs: list, ws: list, gs: list, lr: Any, decay_lambda: Any, chunks: tuple) -> None:
    """:func:`_tree_assign` for half layers, one chunk after the other."""
    ops = sys.modules[__name__]
    done: list = []
    start = 0
    for length in chunks:
        with tf.control_dependencies(done):
            done = [
                out.assign(
                    update(w, g, _algorithm.trust_ratio(ops, norm(w), norm(g), lr, decay_lambda)),
                    read_value=False,
                )
                for out, w, g in zip(
                    outs[start : start + length], ws[start : start + length], gs[start : start + length]
                )
            ]
        start += length


def _select(mask: list[bool], *lists: Sequence[Any]) -> list[list[Any]]:
    return [[x for x, chosen in zip(items, mask) if chosen] for items in lists]


def _as_tensor(value: Any) -> Any:
    if value is None or isinstance(value, tf.Tensor | tf.Variable):
        return value
    return tf.constant(value, dtype=tf.float64)


def lars_tree(
    ws: Sequence[Any],
    gs: Sequence[Any],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    outs: Sequence[Any] | None = None,
    donate: bool = False,
) -> list[Any]:
    """Every layer in one ``tf.function`` call; ``outs`` (variables) are assigned:
    ``assign_sub`` for the weights that are their own output, ``assign`` for the rest."""
    lr, decay_lambda = _as_tensor(lr), _as_tensor(decay_lambda)
    half = [w.dtype in _HALF for w in ws]
    if any(isinstance(x, tf.distribute.DistributedValues) for x in (*ws, *(outs or ()))):
        # tf.function takes every distributed variable of one shape and dtype for the
        # first one it traced: pass their values, and assign in Python.
        values = [tf.convert_to_tensor(w) if isinstance(w, tf.Variable) else w for w in ws]
        new = lars_tree(values, gs, lr, decay_lambda, stop_gradients)
        if outs is None:
            return new
        for out, value in zip(outs, new):
            out.assign(value)
        return list(outs)
    if outs is None:
        if not any(half):
            return _tree(list(ws), list(gs), lr, decay_lambda, stop_gradients)
        return _half_and_rest(half, ws, gs, lr, decay_lambda, stop_gradients)
    # Each variable is passed once: every argument costs tf.function time per call.
    subtract = [o is w and not h for o, w, h in zip(outs, ws, half)]
    if any(subtract):
        _tree_subtract(*_select(subtract, ws, gs), lr, decay_lambda)
    if not all(subtract):
        keep = [not s and not h for s, h in zip(subtract, half)]
        if any(keep):
            _tree_assign(*_select(keep, outs, ws, gs), lr, decay_lambda)
        if any(half):
            half_outs, half_ws, half_gs = _select(half, outs, ws, gs)
            _tree_assign_half(half_outs, half_ws, half_gs, lr, decay_lambda, _half_chunks(half_ws))
    return list(outs)


def _half_and_rest(
    half: list[bool], ws: Sequence[Any], gs: Sequence[Any], lr: Any, decay_lambda: Any, stop: bool
) -> list:
    """New weights: the half layers by :func:`_tree_half`, the others by :func:`_tree`."""
    half_ws, half_gs = _select(half, ws, gs)
    new_half = iter(_tree_half(half_ws, half_gs, lr, decay_lambda, stop, _half_chunks(half_ws)))
    rest = [not h for h in half]
    new_rest = iter(_tree(*_select(rest, ws, gs), lr, decay_lambda, stop) if any(rest) else [])
    return [next(new_half) if h else next(new_rest) for h in half]


def info() -> dict[str, str]:
    devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    return {"version": tf.__version__, "devices": devices}
