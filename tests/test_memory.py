"""Peak memory of a half precision update in place: bounded by the largest layer.

Half layers are computed in float32; an update with ``out=w`` must not hold
float32 copies of the whole tree at once, only of a bounded chunk of layers.
Each case runs in a fresh interpreter and reads the peak resident memory
(``VmHWM``, reset through ``/proc/self/clear_refs``) around one update.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from conftest import require_backend, run_python

LAYERS = 16
SIZE = 1 << 20  # elements per layer: 2 MiB in bfloat16, a 32 MiB tree
MIB = 1 << 20

# Builds ``make(n, size)`` -> (ws, gs, step) for each backend; ``step`` runs
# ``lars_update(ws, gs, 0.1, out=ws)`` and waits for the result.
_BUILD = {
    "numpy": """
        from ml_dtypes import bfloat16
        def make(n, size):
            ws = [rng.standard_normal(size, dtype=np.float32).astype(bfloat16) for _ in range(n)]
            gs = [rng.standard_normal(size, dtype=np.float32).astype(bfloat16) for _ in range(n)]
            return ws, gs, lambda: lm.lars_update(ws, gs, 0.1, out=ws)
    """,
    "torch": """
        import torch
        def make(n, size):
            ws = [torch.randn(size).bfloat16() for _ in range(n)]
            gs = [torch.randn(size).bfloat16() for _ in range(n)]
            return ws, gs, lambda: lm.lars_update(ws, gs, 0.1, out=ws)
    """,
    "jax": """
        import jax, jax.numpy as jnp
        def make(n, size):
            ws = [lm.Array(jnp.asarray(rng.standard_normal(size, dtype=np.float32)).astype(jnp.bfloat16))
                  for _ in range(n)]
            gs = [jnp.asarray(rng.standard_normal(size, dtype=np.float32)).astype(jnp.bfloat16)
                  for _ in range(n)]
            jax.block_until_ready(([w.data for w in ws], gs))
            def step():
                lm.lars_update(ws, gs, 0.1, out=ws)
                jax.block_until_ready([w.data for w in ws])
            return ws, gs, step
    """,
    "tensorflow": """
        import tensorflow as tf
        def make(n, size):
            ws = [tf.Variable(tf.cast(rng.standard_normal(size, dtype=np.float32), tf.bfloat16))
                  for _ in range(n)]
            gs = [tf.cast(rng.standard_normal(size, dtype=np.float32), tf.bfloat16) for _ in range(n)]
            return ws, gs, lambda: lm.lars_update(ws, gs, 0.1, out=ws)
    """,
}

_MEASURE = """
    import gc
    import numpy as np
    import lars_multi as lm
    rng = np.random.default_rng(0)

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    {build}
    warm_ws, warm_gs, warm = make({layers}, 64)  # compile and trace on a small tree first
    warm()
    del warm_ws, warm_gs, warm
    ws, gs, step = make({layers}, {size})
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    step()
    print(status("VmHWM") - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK),
    reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)",
)
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "tensorflow"])
def test_half_update_in_place_memory_is_bounded_by_the_largest_layer(backend: str) -> None:
    require_backend(backend)
    if backend == "numpy":
        pytest.importorskip("ml_dtypes")
    script = textwrap.dedent(_MEASURE).format(
        build=textwrap.dedent(_BUILD[backend]).strip(), layers=LAYERS, size=SIZE
    )
    # Freed blocks go back to the system at once, so the peak is the call's own.
    output = run_python(
        script,
        MALLOC_MMAP_THRESHOLD_="65536",
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
    )
    extra = int(output.splitlines()[-1])
    layer = SIZE * 2
    bound = 4 * layer + 16 * MIB
    assert extra <= bound, (
        f"{backend}: out=w on a bfloat16 tree of {LAYERS} x {layer // MIB} MiB raised the peak by "
        f"{extra / MIB:.1f} MiB ({extra / layer:.1f}x the largest layer), over {bound / MIB:.0f} MiB"
    )
