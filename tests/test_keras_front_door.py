"""``lm.keras.LARS``: the shared LARS rule as a Keras 3 optimizer.

On each Keras backend (TensorFlow in this process when Keras runs on it, JAX
and torch in fresh interpreters started at once): ``apply_gradients`` equals
:func:`lars_multi.optim.lars` on NumPy copies (name-pattern masks, Nesterov,
schedules, the timm preset's first step), ``model.fit`` trains, and a
``model.save`` / ``keras.models.load_model`` round trip restores the
optimizer with its momentum buffers and resumes identically.
"""

from __future__ import annotations

import importlib.util
import json
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
from conftest import backends_to_test, require_backend, run_python

# Defines ``check(folder)``, which returns a dict of results.
KERAS_SCRIPT = r"""
import json
import os
import numpy as np
import keras
import lars_multi as lm
import lars_multi.keras


def _numpy(x):
    return np.array(keras.ops.convert_to_numpy(x))


def _model():
    # seeded initializers: keras.utils.set_random_seed would import TensorFlow
    normal = keras.initializers.RandomNormal
    hidden = keras.layers.Dense(
        3, kernel_initializer=normal(seed=0), bias_initializer=normal(seed=1), name="hidden"
    )
    head = keras.layers.Dense(2, kernel_initializer=normal(seed=2), name="head")
    return keras.Sequential([keras.Input((4,)), hidden, head])


class _Exponential:
    # ExponentialDecay(initial, 10, rate) of the step count, for lars_multi.optim; at
    # step every * count + shift (Keras asks schedules at its count of micro-batches)
    def __init__(self, initial, rate, every=1, shift=0):
        self.initial, self.rate, self.every, self.shift = initial, rate, every, shift

    def __call__(self, count):
        return self.initial * self.rate ** (float(self.every * int(count) + self.shift) / 10)


CASES = {
    # name: (LARS keyword arguments, lars_multi.optim.lars keyword arguments)
    "paper_patterns": (
        dict(learning_rate=0.5, weight_decay=1e-2, trust_coefficient=0.02,
             exclude_from_adaptation=["hidden/kernel"], exclude_from_weight_decay=["head"]),
        dict(learning_rate=0.5, weight_decay=1e-2, trust_coefficient=0.02,
             adapt_mask=[False, False, True, False], weight_decay_mask=[True, False, False, False]),
    ),
    "timm_nesterov_schedules": (
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5),
             weight_decay=keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.1),
             nesterov=True, trust_coefficient=0.02, preset="timm"),
        dict(learning_rate=_Exponential(0.5, 0.5), weight_decay=_Exponential(1e-2, 0.1),
             nesterov=True, trust_coefficient=0.02, preset="timm"),
    ),
    # timm starts a buffer at r u on its own variable's first update: "hidden/kernel" gets
    # no gradient at the first call
    "timm_late_gradient_dampening": (
        dict(learning_rate=0.5, weight_decay=1e-2, dampening=0.5, trust_coefficient=0.02, preset="timm"),
        dict(learning_rate=0.5, weight_decay=1e-2, dampening=0.5, trust_coefficient=0.02, preset="timm"),
    ),
    # two micro-batches per update (their mean gradient); both schedules on one clock
    "accumulation_schedules": (
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5),
             weight_decay=keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5),
             trust_coefficient=0.02, gradient_accumulation_steps=2),
        dict(learning_rate=_Exponential(0.5, 0.5, every=2, shift=1),
             weight_decay=_Exponential(0.5, 0.5, every=2, shift=1), trust_coefficient=0.02),
    ),
    "optax_dampening_clip": (
        dict(learning_rate=0.5, weight_decay=1e-3, dampening=0.1, trust_clip=True, eps=1e-6, preset="optax"),
        dict(learning_rate=0.5, weight_decay=1e-3, dampening=0.1, trust_clip=True, eps=1e-6, preset="optax"),
    ),
}


def check_apply_gradients(name):
    ours, reference = CASES[name]
    model = _model()
    variables = model.trainable_variables
    optimizer = lars_multi.keras.LARS(**ours)
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(4)]
    if "late" in name:
        grads[0][0] = None
    params = [_numpy(v) for v in variables]
    optimizer.build(variables)  # (as model.fit does: every variable, whether it gets a gradient or not)
    for gs in grads:
        pairs = [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, variables) if g is not None]
        optimizer.apply_gradients(pairs)
    opt = lm.optim.lars(**reference)
    state = opt.init(params)
    every = ours.get("gradient_accumulation_steps") or 1
    for k in range(0, len(grads), every):
        gs = [None if g is None else np.mean([grads[j][i] for j in range(k, k + every)], axis=0)
              for i, g in enumerate(grads[k])]
        params, state = opt.step(params, gs, state)
    err = max(float(np.abs(_numpy(v) - p).max()) for v, p in zip(variables, params))
    momentum_err = max(
        float(np.abs(_numpy(m) - b).max()) for m, b in zip(optimizer.momentums, state.momentum)
    )
    return {"err": err, "momentum_err": momentum_err, "iterations": int(_numpy(optimizer.iterations))}


def check_fit_save_load(folder):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    model = _model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5)
    optimizer = lars_multi.keras.LARS(
        schedule, weight_decay=keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.1),
        trust_coefficient=0.02, exclude_from_weight_decay=["head"], preset="timm",
    )
    model.compile(optimizer=optimizer, loss="mse")
    before = [_numpy(v) for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    trained = all(np.all(np.isfinite(_numpy(v))) for v in model.trainable_variables)
    moved = all(np.any(_numpy(v) != b) for v, b in zip(model.trainable_variables, before))
    path = os.path.join(folder, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer
    state_err = max(
        float(np.abs(_numpy(a) - _numpy(b)).max()) for a, b in zip(optimizer.momentums, restored.momentums)
    )
    iterations = [int(_numpy(optimizer.iterations)), int(_numpy(restored.iterations))]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    resume_err = max(
        float(np.abs(_numpy(a) - _numpy(b)).max())
        for a, b in zip(model.trainable_variables, loaded.trainable_variables)
    )
    config = optimizer.get_config()
    again = lars_multi.keras.LARS.from_config(json.loads(json.dumps(config))).get_config()
    return {
        "trained": bool(trained),
        "moved": bool(moved),
        "type": type(restored).__name__,
        "iterations": iterations,
        "state_err": state_err,
        "resume_err": resume_err,
        "config_round_trip": again == config,
        "restored_config": restored.get_config() == config,
        "keras_weight_decay": optimizer.weight_decay,
        "n_momentums": len(restored.momentums),
    }


def check_half_rates():
    # One step w - lr g (timm, no decay: r = 1) on half-precision variables: the rate is used
    # in float32, as the layer computes; rounded to float16 first, 2e-8 became 0 (no step)
    # and 1e-7 became 1.19e-7. A float32 gradient is used as it is: cast to float16 first,
    # 1e5 was inf. Each: [got, expected] (float32 arithmetic, then rounded).
    import ml_dtypes

    results = {}
    for dtype, lr, w0, g0, g_dtype in (("float16", 2e-8, 0.01, 1e4, None), ("float16", 1e-7, 0.01, 1e4, None),
                                       ("bfloat16", 0.0123, 1.0, 10.0, None),
                                       ("float16", 1e-8, 0.01, 1e5, "float32")):
        half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
        v = keras.Variable(np.full((2, 2), w0), dtype=dtype)
        g = keras.ops.convert_to_tensor(np.full((2, 2), g0), dtype=g_dtype or dtype)
        lars_multi.keras.LARS(lr, momentum=0.0, preset="timm").apply([g], [v])
        w32, g32 = np.float32(half(w0)), np.float32(g0 if g_dtype else half(g0))
        expected = float(np.float32(w32 - np.float32(lr) * g32).astype(half))
        results[f"{dtype} {lr} {g_dtype}"] = [float(_numpy(keras.ops.cast(v, "float32"))[0, 0]), expected]
    return results


def check_float64():
    # Float64 variables with weight decay (paper, timm): Keras hands its float32 rate
    # variable to the step, which on TensorFlow was not cast (a float32-float64 Mul failed;
    # with one variable given a gradient, after its momentum buffer was written). Also
    # model.fit of a float64 model. Each: the largest difference to lm.optim on NumPy.
    results = {}
    rng = np.random.default_rng(3)
    for preset in ("paper", "timm"):
        variables = [keras.Variable(rng.normal(size=s), dtype="float64") for s in ((3, 2), (2,))]
        grads = [[rng.normal(size=v.shape) for v in variables] for _ in range(3)]
        grads[2][1] = None  # the last call steps one variable
        arguments = dict(learning_rate=0.5, weight_decay=1e-2, trust_coefficient=0.02, preset=preset)
        optimizer = lars_multi.keras.LARS(**arguments)
        optimizer.build(variables)
        params = [_numpy(v) for v in variables]
        opt = lm.optim.lars(**arguments)
        state = opt.init(params)
        for gs in grads:
            pairs = [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, variables) if g is not None]
            optimizer.apply_gradients(pairs)
            params, state = opt.step(params, gs, state)
        results[preset] = max(float(np.abs(_numpy(v) - p).max()) for v, p in zip(variables, params))
    model = keras.Sequential([keras.Input((4,), dtype="float64"), keras.layers.Dense(2, dtype="float64")])
    model.compile(optimizer=lars_multi.keras.LARS(0.5, weight_decay=1e-2, preset="timm"), loss="mse")
    model.fit(rng.normal(size=(16, 4)), rng.normal(size=(16, 2)), batch_size=8, verbose=0)
    results["fit"] = all(np.all(np.isfinite(_numpy(v))) for v in model.trainable_variables)
    return results


def check_refused_dtypes():
    # Variables that are not floats: a complex one was stepped on Keras' JAX backend with
    # a wrong step, an int one beside a float one failed on TensorFlow after the float one
    # and its buffer were written. Each: the message, and whether anything changed.
    results = {}
    if keras.backend.backend() == "torch":  # (its variables are Parameters: no int or complex ones)
        return results
    for dtype in ("int32", "complex64"):
        good = keras.Variable(np.full((2, 2), 0.5, "float32"), name="good")
        bad = keras.Variable(np.ones((2, 2), dtype), name="bad")
        optimizer = lars_multi.keras.LARS(0.5, weight_decay=1e-2)
        try:
            optimizer.apply([keras.ops.ones((2, 2)), keras.ops.ones((2, 2), dtype)], [good, bad])
            message = None
        except lm.LarsMultiTypeError as error:
            message = str(error)
        unchanged = bool(np.all(_numpy(good) == 0.5) and np.all(_numpy(bad) == 1))
        results[dtype] = [message, unchanged]
    return results


def check(folder, cases=tuple(CASES)):
    import time

    result = {"backend": keras.backend.backend(), "seconds": {}, "half_rates": check_half_rates()}
    result["refused_dtypes"] = check_refused_dtypes()
    if keras.backend.backend() != "jax":  # (float64 on JAX needs jax_enable_x64)
        result["float64"] = check_float64()
    for name in cases:
        start = time.perf_counter()
        result[name] = check_apply_gradients(name)
        result["seconds"][name] = time.perf_counter() - start
    start = time.perf_counter()
    result["fit"] = check_fit_save_load(folder)
    result["seconds"]["fit"] = time.perf_counter() - start
    return result
"""

SUBPROCESS_BACKENDS = ("jax", "torch")
ALL_CASES = (
    "paper_patterns",
    "timm_nesterov_schedules",
    "timm_late_gradient_dampening",
    "accumulation_schedules",
    "optax_dampening_clip",
)
# The other Keras backends run the cases that exercise most (schedules, Nesterov, the
# timm preset's first step of each variable) and the fit / save / load round trip.
ESSENTIAL_CASES = ("timm_nesterov_schedules", "timm_late_gradient_dampening")
UPDATES = {"accumulation_schedules": 2}  # optimizer.iterations after the 4 calls (else 4)


def _keras_on_tensorflow():
    """Keras, where it runs on TensorFlow in this process (else the test is skipped)."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"keras runs on {keras.backend.backend()} in this process")
    return keras


def _check_result(result, backend):
    assert result["backend"] == backend
    for name in ALL_CASES if backend == "tensorflow" else ESSENTIAL_CASES:
        case = result[name]
        updates = UPDATES.get(name, 4)
        assert case["err"] < 1e-6 and case["momentum_err"] < 1e-6 and case["iterations"] == updates, (
            name,
            case,
        )
    for case, (got, expected) in result["half_rates"].items():
        assert got == expected, (case, got, expected)
    for dtype, (message, unchanged) in result["refused_dtypes"].items():
        assert message is not None and message.startswith("bad: expected a floating dtype"), (dtype, message)
        assert unchanged, dtype
    if backend != "jax":
        wide = result["float64"]
        assert wide["paper"] < 1e-12 and wide["timm"] < 1e-12 and wide["fit"], wide
    fit = result["fit"]
    assert fit["trained"] and fit["moved"], fit
    assert fit["type"] == "LARS" and fit["n_momentums"] == 4, fit
    assert fit["iterations"] == [4, 4], fit
    assert fit["state_err"] == 0 and fit["resume_err"] < 1e-6, fit
    assert fit["config_round_trip"] and fit["restored_config"], fit
    assert fit["keras_weight_decay"] is None, fit


@pytest.fixture(scope="module")
def keras_runs(tmp_path_factory):
    """The JAX and torch Keras backends, each in a fresh interpreter started at
    once (in threads), so that they run while the in-process test does."""
    if importlib.util.find_spec("keras") is None:
        yield {}
        return
    names = [n for n in SUBPROCESS_BACKENDS if n in backends_to_test()]
    with ThreadPoolExecutor(max(1, len(names))) as pool:
        futures = {}
        for name in names:
            folder = tmp_path_factory.mktemp(f"keras_{name}")
            call = f"check({str(folder)!r}, cases={ESSENTIAL_CASES!r})"
            script = f"{KERAS_SCRIPT}\nprint('RESULT ' + json.dumps({call}))\n"
            futures[name] = pool.submit(run_python, script, KERAS_BACKEND=name, TF_CPP_MIN_LOG_LEVEL="3")
        yield futures


def test_keras_tensorflow_backend(keras_runs, tmp_path):
    require_backend("tensorflow")
    _keras_on_tensorflow()
    namespace: dict = {}
    exec(KERAS_SCRIPT, namespace)
    _check_result(namespace["check"](str(tmp_path)), "tensorflow")


@pytest.mark.parametrize("keras_backend", SUBPROCESS_BACKENDS)
def test_keras_other_backends(keras_backend, keras_runs):
    require_backend(keras_backend)
    pytest.importorskip("keras")
    out = keras_runs[keras_backend].result()
    line = next(s for s in out.splitlines() if s.startswith("RESULT "))
    _check_result(json.loads(line.removeprefix("RESULT ")), keras_backend)


def test_bad_arguments_are_lars_multi_errors():
    pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    with pytest.raises(lm.LarsMultiValueError, match="momentum"):
        lars_multi.keras.LARS(0.1, momentum=2.0)
    with pytest.raises(lm.LarsMultiTypeError, match="exclude_from_adaptation"):
        lars_multi.keras.LARS(0.1, exclude_from_adaptation=[3])
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(lm.LarsMultiValueError, match="learning_rate"):
            lars_multi.keras.LARS(bad)
    with pytest.raises(lm.LarsMultiValueError, match="trust_coefficient"):
        lars_multi.keras.LARS(0.1, trust_coefficient=0.0)
    assert lm.keras.LARS is lars_multi.keras.LARS
    # TF Model Garden's names (the migration table's start) were Keras' "not recognized" ValueError.
    for theirs, ours in (
        ("weight_decay_rate", "weight_decay"),
        ("eeta", "trust_coefficient"),
        ("exclude_from_layer_adaptation", "exclude_from_adaptation"),
        ("classic_momentum", "preset='optax'"),
    ):
        with pytest.raises(lm.LarsMultiTypeError, match=rf"^{theirs}: TF Model Garden's name; .* {ours}"):
            lars_multi.keras.LARS(0.1, **{theirs: 1e-4})


def test_rates_of_every_kind_are_checked():
    """NumPy scalars and 0-d arrays are checked as the numbers they hold (they trained
    with a negative or NaN rate, and np.float64 weight decay broke model.fit); a
    schedule's number is checked at each step; schedules that Keras could not call or
    restore are refused when the optimizer is made."""
    keras = pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    for bad in (np.float64(-0.5), np.float32(np.nan), np.array(-0.5)):
        with pytest.raises(
            lm.LarsMultiValueError, match=r"^learning_rate: expected a number in \[0.0, inf\)"
        ):
            lars_multi.keras.LARS(bad)
        with pytest.raises(lm.LarsMultiValueError, match=r"^weight_decay: expected a number in \[0.0, inf\)"):
            lars_multi.keras.LARS(0.1, weight_decay=bad)
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^learning_rate: expected a number, a 0-d array or a schedule"
    ):
        lars_multi.keras.LARS(np.ones(2))
    variable = keras.Variable(np.ones((2, 2), np.float32))
    gradient = keras.ops.convert_to_tensor(np.full((2, 2), 0.5, np.float32))
    optimizer = lars_multi.keras.LARS(0.1, weight_decay=lambda: -5.0)
    with pytest.raises(lm.LarsMultiValueError, match=r"^weight_decay\(\): expected a finite number >= 0"):
        optimizer.apply([gradient], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), np.ones((2, 2)))
    given, plain = (
        lars_multi.keras.LARS(0.1, weight_decay=np.float64(1e-2)),
        lars_multi.keras.LARS(0.1, weight_decay=1e-2),
    )
    assert given.get_config() == plain.get_config()
    with pytest.raises(lm.LarsMultiTypeError, match=r"^learning_rate: expected .*a callable of no arguments"):
        lars_multi.keras.LARS(lambda step: 0.1)
    lars_multi.keras.LARS(lambda: 0.1)  # (Keras calls it with no argument)
    # A weight decay is called as the learning rate is (it was called with the step, and a
    # callable of no arguments, taken when the optimizer was made, failed at the first step).
    with pytest.raises(lm.LarsMultiTypeError, match=r"^weight_decay: expected .*a callable of no arguments"):
        lars_multi.keras.LARS(0.1, weight_decay=lambda step: 0.1)
    # Numbers that overflow a variable's compute dtype are refused when the optimizer is
    # built, naming it (float32 variables silently became inf, or stopped adapting).
    for name in ("learning_rate", "weight_decay", "trust_coefficient", "eps"):
        arguments = {"learning_rate": 0.1, name: 1e39}
        optimizer = lars_multi.keras.LARS(**arguments)
        with pytest.raises(lm.LarsMultiValueError, match=rf"^{name}: expected a number that fits float32"):
            optimizer.apply([gradient], [keras.Variable(np.ones((2, 2), np.float32))])
    wide = keras.Variable(np.ones((2, 2)), dtype="float64")
    lars_multi.keras.LARS(0.1, trust_coefficient=1e39).apply([keras.ops.cast(gradient, "float64")], [wide])
    results = []
    for decay in (lambda: 0.5, 0.5):
        variable = keras.Variable(np.ones((2, 2), np.float32))
        lars_multi.keras.LARS(0.1, weight_decay=decay, preset="optax").apply([gradient], [variable])
        results.append(keras.ops.convert_to_numpy(variable))
    np.testing.assert_array_equal(*results)
    assert not np.array_equal(results[0], np.ones((2, 2)))

    class Shifted(lm.schedules.warmup_polynomial):
        pass

    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^learning_rate: expected a lars_multi schedule .*subclass"
    ):
        lars_multi.keras.LARS(Shifted(0.1, 2, 10))
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^kind: expected one of 'warmup_polynomial', 'warmup_cosine'"
    ):
        lars_multi.keras.Schedule("nope")
    with pytest.raises(lm.LarsMultiTypeError, match=r"^warmup_polynomial: .*missing"):
        lars_multi.keras.Schedule("warmup_polynomial", peak=1.0)


def test_gradients_and_rates_set_later_are_checked_before_anything_is_written():
    """A gradient of another shape that broadcasts to its variable was stepped with the
    norm of its own few values (a wrong step); one that does not broadcast failed in
    TensorFlow after the variables before it were written. A rate set later (as Keras'
    callbacks set it) was not checked: NaN weights, or a step uphill."""
    keras = pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    rng = np.random.default_rng(0)
    first, second = (rng.standard_normal(shape).astype(np.float32) for shape in ((5, 4), (4, 4)))
    for bad in ((4,), (1, 4), (), (16,)):
        variables = [keras.Variable(first, name="a"), keras.Variable(second, name="kernel")]
        optimizer = lars_multi.keras.LARS(0.5, weight_decay=1e-2)
        if bad != (16,):
            optimizer.build(variables)
        gradients = [keras.ops.ones((5, 4)), keras.ops.ones(bad)]
        with pytest.raises(
            lm.LarsMultiValueError,
            match=rf"^grads\[1\]: expected shape \(4, 4\) \(the shape of kernel\), got {re.escape(str(bad))}",
        ):
            optimizer.apply(gradients, variables)
        for variable, before in zip(variables, (first, second)):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before)
        assert all(not np.any(keras.ops.convert_to_numpy(m)) for m in getattr(optimizer, "momentums", []))
        assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0
    variable = keras.Variable(np.ones((2, 2), np.float32))
    optimizer = lars_multi.keras.LARS(0.5)
    optimizer.build([variable])
    for bad in (float("nan"), -1.0, np.float32(-0.5), 1e39):
        with pytest.raises(lm.LarsMultiValueError, match=r"^learning_rate: expected a number"):
            optimizer.learning_rate = bad
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == 0.5
    optimizer.learning_rate = 0.25
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == 0.25


def test_settings_made_once_rates_of_callables_and_variables_are_checked():
    """Found by probing Keras' optimizer features. A hyper-parameter set on the optimizer
    later was ignored while training, then saved by get_config (a resumed run differed),
    and `weight_decay` set later turned Keras' decoupled decay on beside LARS's; they are
    refused by name. A callable's learning rate was never checked (a step uphill, NaN
    weights). A variable given as a rate was read once (the run went on at its first
    value), as Keras' own optimizers refuse it; a TensorFlow variable to train failed with
    AttributeError; a late exclude_from_weight_decay was ignored; a variable given twice
    shared one momentum buffer between its two updates (TensorFlow: another result)."""
    keras = pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    optimizer = lars_multi.keras.LARS(0.1, weight_decay=1e-2)
    for name, value in (
        ("momentum", 0.5),
        ("weight_decay", 0.05),
        ("lars_weight_decay", 0.05),
        ("nesterov", True),
        ("trust_coefficient", 0.1),
        ("preset", "timm"),
        ("exclude_from_adaptation_patterns", ["kernel"]),
        ("exclude_from_adaptation", ["kernel"]),
        ("exclude_from_weight_decay", ["bias"]),
    ):
        with pytest.raises(
            lm.LarsMultiValueError, match=rf"^{name}: expected to be set when the optimizer is made"
        ):
            setattr(optimizer, name, value)
    config = optimizer.get_config()
    assert config["momentum"] == 0.9 and config["weight_decay"] == 1e-2 and optimizer.weight_decay is None
    ones = np.ones((2, 3), np.float32)
    gradient = keras.ops.convert_to_tensor(np.full((2, 3), 0.5, np.float32))
    for bad in (-0.5, float("nan")):
        variable = keras.Variable(ones)
        with pytest.raises(
            lm.LarsMultiValueError, match=r"^learning_rate\(\): expected a finite number >= 0"
        ):
            lars_multi.keras.LARS(lambda bad=bad: bad).apply([gradient], [variable])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), ones)
    variables = [keras.Variable(0.1)]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        variables.append(tf.Variable(0.1))
        trained = tf.Variable(ones)  # (a TensorFlow variable to train: w - lr g, timm's r = 1 without decay)
        lars_multi.keras.LARS(0.1, momentum=0.0, preset="timm").apply([gradient], [trained])
        np.testing.assert_allclose(trained.numpy(), ones - np.float32(0.1) * np.float32(0.5), rtol=1e-7)
        with pytest.raises(
            lm.LarsMultiValueError, match=r"^learning_rate: expected a number that fits float32"
        ):
            lars_multi.keras.LARS(1e39).apply(
                [gradient], [tf.Variable(ones)]
            )  # (it failed with AttributeError)
    for rate in variables:
        for arguments, advice in (
            ({"learning_rate": rate}, "set optimizer.learning_rate as training goes, or give a schedule"),
            ({"weight_decay": rate}, "give a schedule"),  # (the weight decay cannot be set later)
        ):
            with pytest.raises(
                lm.LarsMultiTypeError,
                match=rf"expected a number, a 0-d array or a schedule, got a variable .*; {advice}$",
            ):
                lars_multi.keras.LARS(**{"learning_rate": 0.1, **arguments})
        with pytest.raises(lm.LarsMultiTypeError, match=r"^learning_rate: .* got a variable"):
            optimizer.learning_rate = rate
    variable = keras.Variable(ones, name="kernel")
    excluded = lars_multi.keras.LARS(0.1, weight_decay=0.1)
    excluded.exclude_from_weight_decay(var_names=["bias"])  # (before it is built: taken)
    excluded.build([variable])
    with pytest.raises(
        lm.LarsMultiValueError,
        match=r"^exclude_from_weight_decay: expected a call before the optimizer is built",
    ):
        excluded.exclude_from_weight_decay(var_list=[variable])
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^trainable_variables: expected distinct variables, got .*kernel twice"
    ):
        lars_multi.keras.LARS(0.1).apply([gradient, gradient], [variable, variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), ones)


def test_indexed_slices_without_a_dense_shape_step_as_their_sum():
    """tf.IndexedSlices with no dense_shape (as a hand-made sparse gradient has) raised
    TensorFlow's untyped conversion error; the variable's shape is known, so they are
    summed into it (duplicate rows added), as a dense gradient of those rows."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.IndexedSlices are TensorFlow's")
    import tensorflow as tf

    import lars_multi.keras

    values = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    sparse, dense = keras.Variable(np.ones((6, 2), np.float32)), keras.Variable(np.ones((6, 2), np.float32))
    lars_multi.keras.LARS(0.1).apply_gradients([(tf.IndexedSlices(values, tf.constant([1, 1])), sparse)])
    summed = np.zeros((6, 2), np.float32)
    summed[1] = values.sum(axis=0)
    lars_multi.keras.LARS(0.1).apply_gradients([(tf.constant(summed), dense)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sparse), keras.ops.convert_to_numpy(dense))
    assert not np.array_equal(keras.ops.convert_to_numpy(sparse), np.ones((6, 2)))


def _sparse_step(optimizer, kernel, emb):
    import tensorflow as tf

    def step(indices):
        slices = tf.IndexedSlices(tf.ones((2, 3)), indices, tf.constant([2, 3]))
        optimizer.apply_gradients([(tf.fill((2, 2), 0.5), kernel), (slices, emb)])

    return step


@pytest.mark.parametrize("row", [-1, 2])
def test_indexed_slices_with_a_row_outside_the_variable_write_nothing(row):
    """The Keras door densified sparse gradients itself: a negative row was dropped (the
    step was that of the other rows, silently), and in a tf.function one past the end
    failed after the other variables, their buffers and the step count were written.
    Refused by name eagerly; in a tf.function every write waits on the check."""
    keras = _keras_on_tensorflow()
    import tensorflow as tf

    import lars_multi as lm
    import lars_multi.keras

    table = np.array([[3.0, 1, 5], [7, 2, 9]], np.float32)
    for compiled in (False, True):
        emb, kernel = keras.Variable(table, name="emb"), keras.Variable(np.ones((2, 2), np.float32), name="k")
        optimizer = lars_multi.keras.LARS(0.1, momentum=0.9)
        optimizer.build([kernel, emb])

        step = _sparse_step(optimizer, kernel, emb)
        run = tf.function(step) if compiled else step
        error = tf.errors.InvalidArgumentError if compiled else lm.LarsMultiValueError
        message = (
            r"a row index outside \[0, rows\)" if compiled else rf"^grads\[1\] \(of emb\): .* got {row}$"
        )
        with pytest.raises(error, match=message):
            run(tf.constant([0, row]))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(emb), table)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel), 1.0)
        assert not any(np.any(keras.ops.convert_to_numpy(m)) for m in optimizer.momentums)
        assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0


def test_lars_multi_schedules_are_keras_schedules(tmp_path):
    """A lars_multi schedule as learning_rate (Keras calls other callables with no
    argument) and as weight_decay: the same steps as lm.optim, saved with the model."""
    keras = _keras_on_tensorflow()
    import lars_multi as lm
    import lars_multi.keras

    schedules = dict(
        learning_rate=lm.schedules.warmup_polynomial(0.5, 2, 8),
        weight_decay=lm.schedules.warmup_cosine(1e-2, 1, 8),
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    optimizer = lars_multi.keras.LARS(trust_coefficient=0.02, **schedules)
    model.compile(optimizer=optimizer, loss="mse")
    params = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=p.shape).astype("float32") for p in params] for _ in range(4)]
    for gs in grads:
        optimizer.apply_gradients(
            zip([keras.ops.convert_to_tensor(g) for g in gs], model.trainable_variables)
        )
    opt = lm.optim.lars(trust_coefficient=0.02, **schedules)
    state = opt.init(params)
    for gs in grads:
        params, state = opt.step(params, gs, state)
    for v, p in zip(model.trainable_variables, params):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), p, rtol=0, atol=1e-6)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras").optimizer
    assert restored.get_config() == optimizer.get_config()
    assert isinstance(restored.lars_weight_decay, lars_multi.keras.Schedule)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_exclusions_made_by_the_method_are_saved_with_the_model(tmp_path, functional):
    """``exclude_from_weight_decay(var_names=..., var_list=...)`` before the first step
    excludes what Keras excludes (names: regular expressions searched in the variable's
    name; variables: those), and a model loaded from ``model.save`` leaves the same
    variables undecayed and goes on as the uninterrupted run (Keras saves no record of
    the call: the loaded optimizer decayed them, 1e-3 off after one more epoch). A second
    call replaces the first, as Keras' does."""
    keras = _keras_on_tensorflow()
    import lars_multi.keras

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    if functional:  # (with a nested model holding a layer of the excluded one's name)
        inner = keras.Input((3,))
        nested = keras.Model(inner, keras.layers.Dense(3, name="out")(inner), name="enc")
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(4, name="hidden")(nested(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    else:
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="out")]
        )
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    optimizer = lars_multi.keras.LARS(0.5, weight_decay=0.5, trust_coefficient=0.02, preset="optax")
    optimizer.exclude_from_weight_decay(var_names=["kernel"])  # (replaced by the next call)
    optimizer.exclude_from_weight_decay(var_list=[dense[1].kernel], var_names=["bi.s"])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    decayed = [flags.decay for flags in optimizer._lars_flags]
    kernels_decayed = [(True,), (False,), (False,), (False,)]  # hidden's kernel only, of the others
    assert decayed == ([(True,), (False,)] if functional else []) + kernels_decayed  # (enc/out's kept)
    assert [flags.decay for flags in loaded.optimizer._lars_flags] == decayed
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_variables_excluded_by_the_method_need_a_built_optimizer_to_be_saved():
    """Excluded variables are saved with the optimizer's state (which variables are
    adapted and decayed, beside the buffers): an optimizer not built yet has none, and is
    refused by name rather than saved without them."""
    keras = pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    variable = keras.Variable(np.ones((2, 2), "float32"), name="w")
    optimizer = lars_multi.keras.LARS(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_list=[variable])
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^exclude_from_weight_decay: expected the optimizer built"
    ):
        optimizer.get_config()
    optimizer.build([variable])
    assert "exclude_from_weight_decay_call" not in optimizer.get_config()
    assert [flags.decay for flags in optimizer._lars_flags] == [(False,)]
    assert keras.ops.convert_to_numpy(optimizer._lars_layers).tolist() == [1]  # (adapted, not decayed)


def test_a_pattern_that_is_not_a_regular_expression_is_a_substring():
    keras = pytest.importorskip("keras")
    import lars_multi.keras

    optimizer = lars_multi.keras.LARS(0.1, exclude_from_adaptation=["block(", "head"])
    inside = keras.Variable(np.ones((2, 2), "float32"), name="block(1)")
    outside = keras.Variable(np.ones((2, 2), "float32"), name="other")
    optimizer.build([inside, outside])
    assert [flags.adapt for flags in optimizer._lars_flags] == [(False,), (True,)]


def test_rates_that_are_not_numbers_are_refused_and_numpy_scalars_taken():
    """A bool or a string learning rate or weight decay was read as a number (True:
    a rate of 1.0; "0.1" parsed); None and 10**400 raised Keras' or Python's errors;
    a NumPy float32 rate raised Keras' ValueError. An empty name pattern matched
    every variable (nothing adapted), silently."""
    pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    for bad in (True, "0.1", None):
        with pytest.raises(lm.LarsMultiTypeError, match=r"^learning_rate: expected a number"):
            lars_multi.keras.LARS(bad)
        with pytest.raises(lm.LarsMultiTypeError, match=r"^learning_rate: expected a number"):
            lars_multi.keras.LARS(0.1).learning_rate = bad
    for bad in (True, "0.1"):
        with pytest.raises(lm.LarsMultiTypeError, match=r"^weight_decay: expected a number"):
            lars_multi.keras.LARS(0.1, weight_decay=bad)
    with pytest.raises(lm.LarsMultiValueError, match=r"^learning_rate: .*too large for a float"):
        lars_multi.keras.LARS(10**400)
    for number in (np.float32(0.5), np.int64(1)):
        assert lars_multi.keras.LARS(number).get_config() == lars_multi.keras.LARS(float(number)).get_config()
    # eps, any real number, was kept as given: a Fraction made model.save fail (no JSON for it)
    config = lars_multi.keras.LARS(0.1, eps=Fraction(1, 1000)).get_config()
    assert type(config["eps"]) is float and config["eps"] == 0.001
    json.dumps(config)
    assert lars_multi.keras.LARS(0.1).get_config()["eps"] is None  # (the preset's)
    for arg in ("exclude_from_adaptation", "exclude_from_weight_decay"):
        with pytest.raises(lm.LarsMultiValueError, match=rf"^{arg}: expected non-empty name patterns"):
            lars_multi.keras.LARS(0.1, **{arg: ["bias", ""]})
        with pytest.raises(lm.LarsMultiValueError, match=rf"^{arg}: expected non-empty name patterns"):
            lars_multi.keras.LARS(0.1, **{arg: ""})  # (one pattern, as a string: it was taken)
        with pytest.raises(
            lm.LarsMultiTypeError, match=rf"^{arg}: expected name patterns \(str\), got int 3"
        ):
            lars_multi.keras.LARS(0.1, **{arg: ["bias", 3]})


def test_schedule_kinds_and_configs_are_checked():
    pytest.importorskip("keras")
    import lars_multi as lm
    import lars_multi.keras

    with pytest.raises(lm.LarsMultiValueError, match=r"^kind: expected one of"):
        lars_multi.keras.Schedule([])
    with pytest.raises(lm.LarsMultiValueError, match=r"^config: expected a dict with the schedule's 'kind'"):
        lars_multi.keras.Schedule.from_config({"peak": 1.0})
    schedule = lars_multi.keras.Schedule("warmup_cosine", peak=1.0, warmup_steps=1, total_steps=5)
    assert lars_multi.keras.Schedule.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_a_state_saved_by_another_optimizer_or_preset_is_not_taken_for_the_buffers(tmp_path):
    """Keras' files pair an optimizer's variables by count and place, and Keras SGD's
    (and a LARS of another preset's) were laid out as LARS's: ``load_weights`` took
    SGD's velocities (opposite sign, no trust ratio) as the paper preset's buffers, and
    a timm checkpoint's buffers (r u) as the paper preset's (eta r u), silently. Each is
    skipped with Keras' warning, the buffers left new; ``tf.train.Checkpoint``, which
    pairs by place, fails on a shape. A state of the same preset still loads."""
    keras = _keras_on_tensorflow()
    import tensorflow as tf

    import lars_multi.keras

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")

    def trained(optimizer):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        return model

    def lars(preset):
        return lars_multi.keras.LARS(0.1, momentum=0.9, weight_decay=1e-3, preset=preset)

    def fresh(preset):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=lars(preset), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    def buffers(model):
        return [keras.ops.convert_to_numpy(m) for m in model.optimizer.momentums]

    for saved, preset in [(keras.optimizers.SGD(0.1, momentum=0.9), "paper"), (lars("timm"), "paper")]:
        path = str(tmp_path / "saved.weights.h5")
        trained(saved).save_weights(path)
        model = fresh(preset)
        with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
            model.load_weights(path)
        assert not any(np.any(b) for b in buffers(model))
    source = trained(lars("paper"))
    source.save_weights(str(tmp_path / "same.weights.h5"))
    same = fresh("paper")
    same.load_weights(str(tmp_path / "same.weights.h5"))
    for a, b in zip(buffers(same), buffers(source)):
        np.testing.assert_array_equal(a, b)
    timm = trained(lars("timm"))
    checkpoint = tf.train.Checkpoint(optimizer=timm.optimizer).save(str(tmp_path / "ckpt"))
    paper = fresh("paper")
    with pytest.raises(ValueError, match="incompatible tensor with shape"):
        tf.train.Checkpoint(optimizer=paper.optimizer).restore(checkpoint)


def test_a_state_of_the_same_count_whose_buffers_hold_something_else_is_skipped():
    """Where the counts agree (timm's flags and buffers of one variable, the paper
    preset's buffers of two), the code saved with the state tells them apart."""
    keras = pytest.importorskip("keras")
    import lars_multi.keras

    timm = lars_multi.keras.LARS(0.1, momentum=0.9, weight_decay=1e-3, preset="timm")
    timm.build([keras.Variable(np.ones((2, 2), "float32"))])
    store = {}
    timm.save_own_variables(store)
    paper = lars_multi.keras.LARS(0.1, momentum=0.9, weight_decay=1e-3)
    paper.build([keras.Variable(np.ones((2, 2), "float32")), keras.Variable(np.ones((2, 2), "float32"))])
    assert len(store) == len(paper.variables)
    store = {key: np.full_like(value, 7) for key, value in store.items()}
    with pytest.warns(
        UserWarning, match=r"buffers hold the step eta r u .* saved optimizer's hold something"
    ):
        paper.load_own_variables(store)
    assert not any(np.any(keras.ops.convert_to_numpy(m)) for m in paper.momentums)


def test_which_variables_are_adapted_and_decayed_is_saved_with_the_state(tmp_path):
    """keras.models.load_model drops a nested model's name from its variables' paths: a
    pattern naming it (``"encoder/"``) matched while training and nothing once loaded,
    so the encoder was adapted and decayed, silently; and ``var_list`` exclusions were
    restored by the variables' places, checked by paths that repeat across nested models
    (another model's kernel left undecayed), or refused so that the model did not load
    at all once a layer had been frozen before saving. The flags are saved with the
    buffers, and a state Keras cannot load (of another count) is skipped with its warning."""
    keras = _keras_on_tensorflow()
    import lars_multi.keras

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")

    def towers():
        inputs = keras.Input((4,))
        encoder = keras.Sequential([keras.layers.Dense(3)], name="encoder")
        head = keras.Sequential([keras.layers.Dense(2)], name="head")
        return keras.Model(inputs, head(encoder(inputs)))

    model = towers()
    optimizer = lars_multi.keras.LARS(
        0.1, momentum=0.9, weight_decay=0.5, preset="optax", exclude_from_adaptation=["encoder/"]
    )
    optimizer.exclude_from_weight_decay(var_list=[model.layers[2].layers[0].kernel])  # the head's kernel
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    flags = [(f.adapt[0], f.decay[0]) for f in optimizer._lars_flags]
    assert flags == [(False, True), (False, True), (True, False), (True, True)]
    model.save(tmp_path / "towers.keras")
    loaded = keras.models.load_model(tmp_path / "towers.keras")
    assert [(f.adapt[0], f.decay[0]) for f in loaded.optimizer._lars_flags] == flags
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):  # (the loaded model's
        # forward pass is laid out anew: its gradients are a rounding apart, which near 0 is relative)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7
        )
    model.layers[1].trainable = False  # (after the optimizer was built for four variables)
    model.save(tmp_path / "frozen.keras")
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        keras.models.load_model(tmp_path / "frozen.keras")


def test_a_state_of_the_same_count_laid_out_otherwise_is_skipped_and_an_unbuilt_one_loads_nothing():
    """Another optimizer's state of the same count (Keras SGD with EMA, Adam) can put an
    array where this optimizer keeps its codes: skipped with the warning, not NumPy's
    error. An optimizer not built yet skips a state as Keras' do (it raised on the codes'
    variable it does not have yet)."""
    keras = pytest.importorskip("keras")
    import lars_multi.keras

    variables = [keras.Variable(np.ones((2, 2), "float32")), keras.Variable(np.ones(2, "float32"))]
    optimizer = lars_multi.keras.LARS(0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        optimizer.load_own_variables({"0": np.zeros(())})
    optimizer.build(variables)
    store = {
        str(i): np.full(np.shape(keras.ops.convert_to_numpy(v)), 7.0, "float32")
        for i, v in enumerate(optimizer.variables)
    }
    with pytest.warns(UserWarning, match="because the saved optimizer's hold something else"):
        optimizer.load_own_variables(store)
    assert not any(np.any(keras.ops.convert_to_numpy(m)) for m in optimizer.momentums)


def test_codes_restored_from_another_optimizers_checkpoint_are_not_saved(tmp_path):
    """tf.train.Checkpoint pairs by place, so a momentum-0 checkpoint read into a momentum
    optimizer set its buffers' code to 0; saved from there, the optimizer's own file was
    then skipped on loading (its buffers lost). What is saved is the optimizer's own."""
    keras = _keras_on_tensorflow()
    import warnings

    import tensorflow as tf

    import lars_multi.keras

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")

    def model(momentum):
        made = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        made.compile(optimizer=lars_multi.keras.LARS(0.1, momentum=momentum), loss="mse")
        return made

    plain = model(0.0)
    plain.fit(x, y, verbose=0)
    path = tf.train.Checkpoint(optimizer=plain.optimizer).write(str(tmp_path / "plain"))
    heavy = model(0.9)
    heavy.optimizer.build(heavy.trainable_variables)
    tf.train.Checkpoint(optimizer=heavy.optimizer).read(path).expect_partial()
    heavy.fit(x, y, verbose=0)
    heavy.save(tmp_path / "heavy.keras")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping variable loading")
        loaded = keras.models.load_model(tmp_path / "heavy.keras")
    for a, b in zip(heavy.optimizer.momentums, loaded.optimizer.momentums):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_state_of_other_choices_is_not_loaded_into_another_optimizer(tmp_path):
    """Only an optimizer ``load_model`` makes (from the saved config, not stepped yet)
    takes the saved choices of adapted and decayed variables. Another optimizer given a
    state of other choices skips it with the warning: it took them, so an optimizer of
    other patterns, or one that had already traced its step with its own, stepped on
    with a mixture (0.5 apart in the probe)."""
    keras = _keras_on_tensorflow()
    import lars_multi.keras

    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")

    def model(**patterns):
        made = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"), keras.layers.Dense(2)])
        made.compile(
            optimizer=lars_multi.keras.LARS(0.5, weight_decay=0.05, preset="optax", **patterns), loss="mse"
        )
        return made

    saved = model(exclude_from_adaptation=["d1"], exclude_from_weight_decay=["d1"])
    saved.fit(x, y, verbose=0)
    saved.save_weights(str(tmp_path / "d1.weights.h5"))
    for trained in (False, True):
        other = model()
        if trained:
            other.fit(x, y, verbose=0)
        else:
            other.optimizer.build(other.trainable_variables)
        own = list(other.optimizer._lars_flags)
        with pytest.warns(UserWarning, match="adapted or decayed otherwise than this optimizer's"):
            other.load_weights(str(tmp_path / "d1.weights.h5"))
        assert other.optimizer._lars_flags == own
    same = model(exclude_from_adaptation=["d1"], exclude_from_weight_decay=["d1"])
    same.optimizer.build(same.trainable_variables)
    same.load_weights(str(tmp_path / "d1.weights.h5"))
    assert int(keras.ops.convert_to_numpy(same.optimizer.iterations)) == 1


def test_an_embedding_trains_in_an_xla_compiled_fit():
    """A model with an Embedding (tf.IndexedSlices gradients) under model.fit with
    jit_compile=True (what Keras' "auto" picks on a GPU): the optimizer, built lazily in
    the first train step, made its variables under the wait on the summed gradients, and
    TensorFlow failed to lift them out of the XLA function. It trains as without XLA."""
    keras = _keras_on_tensorflow()
    import lars_multi.keras

    ids = np.random.default_rng(0).integers(0, 6, (64, 3))
    targets = np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32)
    weights = []
    for jit in (False, True):
        inputs = keras.Input((3,), dtype="int32")
        embedded = keras.layers.Embedding(6, 4, embeddings_initializer=keras.initializers.Constant(0.5))(
            inputs
        )
        outputs = keras.layers.Dense(2, kernel_initializer="ones")(keras.layers.Flatten()(embedded))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=lars_multi.keras.LARS(0.1, momentum=0.9), loss="mse", jit_compile=jit)
        model.fit(ids, targets, batch_size=16, epochs=2, verbose=0, shuffle=False)
        weights.append([keras.ops.convert_to_numpy(v) for v in model.trainable_variables])
    for eager, xla in zip(*weights):
        np.testing.assert_allclose(xla, eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weights[1][0], 0.5)
