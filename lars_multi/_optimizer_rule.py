r"""The LARS optimizer step, written once for every backend and every preset.

You, Gitman and Ginsburg (2017), "Large Batch Training of Convolutional
Networks" (arXiv:1708.03888), Algorithm 1, with the conventions of optax and
timm as :mod:`lars_multi._presets` describes them. The step runs over a list
of layers with the backend's primitives and the arithmetic operators every
framework's arrays share, so it also runs traced inside ``jax.jit`` and
``tf.function``. Half-precision layers compute in float32 and round once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._presets import Preset
from ._protocol import Backend


@dataclass(frozen=True)
class StepConfig:
    """The hyper-parameters that shape the step (everything but the rates)."""

    preset: Preset
    momentum: float
    nesterov: bool
    dampening: float
    trust_coefficient: float
    eps: float
    trust_clip: bool
    always_adapt: bool


@dataclass(frozen=True)
class LayerFlags:
    """Which layers are adapted and decayed (static: they shape the program)."""

    adapt: tuple[bool, ...]
    decay: tuple[bool, ...]
    # One mesh axis name (or None) per layer whose norms are summed across
    # devices (inside jax.shard_map); None: every norm is local.
    axis_names: tuple[Any, ...] | None = None


def trust_ratio(
    ops: Backend, config: StepConfig, w_norm: Any, g_norm: Any, u_norm: Any, lr: Any, decay: Any
) -> Any:
    """:math:`r` of one layer; ``decay`` is None where no weight decay applies."""
    if config.preset.ratio_of_update:
        denominator = u_norm
    else:
        denominator = g_norm if decay is None else g_norm + decay * w_norm
    usable = (w_norm > 0) & ((u_norm if config.preset.ratio_of_update else g_norm) > 0)
    # Divide only where the ratio is used (no 0/0 computed, no warning raised).
    denominator = ops.where(usable, denominator + config.eps, 1.0)
    ratio = ops.where(usable, config.trust_coefficient * w_norm / denominator, 1.0)
    if config.trust_clip:  # min(r / lr, 1): r / lr where r < lr (so lr > 0), else 1
        below = ratio < lr
        lr_like = ops.zeros_like(ratio) + lr  # in the ratio's dtype, whatever lr is
        ratio = ops.where(below, ratio / ops.where(below, lr_like, 1.0), 1.0)
    return ratio


def lars_momentum_layers(
    ops: Backend,
    config: StepConfig,
    flags: LayerFlags,
    ws: Sequence[Any],
    gs: Sequence[Any],
    buffers: Sequence[Any],
    lr: Any,
    weight_decay: Any,
    first: Any,
    write: Callable[[int, Any, Any], None] | None = None,
) -> tuple[list[Any], list[Any]]:
    """New weights and momentum buffers of every layer.

    ``buffers`` holds None for every layer when ``config.momentum`` is 0;
    ``first`` says the buffers are empty (timm starts them at :math:`r u`).
    ``write(i, new_w, new_buffer)``, if given, stores each layer's results as
    soon as they are computed (in place), so no temporary outlives its layer.
    """
    axes = flags.axis_names
    if axes is None:
        w_norms, g_norms = ops.norms(ws), ops.norms(gs)
    else:  # every layer's two norms summed across devices together
        both = ops.norms([*ws, *gs], (*axes, *axes))
        w_norms, g_norms = both[: len(ws)], both[len(ws) :]
    mu, damp = config.momentum, 1.0 - config.dampening
    new_ws, new_buffers = [], []
    for i, (w, g, buffer) in enumerate(zip(ws, gs, buffers)):
        w_norm = w_norms[i]
        rate = ops.cast_like(lr, w_norm)
        wc, u = ops.to_compute(w), ops.to_compute(g)
        decay = ops.cast_like(weight_decay, w_norm) if flags.decay[i] and weight_decay is not None else None
        if decay is not None:
            u = u + decay * wc
        adapted = flags.adapt[i] and (
            config.always_adapt or not config.preset.adapt_needs_decay or decay is not None
        )
        if adapted:
            if config.preset.ratio_of_update and decay is not None:
                u_norm = ops.norm(u) if axes is None or axes[i] is None else ops.norm(u, axes[i])
            else:
                u_norm = g_norms[i]
            u = trust_ratio(ops, config, w_norm, g_norms[i], u_norm, rate, decay) * u
        if mu == 0:
            step, new_buffer = rate * u, None
        elif config.preset.lr_in_buffer:
            new_buffer = mu * ops.to_compute(buffer) + damp * rate * u
            step = mu * new_buffer + rate * u if config.nesterov else new_buffer
        else:
            if first is True:
                new_buffer = u
            else:
                later = mu * ops.to_compute(buffer) + damp * u
                new_buffer = later if first is False else ops.where(first, u, later)
            step = rate * (u + mu * new_buffer) if config.nesterov else rate * new_buffer
        new_w = ops.cast_like(wc - step, w)
        new_buffer = None if new_buffer is None else ops.cast_like(new_buffer, buffer)
        if write is not None:
            write(i, new_w, new_buffer)
        else:
            new_ws.append(new_w)
            new_buffers.append(new_buffer)
    return new_ws, new_buffers
