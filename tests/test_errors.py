"""Every error: its class (a LarsMultiError and the matching built-in) and a
message that names the argument at fault."""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
from conftest import native, require_backend, run_python, x64

import lars_multi as lm

W = np.array([3.0, 1.0, 5.0], dtype=np.float32)
G = np.array([0.3, 0.1, 0.2], dtype=np.float32)


@contextlib.contextmanager
def raises(builtin, match, cls=lm.LarsMultiError):
    """pytest.raises for ``cls`` (a LarsMultiError) that also checks the built-in base."""
    with pytest.raises(cls, match=match) as info:
        yield info
    assert isinstance(info.value, builtin), type(info.value).__mro__
    assert isinstance(info.value, lm.LarsMultiError)


# --- backends ------------------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(lm.LarsMultiTypeError, TypeError)
    assert issubclass(lm.LarsMultiValueError, ValueError)
    assert issubclass(lm.UnknownBackendError, ValueError)
    assert issubclass(lm.BackendNotInstalledError, ImportError)
    assert issubclass(lm.MixedFrameworksError, TypeError)
    for cls in (
        lm.LarsMultiTypeError,
        lm.LarsMultiValueError,
        lm.UnknownBackendError,
        lm.BackendNotInstalledError,
        lm.MixedFrameworksError,
    ):
        assert issubclass(cls, lm.LarsMultiError)


KNOWN = r"\['jax', 'numpy', 'tensorflow', 'torch'\]"


def test_unknown_backend_set_backend():
    with raises(ValueError, rf"^backend: expected one of {KNOWN}, got 'nope'", lm.UnknownBackendError):
        lm.set_backend("nope")
    assert lm.current_backend() is None


def test_unknown_backend_using_backend():
    with (
        raises(ValueError, rf"expected one of {KNOWN}, got 'pytorch'", lm.UnknownBackendError),
        lm.using_backend("pytorch"),
    ):
        pytest.fail("the block must not run")
    assert lm.current_backend() is None


def test_unknown_backend_env_var():
    """LARS_MULTI_BACKEND is read when lars_multi is imported: test it in a fresh process."""
    script = """
import lars_multi as lm, numpy as np
calls = (lm.current_backend, lambda: lm.lars_update(np.ones(3), np.ones(3), 0.1), lambda: lm.array([1.0]))
for call in calls:
    try:
        call()
    except lm.UnknownBackendError as error:
        assert isinstance(error, ValueError)
        print("ERROR", error)
    else:
        print("NO ERROR")
"""
    lines = run_python(script, LARS_MULTI_BACKEND="tensorflw").splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.match(rf"^ERROR LARS_MULTI_BACKEND: expected one of {KNOWN}, got 'tensorflw'", line), line


def test_non_string_backend_name():
    with pytest.raises(lm.LarsMultiError):
        lm.set_backend(None)
    with raises(TypeError, r"^name: expected a non-empty str", lm.LarsMultiTypeError):
        lm.register_backend("", "some.module")


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("pip_extra", [None, "fakefw"])
@pytest.mark.parametrize(
    ("module", "missing"),
    [
        # The backend's module imports (json), its framework does not: the framework is named.
        ("json", r" needs the 'no_such_framework_xyz' package"),
        # The backend's module itself is missing: it is named, not the framework never tried.
        ("lars_multi_tests_no_such_module", r": its module 'lars_multi_tests_no_such_module' cannot be"),
    ],
)
def test_backend_not_installed(pip_extra, module, missing):
    lm.register_backend("fakefw", module, framework="no_such_framework_xyz", pip_extra=pip_extra)
    assert "fakefw" in lm.available_backends()
    assert "fakefw" not in lm.installed_backends()
    hint = r'.*pip install "lars-multi\[fakefw\]"' if pip_extra else ""
    for attempt in (lambda: lm.set_backend("fakefw"), lambda: lm.using_backend("fakefw").__enter__()):
        with raises(ImportError, rf"^backend 'fakefw'{missing}.*{hint}", lm.BackendNotInstalledError) as info:
            attempt()
        assert ("pip install" in str(info.value)) == (pip_extra is not None)
        assert isinstance(info.value.__cause__, ImportError)
    assert lm.current_backend() is None
    # Unknown-backend messages now list the new name too.
    with raises(ValueError, r"'fakefw'", lm.UnknownBackendError):
        lm.set_backend("nope")
    # Inference is unaffected: the fake framework is not imported, so it is never asked.
    np.testing.assert_allclose(lm.lars_update(W, G, 0.1), lm.lars_update(W.copy(), G.copy(), 0.1))


# --- frameworks --------------------------------------------------------------------------------


def test_mixed_frameworks_numpy_and_torch():
    require_backend("numpy")
    require_backend("torch")
    import torch

    with raises(
        TypeError, r"^dcdw: expected a numpy array like w, got a torch array", lm.MixedFrameworksError
    ):
        lm.lars_update(W, torch.from_numpy(G), 0.1)
    with raises(
        TypeError, r"^dcdw: expected a torch array like w, got a numpy array", lm.MixedFrameworksError
    ):
        lm.lars_update(torch.from_numpy(W), G, 0.1)
    with raises(
        TypeError,
        r"^w\['b'\]: expected a numpy array like w\['a'\], got a torch array \(torch.Tensor\)",
        lm.MixedFrameworksError,
    ):
        lm.lars_update({"a": W, "b": torch.from_numpy(W)}, G, 0.1)
    with raises(
        TypeError, r"^lr: expected a float or a 0-d numpy array, got a torch array", lm.MixedFrameworksError
    ):
        lm.lars_update(W, G, torch.tensor(0.1))
    with raises(
        TypeError, r"^out: expected a numpy array like w, got a torch array", lm.MixedFrameworksError
    ):
        lm.lars_update(W, G, 0.1, out=torch.zeros(3))
    with raises(TypeError, r"^dcdw\['a'\]: expected a numpy array", lm.MixedFrameworksError):
        lm.lars_update(lm.Container(a=lm.Array(W)), lm.Container(a=lm.Array(torch.from_numpy(G))), 0.1)


def test_mixed_frameworks_every_pair():
    names = [n for n in ("numpy", "torch", "jax", "tensorflow")]
    for n in names:
        require_backend(n)
    for a in names:
        for b in names:
            if a == b:
                continue
            with raises(
                TypeError, rf"^dcdw: expected a {a} array like w, got a {b} array", lm.MixedFrameworksError
            ):
                lm.lars_update(native(a, W), native(b, G), 0.1)


def test_active_backend_mismatch(backend):
    other = "torch" if backend == "numpy" else "numpy"
    require_backend(other)
    with lm.using_backend(other):
        w, g = native(backend, W), native(backend, G)
        with raises(
            TypeError,
            rf"^w: expected {other} arrays \(the active backend\), got {backend} arrays",
            lm.MixedFrameworksError,
        ):
            lm.lars_update(w, g, 0.1)
        with raises(TypeError, rf"^w: expected {other} arrays", lm.MixedFrameworksError):
            lm.lars_update([w], [g], 0.1)
        with raises(TypeError, rf"^w: expected {other} arrays", lm.MixedFrameworksError):
            lm.lars_update(lm.Array(w), lm.Array(g), 0.1)
        opt = lm.optim.lars(0.1)  # (its messages name params: init and step have no w)
        with raises(TypeError, rf"^params: expected {other} arrays", lm.MixedFrameworksError):
            opt.init({"a": w})
        with raises(TypeError, rf"^params: expected {other} arrays", lm.MixedFrameworksError):
            opt.step({"a": w}, {"a": g}, lm.optim.LarsState(0, None))


def test_active_backend_mismatch_set_backend(backend_name):
    other = "torch" if backend_name == "numpy" else "numpy"
    require_backend(other)
    w, g = native(backend_name, W), native(backend_name, G)
    lm.set_backend(other)
    with raises(TypeError, rf"^w: expected {other} arrays", lm.MixedFrameworksError):
        lm.lars_update(w, g, 0.1)
    with raises(TypeError, rf"^w: expected {other} arrays", lm.MixedFrameworksError):
        lm.lars_update({"a": w}, g, 0.1)
    lm.unset_backend()
    assert lm.lars_update(w, g, 0.1) is not None


def test_active_backend_mismatch_env_var():
    require_backend("torch")
    script = """
import lars_multi as lm, numpy as np
try:
    lm.lars_update(np.ones(3), np.ones(3), 0.1)
except lm.MixedFrameworksError as error:
    assert isinstance(error, TypeError)
    print(error)
"""
    out = run_python(script, LARS_MULTI_BACKEND="torch")
    assert re.match(r"^w: expected torch arrays \(the active backend\), got numpy arrays", out), out


# --- weights and gradients -----------------------------------------------------------------------


def test_shape_mismatch(backend):
    w, g = native(backend, W), native(backend, np.ones(2, np.float32))
    with raises(
        ValueError, r"^dcdw: expected shape \(3,\) \(the shape of w\), got \(2,\)", lm.LarsMultiValueError
    ):
        lm.lars_update(w, g, 0.1)
    with raises(ValueError, r"^dcdw\['a'\]: expected shape \(3,\) \(the shape of w\['a'\]\), got \(2,\)"):
        lm.lars_update({"a": w}, {"a": g}, 0.1)
    with raises(ValueError, r"^dcdw\[1\]: expected shape \(3,\) \(the shape of w\[1\]\), got \(1, 3\)"):
        lm.lars_update([w, w], [native(backend, W), native(backend, W[None])], 0.1)
    # Gradients in handles (lm.Array), checked through their arrays.
    with raises(ValueError, r"^dcdw\['b'\]: expected shape \(3,\) \(the shape of w\['b'\]\), got \(2,\)"):
        lm.lars_update(lm.Container(a=w, b=w), lm.Container(a=lm.Array(w), b=lm.Array(g)), 0.1)
    # One array broadcast to every leaf must fit every leaf.
    with raises(ValueError, r"^dcdw: expected shape \(2,\) \(the shape of w\['b'\]\), got \(3,\)"):
        lm.lars_update({"a": w, "b": g}, native(backend, G), 0.1)


def test_dtype_mismatch(backend):
    w, g = native(backend, W), native(backend, G, "float16")
    with raises(
        TypeError, r"^dcdw: expected dtype float32 \(the dtype of w\), got float16", lm.LarsMultiTypeError
    ):
        lm.lars_update(w, g, 0.1)
    with raises(TypeError, r"^dcdw\['x'\]\['y'\]: expected dtype float32 \(the dtype of w\['x'\]\['y'\]\)"):
        lm.lars_update({"x": {"y": w}}, {"x": {"y": g}}, 0.1)
    with raises(TypeError, r"^dcdw\['y'\]: expected dtype float32 \(the dtype of w\['y'\]\)"):
        lm.lars_update({"x": w, "y": w}, {"x": lm.Array(native(backend, G)), "y": lm.Array(g)}, 0.1)


def test_numpy_hint_for_a_wider_gradient_of_a_half_layer():
    """A float32 gradient of a float16 layer: the hint says the step computes in float32
    already and warns of float16's range (it blamed NumPy's promotion, which the step
    does not suffer, and its cast made a gradient of 1e5 inf)."""
    w, g = np.ones((2, 2), np.float16), np.full((2, 2), 1e5, np.float32)
    with raises(TypeError, r"^dcdw: expected dtype float16 \(the dtype of w\), got float32; a float16 layer"):
        lm.lars_update(w, g, 0.1)
    with pytest.raises(lm.LarsMultiTypeError, match="unscaling a loss-scaled gradient first"):
        lm.lars_update(w, g, 0.1)
    with raises(TypeError, r"got float64; NumPy silently promotes float32 arithmetic"):
        lm.lars_update(W, G.astype(np.float64), 0.1)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_non_float_weights(backend, dtype):
    with x64(backend):
        w = native(backend, np.array([1, 0, 1]).astype(dtype))
        _check_non_float_weights(w, dtype)


def _check_non_float_weights(w, dtype):
    with raises(TypeError, rf"^w: expected a floating dtype .*, got {dtype}", lm.LarsMultiTypeError):
        lm.lars_update(w, w, 0.1)
    with raises(
        TypeError, rf"^w\['layer'\]: expected a floating dtype .*, got {dtype}", lm.LarsMultiTypeError
    ):
        lm.lars_update({"layer": w}, {"layer": w}, 0.1)


def test_weights_not_arrays(backend):
    with raises(TypeError, r"^w\[0\]: expected an array, got float", lm.LarsMultiTypeError):
        lm.lars_update([1.0, 2.0], [0.1, 0.2], 0.1)
    with raises(TypeError, r"^w: expected an array or a tree of arrays .*, got str", lm.LarsMultiTypeError):
        lm.lars_update("weights", native(backend, G), 0.1)
    with raises(TypeError, r"^dcdw: expected an array like w, got float", lm.LarsMultiTypeError):
        lm.lars_update(native(backend, W), 0.5, 0.1)
    with raises(TypeError, r"^dcdw\['a'\]: expected an array like w\['a'\], got str", lm.LarsMultiTypeError):
        lm.lars_update({"a": native(backend, W)}, {"a": "g"}, 0.1)


def test_a_parameter_container_is_named_as_no_tree():
    """A framework's module or parameter container is no tree (optree does not open it):
    it was reported as dcdw's mismatch ("expected a single array like w, got a dict"),
    or by lm.optim as a tree with no array."""
    require_backend("torch")
    import torch

    container = torch.nn.ParameterDict({"a": torch.nn.Parameter(torch.ones(3))})
    message = r"^{}: expected an array or a tree of arrays .*, got torch.ParameterDict; pass dict\(m.named"
    with raises(TypeError, message.format("w"), lm.LarsMultiTypeError):
        lm.lars_update(container, {"a": torch.ones(3)}, 0.1)
    opt = lm.optim.lars(0.1)
    with raises(TypeError, message.format("params"), lm.LarsMultiTypeError):
        opt.init(container)
    with raises(TypeError, message.format("params"), lm.LarsMultiTypeError):
        opt.step(container, {"a": torch.ones(3)}, opt.init({"a": torch.ones(3)}))

    class Params(dict):  # (optree opens dict, not its subclasses)
        pass

    with raises(
        TypeError, r"^w: expected an array or a tree .*got .*Params; pass dict\(w\)", lm.LarsMultiTypeError
    ):
        lm.lars_update(Params(a=torch.ones(3)), {"a": torch.ones(3)}, 0.1)


def test_weights_without_arrays(backend):
    """An empty tree is returned as it is (a tree map's result), but only where dcdw and
    out hold no array either; None is no tree of weights. (A call returned w or its out
    unwritten whatever dcdw was.) The optimizer, whose init refuses an empty tree, refuses
    one in step too."""
    g = native(backend, G)
    assert lm.lars_update({}, g, 0.1) == {}
    with raises(TypeError, r"^w: expected an array or a tree of arrays, got None$", lm.LarsMultiTypeError):
        lm.lars_update(None, g, 0.1)
    for tree, name in (({}, "dict"), ([], "list")):
        message = rf"^dcdw: expected the structure of w, an empty {name}, got a dict holding arrays$"
        with raises(ValueError, message, lm.LarsMultiValueError):
            lm.lars_update(tree, {"a": g}, 0.1)
        message = rf"^out: expected the structure of w, an empty {name}, got a list holding arrays$"
        with raises(ValueError, message, lm.LarsMultiValueError):
            lm.lars_update(tree, tree, 0.1, out=[g])
    opt = lm.optim.lars(0.1)
    state = opt.init({"a": g})
    with raises(
        ValueError, r"^params: expected an array or a tree with at least one array", lm.LarsMultiValueError
    ):
        opt.step({}, {"a": g}, state)


# --- lr -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), float("-inf"), np.float32("nan")], ids=str)
def test_non_finite_lr(backend, lr):
    w, g = native(backend, W), native(backend, G)
    with raises(ValueError, r"^lr: expected a finite number, got", lm.LarsMultiValueError):
        lm.lars_update(w, g, lr)
    with raises(ValueError, r"^lr\['b'\]: expected a finite number", lm.LarsMultiValueError):
        lm.lars_update({"a": w, "b": w}, g, {"a": 0.1, "b": lr})


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_numpy_array_lr_or_decay_is_read_and_checked_as_a_number(value):
    """A NumPy 0-d array's value is on the host: a NaN learning rate made NaN weights, and
    a negative or NaN decay_lambda was silently no decay (lm.optim read and refused them).
    Nothing is written where out= is given."""
    w, g = W.copy(), G.copy()
    for bad in (np.array(value, np.float32), lm.Array(np.array(value, np.float64))):
        with raises(ValueError, r"^lr: expected a finite number, got", lm.LarsMultiValueError):
            lm.lars_update(w, g, bad, out=w)
        with raises(ValueError, r"^lr\['b'\]: expected a finite number", lm.LarsMultiValueError):
            lm.lars_update({"a": w, "b": w}, g, {"a": 0.1, "b": bad})
    for bad in (np.array(-1.0, np.float32), np.array(value, np.float32)):
        with raises(ValueError, r"^decay_lambda: expected a finite number >= 0", lm.LarsMultiValueError):
            lm.lars_update(w, g, 0.1, decay_lambda=bad, out=w)
    np.testing.assert_array_equal(w, W)
    # Good ones are still taken as arrays: the same values as numbers give.
    np.testing.assert_allclose(
        lm.lars_update(W, G, np.array(0.1, np.float32), decay_lambda=np.array(0.01, np.float32)),
        lm.lars_update(W, G, 0.1, decay_lambda=0.01),
        rtol=1e-5,  # (NumPy 1 rounds a float32 array's products and a Python float's apart)
    )


def test_a_numpy_array_rate_must_fit_the_weights_dtype_as_the_number_must():
    """A NumPy float64 0-d array of 1e39 (inf in float32) made float32 weights -inf, where
    the Python number is refused: its value, read on the host, is checked as the number's."""
    w32 = W.copy()
    for call in (
        lambda: lm.lars_update(w32, G, np.array(1e39), out=w32),
        lambda: lm.lars_update(w32, G, 0.1, decay_lambda=np.array(1e39), out=w32),
    ):
        with raises(
            ValueError, r"^(lr|decay_lambda): expected a number that fits float32", lm.LarsMultiValueError
        ):
            call()
    opt = lm.optim.lars(np.array(1e39))
    with raises(ValueError, r"^learning_rate: expected a number that fits float32", lm.LarsMultiValueError):
        opt.step({"w": w32}, {"w": G}, opt.init({"w": w32}), out={"w": w32})
    np.testing.assert_array_equal(w32, W)
    assert np.isfinite(lm.lars_update(W.astype(np.float64), G.astype(np.float64), np.array(1e39))).all()


def test_lr_not_scalar(backend):
    w, g = native(backend, W), native(backend, G)
    with raises(ValueError, r"^lr: expected a 0-d array, got shape \(3,\)", lm.LarsMultiValueError):
        lm.lars_update(w, g, native(backend, G))
    with raises(ValueError, r"^lr: expected a 0-d array, got shape \(1,\)", lm.LarsMultiValueError):
        lm.lars_update(lm.Array(w), lm.Array(g), lm.Array(native(backend, np.array([0.1], np.float32))))


@pytest.mark.parametrize(
    ("lr", "got"), [(True, "bool"), ("0.1", "str"), (None, "NoneType"), ([0.1], "list")], ids=str
)
def test_lr_wrong_type(backend, lr, got):
    w, g = native(backend, W), native(backend, G)
    if got in ("list", "NoneType"):
        with pytest.raises(lm.LarsMultiError, match=r"^lr"):
            lm.lars_update(w, g, lr)
        return
    with raises(TypeError, rf"^lr: expected a float or a 0-d array, got {got}", lm.LarsMultiTypeError):
        lm.lars_update(w, g, lr)


def test_lr_integer_array(backend):
    w, g = native(backend, W), native(backend, G)
    with raises(
        TypeError,
        r"^lr: expected a floating dtype \(bfloat16, float16, float32 or float64\), got int32",
        lm.LarsMultiTypeError,
    ):
        lm.lars_update(w, g, native(backend, np.array(1, np.int32)))


def test_integer_lr_number_is_accepted(backend):
    w, g = native(backend, W), native(backend, G)
    np.testing.assert_allclose(
        np.asarray(lm.Array(lm.lars_update(w, g, 1))), np.asarray(lm.Array(lm.lars_update(w, g, 1.0)))
    )


# --- decay_lambda and stop_gradients -----------------------------------------------------------------


@pytest.mark.parametrize("decay", [-1.0, -1e-30, float("nan"), float("inf"), -2])
def test_bad_decay_value(backend, decay):
    w, g = native(backend, W), native(backend, G)
    with raises(ValueError, r"^decay_lambda: expected a finite number >= 0, got", lm.LarsMultiValueError):
        lm.lars_update(w, g, 0.1, decay_lambda=decay)
    with raises(ValueError, r"^decay_lambda\[1\]: expected a finite number >= 0", lm.LarsMultiValueError):
        lm.lars_update([w, w], g, 0.1, decay_lambda=[0.0, decay])


@pytest.mark.parametrize(("decay", "got"), [("0.1", "str"), (True, "bool"), (None, "NoneType")], ids=str)
def test_bad_decay_type(backend, decay, got):
    w, g = native(backend, W), native(backend, G)
    with raises(
        TypeError, rf"^decay_lambda: expected a number >= 0 or a 0-d array, got {got}", lm.LarsMultiTypeError
    ):
        lm.lars_update(w, g, 0.1, decay_lambda=decay)


def test_decay_array_of_another_shape_is_rejected(backend):
    w, g = native(backend, W), native(backend, G)
    with raises(ValueError, r"^decay_lambda: expected a 0-d array, got shape \(3,\)", lm.LarsMultiValueError):
        lm.lars_update(w, g, 0.1, decay_lambda=native(backend, np.array([0.1, 0.2, 0.3], np.float32)))


@pytest.mark.parametrize(
    ("stop", "got"), [("yes", "str"), (1, "int"), (None, "NoneType"), (0.0, "float")], ids=str
)
def test_bad_stop_gradients(backend, stop, got):
    w, g = native(backend, W), native(backend, G)
    with raises(TypeError, rf"^stop_gradients: expected a bool, got {got}", lm.LarsMultiTypeError):
        lm.lars_update(w, g, 0.1, stop_gradients=stop)
    # (None inside a tree is an empty subtree to optree: a structure error.)
    match = r"^stop_gradients" if stop is None else rf"^stop_gradients\['b'\]: expected a bool, got {got}"
    with pytest.raises(lm.LarsMultiError, match=match):
        lm.lars_update({"a": w, "b": w}, g, 0.1, stop_gradients={"a": True, "b": stop})


def test_numpy_bool_stop_gradients_accepted(backend):
    w, g = native(backend, W), native(backend, G)
    lm.lars_update(w, g, 0.1, stop_gradients=np.bool_(True))


# --- tree structure -------------------------------------------------------------------------------


def test_tree_structure_mismatch(backend):
    a, b = native(backend, W), native(backend, W)
    w = {"a": a, "b": b}
    with raises(ValueError, r"(?s)^dcdw: expected the structure of w.*'b'", lm.LarsMultiValueError):
        lm.lars_update(w, {"a": native(backend, G)}, 0.1)
    with raises(ValueError, r"(?s)^dcdw: expected the structure of w.*'c'", lm.LarsMultiValueError):
        lm.lars_update(w, {"a": a, "b": b, "c": b}, 0.1)
    with raises(ValueError, r"(?s)^dcdw: expected the structure of w.*\['b'\]", lm.LarsMultiValueError):
        lm.lars_update({"a": a, "b": {"c": b}}, {"a": a, "b": [b]}, 0.1)
    # A tree where w has a leaf (a structure that pairs with w's nodes up to their leaves).
    for subtree in ({"c": b}, [b], (b,)):
        with raises(ValueError, r"(?s)^dcdw: expected the structure of w.*\['b'\]", lm.LarsMultiValueError):
            lm.lars_update(w, {"a": a, "b": subtree}, 0.1)
        with raises(ValueError, r"(?s)^out: expected the structure of w.*\['b'\]", lm.LarsMultiValueError):
            lm.lars_update(w, {"a": a, "b": b}, 0.1, out={"a": a, "b": subtree})
    with raises(ValueError, r"(?s)^lr: expected the structure of w.*'b'", lm.LarsMultiValueError):
        lm.lars_update(w, native(backend, G), {"a": 0.1})
    with raises(ValueError, r"(?s)^decay_lambda: expected the structure of w", lm.LarsMultiValueError):
        lm.lars_update(w, native(backend, G), 0.1, decay_lambda=[0.1, 0.2])
    with raises(ValueError, r"(?s)^stop_gradients: expected the structure of w", lm.LarsMultiValueError):
        lm.lars_update(w, native(backend, G), 0.1, stop_gradients={"a": True, "z": True})
    with raises(ValueError, r"(?s)^dcdw: expected the structure of w", lm.LarsMultiValueError):
        lm.lars_update([a, b], [a], 0.1)


def test_container_structure_mismatch(backend):
    w = lm.Container(a=lm.Array(native(backend, W)), b=lm.Array(native(backend, W)))
    g = lm.Container(a=lm.Array(native(backend, G)))
    with raises(ValueError, r"(?s)^dcdw: expected the structure of w.*'b'", lm.LarsMultiValueError):
        w.lars_update(g, 0.1)


# --- out ------------------------------------------------------------------------------------------


def _writable(backend, values, dtype=None):
    x = native(backend, values, dtype)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.Variable(x)
    if backend == "jax":
        return lm.Array(x)
    return x


def test_out_wrong_shape(backend):
    w, g = native(backend, W), native(backend, G)
    with raises(
        ValueError, r"^out: expected shape \(3,\) \(the shape of w\), got \(2,\)", lm.LarsMultiValueError
    ):
        lm.lars_update(w, g, 0.1, out=_writable(backend, np.zeros(2, np.float32)))
    with raises(ValueError, r"^out\['a'\]: expected shape \(3,\) \(the shape of w\['a'\]\), got \(1, 3\)"):
        lm.lars_update({"a": w}, g, 0.1, out={"a": _writable(backend, np.zeros((1, 3), np.float32))})


def test_out_wrong_dtype(backend):
    w, g = native(backend, W), native(backend, G)
    with raises(
        TypeError, r"^out: expected dtype float32 \(the dtype of w\), got float16", lm.LarsMultiTypeError
    ):
        lm.lars_update(w, g, 0.1, out=_writable(backend, np.zeros(3), "float16"))


def test_out_wrong_structure(backend):
    w, g = native(backend, W), native(backend, G)
    out = _writable(backend, np.zeros(3, np.float32))
    with raises(ValueError, r"^out: expected the structure of w", lm.LarsMultiValueError):
        lm.lars_update({"a": w, "b": w}, g, 0.1, out={"a": out})
    with raises(ValueError, r"^out: expected the structure of w", lm.LarsMultiValueError):
        lm.lars_update(w, g, 0.1, out=[out])


def test_out_not_an_array(backend):
    """Something that is no array is a type error, as a gradient that is none is, not
    an array of another framework (MixedFrameworksError, before)."""
    w, g = native(backend, W), native(backend, G)
    with pytest.raises(lm.LarsMultiError, match=r"^out"):
        lm.lars_update(w, g, 0.1, out=np.zeros(3, np.float32).tolist())
    for out in ("out", object(), 3.0):
        with raises(
            TypeError, r"^out: expected a .* array like w, got (str|object|float)$", lm.LarsMultiTypeError
        ) as info:
            lm.lars_update(w, g, 0.1, out=out)
        assert not isinstance(info.value, lm.MixedFrameworksError)
        with raises(
            TypeError, r"^out\['a'\]: expected a .* array like w\['a'\], got", lm.LarsMultiTypeError
        ) as info:
            lm.lars_update({"a": w}, {"a": g}, 0.1, out={"a": out})
        assert not isinstance(info.value, lm.MixedFrameworksError)


def test_out_wrong_framework(backend):
    other = "torch" if backend == "numpy" else "numpy"
    require_backend(other)
    w, g = native(backend, W), native(backend, G)
    with raises(
        TypeError, rf"^out: expected a {backend} array like w, got a {other} array", lm.MixedFrameworksError
    ):
        lm.lars_update(w, g, 0.1, out=native(other, np.zeros(3, np.float32)))


def test_readonly_numpy_out():
    require_backend("numpy")
    out = np.zeros(3, np.float32)
    out.flags.writeable = False
    with raises(TypeError, r"^out: expected an array that can be written in place", lm.LarsMultiTypeError):
        lm.lars_update(W, G, 0.1, out=out)


# --- lm.Array / Container misuse ------------------------------------------------------------


def test_array_of_python_data_needs_lm_array():
    with raises(TypeError, r"^data: expected a native array .* lars_multi.array", lm.LarsMultiTypeError):
        lm.Array([1.0, 2.0])
    with raises(TypeError, r"^x: expected an array, got list", lm.LarsMultiTypeError):
        lm.zeros_like([1.0])


def test_container_keys_must_be_str():
    with raises(TypeError, r"^Container keys: expected str, got int", lm.LarsMultiTypeError):
        lm.Container({1: np.zeros(3)})
    c = lm.Container(a=np.zeros(3))
    with pytest.raises(AttributeError, match="'b'"):
        _ = c.b


# --- public surface, argument by argument -------------------------------------------------------


@pytest.mark.parametrize("arg", ["learning_rate", "weight_decay", "trust_coefficient", "eps"])
def test_an_optimizer_number_too_large_for_a_float_is_refused_by_name(arg):
    """Python's OverflowError, naming nothing, came from float(10**400)."""
    kwargs = {"learning_rate": 0.1, arg: 10**400}
    interval = r"\(0.0, inf\)" if arg == "trust_coefficient" else r"\[0.0, inf\)"
    with raises(
        ValueError, rf"^{arg}: expected a number in {interval}, got one too large", lm.LarsMultiValueError
    ):
        lm.optim.lars(**kwargs)


def test_optimizer_settings_take_any_real_number_as_the_rates_do():
    """momentum, dampening, trust_coefficient and eps refused np.float32, np.int8 and
    Fraction, which learning_rate and weight_decay took."""
    from fractions import Fraction

    for value in (np.float32(0.5), Fraction(1, 2), np.int8(0)):
        for arg in ("momentum", "dampening", "trust_coefficient", "eps"):
            if arg == "trust_coefficient" and value == 0:
                continue
            opt = lm.optim.lars(0.1, **{arg: value})
            assert getattr(opt.config, arg) == float(value) and type(getattr(opt.config, arg)) is float
    with raises(TypeError, r"^momentum: expected a number, got bool", lm.LarsMultiTypeError):
        lm.optim.lars(0.1, momentum=True)


def test_schedule_arguments_beyond_a_float_are_refused_and_numpy_numbers_taken():
    schedule = lm.schedules.warmup_polynomial
    with raises(ValueError, r"^power: expected a finite number >= 0", lm.LarsMultiValueError):
        schedule(1.0, 1, 10, power=10**400)
    with raises(ValueError, r"^warmup_steps, total_steps: expected integers with", lm.LarsMultiValueError):
        schedule(1.0, 1, 10**400)
    assert schedule(1.0, 1, 10, end=0.5)(10**400) == 0.5  # (past the end: the end)
    given = schedule(np.float32(1.0), np.int64(1), np.int32(10))
    assert given == schedule(1.0, 1, 10)
    assert type(given.peak) is float and type(given.warmup_steps) is int  # (as Keras saves them)


def test_an_empty_w_still_has_its_other_arguments_checked():
    """With no layer to step, lr, decay_lambda and stop_gradients went unchecked, and
    an out of a str was said to hold arrays."""
    for w, dcdw in (({}, {}), ({"a": np.ones(2, np.float32)}, {"a": None})):
        with raises(TypeError, r"^lr: expected a float or a 0-d array, got str", lm.LarsMultiTypeError):
            lm.lars_update(w, dcdw, "junk")
        with raises(ValueError, r"^decay_lambda: expected a finite number >= 0", lm.LarsMultiValueError):
            lm.lars_update(w, dcdw, 0.1, decay_lambda=-1)
        with raises(TypeError, r"^stop_gradients: expected a bool, got str", lm.LarsMultiTypeError):
            lm.lars_update(w, dcdw, 0.1, stop_gradients="x")
    with raises(
        TypeError, r"^out: expected the structure of w, an empty dict, got str", lm.LarsMultiTypeError
    ):
        lm.lars_update({}, {}, 0.1, out="junk")
    assert lm.lars_update({}, {}, {"a": 0.1}) == {}  # (a tree of rates pairs with no layer)


def test_container_and_registry_arguments_are_checked():
    for bad in ("ab", 5, np.ones(3)):
        with raises(TypeError, r"^mapping: expected a mapping of names to arrays", lm.LarsMultiTypeError):
            lm.Container(bad)
    assert list(lm.Container([("a", np.ones(1))])) == ["a"]
    for extra in (5, ["a"], ""):
        with raises(TypeError, r"^pip_extra: expected None or the name of an extra", lm.LarsMultiTypeError):
            lm.register_backend("zz_probe", "no_such_module", pip_extra=extra)


def test_optimizer_steps_keep_lm_arrays_as_lm_arrays():
    """lars_update gives lm.Array leaves back as lm.Array; lm.optim's step gave raw arrays."""
    params = {"w": lm.array(np.ones((2, 3))), "b": np.ones(3, np.float32)}
    opt = lm.optim.lars(0.1)
    new, _ = opt.step(params, params, opt.init(params))
    assert isinstance(new["w"], lm.Array) and type(new["b"]) is np.ndarray
    single = lm.array(np.ones((2, 3)))
    assert isinstance(opt.step(single, single, opt.init(single))[0], lm.Array)


def test_an_immutable_array_in_a_tuple_of_a_container_out_is_explained():
    """The advice was to pass an lm.Container holding the arrays: the one given."""
    require_backend("jax")
    import jax.numpy as jnp

    c = lm.Container(a=(jnp.array([3.0, 1, 5]), jnp.array([1.0, 2, 3])))
    message = r"^out\['a'\]\[0\]: .*a tuple's entries cannot be replaced"
    with raises(TypeError, message, lm.LarsMultiTypeError):
        c.lars_update(jnp.array([0.2, 0.4, 0.1]), 0.1, out=c)
