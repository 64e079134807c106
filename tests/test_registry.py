"""Choosing the backend: set/unset, ``using_backend`` (per thread and asyncio
task), ``LARS_MULTI_BACKEND``, inference from inputs, lazy imports and
third-party backends."""

from __future__ import annotations

import asyncio
import decimal
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ALL_BACKENDS,
    FRAMEWORK_MODULE,
    assert_layer_close,
    backends_to_test,
    is_installed,
    native,
    native_type,
    require_backend,
    run_python,
    to_numpy,
)

import lars_multi as lm

W = np.array([3.0, 1.0, 5.0], dtype=np.float32)
G = np.array([0.3, 0.1, 0.2], dtype=np.float32)
TESTS = Path(__file__).parent


def two_backends():
    names = backends_to_test()
    if len(names) < 2:
        pytest.skip(f"needs two installed backends, have {names}")
    return names[0], names[1]


# --- set / unset / using --------------------------------------------------------------------


def test_set_unset_current(backend_name):
    assert lm.current_backend() is None
    lm.set_backend(backend_name)
    assert lm.current_backend() == backend_name
    a = lm.array([1.0, 2.0])
    assert a.backend == backend_name and isinstance(a.data, native_type(backend_name))
    assert a.dtype == "float32"
    lm.set_backend("numpy")
    assert lm.current_backend() == "numpy"
    lm.unset_backend()
    assert lm.current_backend() is None
    lm.unset_backend()  # idempotent
    assert lm.current_backend() is None


def test_using_backend_nests_and_restores():
    first, second = two_backends()
    lm.set_backend(first)
    with lm.using_backend(second) as module:
        assert lm.current_backend() == second
        assert hasattr(module, "norm") and hasattr(module, "is_native")
        with lm.using_backend(first):
            assert lm.current_backend() == first
            with lm.using_backend(second):
                assert lm.current_backend() == second
            assert lm.current_backend() == first
        assert lm.current_backend() == second
        assert lm.array([1.0]).backend == second
    assert lm.current_backend() == first
    lm.unset_backend()
    assert lm.current_backend() is None


def test_using_backend_restores_after_exception():
    first, second = two_backends()
    with lm.using_backend(first):
        with pytest.raises(RuntimeError), lm.using_backend(second):
            raise RuntimeError("boom")
        assert lm.current_backend() == first
        with pytest.raises(lm.UnknownBackendError), lm.using_backend("nope"):
            pass
        assert lm.current_backend() == first
    assert lm.current_backend() is None


def test_using_backend_overrides_set_backend():
    first, second = two_backends()
    lm.set_backend(first)
    with lm.using_backend(second):
        w, g = native(second, W), native(second, G)
        assert isinstance(lm.lars_update(w, g, 0.1), native_type(second))
    assert lm.current_backend() == first


def test_threads_are_isolated():
    """Two threads, two backends, at the same time."""
    first, second = two_backends()
    barrier = threading.Barrier(2, timeout=60)
    results, errors = {}, []

    def work(name):
        try:
            with lm.using_backend(name):
                barrier.wait()  # both threads are inside their with-block now
                assert lm.current_backend() == name
                for _ in range(5):
                    new = lm.lars_update(lm.array(W), lm.array(G), 0.1)
                    assert new.backend == name, (new.backend, name)
                    assert isinstance(new.data, native_type(name))
                barrier.wait()  # neither has left its block yet
                results[name] = new.to_numpy()
            assert lm.current_backend() is None
        except BaseException as error:  # reported in the main thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert lm.current_backend() is None
    for name in (first, second):
        assert_layer_close(results[name], W, G, 0.1, 0.0, "float32")


def test_set_backend_is_process_wide_but_using_is_not():
    first, second = two_backends()
    lm.set_backend(first)
    seen = {}
    with lm.using_backend(second):

        def look():
            seen["thread"] = lm.current_backend()

        t = threading.Thread(target=look)
        t.start()
        t.join(timeout=60)
        assert lm.current_backend() == second
    assert seen["thread"] == first  # the thread sees set_backend, not this thread's using_backend


def test_asyncio_tasks_are_isolated():
    first, second = two_backends()

    async def task(name, other_started, started):
        with lm.using_backend(name):
            started.set()
            await other_started.wait()
            for _ in range(3):
                await asyncio.sleep(0)
                assert lm.current_backend() == name
                new = lm.lars_update(lm.array(W), lm.array(G), 0.1)
                assert new.backend == name
        return lm.current_backend()

    async def main():
        a_started, b_started = asyncio.Event(), asyncio.Event()
        results = await asyncio.gather(task(first, b_started, a_started), task(second, a_started, b_started))
        return results, lm.current_backend()

    results, after = asyncio.run(main())
    assert results == [None, None]
    assert after is None
    assert lm.current_backend() is None


def test_asyncio_task_inherits_the_creators_choice():
    first, _ = two_backends()

    async def child():
        return lm.current_backend()

    async def main():
        with lm.using_backend(first):
            inherited = await asyncio.create_task(child())
        return inherited, await asyncio.create_task(child())

    assert asyncio.run(main()) == (first, None)


def test_asyncio_task_made_in_a_block_keeps_its_choice_after_the_block():
    """A task copies its creator's context: one made inside the block, run after the
    block closed, still sees the block's choice (it saw none, unless another thread
    had a block open)."""
    first, _ = two_backends()

    async def child():
        await asyncio.sleep(0)
        return lm.current_backend()

    async def main():
        with lm.using_backend(first):
            task = asyncio.create_task(child())
        return await task

    assert asyncio.run(main()) == first


# --- LARS_MULTI_BACKEND ---------------------------------------------------------------------------


def test_env_var_chooses_the_backend():
    script = """
import lars_multi as lm, numpy as np
print(lm.current_backend())
print(lm.array([1.0]).backend)
lm.set_backend("numpy")
print(lm.current_backend())
lm.unset_backend()
print(lm.current_backend())
with lm.using_backend("numpy"):
    print(lm.current_backend())
"""
    assert run_python(script, LARS_MULTI_BACKEND="numpy").split() == ["numpy"] * 5


def test_env_var_other_backend():
    other = next((n for n in backends_to_test() if n != "numpy"), None)
    if other is None:
        pytest.skip("needs a non-NumPy backend")
    script = """
import lars_multi as lm
print(lm.current_backend(), lm.array([1.0]).backend, lm.array([1.0]).dtype)
lm.set_backend("numpy")
print(lm.current_backend())
"""
    lines = run_python(script, LARS_MULTI_BACKEND=other).splitlines()
    assert lines == [f"{other} {other} float32", "numpy"]


def test_env_var_empty_means_unset():
    script = "import lars_multi as lm, numpy as np; print(lm.current_backend(), lm.array([1.0]).backend)"
    assert run_python(script, LARS_MULTI_BACKEND="") == "None numpy"


# --- listing backends -------------------------------------------------------------------------


def test_available_and_installed_backends():
    assert lm.available_backends()[:4] == list(ALL_BACKENDS)
    installed = lm.installed_backends()
    assert "numpy" in installed
    assert set(installed) <= set(lm.available_backends())
    for name in ALL_BACKENDS:
        assert (name in installed) == is_installed(name), name
    assert isinstance(lm.available_backends(), list)


# --- inference ----------------------------------------------------------------------------------


def test_native_in_native_out(backend_name):
    assert lm.current_backend() is None
    w, g = native(backend_name, W), native(backend_name, G)
    new = lm.lars_update(w, g, 0.1)
    assert type(new) is type(w) or isinstance(new, native_type(backend_name))
    assert not isinstance(new, lm.Array)
    assert_layer_close(new, W, G, 0.1, 0.0, "float32")
    tree = lm.lars_update({"a": w, "b": (w, w)}, g, 0.1)
    assert isinstance(tree, dict) and isinstance(tree["b"], tuple)
    assert all(isinstance(x, native_type(backend_name)) for x in (tree["a"], *tree["b"]))


def test_lm_array_in_lm_array_out(backend_name):
    w, g = lm.Array(native(backend_name, W)), lm.Array(native(backend_name, G))
    assert w.backend == backend_name
    new = lm.lars_update(w, g, 0.1)
    assert isinstance(new, lm.Array) and new.backend == backend_name
    assert isinstance(new.data, native_type(backend_name))
    assert_layer_close(new, W, G, 0.1, 0.0, "float32")
    # Native gradients with wrapped weights, and the other way round.
    assert isinstance(lm.lars_update(w, g.data, 0.1), lm.Array)
    assert not isinstance(lm.lars_update(w.data, g, 0.1), lm.Array)
    # A mixed tree keeps each leaf's kind.
    mixed = lm.lars_update([w, w.data], g, 0.1)
    assert isinstance(mixed[0], lm.Array) and not isinstance(mixed[1], lm.Array)


def test_lm_array_of_bfloat16_reads_as_bfloat16_on_every_backend(backend_name):
    """A bfloat16 array's values come back in NumPy's bfloat16 (ml_dtypes), as on NumPy and
    JAX: torch and TensorFlow gave float32, so a layer saved through ``to_numpy`` changed dtype."""
    import ml_dtypes

    values = np.array([[1.5, -2.25, 3.0e38]], np.float32).astype(ml_dtypes.bfloat16)
    a = lm.Array(native(backend_name, values, "bfloat16"))
    assert a.dtype == "bfloat16"
    for got in (a.to_numpy(), np.asarray(a)):
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.astype(np.float32), values.astype(np.float32))


def test_lm_array_interface(backend_name):
    a = lm.Array(native(backend_name, np.arange(6, dtype=np.float32).reshape(2, 3)))
    assert a.shape == (2, 3) and a.ndim == 2 and len(a) == 2 and a.dtype == "float32"
    if backend_name == "tensorflow":  # (a tf.Variable has no len: TypeError)
        import tensorflow as tf

        assert len(lm.Array(tf.Variable(np.ones((4, 2), np.float32)))) == 4
    with pytest.raises(TypeError, match="unsized"):
        len(lm.Array(native(backend_name, np.float32(1.0))))
    np.testing.assert_array_equal(np.asarray(a), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(a.to_numpy(), np.arange(6).reshape(2, 3))
    assert np.asarray(a, dtype=np.float64).dtype == np.float64
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":  # (NumPy 1 has no copy=: it copies as asked)
        with pytest.raises(ValueError, match="copy=False"):  # (a conversion is a copy)
            np.asarray(a, dtype=np.float64, copy=False)
    z = lm.zeros_like(a)
    assert isinstance(z, lm.Array) and z.backend == backend_name and z.shape == (2, 3)
    zn = lm.zeros_like(a.data)
    assert isinstance(zn, native_type(backend_name))
    assert lm.Array(a).data is a.data
    assert lm.array(a.data).backend == backend_name  # inferred from the data


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_np_array_of_an_lm_array_is_a_copy(backend_name):
    """np.array copies (NumPy 2 asks __array__ for one): the copy keeps its values when
    the weights are updated in place (it was a view of them)."""
    require_backend(backend_name)
    w = lm.Array(native(backend_name, W))
    snapshot, view = np.array(w), np.asarray(w)
    assert np.array(w, dtype=np.float64).dtype == np.float64
    lm.lars_update(w, native(backend_name, G), 0.1, out=w)
    np.testing.assert_array_equal(snapshot, W)
    assert not np.array_equal(to_numpy(w.data), W)
    assert view.shape == W.shape


def test_a_0d_lm_array_converts_to_a_0d_numpy_array(backend_name):
    """A 0-d rate (``lm.array(0.1)``, the README's idiom) on TensorFlow: ``to_numpy``
    gave a NumPy scalar, and ``np.asarray`` of it failed ("__array__ method not
    producing an array")."""
    require_backend(backend_name)
    with lm.using_backend(backend_name):
        rate = lm.array(0.1)
    for values in (rate.to_numpy(), np.asarray(rate), np.array(rate), np.asarray(rate, dtype=np.float64)):
        assert type(values) is np.ndarray and values.shape == (), type(values)
        assert values == np.float32(0.1)


def test_lm_array_of_another_backends_data_is_refused():
    require_backend("numpy")
    for other in ("torch", "jax", "tensorflow"):
        if other in lm.installed_backends():
            with pytest.raises(lm.MixedFrameworksError, match="backend: expected the backend of data"):
                lm.Array(np.ones(2, np.float32), other)


def test_lm_array_of_data_no_framework_owns_is_refused():
    """lm.Array(data, backend) took a list, a string or None as it was, and failed on first
    use with a raw AttributeError; an unknown backend name was called a mixed framework."""
    require_backend("numpy")
    for data in ([1.0, 2.0], "hello", None):
        with pytest.raises(
            lm.LarsMultiTypeError, match=r"^data: expected a native array of an imported framework"
        ):
            lm.Array(data, "numpy")
    with pytest.raises(lm.UnknownBackendError, match=r"^backend: expected one of .*got 'bogus'"):
        lm.Array(np.ones(2, np.float32), "bogus")


def test_lm_array_of_what_a_framework_cannot_hold_is_refused():
    """lm.array raised each framework's own error (KeyError for torch's unknown dtype
    name, AttributeError for TensorFlow's string), or took strings and None on NumPy."""
    require_backend("numpy")
    for obj in ("abc", None, [object()], [[1.0, 2.0], [3.0]]):  # (ragged: NumPy's ValueError)
        with pytest.raises(lm.LarsMultiTypeError, match=r"^obj: expected numbers"):
            lm.array(obj)
    for name in ("torch", "tensorflow"):
        if name in lm.installed_backends():
            with (
                lm.using_backend(name),
                pytest.raises(lm.LarsMultiTypeError, match=r"^obj: expected numbers"),
            ):
                lm.array([1.0, 2.0], dtype="bogus")
    assert lm.array([1, 2]).dtype == "int64" and lm.array([True]).dtype == "bool"


def test_lm_array_keeps_the_dtype_of_numbers_that_carry_one(backend_name):
    """Only Python floats become float32: lm.array made float32 of every float64 object
    it did not know as an array (np.matrix, array.array, memoryview, a list of
    np.float64), losing digits silently; a masked array lost its mask as well."""
    import array

    values = np.array([0.1, 1 + 2**-40])
    with lm.using_backend(backend_name):
        widest = lm.array(values).dtype  # (float64, but float32 on JAX without jax_enable_x64)
        for obj in (np.matrix(values), array.array("d", values), memoryview(values), list(values)):
            a = lm.array(obj)
            assert a.dtype == widest, type(obj)
            np.testing.assert_array_equal(a.to_numpy().ravel(), values.astype(widest))
        assert lm.array([0.1, 2]).dtype == "float32" and lm.array(((1.5,),)).dtype == "float32"
        with pytest.raises(lm.LarsMultiTypeError, match=r"^obj: expected numbers, got a NumPy masked array"):
            lm.array(np.ma.masked_array(values, mask=[0, 1]))


def test_lm_array_takes_every_frameworks_arrays_and_dtype_names(backend_name):
    """lm.array of another framework's bfloat16 array raised torch's "unsupported
    ScalarType BFloat16" (or, on torch, could not read ml_dtypes' bfloat16); torch took
    only seven dtype names (a KeyError for "complex64") and no NumPy dtype."""
    import ml_dtypes

    values = np.array([[1.5, -2.25], [3.0e38, 0.0]], np.float32)
    with lm.using_backend(backend_name):
        for other in lm.installed_backends():
            a = lm.array(native(other, values, "bfloat16"))
            assert a.backend == backend_name and a.dtype == "bfloat16", other
            if other != backend_name and other in ("numpy", "torch"):  # (another framework's: a copy)
                source = native(other, values)
                copied = lm.array(source)
                lm.lars_update(copied, native(backend_name, values), 0.1, out=copied)
                np.testing.assert_array_equal(to_numpy(source), values)
            np.testing.assert_array_equal(
                a.to_numpy().astype(np.float32), values.astype(ml_dtypes.bfloat16).astype(np.float32)
            )
        for dtype in ("complex64", "int8", np.float16, np.dtype("int16")):
            a = lm.array([1.0, 2.0], dtype=dtype)
            assert a.dtype == np.dtype(dtype).name and a.to_numpy().tolist() == [1, 2]


def test_lm_array_truth_is_its_datas():
    """bool() of an Array is its data's: a 0-d array's value (it came from len(), which a
    0-d array has not), an error for several elements, as the frameworks say."""
    require_backend("numpy")
    assert not lm.array(0.0) and lm.array(2.0) and not lm.array([0.0])
    with pytest.raises(ValueError, match="ambiguous"):
        bool(lm.array([1.0, 2.0]))


def test_container_keys_set_later_are_strings_too():
    c = lm.Container({"a": np.ones(2, np.float32)})
    with pytest.raises(lm.LarsMultiTypeError, match="Container keys"):
        c[1] = np.ones(2, np.float32)
    assert list(c.keys()) == ["a"]


def test_lm_array_of_python_data_defaults_to_numpy():
    a = lm.array([1.0, 2.0])
    assert a.backend == "numpy" and a.dtype == "float32"
    assert lm.array(np.array([1.0, 2.0])).dtype == "float64"  # NumPy arrays keep their dtype
    assert lm.array([1.0], dtype="float64").dtype == "float64"
    assert lm.array([1, 2]).dtype == "int64"


def test_container_and_dict_interchangeable(backend_name):
    w = lm.Container(a=lm.Array(native(backend_name, W)), b={"c": lm.Array(native(backend_name, W))})
    g = {"a": lm.Array(native(backend_name, G)), "b": {"c": lm.Array(native(backend_name, G))}}
    new = lm.lars_update(w, g, 0.1)
    assert isinstance(new, lm.Container) and isinstance(new.b, lm.Container)
    assert_layer_close(new.b.c, W, G, 0.1, 0.0, "float32")
    assert new.to_dict().keys() == {"a", "b"}
    assert isinstance(new.to_dict()["b"], dict)


def test_empty_trees(backend_name):
    for empty in ({}, [], (), lm.Container()):
        result = lm.lars_update(empty, native(backend_name, G), 0.1)
        assert result == empty or result is empty


# --- lazy imports ---------------------------------------------------------------------------------


def test_import_imports_no_framework():
    script = """
import sys
import lars_multi as lm
print(sorted(m for m in ("torch", "jax", "tensorflow", "jaxlib") if m in sys.modules))
lm.lars_update(lm.array([3.0, 1.0]), lm.array([0.1, 0.2]), 0.1)
import numpy as np
lm.lars_update({"a": np.ones(3)}, np.ones(3), 0.1)
print(sorted(m for m in ("torch", "jax", "tensorflow", "jaxlib") if m in sys.modules))
print(lm.available_backends())
"""
    lines = run_python(script).splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "[]"  # NumPy work never imports another framework
    assert "torch" in lines[2]  # ... though every backend is registered


def test_the_torch_front_door_without_torch_says_how_to_install_it():
    """lm.torch without torch raised a bare ModuleNotFoundError (lm.optax and lm.keras
    said what to install)."""
    script = """
import sys
sys.modules["torch"] = None  # (torch cannot be imported)
import lars_multi as lm
try:
    lm.torch
except lm.BackendNotInstalledError as e:
    print(str(e))
"""
    assert run_python(script).endswith('pip install "lars-multi[torch]"')


def test_using_a_backend_imports_only_its_framework():
    """lars_multi imports nothing beyond what the framework itself imports (TensorFlow's
    Keras may bring JAX along, when it is installed)."""
    other = next((n for n in backends_to_test() if n != "numpy"), None)
    if other is None:
        pytest.skip("needs a non-NumPy backend")
    frameworks = 'print(sorted(m for m in ("torch", "jax", "tensorflow") if m in sys.modules))'
    alone = run_python(f"import sys, {FRAMEWORK_MODULE[other]}\n{frameworks}")
    script = f"""
import sys
import lars_multi as lm
with lm.using_backend("{other}"):
    lm.lars_update(lm.array([3.0, 1.0]), lm.array([0.1, 0.2]), 0.1)
{frameworks}
"""
    assert other in alone
    assert run_python(script) == alone


# --- a third-party backend ------------------------------------------------------------------------


@pytest.fixture
def toy(isolated_registry, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import _toy_backend

    lm.register_backend("toy", "_toy_backend", framework="_toy_backend")
    _toy_backend.calls.clear()
    return _toy_backend


def test_toy_backend_registered(toy):
    assert "toy" in lm.available_backends()
    assert "toy" in lm.installed_backends()
    with lm.using_backend("toy") as module:
        assert module is toy
        a = lm.array([1.0, 2.0])
        assert isinstance(a.data, toy.ToyTensor) and a.backend == "toy" and a.dtype == "float32"


def test_toy_backend_inferred_from_inputs(toy):
    w, g = toy.ToyTensor(W), toy.ToyTensor(G)
    new = lm.lars_update(w, g, 0.1)  # no backend chosen: inferred from ToyTensor
    assert isinstance(new, toy.ToyTensor)
    assert_layer_close(new.values, W, G, 0.1, 0.0, "float32")
    assert toy.calls["norm"] >= 2 and toy.calls["axpby"] >= 1
    np.testing.assert_array_equal(w.values, W)
    assert lm.Array(w).backend == "toy"


@pytest.mark.parametrize("decay", [0.0, 0.4])
def test_toy_backend_generic_path(toy, decay):
    with lm.using_backend("toy"):
        w = lm.Container(a=lm.array(W), b=lm.array(np.float64(W[:2])))
        g = lm.Container(a=lm.array(G), b=lm.array(np.float64(G[:2])))
        lr = lm.array(0.1)  # a 0-d ToyTensor
        new = w.lars_update(g, lr, decay_lambda=decay)
        assert isinstance(new.a, lm.Array) and new.a.backend == "toy"
        assert new.a.dtype == "float32" and new.b.dtype == "float64"
        assert_layer_close(new.a.data.values, W, G, 0.1, decay, "float32")
        assert_layer_close(new.b.data.values, W[:2], G[:2], float(np.float32(0.1)), decay, "float64")
        # Zero weights with decay stay zero through the generic rule too.
        zero = lm.lars_update(lm.array(np.zeros(3, np.float32)), lm.array(G), 0.1, decay_lambda=0.5)
        np.testing.assert_array_equal(zero.data.values, 0)


def test_toy_backend_out_uses_write(toy):
    w, g = toy.ToyTensor(W), toy.ToyTensor(G)
    out = toy.ToyTensor(np.zeros(3, np.float32))
    buffer = out.values
    assert lm.lars_update(w, g, 0.1, out=out) is out
    assert out.values is buffer and toy.calls["write"] == 1
    assert_layer_close(out.values, W, G, 0.1, 0.0, "float32")
    # out=w on a tree of native toy tensors.
    tree = {"a": toy.ToyTensor(W), "b": [toy.ToyTensor(W * 2)]}
    leaves = (tree["a"], tree["b"][0])
    assert lm.lars_update(tree, {"a": g, "b": [g]}, 0.1, decay_lambda=0.1, out=tree) is tree
    assert tree["a"] is leaves[0] and tree["b"][0] is leaves[1]
    assert_layer_close(tree["a"].values, W, G, 0.1, 0.1, "float32")
    assert_layer_close(tree["b"][0].values, W * 2, G, 0.1, 0.1, "float32")
    # A Container of lm.Arrays as out.
    c = lm.Container(a=lm.Array(toy.ToyTensor(W)))
    assert c.lars_update(lm.Array(g), 0.1, out=c) is c
    assert_layer_close(c.a.data.values, W, G, 0.1, 0.0, "float32")


def test_toy_backend_errors(toy):
    w = toy.ToyTensor(W)
    with pytest.raises(lm.LarsMultiValueError, match=r"^dcdw: expected shape \(3,\)"):
        lm.lars_update(w, toy.ToyTensor(G[:2]), 0.1)
    # (the dtypes the backend computes in: the message listed the built-in backends', float16 too)
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^w: expected a floating dtype \(float32 or float64\), got float16"
    ):
        lm.lars_update(toy.ToyTensor(W.astype(np.float16)), toy.ToyTensor(G.astype(np.float16)), 0.1)
    with pytest.raises(
        lm.MixedFrameworksError, match=r"^dcdw: expected a toy array like w, got a numpy array"
    ):
        lm.lars_update(w, G, 0.1)
    out = toy.ToyTensor(np.full(3, 7, np.float32))
    with pytest.raises(lm.LarsMultiValueError, match=r"^lr"):
        lm.lars_update(w, toy.ToyTensor(G), float("nan"), out=out)
    np.testing.assert_array_equal(out.values, 7)
    with (
        lm.using_backend("numpy"),
        pytest.raises(lm.MixedFrameworksError, match=r"^w: expected numpy arrays"),
    ):
        lm.lars_update(w, toy.ToyTensor(G), 0.1)


def test_a_backend_alike_written_for_lists_of_weights_takes_them(toy, monkeypatch):
    """A backend's own ``alike(xs, ws)`` written for a list of weights (len, zip,
    indexing) failed once the checks passed it a Layout: a Layout is a sequence of the
    weights too."""
    asked = []

    def alike(xs, ws):
        asked.append(len(ws))
        same = [type(x) is type(w) and x.dtype == w.dtype and x.shape == w.shape for x, w in zip(xs, ws)]
        return len(xs) == len(ws) and all(same) and ws[-1] is list(ws)[-1]

    monkeypatch.setattr(toy, "alike", alike, raising=False)
    w = {"a": toy.ToyTensor(W), "b": toy.ToyTensor(W * 2)}
    g = {"a": toy.ToyTensor(G), "b": toy.ToyTensor(G)}
    new = lm.lars_update(w, g, 0.1)
    assert_layer_close(new["b"].values, W * 2, G, 0.1, 0.0, "float32")
    assert 2 in asked


def test_toy_backend_forgotten_after_the_test():
    assert "toy" not in lm.available_backends()


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_registering_checks_its_arguments(isolated_registry):
    with pytest.raises(lm.LarsMultiTypeError, match="module_path"):
        lm.register_backend("mine", 123)
    with pytest.raises(lm.LarsMultiValueError, match="'numpy' is a built-in backend"):
        lm.register_backend("numpy", "_toy_backend")
    with pytest.raises(lm.UnknownBackendError):
        lm.set_backend(["numpy"])
    with pytest.raises(lm.LarsMultiTypeError, match=r"^framework: expected a top-level module's name"):
        lm.register_backend("mine", "_toy_backend", framework=3)  # (was listed as installed)


def test_a_built_in_backend_cannot_be_registered_over_with_its_own_module(isolated_registry):
    """Its own module path with another framework (or pip extra) was taken, and then
    NumPy arrays were no arrays to lars_multi."""
    for settings in ({"framework": "nosuchfw"}, {"pip_extra": "other"}):
        with pytest.raises(lm.LarsMultiValueError, match="'numpy' is a built-in backend"):
            lm.register_backend("numpy", "lars_multi.backends.numpy", **settings)
    lm.register_backend("numpy", "lars_multi.backends.numpy")  # (the same: nothing changes)
    np.testing.assert_allclose(lm.lars_update(W, G, 0.1), [2.5256584, 0.8418861, 4.683772], rtol=1e-6)


def test_a_backend_whose_framework_does_not_import_is_not_installed(isolated_registry):
    """Its module imported (any module), so it was listed as installed and could be chosen."""
    lm.register_backend("ghost", "json", framework="no_such_framework_for_lars_multi")
    assert "ghost" not in lm.installed_backends()
    with pytest.raises(lm.BackendNotInstalledError, match="no_such_framework_for_lars_multi"):
        lm.set_backend("ghost")


def test_a_backend_that_fails_to_import_is_not_installed(isolated_registry, tmp_path, monkeypatch):
    """Any error importing it, not only ImportError: installed_backends leaves it out."""
    _module(tmp_path, monkeypatch, "broken_backend_mod", "raise RuntimeError('broken on import')\n")
    lm.register_backend("broken", "broken_backend_mod")
    assert "broken" not in lm.installed_backends()
    with pytest.raises(lm.BackendNotInstalledError, match="RuntimeError: broken on import"):
        lm.set_backend("broken")


def test_a_backend_module_that_fails_beside_its_framework_is_named(isolated_registry, tmp_path, monkeypatch):
    """A backend module raising as it is imported, its framework importing fine, was said
    to need that framework's package ("needs the 'numpy' package")."""
    require_backend("numpy")
    _module(tmp_path, monkeypatch, "failing_backend_mod", "raise RuntimeError('broken on import')\n")
    lm.register_backend("failing", "failing_backend_mod", framework="numpy")
    match = r"^backend 'failing': its module 'failing_backend_mod' failed to import \(RuntimeError: broken"
    with pytest.raises(lm.BackendNotInstalledError, match=match):
        lm.set_backend("failing")


def test_an_incomplete_backend_answers_only_for_its_frameworks_arrays(
    isolated_registry, tmp_path, monkeypatch
):
    """A registered module that is no backend (primitives missing), of NumPy's framework,
    answered every value no backend owns: a Decimal learning rate got its "missing
    primitives" error instead of the learning rate's own."""
    require_backend("numpy")
    _module(tmp_path, monkeypatch, "not_a_backend_mod", "FRAMEWORK = 'numpy'\n")
    lm.register_backend("incomplete", "not_a_backend_mod", framework="numpy")
    w = np.ones(3, np.float32)
    match = r"^lr: expected a float or a 0-d array, got decimal.Decimal"
    with pytest.raises(lm.LarsMultiTypeError, match=match):
        lm.lars_update(w, w, decimal.Decimal("0.1"))
    with pytest.raises(lm.LarsMultiTypeError, match=r"not_a_backend_mod: expected the required primitives"):
        lm.set_backend("incomplete")


def test_a_backend_missing_a_required_primitive_is_refused_before_anything_is_written(
    isolated_registry, tmp_path, monkeypatch
):
    source = (TESTS / "_toy_backend.py").read_text().replace("def stack(", "def _no_stack(")
    _module(tmp_path, monkeypatch, "toy_without_stack", source)
    lm.register_backend("nostack", "toy_without_stack", framework="toy_without_stack")
    import toy_without_stack

    assert "nostack" not in lm.installed_backends()
    w = {"a": toy_without_stack.ToyTensor(W.copy()), "b": toy_without_stack.ToyTensor(W.copy())}
    with pytest.raises(lm.LarsMultiTypeError, match="missing stack"):
        lm.lars_update(w, {"a": w["a"], "b": w["b"]}, 0.1, out=w)
    assert all(np.array_equal(w[k].values, W) for k in w)


def test_a_backend_of_the_old_protocol_and_one_whose_compile_does_not_compile(
    isolated_registry, tmp_path, monkeypatch
):
    """0.3.21 renamed the optional ``cos`` ``sin``: a module defining ``cos`` only was given
    ``math.sin`` silently, which fails on its arrays under a compiler; it is refused, named.
    A ``compile`` that gives the function itself does not compile: such a backend was taken
    for a compiling one (each layer's ratio alone, twice the time), as defining ``compile``."""
    toy = (TESTS / "_toy_backend.py").read_text()
    _module(tmp_path, monkeypatch, "toy_with_cos", toy + "\ndef cos(x):\n    return np.cos(x)\n")
    lm.register_backend("withcos", "toy_with_cos", framework="toy_with_cos")
    with pytest.raises(lm.LarsMultiTypeError, match=r"defines cos, .* replaced by sin"):
        lm.set_backend("withcos")
    identity = "\ndef compile(function, donate=False):\n    return function\n"
    _module(tmp_path, monkeypatch, "toy_identity_compile", toy + identity)
    lm.register_backend("idcompile", "toy_identity_compile", framework="toy_identity_compile")
    assert lm._registry.get_backend("idcompile").COMPILES is False
    for name, compiles in (("numpy", False), ("torch", False), ("jax", True), ("tensorflow", True)):
        if is_installed(name):
            assert lm._registry.get_backend(name).COMPILES is compiles


def test_a_chosen_backend_that_does_not_import_says_so(isolated_registry, monkeypatch):
    """LARS_MULTI_BACKEND naming a backend whose framework is missing: not installed, not "mixed"."""
    require_backend("numpy")
    lm.register_backend("ghost", "no_such_module_for_lars_multi")
    monkeypatch.setattr(lm._registry, "_env_choice", "ghost")
    with pytest.raises(lm.BackendNotInstalledError, match="ghost"):
        lm.lars_update(W, G, 0.1)


def test_a_chosen_backend_takes_another_frameworks_arrays_it_accepts(
    isolated_registry, tmp_path, monkeypatch
):
    """A backend registered over NumPy arrays (an alternative NumPy backend) could not run:
    inference names the built-in numpy backend, and the chosen one refused its arrays as
    another framework's, though its is_native accepts them. Chosen, it runs them."""
    require_backend("numpy")
    source = """
from lars_multi.backends.numpy import *  # noqa: F403
from lars_multi.backends import numpy as _numpy

FRAMEWORK = "mynp"
calls = []


def norms(xs, axis_names=None):
    calls.append(len(xs))
    return _numpy.norms(xs, axis_names)
"""
    _module(tmp_path, monkeypatch, "mynp", source)
    lm.register_backend("mynp", "mynp", framework="numpy")
    import mynp

    with lm.using_backend("mynp"):
        one = lm.lars_update(W, G, 0.1)
        tree = lm.lars_update({"a": W, "b": W * 2}, {"a": G, "b": G}, 0.1)
        out = np.empty_like(W)  # (rates and outputs it takes too: they were another framework's)
        lm.lars_update(W, G, np.array(0.1, np.float32), out=out)
    assert mynp.calls == [2, 4, 2]  # (the norms of w and g, per call)
    np.testing.assert_array_equal(out, one)
    assert_layer_close(one, W, G, 0.1, 0.0, "float32")
    assert_layer_close(tree["b"], W * 2, G, 0.1, 0.0, "float32")
    with lm.using_backend("numpy"):
        lm.lars_update(W, G, 0.1)
    assert mynp.calls == [2, 4, 2]  # (inference and the built-in choice: the built-in numpy)


def test_reregistering_a_name_replaces_it(isolated_registry, monkeypatch):
    """register_backend under an existing name replaces the module used."""
    require_backend("numpy")
    monkeypatch.syspath_prepend(str(TESTS))
    lm.register_backend("numpy2", "lars_multi.backends.numpy", framework="numpy")
    with lm.using_backend("numpy2"):
        assert lm.current_backend() == "numpy2"
    lm.register_backend("numpy2", "_toy_backend", framework="_toy_backend")
    import _toy_backend

    with lm.using_backend("numpy2") as module:
        assert module is _toy_backend
    assert to_numpy(lm.lars_update(W, G, 0.1)).dtype == np.float32  # numpy still infers numpy


def test_a_container_passes_through_jax_jit_before_lars_multi_runs_on_jax():
    """A Container made once JAX is imported is a pytree to JAX at once: before, it
    was one only after lars_multi first ran on JAX, so the first ``jax.jit`` of a
    function taking one raised JAX's TypeError (not a valid JAX type)."""
    require_backend("jax")
    script = """
import sys
import jax, jax.numpy as jnp
import lars_multi as lm
assert "lars_multi.backends.jax" not in sys.modules
w = lm.Container(a=jnp.asarray([3.0, 1.0, 5.0]))
g = lm.Container(a=jnp.asarray([0.3, 0.1, 0.2]))
print(jax.jit(lambda w, g: lm.lars_update(w, g, 0.1))(w, g)["a"].tolist())
print(jax.tree_util.tree_structure(w).num_leaves)
"""
    first, leaves = run_python(script).splitlines()
    want = [2.5256584, 0.8418861, 4.683772]  # (the seed's example)
    np.testing.assert_allclose(json.loads(first), want, rtol=1e-6)
    assert leaves == "1"


def test_a_checkout_imports_its_own_backends(tmp_path):
    """A checkout on ``sys.path`` ahead of any install (``PYTHONPATH=.``, or a checkout's
    directory ahead of a regular install) finds the backends in its own ``backends/``,
    which pyproject installs as ``lars_multi.backends``: not "numpy is not installed", and
    not another checkout's backends through an editable install's finder."""
    root = TESTS.parent
    for part in ("lars_multi", "backends"):
        shutil.copytree(root / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", tmp_path)
    (tmp_path / "lars_multi" / "backends" / "__pycache__").mkdir(parents=True)  # (a leftover: no package)
    script = (
        "import sys, numpy as np, lars_multi as lm, lars_multi.backends as b\n"
        "assert lm.backends is b  # (an attribute of the package, as an import makes it)\n"
        "print(lm.__file__); print(b.__file__); print('numpy' in lm.installed_backends())\n"
        "print(lm.lars_update(np.array([3.0, 1, 5]), np.array([0.3, 0.1, 0.2]), 0.1).tolist())\n"
    )
    # Run in the checkout, as ``python`` run there puts it first on ``sys.path``.
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    package, backends, numpy_installed, result = done.stdout.splitlines()
    assert Path(package).parent == tmp_path / "lars_multi"
    assert Path(backends).parent == tmp_path / "backends"
    assert numpy_installed == "True"
    np.testing.assert_allclose(json.loads(result), [2.52565837, 0.8418861, 4.68377209])
