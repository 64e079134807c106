r"""The LARS rule, written once for every backend.

For one layer with weights :math:`w` and gradient :math:`g = \partial c / \partial w`:

.. math::

    \eta_\ell = \frac{\lVert w \rVert \, \eta}{\lVert g \rVert + \epsilon},
    \qquad
    \eta_\ell \leftarrow \frac{\eta_\ell}{\lVert w \rVert \, \lambda} \;\text{ if } \lambda > 0,
    \qquad
    w' = w - \eta_\ell \, g

with :math:`\epsilon = 10^{-12}` and 2-norms over all the layer's elements.
This is exactly the rule of the reference (ivy's ``lars_update``). It is not
the full LARS of You, Gitman and Ginsburg (2017): there is no trust
coefficient and no momentum, and :math:`\lambda` divides the rate instead of
adding :math:`\lambda w` to the gradient; those belong to the optimizer.

Two deliberate differences from the reference, both where it fails:

* a layer with :math:`\lVert w \rVert = 0` is left unchanged when
  :math:`\lambda > 0`, where the reference computes :math:`0 / 0`;
* float16 and bfloat16 layers accumulate their norms, and compute the
  update, in float32, then round the result to their own dtype.

``ops`` is a backend module (see :mod:`lars_multi.backends`); the functions
below use only its primitives and the arithmetic operators every framework's
arrays share, so they also run traced inside ``jax.jit`` and ``tf.function``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._protocol import Backend

EPSILON = 1e-12


def trust_ratio(ops: Backend, w_norm: Any, g_norm: Any, lr: Any, decay_lambda: Any) -> Any:
    r"""The layer-local rate :math:`\eta_\ell`; ``decay_lambda`` is None for :math:`\lambda = 0`.

    Works elementwise, so the norms may be 0-d (one layer) or vectors (many).
    """
    lr_local = w_norm * ops.cast_like(lr, w_norm) / (g_norm + EPSILON)
    if decay_lambda is None:
        return lr_local
    # Divide by ||w|| λ where it is positive; a zero-norm layer keeps rate 0.
    scale = w_norm * ops.cast_like(decay_lambda, w_norm)
    return lr_local / ops.where(scale > 0, scale, 1.0)


def lars_layer(
    ops: Backend,
    w: Any,
    g: Any,
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    axis_name: Any = None,
) -> Any:
    """One layer's new weights :math:`w - \\eta_\\ell g`.

    ``axis_name`` (JAX, inside ``jax.shard_map``): the mesh axis ``w`` and ``g``
    are sharded over; their squared norms are summed over it, so the norms are
    those of the whole layer, not of this device's shard.
    """
    if axis_name is None:
        lr_local = trust_ratio(ops, ops.norm(w), ops.norm(g), lr, decay_lambda)
    else:
        w_norm, g_norm = ops.norms([w, g], (axis_name, axis_name))
        lr_local = trust_ratio(ops, w_norm, g_norm, lr, decay_lambda)
    new_w = ops.update(w, g, lr_local)
    return ops.stop_gradient(new_w) if stop_gradients else new_w


def lars_layer_into(ops: Backend, out: Any, w: Any, g: Any, lr: Any, decay_lambda: Any) -> None:
    """:func:`lars_layer` written into ``out`` (which may be ``w``), in place
    (for backends with an ``update_into``)."""
    assert ops.update_into is not None
    lr_local = trust_ratio(ops, ops.norm(w), ops.norm(g), lr, decay_lambda)
    ops.update_into(out, w, g, lr_local)


def lars_layers(
    ops: Backend,
    ws: Sequence[Any],
    gs: Sequence[Any],
    lr: Any,
    decay_lambda: Any,
    stop_gradients: bool,
    axis_names: Sequence[Any] | None = None,
) -> list[Any]:
    """:func:`lars_layer` over many layers: the body that jit compilers fuse.

    ``axis_names``: one mesh axis name (or None) per layer; the squared norms
    of every layer are then summed across devices together (one collective).
    """
    if axis_names is None:
        return [lars_layer(ops, w, g, lr, decay_lambda, stop_gradients) for w, g in zip(ws, gs)]
    n = len(ws)
    norms = ops.norms([*ws, *gs], (*axis_names, *axis_names))
    new_ws = [
        ops.update(w, g, trust_ratio(ops, norms[i], norms[n + i], lr, decay_lambda))
        for i, (w, g) in enumerate(zip(ws, gs))
    ]
    return [ops.stop_gradient(x) for x in new_ws] if stop_gradients else new_ws
