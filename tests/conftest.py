"""The backend matrix and helpers shared by the test modules.

``LARS_MULTI_TEST_BACKENDS`` (comma-separated, e.g. ``numpy,torch``) limits the
backends tested; ``LARS_MULTI_TEST_TORCH_DEVICE`` (e.g. ``cuda``) makes torch
tensors there, both those the tests build with :func:`native` and torch's own
factories (``torch.set_default_device``); backends whose framework is not installed are skipped. Every
backend-parametrized test carries the backend's name in its id, so
``pytest -k torch`` runs the torch cases only.

No test module imports torch, jax or tensorflow at import time: they are
imported inside tests, after :func:`require_backend` has skipped the ones
that are not installed, so the suite also runs with NumPy alone.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import lars_multi as lm
from lars_multi import _registry

try:
    from ml_dtypes import bfloat16 as np_bfloat16
except ImportError:  # pragma: no cover - ml_dtypes comes with the test extra
    np_bfloat16 = None

ALL_BACKENDS = ("numpy", "torch", "jax", "tensorflow")
FRAMEWORK_MODULE = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}
DTYPES = ("float16", "bfloat16", "float32", "float64")

settings.register_profile(
    "lars_multi",
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("lars_multi")


# Variables a child interpreter must not inherit: the backend it should infer, and
# the device of this process's torch tests (a script builds its own tensors, on the CPU).
_NOT_INHERITED = ("LARS_MULTI_BACKEND", "LARS_MULTI_TEST_TORCH_DEVICE")


def run_python(script, **env):
    """Run ``script`` in a fresh interpreter; its stdout."""
    environ = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    result = subprocess.run(
        [sys.executable, "-c", script], env={**environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def require_gloo() -> None:
    """Skip unless torch.distributed with the gloo backend can run here, and the torch
    tests run on the CPU (the gloo ranks do, whatever ``LARS_MULTI_TEST_TORCH_DEVICE``
    says: the CPU run covers them)."""
    require_backend("torch")
    require_cpu_torch("the gloo ranks run on the CPU")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")


def run_ranks(
    script: str, args: list[str], out_dir: Any, name: str, world: int = 2, timeout: float = 60
) -> list[dict]:
    """Run ``script`` (a test file run as a program) in ``world`` processes on gloo at
    127.0.0.1 (RANK, WORLD_SIZE, a free MASTER_PORT; LARS_MULTI_DIST_OUT=``out_dir``),
    bounded by ``timeout``; each rank's report, read from ``out_dir/<name>-<rank>.json``
    (a rank reports {"error": traceback} when it fails)."""
    import json
    import socket
    import time
    from pathlib import Path

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
        LARS_MULTI_DIST_OUT=str(out_dir),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, script, *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    deadline = time.monotonic() + timeout
    try:
        logs = [proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[0] for proc in procs]
        pytest.fail(f"{name}: timed out after {timeout} s\n" + logs[-1][-4000:])
    reports = []
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        path = Path(out_dir) / f"{name}-{rank}.json"
        if not path.exists():
            pytest.fail(f"{name}: rank {rank} exited {proc.returncode} without a report\n{log[-4000:]}")
        report = json.loads(path.read_text())
        if "error" in report:
            pytest.fail(f"{name}: rank {rank} failed\n{report['error']}")
        reports.append(report)
    return reports


def selected_backends() -> list[str]:
    """The backends named by ``LARS_MULTI_TEST_BACKENDS`` (all four by default)."""
    value = os.environ.get("LARS_MULTI_TEST_BACKENDS", "").strip()
    if not value:
        return list(ALL_BACKENDS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"LARS_MULTI_TEST_BACKENDS: unknown backends {unknown}")
    return [n for n in ALL_BACKENDS if n in names]


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(FRAMEWORK_MODULE[name]) is not None


def require_backend(name: str) -> None:
    """Skip unless ``name`` is selected and its framework imports here."""
    if name not in selected_backends():
        pytest.skip(f"{name} is not in LARS_MULTI_TEST_BACKENDS")
    pytest.importorskip(FRAMEWORK_MODULE[name])


def backends_to_test() -> list[str]:
    """Selected backends whose framework is installed (for tests that loop over them)."""
    return [n for n in selected_backends() if is_installed(n)]


BACKEND_PARAMS = [pytest.param(n, id=n) for n in selected_backends()]


TORCH_DEVICE = os.environ.get("LARS_MULTI_TEST_TORCH_DEVICE", "").strip() or None


def require_cpu_torch(why: str) -> None:
    """Skip a test that is about torch on the CPU (NumPy interop, host memory, gloo)
    when ``LARS_MULTI_TEST_TORCH_DEVICE`` names another device."""
    if TORCH_DEVICE not in (None, "cpu"):
        pytest.skip(f"CPU only ({why}); torch tests run on {TORCH_DEVICE}")


def torch_randn(*size: int, generator: Any, dtype: Any = None) -> Any:
    """``torch.randn(*size)`` drawn from ``generator``, a CPU generator (the same
    values whatever the device), then moved to torch's default device."""
    import torch

    values = torch.randn(*size, generator=generator, dtype=dtype, device="cpu")
    return values.to(torch.get_default_device())


@pytest.fixture(autouse=True)
def _torch_device() -> Any:
    """Torch's factories make tensors on ``LARS_MULTI_TEST_TORCH_DEVICE`` (if set)."""
    if TORCH_DEVICE is None:
        yield
        return
    import torch

    torch.set_default_device(TORCH_DEVICE)
    yield
    torch.set_default_device(None)


@pytest.fixture(autouse=True)
def _clean_backend_state(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No test sees a backend chosen by the environment or by an earlier test."""
    monkeypatch.delenv("LARS_MULTI_BACKEND", raising=False)
    # The variable is read once, when lars_multi is imported: forget what was read.
    monkeypatch.setattr(_registry, "_env_choice", None, raising=False)
    lm.unset_backend()
    yield
    lm.unset_backend()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Any:
    """The name of a backend, active (``lm.using_backend``) for the whole test."""
    name = request.param
    require_backend(name)
    try:
        with lm.using_backend(name):
            yield name
    finally:
        lm.unset_backend()


@pytest.fixture(params=BACKEND_PARAMS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of a backend, NOT activated: the library must infer it from inputs."""
    name = request.param
    require_backend(name)
    return name


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends registered during the test are forgotten afterwards.

    The registry has no public ``unregister``; its tables are swapped for copies.
    """
    monkeypatch.setattr(_registry, "_SPECS", dict(_registry._SPECS))
    monkeypatch.setattr(_registry, "_MODULES", dict(_registry._MODULES))
    monkeypatch.setattr(_registry, "_NATIVE_TYPES", dict(_registry._NATIVE_TYPES))


# --- building native arrays and reading them back -------------------------------


def np_dtype(dtype: str) -> np.dtype:
    if dtype == "bfloat16":
        if np_bfloat16 is None:  # pragma: no cover
            pytest.skip("ml_dtypes is not installed")
        return np.dtype(np_bfloat16)
    return np.dtype(dtype)


def native_dtype(name: str, dtype: str) -> Any:
    if name == "numpy":
        return np_dtype(dtype)
    if name == "torch":
        import torch

        return getattr(torch, dtype)
    if name == "jax":
        import jax.numpy as jnp

        return getattr(jnp, dtype)
    import tensorflow as tf

    return getattr(tf, dtype)


def native(name: str, values: Any, dtype: str | None = None) -> Any:
    """A native array of backend ``name`` holding ``values`` (a copy).

    ``dtype`` defaults to the dtype of ``values`` (which should then be a NumPy
    array); bfloat16 NumPy arrays use ml_dtypes.
    """
    arr = np.array(values, dtype=None if dtype is None else np_dtype(dtype), copy=True)
    dtype = str(arr.dtype) if dtype is None else dtype
    if name == "numpy":
        return arr
    if name == "torch":
        import torch

        if dtype == "bfloat16":
            return torch.from_numpy(arr.astype(np.float32)).to(TORCH_DEVICE or "cpu", torch.bfloat16)
        return torch.from_numpy(arr).to(TORCH_DEVICE or "cpu")
    if name == "jax":
        import jax.numpy as jnp

        return jnp.asarray(arr)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.constant(arr)
    raise ValueError(name)


def native_type(name: str) -> type:
    if name == "numpy":
        return np.ndarray
    if name == "torch":
        import torch

        return torch.Tensor
    if name == "jax":
        import jax

        return jax.Array
    import tensorflow as tf

    return tf.Tensor


def to_numpy(x: Any) -> np.ndarray:
    """NumPy values of a native array or ``lm.Array``; bfloat16 becomes float32."""
    if isinstance(x, lm.Array):
        x = x.data
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        values = x.numpy()
    elif mod == "tensorflow":
        values = x.numpy()
    else:
        values = np.asarray(x)
    values = np.array(values, copy=True)
    if np_bfloat16 is not None and values.dtype == np.dtype(np_bfloat16):
        values = values.astype(np.float32)
    return values


def dtype_name(x: Any) -> str:
    """The dtype name of a native array or ``lm.Array`` (``"float32"``)."""
    if isinstance(x, lm.Array):
        return x.dtype
    return _registry.get_backend(_registry.backend_of(x)).dtype_name(x.dtype)


# --- the float64 reference ----------------------------------------------------------


def reference_layer(w: Any, g: Any, lr: float, decay_lambda: float = 0.0) -> np.ndarray:
    """LARS for one layer in float64, written from the contract, not the library."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    w_norm = float(np.sqrt(np.sum(w * w)))
    g_norm = float(np.sqrt(np.sum(g * g)))
    lr_local = w_norm * float(lr) / (g_norm + 1e-12)
    if decay_lambda > 0:
        if w_norm == 0:
            return w.copy()
        lr_local /= w_norm * decay_lambda
    return w - lr_local * g


def reference_scale(w: Any, g: Any, lr: float, decay_lambda: float = 0.0) -> np.ndarray:
    """|w| + |lr_local g| elementwise: the size of the terms the update adds.

    Rounding errors are relative to these terms, not to the (possibly
    cancelling) result.
    """
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    return np.abs(w) + np.abs(w - reference_layer(w, g, lr, decay_lambda))


TOLERANCES = {
    # (relative to the terms' size, absolute)
    "float16": (2e-3, 1e-4),
    "bfloat16": (2e-2, 1e-3),
    "float32": (2e-5, 1e-7),
    "float64": (1e-12, 1e-14),
}


def assert_layer_close(got: Any, w: Any, g: Any, lr: float, decay_lambda: float, dtype: str) -> None:
    """``got`` equals the float64 reference within ``dtype``'s tolerance."""
    got = to_numpy(got).astype(np.float64)
    want = reference_layer(w, g, lr, decay_lambda)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), got
    rtol, atol = TOLERANCES[dtype]
    bound = rtol * reference_scale(w, g, lr, decay_lambda) + atol
    err = np.abs(got - want)
    assert np.all(err <= bound), (
        f"max error {err.max()} (bound {np.broadcast_to(bound, err.shape).flat[np.argmax(err - bound)]}): "
        f"{got} vs {want}"
    )


def x64(name: str, dtype: str = "float64") -> Any:
    """A context in which backend ``name`` supports ``dtype``.

    JAX truncates float64 to float32 unless ``jax_enable_x64`` is on; it is
    turned on only inside this context, so every other test runs JAX in its
    default configuration.
    """
    if name == "jax" and dtype == "float64":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()
