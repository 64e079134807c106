"""Benchmark suite for :func:`lars_multi.lars_update` against native LARS code.

Run ``python -m benchmarks --help`` from the repository root. Every backend is
timed against the LARS one would write by hand in its own framework, against
``optax.lars`` on JAX, and against a floor (one fused ``w += g`` pass over the
same tree), contenders interleaved round by round so that they all meet the
same machine noise. The suite measures and reports; it never asserts.
"""
