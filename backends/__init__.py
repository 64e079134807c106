"""Backends: one module per framework, each with the same primitives.

The LARS rule itself lives once, in :mod:`lars_multi._algorithm` (the
optimizer's in :mod:`lars_multi._optimizer_rule`); a backend only says how its
framework computes each step. A module registered with
:func:`lars_multi.register_backend` satisfies the ``typing.Protocol``
:class:`lars_multi._protocol.Backend` once completed with the defaults there:

Required
    ``FRAMEWORK``: the framework's name, for messages.
    ``FLOAT_DTYPES``: the native dtypes accepted as weights (``x.dtype in FLOAT_DTYPES``).
    ``is_native(x)``: whether ``x`` is an array of this framework.
    ``is_writable(x)``: whether ``x`` can be written in place (``out=``), unless
    the module defines ``unwritable`` below.
    ``dtype_name(dtype)``: the dtype's name (``"float32"``).
    ``asarray(obj, dtype=None)``: a native array (Python floats become float32).
    ``zeros_like(x)``, ``to_numpy(x)``.
    ``norm(x)``: the 2-norm over all elements, a 0-d array; float16 and
    bfloat16 accumulate in float32.
    ``cast_like(value, like)``: an array ``value`` in ``like``'s dtype (numbers pass through).
    ``where(cond, x, y)``: elementwise choice; ``y`` may be a Python float.
    ``update(w, g, lr_local)``: ``w - lr_local * g`` in ``w``'s dtype.
    ``stop_gradient(x)``: ``x`` cut from the autograd graph.
    ``info()``: ``{"version": ..., "devices": ...}`` for ``python -m lars_multi info``.

Optional
    ``lars_layer(w, g, lr, decay_lambda, stop_gradients)``: a faster one-layer path.
    ``lars_tree(ws, gs, lr, decay_lambda, stop_gradients, outs, donate)``: the
    fused whole-tree path; writes into ``outs`` when given and returns the
    new arrays. ``donate`` says the weights' buffers may be reused.
    ``write(out, value)``: copy ``value`` into ``out`` in place; needed for
    ``out=`` when there is no ``lars_tree``.
    ``update_into(out, w, g, lr_local)``: ``w - lr_local * g`` written into
    ``out`` (which may be ``w``) with no temporary: the one-array ``out=`` path.
    ``flatten(tree)``: a :class:`lars_multi._tree.Flat` of the framework's own
    pytrees (JAX), used when optree sees leaves that are not arrays.

Optional, with defaults in :mod:`lars_multi._protocol` (one device, dense
arrays, no shared memory) given to a module that lacks them:
    ``unwritable(x)``: why ``x`` cannot be written in place, or None (default:
    from ``is_writable``).
    ``matches(g, w)``: a fast check that a gradient of ``w``'s type, dtype and
    shape needs no other (dense, same device); ``is_dense(x)``,
    ``layout_name(x)``, ``densify(g)`` (a framework's sparse gradient as a
    dense array, or None), ``device(x)``.
    ``memory_root(x)``: the identity of the buffer holding ``x`` (None: arrays
    never share memory); ``overlaps(a, b)`` for two arrays of one buffer.
    ``dtype_hint(got, expected)``: advice for a dtype mismatch message.
    ``largest(dtype)``: the largest finite value of the dtype the rate is
    computed in, to refuse hyper-parameters that overflow it.

``decay_lambda`` reaches the primitives as None when it is 0.
"""
