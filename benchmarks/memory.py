"""Extra memory of one in-place update of the ResNet-50 tree.

Two measures, each chosen to be honest about what it can see:

* NumPy, ``tracemalloc``: NumPy reports every array buffer it allocates to
  ``tracemalloc``, so the traced peak during one ``lars_update(out=w)`` call is
  exactly the extra memory that call holds at its worst moment.
* torch (and NumPy again, as a cross-check), peak RSS: torch's CPU allocator
  does not report to ``tracemalloc`` and keeps no statistics on CPU, so each
  measurement runs in a fresh subprocess that builds the tree, warms the code
  path up on a small tree, resets the kernel's peak-RSS mark (writing 5 to
  ``/proc/self/clear_refs``) and reads ``VmHWM`` (the peak resident set) after
  one call on the whole tree; ``ru_maxrss`` would not do, as a child inherits
  its parent's peak across ``exec``. The difference from the RSS before the
  call is the extra memory the call touched at its worst moment; memory freed
  earlier and reused by the C allocator does not show, so it is a lower bound on
  allocations but an exact bound on what the machine had to provide. The
  native ``_foreach_mul`` + ``_foreach_sub_`` in-place update (which builds a
  tree-sized temporary) and the functional call (a tree-sized result) are
  measured the same way, to show that the method sees a tree-sized allocation.

Run as ``python -m benchmarks.memory BACKEND VARIANT`` for one RSS measurement
(it prints JSON); :func:`measure` runs everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from typing import Any

import numpy as np

import lars_multi as lm

from .contenders import LR
from .workloads import Workload, build

RSS_VARIANTS = {
    "numpy": ("lars_multi_inplace",),
    "torch": ("lars_multi_inplace", "native_foreach_inplace", "lars_multi"),
}


def _sizes(workload: Workload) -> dict[str, int]:
    largest = workload.w[workload.largest]
    return {"largest_tensor_bytes": int(largest.nbytes), "tree_bytes": int(workload.n_elements * 4)}


def numpy_tracemalloc(workload: Workload) -> dict[str, Any]:
    """Traced peak of one NumPy ``lars_update(out=w)`` on ``workload``."""
    w = {k: v.copy() for k, v in workload.w.items()}
    lm.lars_update(w, workload.g, LR, out=w)  # warm-up: imports, caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        lm.lars_update(w, workload.g, LR, out=w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "method": "tracemalloc peak",
        "backend": "numpy",
        "variant": "lars_multi_inplace",
        "peak_bytes": int(peak),
        **_sizes(workload),
    }


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> int:
    """Reset the peak-RSS mark (Linux >= 4.0) and return the RSS it now starts from."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _status_bytes("VmHWM")  # cannot reset: measure from the peak so far
    return _status_bytes("VmRSS")


def _torch_call(variant: str, w: dict[str, Any], g: dict[str, Any]) -> None:
    import torch

    if variant == "lars_multi_inplace":
        lm.lars_update(w, g, LR, out=w)
    elif variant == "lars_multi":
        lm.lars_update(w, g, LR)
    else:
        ws, gs = list(w.values()), list(g.values())
        norms = torch._foreach_div(
            torch._foreach_mul(torch._foreach_norm(ws), LR),
            torch._foreach_add(torch._foreach_norm(gs), 1e-12),
        )
        torch._foreach_sub_(ws, torch._foreach_mul(gs, norms))


def _native_trees(backend: str, workload: Workload) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload's weights (a private copy) and gradients as ``backend`` arrays."""
    if backend == "torch":
        import torch

        return (
            {k: torch.from_numpy(v.copy()) for k, v in workload.w.items()},
            {k: torch.from_numpy(v) for k, v in workload.g.items()},
        )
    return {k: v.copy() for k, v in workload.w.items()}, workload.g


def rss_delta(backend: str, variant: str) -> dict[str, Any]:
    """In this process: peak-RSS growth of one call on the ResNet-50 tree."""
    workload = build("resnet50")
    w, g = _native_trees(backend, workload)
    few = [*list(w)[:4], workload.largest]  # (a large layer too: its norms take BLAS paths)
    small_w, small_g = (
        {k: w[k].clone() if backend == "torch" else w[k].copy() for k in few},
        {k: g[k] for k in few},
    )
    call = _torch_call if backend == "torch" else lambda _, a, b: lm.lars_update(a, b, LR, out=a)
    call(variant, small_w, small_g)  # warm-up on a small tree: code paths, libraries
    before = _reset_peak()
    call(variant, w, g)
    return {
        "method": "peak RSS delta (VmHWM, fresh subprocess)",
        "backend": backend,
        "variant": variant,
        "peak_bytes": _status_bytes("VmHWM") - before,
        **_sizes(workload),
    }


def _rss_in_subprocess(backend: str, variant: str) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", backend, variant],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return {"backend": backend, "variant": variant, "error": done.stderr.strip()[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(backends: list[str], contrast: bool = True) -> list[dict[str, Any]]:
    """Every memory measurement for the requested backends (NumPy and torch only);
    ``contrast=False`` leaves out the variants measured only to validate the method."""
    results = []
    if "numpy" in backends:
        results.append(numpy_tracemalloc(build("resnet50")))
    for backend in ("numpy", "torch"):
        if backend in backends:
            variants = RSS_VARIANTS[backend] if contrast else RSS_VARIANTS[backend][:1]
            results += [_rss_in_subprocess(backend, v) for v in variants]
    return results


def main(argv: list[str]) -> None:
    """``python -m benchmarks.memory BACKEND VARIANT``: one RSS measurement, as JSON."""
    backend, variant = argv
    np.random.default_rng(0)
    print(json.dumps(rss_delta(backend, variant)))


if __name__ == "__main__":
    main(sys.argv[1:])
