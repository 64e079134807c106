"""TensorFlow backend: the LARS step as one ``tf.function`` per batch.

A batch is every layer of one dtype (half layers: chunks of them). Each step
function is traced once per structure, shapes and dtypes: rates enter as
tensors, never as Python numbers, so a new rate never retraces. (Not
``reduce_retracing``: its generalised traces kept an earlier variable's rank
and took norms over the wrong axes.) ``tf.Variable`` outputs are assigned in
the graph, ``assign_add`` in place.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from lars_multi import _batching
from lars_multi._protocol import Layout, no_axis_name

FRAMEWORK = "tensorflow"
COMPILES = True
_HALF = frozenset({tf.float16, tf.bfloat16})
FLOAT_DTYPES = _HALF | {tf.float32, tf.float64}
try:  # the tensors of NumPy behaviour's dtype_conversion_mode="all" (made from Python values)
    from tensorflow.python.framework.weak_tensor import WeakTensor

    _TENSORS: tuple[type, ...] = (tf.Tensor, tf.Variable, WeakTensor)
except ImportError:  # (a TensorFlow without them)
    _TENSORS = (tf.Tensor, tf.Variable)


def is_native(x: Any) -> bool:
    return isinstance(x, _TENSORS)


def unwritable(x: Any) -> str | None:
    return None if isinstance(x, tf.Variable) else f"an immutable {type(x).__name__} (use a tf.Variable)"


def is_traced(x: Any) -> bool:
    return tf.is_symbolic_tensor(x)


def densify(x: Any, like: Any) -> Any:
    """``tf.IndexedSlices`` gradients (embeddings, gathers) of the weights ``like`` as dense
    tensors, as Keras does: slices without a ``dense_shape`` take the weights' shape
    where their rows fit it, as in Keras' optimizers (else None)."""
    if not isinstance(x, tf.IndexedSlices):
        return None
    if x.dense_shape is None:
        if x.values.shape[1:] != like.shape[1:] or not like.shape.is_fully_defined():
            return None
        x = tf.IndexedSlices(x.values, x.indices, tf.shape(like, out_type=x.indices.dtype))
    with tf.control_dependencies(_rows_checked(x.indices, x.dense_shape[0])):
        return tf.convert_to_tensor(x)


def _rows_checked(indices: Any, rows: Any) -> list[Any]:
    """Slices' row indices must lie in ``[0, rows)``: densifying drops a row at a
    negative index silently (and fails on one past the end with an error naming
    neither argument). Checked now where eager (a ``ValueError`` the caller names),
    else by assertions the dense gradient waits on."""
    rows = tf.cast(rows, indices.dtype)
    if not tf.executing_eagerly():  # (XLA drops assertions: there, as Keras' scatters, unchecked)
        message = "IndexedSlices gradient: a row index outside [0, rows)"
        return _awaited(
            [
                tf.debugging.assert_non_negative(indices, message=message),
                tf.debugging.assert_less(indices, rows, message=message),
            ]
        )
    if indices.shape.num_elements() != 0:  # (one read of both bounds)
        low, high = tf.stack([tf.reduce_min(indices), tf.reduce_max(indices)]).numpy().tolist()
        n = int(rows)
        if low < 0 or high >= n:
            raise ValueError(f"expected row indices in [0, {n}), got {low if low < 0 else high}")
    return []


def largest(dtype: Any) -> float:
    return float((tf.float32 if dtype in _HALF else tf.as_dtype(dtype)).max)


def dtype_name(dtype: Any) -> str:
    return tf.as_dtype(dtype).name


def asarray(obj: Any, dtype: Any = None) -> tf.Tensor:
    if is_native(obj):
        return tf.identity(obj) if dtype is None else tf.cast(obj, dtype)
    return tf.convert_to_tensor(np.asarray(obj), dtype=dtype)


def zeros_like(x: Any) -> tf.Tensor:
    return tf.zeros_like(x)


def to_numpy(x: Any) -> np.ndarray:
    """``x``'s values as an array (a bfloat16 tensor's in NumPy's bfloat16 of ml_dtypes, as
    TensorFlow gives them; a 0-d tensor's as a 0-d array, where ``numpy()`` gives a scalar)."""
    return np.asarray(x.numpy())


def cast_like(value: Any, like: Any) -> Any:
    if is_native(value) and value.dtype != like.dtype:
        return tf.cast(value, like.dtype)
    return value


def where(cond: Any, x: Any, y: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return tf.where(cond, x, tf.cast(y, x.dtype))


try:
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla_context
except ImportError:  # pragma: no cover (a TensorFlow without it)
    _in_xla_context = None
try:
    from tensorflow.python.eager.record import could_possibly_record as _could_possibly_record
except ImportError:  # pragma: no cover (a TensorFlow without it)
    _could_possibly_record = None


def norm(x: Any, axis_name: Any = None) -> tf.Tensor:
    """:math:`\\lVert x \\rVert_2` in one kernel (``tf.norm``'s three where XLA
    compiles the step, ``tf.function(jit_compile=True)``: ``reduce_euclidean_norm``
    has no XLA CPU kernel); halves accumulate in float32. No mesh axes here: an
    ``axis_name`` raises."""
    if axis_name is not None:
        raise no_axis_name("axis_name", FRAMEWORK, axis_name)
    if x.dtype in _HALF:
        x = tf.cast(x, tf.float32)
    elements = x.shape.num_elements()
    if elements == 1:  # its magnitude, with no square to overflow (as XLA takes it)
        return tf.abs(tf.reshape(x, []))
    by_xla = _compiled_by_xla()
    if _differentiable():
        value = _NORMS[by_xla](x)
    else:
        value = tf.norm(x) if by_xla else tf.math.reduce_euclidean_norm(x)
    if elements is None:  # (a shape known only when the graph runs: maybe one element)
        value = tf.where(tf.size(x) == 1, tf.reduce_max(tf.abs(x)), value)
    return value


def _differentiable() -> bool:
    """Whether a gradient of what is computed now may be taken: in a graph, or run
    eagerly under a ``tf.GradientTape`` (a custom gradient costs eager calls a
    third of their time; TensorFlow's own test, private: where it is gone, always)."""
    return not tf.executing_eagerly() or _could_possibly_record is None or _could_possibly_record()


def _zero_subgradient(kernel: Any) -> Any:
    """``kernel`` (a norm), with a gradient of 0 where the norm is (the subgradient
    torch takes at a zero norm; TensorFlow's own divides 0 by 0 there: NaN). The
    gradient takes the norm again, by ``tf.norm``, whose own gradient is right: a
    second derivative through ``reduce_euclidean_norm``'s output, in a graph, was NaN
    (a Hessian of an eager step of several layers)."""

    @tf.custom_gradient
    def norm(x: Any) -> Any:
        value = kernel(x)

        def gradient(upstream: Any) -> Any:
            again = value if kernel is tf.norm else tf.norm(x)  # (only where a gradient is taken)
            return upstream * x / tf.where(again > 0, again, tf.ones_like(again))

        return value, gradient

    return norm


# By whether XLA compiles the graph: reduce_euclidean_norm has no XLA CPU kernel.
_NORMS = {True: _zero_subgradient(tf.norm), False: _zero_subgradient(tf.math.reduce_euclidean_norm)}


def _compiled_by_xla() -> bool:
    """Whether the graph being traced is compiled by XLA (TensorFlow's own test,
    private: where it is gone, every traced graph takes ``tf.norm``)."""
    if tf.executing_eagerly():
        return False
    return _in_xla_context is None or bool(_in_xla_context(tf.compat.v1.get_default_graph()))


def to_compute(x: Any) -> tf.Tensor:
    return tf.cast(x, tf.float32) if x.dtype in _HALF else x


def sin(x: Any) -> tf.Tensor:
    return tf.math.sin(x)


def compile(function: Any, donate: bool = False) -> Any:
    """``function`` as one ``tf.function``; Python-float rates enter as float64
    tensors (no retracing; each batch casts them to its dtype), and so they do where
    it runs op by op, so that a layer's arithmetic is the same on every path (a
    number's products with the others, as ``(1 - d) lr``, would be rounded once
    there, twice in the trace). Inside a caller's ``tf.function`` it is part of the
    caller's trace. It runs op by op on one layer (a call costs more than its
    kernels) and with distributed variables among the arguments (a trace would take
    any later set of them for the first one it saw)."""
    traced = tf.function(function, autograph=False)

    def argument(value: Any) -> Any:
        return tf.constant(value, tf.float64) if type(value) is float else value

    def distributed(value: Any) -> bool:
        return isinstance(value, list) and any(isinstance(x, tf.distribute.DistributedValues) for x in value)

    def run(*args: Any) -> Any:
        arguments = [argument(a) for a in args]
        if not tf.executing_eagerly() or len(args[0]) == 1 or any(distributed(a) for a in args):
            # Already traced (by the caller's tf.function); one layer, whose few
            # kernels cost less than a tf.function call; or distributed.
            return function(*arguments)
        return traced(*arguments)

    return run


def stop_gradient(x: Any) -> tf.Tensor:
    return tf.stop_gradient(x)


def write(out: tf.Variable, value: Any) -> None:
    """``out`` assigned ``value``, after every assertion of the graph (which
    orders no assertion before another variable's assignment by itself; ``value`` is
    computed before: an assignment of a value computed under the dependencies was
    taken as ordered by that value, which is not)."""
    with tf.control_dependencies(_assertions()):
        out.assign(value, read_value=False)


def snapshot(x: Any) -> tf.Tensor:
    """A variable's value now (``tf.identity`` reads it); a tensor as it is."""
    return tf.identity(x) if isinstance(x, tf.Variable) else x


def stack(xs: Sequence[Any]) -> tf.Tensor:
    return tf.stack(xs)


def unstack(vector: Any) -> list[tf.Tensor]:
    return tf.unstack(vector)


def axpby(a: Any, x: Any, b: Any, y: Any, out: Any = None) -> Any:
    """``a x + b y``; assigned to the variable ``out`` when given (``assign_add``
    when it is ``x``)."""
    one = type(a) is float and a == 1
    if out is not None and out is x and one:
        if _assertions():  # (an assign_add was run before a failing assertion it waited on)
            write(out, x + b * y)
        else:
            out.assign_add(b * y, read_value=False)
        return out
    result = (x if one else a * x) + b * y
    if out is None:
        return result
    write(out, result)
    return out


def shape(x: Any) -> tf.TensorShape:
    """``x``'s shape as far as it is known now: a variable made with a partly or wholly
    unknown shape (``tf.Variable(..., shape=[None, 4])``) has its value's in eager mode."""
    static = x.shape
    if isinstance(x, tf.Variable) and not static.is_fully_defined() and tf.executing_eagerly():
        return x.value().shape
    return static


def alike(xs: Sequence[Any], ws: Layout) -> bool:
    """Tensors of the weights' type, dtype and shape, every shape fully known (a
    dimension known only when a graph runs goes through :func:`assert_same_shape`;
    shapes that match have the same dimensions known)."""
    return ws.matches(xs) and all(shape.is_fully_defined() for shape in ws.shapes)


def assert_same_shape(x: Any, w: Any, message: str) -> Any:
    """``x``, where its or ``w``'s shape is not fully known, checked to have ``w``'s
    shape when the graph runs: a gradient of another shape was broadcast, with the
    norm of its own values. In a graph, by an assertion that every assignment waits
    on (see :func:`write`). Where XLA compiles the graph, which drops assertions, by
    an ``AddN`` of ``x`` and zeros like ``w`` named after ``message``: it is compiled
    with the shapes known, and refuses two shapes that differ before anything runs."""
    if shape(x).is_fully_defined() and shape(w).is_fully_defined():
        return x
    if _compiled_by_xla() and not isinstance(x, tf.Variable):  # (a variable stays one: it may be written)
        name = re.sub(r"[^A-Za-z0-9_.]+", "_", message).strip("_.")
        return tf.raw_ops.AddN(inputs=[x, tf.zeros_like(w)], name=name)
    check = tf.debugging.assert_equal(tf.shape(x), tf.shape(w), message=message)
    if check is not None:  # (None: run eagerly)
        _awaited([check])
    return x


# The assertions of each graph being traced (shapes, sparse rows), which its assignments wait on.
_ASSERTIONS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _awaited(checks: list[Any]) -> list[Any]:
    """``checks``, assertions of the graph being traced, which its assignments will wait on."""
    _ASSERTIONS.setdefault(tf.compat.v1.get_default_graph(), []).extend(checks)
    return checks


def _assertions() -> list[Any]:
    """The assertions of the graph being traced (none when run eagerly)."""
    if tf.executing_eagerly():
        return []
    return _ASSERTIONS.get(tf.compat.v1.get_default_graph(), [])


def batches(ws: Sequence[Any]) -> list[Sequence[int]]:
    """The layers by dtype, half layers in chunks of about ``_batching.HALF_CHUNK_BYTES``."""
    return _batching.batches(
        ws,
        key=lambda w: w.dtype,
        size=lambda w: (shape(w).num_elements() or 0) * w.dtype.size,  # (0: unknown, traced)
        budget=lambda dtype: _batching.HALF_CHUNK_BYTES if dtype in _HALF else None,
    )


def info() -> dict[str, str]:
    devices = ", ".join(d.name for d in tf.config.list_logical_devices())
    return {"version": tf.__version__, "devices": devices}
