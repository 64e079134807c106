"""Every example of the reference (ivy's ``lars_update`` docs), on every backend.

Each result is compared with the numbers the reference prints and with a
float64 NumPy LARS written here, independently of the library.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import native_type, require_backend, to_numpy, x64

import lars_multi as lm

RTOL = 1e-6


def lars64(w, dcdw, lr, decay_lambda=0.0):
    """The reference's rule in float64 (inputs first rounded to float32, as lm.array does)."""
    w = np.asarray(w, dtype=np.float32).astype(np.float64)
    g = np.asarray(dcdw, dtype=np.float32).astype(np.float64)
    lr = float(np.float32(lr))
    lr_local = np.linalg.norm(w) * lr / (np.linalg.norm(g) + 1e-12)
    if decay_lambda > 0:
        lr_local /= np.linalg.norm(w) * decay_lambda
    return w - lr_local * g


W_2D = [[3.0, 1, 5], [7, 2, 9]]
G_2D = [[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]]
SEED_2D = [[2.34077978, 0.78025991, 4.56051969], [6.78026009, 1.56051981, 8.12103939]]

W_1D = [3.0, 1, 5]
G_1D = [0.3, 0.1, 0.2]
SEED_1D = [2.52565837, 0.8418861, 4.68377209]

W_A = [3.2, 2.6, 1.3]
W_B = [1.4, 3.1, 5.1]
G_ONE = [0.2, 0.4, 0.1]
G_B = [0.3, 0.1, 0.2]
SEED_A = [3.01132035, 2.22264051, 1.2056601]
SEED_B_ONE = [1.1324538, 2.56490755, 4.96622658]
SEED_B_MULTI = [0.90848625, 2.93616199, 4.77232409]


def check(result, seed, w, g, lr=0.1):
    values = to_numpy(result)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, np.array(seed), rtol=RTOL)
    np.testing.assert_allclose(values, lars64(w, g, lr), rtol=RTOL)


def test_seed_numbers_match_float64_reference():
    """The reference's printed numbers are themselves what the float64 rule gives."""
    np.testing.assert_allclose(lars64(W_2D, G_2D, 0.1), SEED_2D, rtol=RTOL)
    np.testing.assert_allclose(lars64(W_1D, G_1D, 0.1), SEED_1D, rtol=RTOL)
    np.testing.assert_allclose(lars64(W_A, G_ONE, 0.1), SEED_A, rtol=RTOL)
    np.testing.assert_allclose(lars64(W_B, G_ONE, 0.1), SEED_B_ONE, rtol=RTOL)
    np.testing.assert_allclose(lars64(W_B, G_B, 0.1), SEED_B_MULTI, rtol=RTOL)


def test_function_with_arrays(backend):
    w = lm.array(W_2D)
    dcdw = lm.array(G_2D)
    lr = lm.array(0.1)
    new_weights = lm.lars_update(w, dcdw, lr)
    assert isinstance(new_weights, lm.Array)
    assert new_weights.backend == backend
    assert isinstance(new_weights.data, native_type(backend))
    assert new_weights.shape == (2, 3)
    assert new_weights.dtype == "float32"
    check(new_weights, SEED_2D, W_2D, G_2D)


def test_function_with_out(backend):
    w = lm.array(W_1D)
    dcdw = lm.array(G_1D)
    lr = lm.array(0.1)
    out = lm.zeros_like(dcdw)
    returned = lm.lars_update(w, dcdw, lr, out=out)
    assert returned is out
    check(out, SEED_1D, W_1D, G_1D)
    # The inputs are untouched.
    np.testing.assert_array_equal(to_numpy(w), np.float32(W_1D))
    np.testing.assert_array_equal(to_numpy(dcdw), np.float32(G_1D))


def test_array_method(backend):
    w = lm.array(W_2D)
    dcdw = lm.array(G_2D)
    lr = lm.array(0.1)
    new_weights = w.lars_update(dcdw, lr, stop_gradients=True)
    assert isinstance(new_weights, lm.Array)
    check(new_weights, SEED_2D, W_2D, G_2D)


def _container():
    return lm.Container(a=lm.array(W_A), b=lm.array(W_B))


def test_function_container_one_gradient(backend):
    w = _container()
    new_weights = lm.lars_update(w, lm.array(G_ONE), lm.array(0.1))
    assert isinstance(new_weights, lm.Container)
    assert list(new_weights) == ["a", "b"]
    assert isinstance(new_weights.a, lm.Array)
    check(new_weights.a, SEED_A, W_A, G_ONE)
    check(new_weights["b"], SEED_B_ONE, W_B, G_ONE)


def test_function_container_of_gradients(backend):
    w = _container()
    dcdw = lm.Container(a=lm.array(G_ONE), b=lm.array(G_B))
    new_weights = lm.lars_update(w, dcdw, lm.array(0.1))
    assert isinstance(new_weights, lm.Container)
    check(new_weights.a, SEED_A, W_A, G_ONE)
    check(new_weights.b, SEED_B_MULTI, W_B, G_B)


def test_container_method_one_gradient(backend):
    new_weights = _container().lars_update(lm.array(G_ONE), lm.array(0.1))
    check(new_weights.a, SEED_A, W_A, G_ONE)
    check(new_weights.b, SEED_B_ONE, W_B, G_ONE)


def test_container_method_container_of_gradients(backend):
    dcdw = lm.Container(a=lm.array(G_ONE), b=lm.array(G_B))
    new_weights = _container().lars_update(dcdw, lm.array(0.1))
    check(new_weights.a, SEED_A, W_A, G_ONE)
    check(new_weights.b, SEED_B_MULTI, W_B, G_B)


def test_container_with_out(backend):
    w = _container()
    out = lm.Container(a=lm.zeros_like(w.a), b=lm.zeros_like(w.b))
    dcdw = lm.Container(a=lm.array(G_ONE), b=lm.array(G_B))
    returned = w.lars_update(dcdw, lm.array(0.1), out=out)
    assert returned is out
    check(out.a, SEED_A, W_A, G_ONE)
    check(out.b, SEED_B_MULTI, W_B, G_B)


@pytest.mark.parametrize("lr", [0.1, "array"], ids=["float-lr", "array-lr"])
def test_native_arrays_and_float_lr(backend, lr):
    """The same examples with native arrays in and native arrays out."""
    w = lm.array(W_2D).data
    dcdw = lm.array(G_2D).data
    rate = lm.array(0.1).data if lr == "array" else lr
    new = lm.lars_update(w, dcdw, rate)
    assert isinstance(new, native_type(backend))
    assert not isinstance(new, lm.Array)
    check(new, SEED_2D, W_2D, G_2D)


def test_decay_lambda_example(backend):
    w = lm.array(W_2D)
    new = lm.lars_update(w, lm.array(G_2D), 0.1, decay_lambda=0.5)
    np.testing.assert_allclose(to_numpy(new), lars64(W_2D, G_2D, 0.1, 0.5), rtol=RTOL)


def test_array_repr(backend):
    text = repr(lm.lars_update(lm.array(W_1D), lm.array(G_1D), lm.array(0.1)))
    assert text.startswith("lars_multi.array(")
    assert text.endswith(")")
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", text)]
    np.testing.assert_allclose(numbers, SEED_1D, rtol=RTOL)
    two_d = repr(lm.array(W_2D))
    assert two_d.startswith("lars_multi.array([[") and two_d.count("[") == 3


def test_array_repr_names_non_default_dtype(backend):
    with x64(backend):
        text = repr(lm.array(np.array(W_1D), dtype="float64"))
    assert text.startswith("lars_multi.array(") and "float64" in text
    assert "dtype" not in repr(lm.array(W_1D))


@pytest.mark.parametrize("values", [0.1, [3.0, 1, 5], [[3.0, 1, 5], [7, 2, 9]]], ids=["0d", "1d", "2d"])
def test_python_floats_are_float32_everywhere(backend, values):
    """``lm.array`` of Python floats is float32 on every backend, even JAX with x64 on."""
    assert lm.array(values).dtype == "float32"
    with x64(backend):
        assert lm.array(values).dtype == "float32"
        assert lm.array(values, dtype="float64").dtype == "float64"


def test_container_repr(backend):
    new = lm.lars_update(_container(), lm.array(G_ONE), lm.array(0.1))
    text = repr(new)
    assert text.startswith("{") and text.rstrip().endswith("}")
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("a: lars_multi.array(") for line in lines)
    assert any(line.startswith("b: lars_multi.array(") for line in lines)
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", text)]
    np.testing.assert_allclose(numbers, SEED_A + SEED_B_ONE, rtol=RTOL)
    assert str(new) == text


def test_python_floats_are_float32_with_torch_default_float64():
    """``lm.array`` of Python floats is float32 on torch even when torch's default dtype is float64."""
    require_backend("torch")
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with lm.using_backend("torch"):
            assert lm.array([3.0, 1, 5]).dtype == "float32"
            assert lm.array(0.1).dtype == "float32"
    finally:
        torch.set_default_dtype(previous)
