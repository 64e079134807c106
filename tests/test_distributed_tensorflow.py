"""TensorFlow ``tf.distribute.MirroredStrategy`` over two logical CPU devices.

- ``lm.keras.LARS`` in ``model.fit`` under the strategy equals single-device
  training from the same weights on the same batches (Keras all-reduces the
  gradients before the optimizer runs).
- ``lm.lars_update(..., out=variables)`` inside ``strategy.run`` on mirrored
  variables, with all-reduced gradients, gives the single-device result on
  every replica's copy; with each replica's own local gradients the copies
  diverge (the negative control: the check does see per-replica updates).
- A second set of mirrored variables is updated, not the first (a trace of TF's
  kept the first set: see :func:`test_second_set_of_mirrored_variables_is_the_one_updated`).

Logical devices must be configured before TensorFlow starts, so everything
runs in one fresh interpreter; the tests read its results.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import require_backend, run_python

RTOL, ATOL = 1e-6, 1e-5

SCRIPT = r"""
import json
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras
import numpy as np

import lars_multi as lm
import lars_multi.keras

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 4)).astype(np.float32)
y = rng.standard_normal((16, 3)).astype(np.float32)
out = {"replicas": strategy.num_replicas_in_sync}


def listed(arrays):
    return [np.asarray(a).tolist() for a in arrays]


def copies(variables):
    # [variable][replica] -> values
    return [listed(strategy.experimental_local_results(v)) for v in variables]


# --- lm.keras.LARS in model.fit ---------------------------------------------------------
def model(init=None):
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    if init is not None:
        m.set_weights(init)
    m.compile(
        optimizer=lars_multi.keras.LARS(0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02),
        loss="mse",
    )
    return m


def fit_both(make, inputs):
    # a model fitted on one device and, from the same weights, under the strategy
    single = make()
    init = [w.copy() for w in single.get_weights()]
    single.fit(inputs, y, batch_size=8, epochs=2, shuffle=False, verbose=0)  # 4 steps
    with strategy.scope():
        mirrored = make(init)
    mirrored.fit(inputs, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return {
        "init": listed(init),
        "single": listed(single.get_weights()),
        "variable_types": [type(v.value).__name__ for v in mirrored.trainable_variables],
        "copies": copies([v.value for v in mirrored.trainable_variables]),
    }


out["keras"] = fit_both(model, x)

# --- an Embedding (tf.IndexedSlices gradients) in model.fit -------------------------------
tokens = rng.integers(0, 20, (16, 5)).astype(np.int32)


def embedding_model(init=None):
    keras.utils.set_random_seed(2)
    layers = [keras.layers.Embedding(20, 4), keras.layers.Flatten(), keras.layers.Dense(3)]
    m = keras.Sequential([keras.Input((5,), dtype="int32"), *layers])
    if init is not None:
        m.set_weights(init)
    m.compile(optimizer=lars_multi.keras.LARS(0.1, momentum=0.9, weight_decay=1e-4), loss="mse")
    return m


out["embedding"] = fit_both(embedding_model, tokens)

# --- lm.lars_update inside strategy.run, out=mirrored variables ---------------------------
w_init = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]


def shard(ctx):
    i = ctx.replica_id_in_sync_group
    return x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]


batches = strategy.experimental_distribute_values_from_function(shard)


def gradients(variables, xs, ys):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.matmul(xs, variables[0]) + variables[1] - ys))
    return tape.gradient(loss, variables)


def make_step(variables, all_reduce):
    @tf.function
    def step(batch):
        def replica_fn(xs, ys):
            g = gradients(variables, xs, ys)
            if all_reduce:
                g = tf.distribute.get_replica_context().all_reduce("mean", g)
            lm.lars_update(variables, g, 0.1, out=variables)

        strategy.run(replica_fn, args=batch)

    return step


STEPS = 3
# single device: the full batch's gradient is the mean of the two shards' gradients
plain = [tf.Variable(w) for w in w_init]
for _ in range(STEPS):
    lm.lars_update(plain, gradients(plain, x, y), 0.1, out=plain)

with strategy.scope():
    first = [tf.Variable(w) for w in w_init]
out["is_tf_variable"] = isinstance(first[0], tf.Variable)
out["variable_type"] = type(first[0]).__name__
step = make_step(first, all_reduce=True)
for _ in range(STEPS):
    step(batches)
reduced = copies(first)

# negative control: the same variables, reset, each replica with its own local gradients
for v, w in zip(first, w_init):
    v.assign(w)
step = make_step(first, all_reduce=False)
for _ in range(STEPS):
    step(batches)
local = copies(first)

# a second set of mirrored variables of the same shapes, one all-reduced step
for v, w in zip(first, w_init):
    v.assign(w)
with strategy.scope():
    second = [tf.Variable(w) for w in w_init]
make_step(second, all_reduce=True)(batches)
out["update"] = {
    "init": listed(w_init),
    "single": listed(v.numpy() for v in plain),
    "reduced": reduced,
    "local": local,
    "second_after": copies(second),
    "first_after_second": copies(first),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results() -> dict:
    require_backend("tensorflow")
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    stdout = run_python(SCRIPT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return json.loads(stdout.splitlines()[-1])


def _assert_close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL)


def test_two_replicas(results: dict) -> None:
    assert results["replicas"] == 2


def test_keras_lars_fit_mirrored_equals_single_device(results: dict) -> None:
    keras_results = results["keras"]
    assert set(keras_results["variable_types"]) == {"MirroredVariable"}
    # training moved the weights, so the comparison below is not vacuous
    moved = max(
        np.abs(np.subtract(a, b)).max() for a, b in zip(keras_results["single"], keras_results["init"])
    )
    assert moved > 1e-2
    for replica_copies, want in zip(keras_results["copies"], keras_results["single"]):
        assert len(replica_copies) == 2
        for copy in replica_copies:
            _assert_close(copy, want)


def test_keras_lars_fit_mirrored_with_an_embedding_equals_single_device(results: dict) -> None:
    """An Embedding's gradients are tf.IndexedSlices: under the strategy (Keras' per-variable
    step) they reached the norm as slices, and model.fit failed with a bare TypeError."""
    embedding = results["embedding"]
    moved = max(np.abs(np.subtract(a, b)).max() for a, b in zip(embedding["single"], embedding["init"]))
    assert moved > 1e-3
    for replica_copies, want in zip(embedding["copies"], embedding["single"]):
        for copy in replica_copies:
            _assert_close(copy, want)


def test_mirrored_variables_are_tf_variables(results: dict) -> None:
    assert results["variable_type"] == "MirroredVariable"
    assert results["is_tf_variable"]


def test_lars_update_all_reduced_updates_every_replica_copy(results: dict) -> None:
    update = results["update"]
    moved = max(np.abs(np.subtract(a, b)).max() for a, b in zip(update["single"], update["init"]))
    assert moved > 1e-2
    for replica_copies, want in zip(update["reduced"], update["single"]):
        assert len(replica_copies) == 2
        for copy in replica_copies:
            _assert_close(copy, want)


def test_local_gradients_leave_replica_copies_diverged(results: dict) -> None:
    """The negative control: a per-replica update is visible in the copies."""
    spread = max(np.abs(np.subtract(*replica_copies)).max() for replica_copies in results["update"]["local"])
    assert spread > 1e-2


def test_second_set_of_mirrored_variables_is_the_one_updated(results: dict) -> None:
    update = results["update"]
    # the second set moved (one step), the first set (reset to the initial weights) did not
    second_moved = max(
        np.abs(np.subtract(copy, w)).max()
        for replica_copies, w in zip(update["second_after"], update["init"])
        for copy in replica_copies
    )
    first_moved = max(
        np.abs(np.subtract(copy, w)).max()
        for replica_copies, w in zip(update["first_after_second"], update["init"])
        for copy in replica_copies
    )
    assert second_moved > 1e-2
    assert first_moved == 0.0
