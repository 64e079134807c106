r"""LARS as an :class:`optax.GradientTransformation`: ``lm.optax.lars(...)``.

The transformation is the functional optimizer :func:`lars_multi.optim.lars`
behind optax's ``init`` / ``update`` interface: the step is the shared rule of
:mod:`lars_multi._step`, in every preset (``"paper"``, ``"optax"``,
``"timm"``). ``update(grads, state, params)`` returns the update that
:func:`optax.apply_updates` adds to the parameters (the step's increment, in the
parameters' dtype, with the precision of the step, as :func:`optax.lars`'s), so it composes with
:func:`optax.chain` (e.g. after :func:`optax.clip_by_global_norm`), runs under
:func:`jax.jit`, and takes optax schedules (callables of the step count) for the
learning rate and the weight decay. ``preset="optax"`` is :func:`optax.lars`.

.. code-block:: python

    import jax.numpy as jnp, optax, lars_multi.optax

    tx = optax.chain(optax.clip_by_global_norm(1.0), lars_multi.optax.lars(0.1, weight_decay=1e-4))
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)  # params are required
    params = optax.apply_updates(params, updates)

Importing this module without optax and JAX succeeds; :func:`lars` then raises
:class:`lars_multi.BackendNotInstalledError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import optim
from ._errors import BackendNotInstalledError, LarsMultiTypeError, LarsMultiValueError
from ._lars import flatten
from ._tree import leaves_like
from .optim import LarsState, Mask, Schedule

try:
    import jax
    import optax
except ImportError as _error:  # the module imports without them (pytest collects it); lars() says why
    jax = optax = None  # type: ignore[assignment]
    _MISSING = str(_error)

__all__ = ["LarsState", "lars"]


def _update_of(grad: Any, increment: Any) -> Any:
    """A layer's update: its step's increment; None where it has no gradient, as
    optax.sgd gives (a 0 there made a transformation chained after this one take a
    frozen parameter for a live one: ``optax.add_decayed_weights`` moved it)."""
    return None if grad is None else increment


def _like(params: Any, updates: Any) -> Any:
    """``updates`` in the structure of ``params``, paired with them by key."""
    flat = flatten(params)
    return flat.rebuild(leaves_like("updates", updates, flat))


def _with_jax_arrays(state: Any) -> Any:
    """``state`` with its NumPy arrays as JAX arrays: a state restored by
    ``flax.serialization`` (or read from any NumPy checkpoint) holds NumPy arrays,
    which optax's own transformations take as they are."""
    if not isinstance(state, LarsState):
        return state  # (anything else: lm.optim's step says what it expected)
    return _with_jax_leaves(state)


def _with_jax_leaves(tree: Any) -> Any:
    """``tree`` with its NumPy arrays as JAX arrays (parameters and states restored from
    a NumPy checkpoint, which optax's own transformations take as they are)."""
    if all(map(_is_jax, jax.tree.leaves(tree))):
        return tree
    return jax.tree.map(_to_jax, tree)


def _is_jax(x: Any) -> bool:
    return isinstance(x, jax.Array)


def _to_jax(x: Any) -> Any:
    return jax.numpy.asarray(x) if isinstance(x, np.ndarray | np.generic) else x


def _concrete(name: str, value: Any) -> Any:
    """A hyper-parameter of the step's configuration as a number: the value of a
    concrete 0-d JAX array (``optax.inject_hyperparams`` passes every number as
    one); a traced array is refused, as the configuration is fixed when the
    transformation is made."""
    if not isinstance(value, jax.Array):
        return value
    if isinstance(value, jax.core.Tracer):
        raise LarsMultiTypeError(
            f"{name}: expected a number (it is fixed when the transformation is made), got a traced "
            "JAX array; with optax.inject_hyperparams, name it in static_args"
        )
    return value.item() if value.shape == () else value


def lars(
    learning_rate: float | Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    trust_coefficient: float = 0.001,
    eps: float | None = None,
    trust_clip: bool = False,
    always_adapt: bool = False,
    adapt_mask: Mask = None,
    weight_decay_mask: Mask = None,
    preset: str = "paper",
    axis_name: Any = None,
) -> Any:  # optax.GradientTransformationExtraArgs
    """LARS as an optax transformation; the arguments are those of :func:`lars_multi.optim.lars`
    but ``differentiable``, which is always on here (see below).

    ``learning_rate`` and ``weight_decay`` are numbers or optax schedules,
    called with the step count (0 at the first update). ``adapt_mask`` and
    ``weight_decay_mask`` are trees of bools like the parameters, callables
    ``(path, array) -> bool`` asked per leaf, or callables of the parameters
    returning such a tree (optax's masks); None takes the preset's default. The
    state is a :class:`lars_multi.optim.LarsState` (``count``, the ``momentum``
    buffers, None without momentum, and timm's ``started`` flags), a pytree of
    JAX arrays. ``axis_name``
    (inside ``jax.shard_map``): the mesh axis the parameters are sharded over,
    or a tree of names and None, as in :func:`lars_multi.optim.lars`; without
    it, norms inside ``jax.shard_map`` are those of each device's shard.
    Updates are differentiable, as optax's are (``jax.grad`` through an update).
    """
    if optax is None:
        raise BackendNotInstalledError(
            f"lars_multi.optax.lars needs optax and JAX, which cannot be imported here ({_MISSING}); "
            'install them with: pip install "lars-multi[jax-ecosystem]"'
        )
    opt = optim.lars(
        learning_rate,
        momentum=_concrete("momentum", momentum),
        nesterov=nesterov,
        dampening=_concrete("dampening", dampening),
        weight_decay=weight_decay,
        trust_coefficient=_concrete("trust_coefficient", trust_coefficient),
        eps=_concrete("eps", eps),
        trust_clip=trust_clip,
        always_adapt=always_adapt,
        adapt_mask=adapt_mask,
        weight_decay_mask=weight_decay_mask,
        preset=preset,
        axis_name=axis_name,
        differentiable=True,  # (optax's updates are: jax.grad through an update, meta-learning)
    )
    # The step returns the updates themselves: w' - w rounded to w's precision lost the
    # part of a small step below it (summed by optax.apply_every, a bfloat16 step was lost).
    opt = dataclasses.replace(opt, config=dataclasses.replace(opt.config, increments=True))

    def init(params: Any) -> LarsState:
        params = _with_jax_leaves(params)
        if not jax.tree.leaves(params):  # (optax.masked, multi_transform: a group of no parameters;
            # optax.tree_utils.tree_map_params' placeholder): buffers of its structure, empty
            empty = jax.tree.map(lambda x: x, params)
            momentum = empty if opt.config.momentum != 0 else None
            return LarsState(
                jax.numpy.zeros((), jax.numpy.int32), momentum, empty if opt.config.tracks_start else None
            )
        return opt.init(params)

    def update(
        updates: Any, state: LarsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, LarsState]:
        # (extra_args, optax's value= or grad=, are taken and unused, as optax.lars takes them)
        if params is None:
            raise LarsMultiValueError(
                "params: lm.optax.lars needs the parameters (the trust ratio is |w| / |g|): "
                "call update(grads, state, params)"
            )
        params, updates = _with_jax_leaves(params), _with_jax_leaves(updates)
        if not jax.tree.leaves(params) and isinstance(state, LarsState):  # (a group of no parameters)
            return updates, state._replace(count=optax.safe_int32_increment(state.count))
        increments, new_state = opt.step(params, updates, _with_jax_arrays(state))
        try:
            steps = jax.tree.map(_update_of, updates, increments, is_leaf=lambda x: x is None)
        except ValueError:  # updates of another mapping type or key order (the step paired them by key)
            steps = jax.tree.map(_update_of, _like(params, updates), increments, is_leaf=lambda x: x is None)
        return steps, new_state

    return optax.GradientTransformationExtraArgs(init, update)
