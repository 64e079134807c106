"""Interleaved timing: every round runs each contender once, in a rotated order.

All contenders of a group thus meet the same noise of a shared machine, and
each keeps its best round (the minimum per-call time), the usual estimate of
what the code costs when nothing else interferes. Fast calls are timed in a
batch per sample, the batch calibrated once so that a sample lasts a few
milliseconds; the garbage collector is off inside a sample, as in ``timeit``.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .contenders import Contender


@dataclass(frozen=True)
class Settings:
    """How long to time: rounds, seconds per (workload, backend), seconds per
    sample, the compiled backends' number of small tensors; whether to measure memory."""

    rounds: int
    budget_s: float
    sample_s: float
    compiled_cap: int
    memory: bool = True


def settings_from(args: Any, rounds: int, budget_s: float, quick_budget_s: float) -> Settings:
    """Settings from the command line (``--rounds``, ``--budget``, ``--compiled-cap``,
    ``--quick``, ``--no-memory``), with these defaults for a full and a quick run."""
    quick = getattr(args, "quick", False)
    for flag, value, low in (
        ("--rounds", args.rounds, 1),
        ("--budget", args.budget, 0),
        ("--compiled-cap", args.compiled_cap, 0),
    ):
        if value is not None and not value >= low:
            raise SystemExit(f"{flag}: expected a number >= {low}, got {value}")
    return Settings(
        rounds=args.rounds if args.rounds is not None else (5 if quick else rounds),
        budget_s=args.budget if args.budget is not None else (quick_budget_s if quick else budget_s),
        sample_s=0.002 if quick else 0.005,
        compiled_cap=args.compiled_cap if args.compiled_cap is not None else (10 if quick else 100),
        memory=not args.no_memory,
    )


RESET_EVERY = 1_000  # in-place steps between resets of the weights (lr 1e-3: growth below e**2)
MAX_BATCH = 2_000
MIN_ROUNDS = 3


@dataclass
class Timing:
    """The per-call times of one contender, one sample per round."""

    contender: Contender
    batch: int
    samples: list[float] = field(default_factory=list)
    steps_since_reset: int = 0

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def warm_up(contender: Contender, calls: int = 1) -> float:
    """Run a few calls (compiling, tracing, filling caches); the last call's seconds."""
    elapsed = math.inf
    for _ in range(calls):
        start = time.perf_counter()
        contender.step()
        elapsed = time.perf_counter() - start
    return elapsed


def calibrate(contender: Contender, sample_s: float) -> int:
    """Calls per sample so that one sample lasts about ``sample_s`` seconds, timed
    after a first call (which compiles, traces or fills caches: timed with it, a
    fast call would be sampled one at a time)."""
    warm_up(contender)
    once = warm_up(contender)
    if once < sample_s:  # fast calls: a steadier estimate from the best of three
        once = min(once, warm_up(contender), warm_up(contender))
    return max(1, min(MAX_BATCH, math.ceil(sample_s / max(once, 1e-9))))


def sample(timing: Timing) -> float:
    """One timed sample of ``timing.batch`` calls; returns and records the per-call time."""
    contender = timing.contender
    if contender.reset is not None and timing.steps_since_reset + timing.batch > RESET_EVERY:
        contender.reset()
        timing.steps_since_reset = 0
    step, batch = contender.step, timing.batch
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(batch):
            step()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    timing.steps_since_reset += batch
    per_call = elapsed / batch
    timing.samples.append(per_call)
    return per_call


def rotated(items: Sequence[Timing], shift: int) -> list[Timing]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def run_rounds(
    contenders: Sequence[Contender],
    rounds: int,
    budget_s: float,
    sample_s: float,
    on_round: Callable[[int], None] = lambda _: None,
) -> list[Timing]:
    """Time ``contenders`` interleaved for ``rounds`` rounds, or fewer (at least
    :data:`MIN_ROUNDS`) once ``budget_s`` seconds have passed."""
    timings = [Timing(c, calibrate(c, sample_s)) for c in contenders]
    start = time.perf_counter()
    for r in range(rounds):
        for timing in rotated(timings, r):
            sample(timing)
        on_round(r + 1)
        if r + 1 >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
            break
    return timings
