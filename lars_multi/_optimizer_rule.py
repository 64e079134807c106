r"""The LARS optimizer step, written once for every backend and every preset.

You, Gitman and Ginsburg (2017), "Large Batch Training of Convolutional
Networks" (arXiv:1708.03888), Algorithm 1, with the conventions of optax and
timm as :mod:`lars_multi._presets` describes them. The step runs over a list
of layers with the backend's primitives and the arithmetic operators every
framework's arrays share, so it also runs traced inside ``jax.jit`` and
``tf.function``. Half-precision layers compute in float32 and round once.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    in_place: bool = False,
) -> tuple[list[Any], list[Any]]:
    r"""New weights and momentum buffers of every layer.

    ``buffers`` holds None for every layer when ``config.momentum`` is 0;
    ``first`` says the buffers are empty (timm starts them at :math:`r u`).
    With ``in_place`` (NumPy, torch), each layer's weights and buffer are
    updated in their own memory as soon as the layer is computed, with
    ``axpby`` (``a x + b y``) passes and no temporary beyond :math:`u = g + \lambda w`;
    half-precision layers compute in float32 and are copied back.
    The trust ratio scales the coefficients, so :math:`r u` is never stored.
    """
    mu = config.momentum
    decays = [weight_decay if flags.decay[i] else None for i in range(len(ws))]
    adapted = [
        flags.adapt[i]
        and (config.always_adapt or not config.preset.adapt_needs_decay or decays[i] is not None)
        for i in range(len(ws))
    ]
    ratios = _ratios(ops, config, flags, ws, gs, decays, adapted, lr)
    new_ws, new_buffers = [], []
    for i, (w, g, buffer) in enumerate(zip(ws, gs, buffers)):
        wc = ops.to_compute(w)
        u = ops.to_compute(g) if decays[i] is None else ops.axpby(1.0, ops.to_compute(g), decays[i], wc)
        ratio = ratios[i]
        rate = lr if ratio is None else lr * ratio  # eta r
        direct = in_place and wc is w  # else computed aside (halves in float32), then copied
        into = w if direct else None
        if mu == 0:
            new_w, new_buffer = ops.axpby(1.0, wc, -rate, u, out=into), None
        else:
            new_buffer = _new_buffer(
                ops, config, ops.to_compute(buffer), u, ratio, rate, first, buffer if direct else None
            )
            step = 1.0 if config.preset.lr_in_buffer else lr  # w - step * buffer
            if config.nesterov:  # w - (mu * step * buffer + eta r u), the step summed first
                nesterov_step = ops.axpby(mu * step, new_buffer, rate, u)
                new_w = ops.axpby(1.0, wc, -1.0, nesterov_step, out=into)
            else:
                new_w = ops.axpby(1.0, wc, -step, new_buffer, out=into)
        if direct:
            continue
        new_w = ops.cast_like(new_w, w)
        new_buffer = None if new_buffer is None else ops.cast_like(new_buffer, buffer)
        if in_place:
            ops.write(w, new_w)
            if new_buffer is not None:
                ops.write(buffer, new_buffer)
            continue
        new_ws.append(new_w)
        new_buffers.append(new_buffer)
    return new_ws, new_buffers


def _ratios(
    ops: Backend,
    config: StepConfig,
    flags: LayerFlags,
    ws: Sequence[Any],
    gs: Sequence[Any],
    decays: Sequence[Any],
    adapted: Sequence[bool],
    lr: Any,
) -> list[Any]:
    """Every layer's trust ratio :math:`r` (None where it is not adapted); norms
    are taken of the adapted layers only, all at once (summed over mesh axes)."""
    chosen = [i for i, a in enumerate(adapted) if a]
    ratios: list[Any] = [None] * len(ws)
    if not chosen:
        return ratios
    axes = flags.axis_names
    pairs = [ws[i] for i in chosen] + [gs[i] for i in chosen]
    if axes is None:
        both = ops.norms(pairs)
    else:  # every layer's two norms summed across devices together
        picked = tuple(axes[i] for i in chosen)
        both = ops.norms(pairs, (*picked, *picked))
    for k, i in enumerate(chosen):
        w_norm, g_norm = both[k], both[len(chosen) + k]
        decay = None if decays[i] is None else ops.cast_like(decays[i], w_norm)
        u_norm = g_norm
        if config.preset.ratio_of_update and decay is not None:
            # u is made again by the step: keeping every layer's u until then would
            # hold a temporary the size of the tree.
            u = ops.axpby(1.0, ops.to_compute(gs[i]), decay, ops.to_compute(ws[i]))
            u_norm = ops.norm(u) if axes is None or axes[i] is None else ops.norm(u, axes[i])
        ratios[i] = trust_ratio(ops, config, w_norm, g_norm, u_norm, ops.cast_like(lr, w_norm), decay)
    return ratios


def _new_buffer(
    ops: Backend, config: StepConfig, buffer: Any, u: Any, ratio: Any, rate: Any, first: Any, into: Any
) -> Any:
    r"""The new momentum buffer: :math:`\mu v + (1-d)\eta r u` (paper, optax), or
    :math:`\mu b + (1-d) r u`, :math:`r u` at first (timm); into ``into`` if given."""
    mu, damp = config.momentum, 1.0 - config.dampening
    if config.preset.lr_in_buffer:
        return ops.axpby(mu, buffer, damp * rate, u, out=into)
    scale = 1.0 if ratio is None else ratio
    if first is True:
        return ops.axpby(0.0, buffer, scale, u, out=into)
    if first is False:
        return ops.axpby(mu, buffer, damp * scale, u, out=into)
    return ops.where(first, scale * u, ops.axpby(mu, buffer, damp * scale, u))  # traced (jit)
