"""Agreement checks, run on every contender's first step (from the initial weights).

* Honest comparison: each LARS contender must agree with the backend's first
  native contender on a few leaves (``np.allclose``, ``rtol=1e-5``); the floor
  must equal ``w + g``.
* Accuracy, reported, not judged: the largest error against a float64
  reference, relative to the size of the update ``|r g|``, since float32 norms
  of long vectors round differently per framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .contenders import NATIVE, Contender, reference
from .workloads import Workload

RTOL = 1e-5
COMPARED = 1 << 18  # elements compared per leaf (its first ones): enough, and fast on 32M-element leaves


@dataclass
class Check:
    """What one contender's first step gave."""

    problem: str | None = None
    update_error: float | None = None  # max |got - float64 ref| / max |r g|


def _head(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).reshape(-1)[:COMPARED].astype(np.float64)


def _first_step(contender: Contender, workload: Workload) -> dict[str, np.ndarray] | str:
    try:
        result = contender.step()
        return {k: _head(contender.read(result, k)) for k in workload.check_keys()}
    except Exception as error:  # a broken contender is reported, never hidden
        return f"raised {type(error).__name__}: {error}"


def _update_error(leaves: dict[str, np.ndarray], workload: Workload, ref: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for key, got in leaves.items():
        want = ref[key]
        scale = np.max(np.abs(want - _head(workload.w[key])))
        worst = max(worst, float(np.max(np.abs(got - want)) / max(scale, 1e-300)))
    return worst


def _disagreement(leaves: dict[str, np.ndarray], baseline: dict[str, np.ndarray]) -> str | None:
    for key, got in leaves.items():
        want = baseline[key]
        if got.shape != want.shape:
            return f"{key}: shape {got.shape}, expected {want.shape}"
        if not np.allclose(got, want, rtol=RTOL):
            worst = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-30)))
            return f"{key}: differs (max relative difference {worst:.3g})"
    return None


def check_all(contenders: Sequence[Contender], workload: Workload) -> dict[str, Check]:
    """``key -> Check`` for each contender of one backend."""
    firsts = {c.key: _first_step(c, workload) for c in contenders}
    floor_ref = {k: _head(reference(workload, k, "add")) for k in workload.check_keys()}
    lars_ref = {k: _head(reference(workload, k, "lars")) for k in workload.check_keys()}
    native: dict[str, np.ndarray] | None = next(
        (found for c in contenders if c.role == NATIVE and isinstance(found := firsts[c.key], dict)), None
    )
    checks = {}
    for c in contenders:
        leaves = firsts[c.key]
        if isinstance(leaves, str):
            checks[c.key] = Check(leaves)
        elif c.expect == "add":
            checks[c.key] = Check(_disagreement(leaves, floor_ref))
        else:
            problem = "no native result to compare with" if native is None else _disagreement(leaves, native)
            checks[c.key] = Check(problem, _update_error(leaves, workload, lars_ref))
    return checks
