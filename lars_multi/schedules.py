r"""Learning-rate schedules of the LARS papers, as functions of the step count.

A schedule is called with the optimizer's step count: a Python int, or a 0-d
integer array of any backend (traced under ``jax.jit`` and ``tf.function``),
and returns the rate as a float or a 0-d array of that backend, in float64
where the framework has it (JAX: with ``jax_enable_x64``; else float32), which
the step casts to each layer's dtype. It reads no array's value but a NumPy
count's (on the host: one below 0 is refused), so it never waits on a device.

>>> from lars_multi.schedules import warmup_polynomial
>>> schedule = warmup_polynomial(peak=2.0, warmup_steps=10, total_steps=110)
>>> [round(schedule(n), 4) for n in (0, 5, 10, 60, 110)]
[0.0, 1.0, 2.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import is_number, owner, unwrap
from ._errors import LarsMultiTypeError, LarsMultiValueError
from ._registry import get_backend

# The largest float32: an array count's rate is a float32 array where the framework has no
# float64 (JAX without x64), so larger values would be inf there.
_FLOAT32_MAX = 3.4028234663852886e38


# The largest step count a schedule takes exactly (steps are floats: 2**53 is exact).
_LAST_STEP = 2**53


def _checked(schedule: Any, fields: tuple[str, ...]) -> None:
    """The schedule's arguments checked, and kept as Python numbers (NumPy's, a
    Fraction's too: as floats and ints, which Keras can save)."""
    for name in fields:
        value = getattr(schedule, name)
        try:
            number = float(value) if is_number(value) else math.nan
        except OverflowError:
            number = math.inf
        if not 0 <= number < math.inf:
            raise LarsMultiValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if name != "power" and number > _FLOAT32_MAX:
            raise LarsMultiValueError(
                f"{name}: expected a number that fits float32 (a rate for an array count is "
                f"a float32 array where the framework has no float64), got {value!r}"
            )
        object.__setattr__(schedule, name, number)
    warmup, total = schedule.warmup_steps, schedule.total_steps
    steps = all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool | np.bool_) for n in (warmup, total)
    )
    if not (steps and 0 <= warmup < total <= _LAST_STEP):
        raise LarsMultiValueError(
            f"warmup_steps, total_steps: expected integers with 0 <= warmup_steps < total_steps <= 2**53, "
            f"got {warmup!r} and {total!r}"
        )
    object.__setattr__(schedule, "warmup_steps", int(warmup))
    object.__setattr__(schedule, "total_steps", int(total))


def _phases(count: Any, warmup_steps: int, total_steps: int) -> tuple[Any, Any, Any, Callable[..., Any]]:
    """Whether the step is in the warm-up, its warm-up fraction and the fraction of the
    decay left (:math:`1 - p_t`, from the steps left, which float32 holds exactly up
    to ``2**24``), both in [0, 1], and a ``where(cond, x, y)`` for the count's backend. A count is an
    integer >= 0 (an array's dtype is checked; its value is read only where it is on
    the host, NumPy's: one below 0 elsewhere counts as 0)."""
    name = owner(count)
    if name is None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise LarsMultiValueError(f"count: expected an integer >= 0 (the step count), got {count!r}")
        step = float(min(int(count), _LAST_STEP))  # (beyond total_steps: the end of the schedule)
        warm = min(step / warmup_steps, 1.0) if warmup_steps else 1.0
        left = min(max((total_steps - step) / (total_steps - warmup_steps), 0.0), 1.0)
        return step < warmup_steps, warm, left, lambda c, x, y: x if c else y
    ops = get_backend(name)
    data = unwrap(count)
    if not ops.dtype_name(data.dtype).startswith(("int", "uint")) or len(data.shape) != 0:
        raise LarsMultiTypeError(
            f"count: expected an integer >= 0 or a 0-d integer array (the step count), got a "
            f"{ops.dtype_name(data.dtype)} array of shape {tuple(data.shape)}"
        )
    if isinstance(data, (np.ndarray, np.generic)) and int(data) < 0:  # (on the host; a tuple: see optim)
        raise LarsMultiValueError(f"count: expected an integer >= 0 (the step count), got {data!r}")
    step = ops.asarray(data, ops.widest_float(data))
    step = ops.where(step >= 0, step, 0.0)  # (a negative count, not read: 0, not a negative rate)
    # Step counts as floats: a Python int beyond int32 is no int32 (JAX without x64 parses it as one).
    warmup, decay_steps = float(warmup_steps), float(total_steps - warmup_steps)
    warming = step < warmup
    warm = ops.where(warming, step / warmup, 1.0) if warmup_steps else step * 0 + 1.0
    left = (float(total_steps) - step) / decay_steps
    left = ops.where(left < 0, 0.0 * step, ops.where(left > 1, 0.0 * step + 1.0, left))
    return warming, warm, left, ops.where


@dataclass(frozen=True)
class warmup_polynomial:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then polynomial
    decay to ``end`` at ``total_steps`` (You et al. 2017; 2019): the LARS papers' schedule.

    .. math:: \\eta_t = (\\eta_{peak} - \\eta_{end}) (1 - p_t)^{power} + \\eta_{end}
    """

    peak: float
    warmup_steps: int
    total_steps: int
    power: float = 2.0
    end: float = 0.0

    def __post_init__(self) -> None:
        _checked(self, ("peak", "end", "power"))

    def __call__(self, count: Any) -> Any:
        warming, warm, left, where = _phases(count, self.warmup_steps, self.total_steps)
        decayed = (self.peak - self.end) * left**self.power + self.end
        return where(warming, self.peak * warm, decayed)


@dataclass(frozen=True)
class warmup_cosine:
    r"""Linear warm-up from 0 to ``peak``, then cosine decay to ``end`` at ``total_steps``
    (Loshchilov and Hutter 2017, without restarts).

    .. math:: \eta_t = \eta_{end} + (\eta_{peak} - \eta_{end}) \frac{1 + \cos(\pi p_t)}{2}
              = \eta_{end} + (\eta_{peak} - \eta_{end}) \sin^2\big(\tfrac{\pi}{2} (1 - p_t)\big)

    computed in the second form, exact at both ends (:math:`1 - p_t` is exact): in float32
    (JAX's default) the first rounds to exactly 0 over the last steps before
    ``total_steps`` (:math:`1 + \cos` cancels), where timm's rule stops adapting a layer
    whose weight decay is 0.
    """

    peak: float
    warmup_steps: int
    total_steps: int
    end: float = 0.0

    def __post_init__(self) -> None:
        _checked(self, ("peak", "end"))

    def __call__(self, count: Any) -> Any:
        warming, warm, left, where = _phases(count, self.warmup_steps, self.total_steps)
        name = owner(count)
        angle = 0.5 * math.pi * left
        half = math.sin(angle) if name is None else get_backend(name).sin(angle)
        decayed = self.end + (self.peak - self.end) * (half * half)
        return where(warming, self.peak * warm, decayed)
