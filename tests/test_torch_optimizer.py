"""``lm.torch.LARS``: the torch.optim front door over the one LARS step.

Every trajectory is compared with the functional ``lm.optim.lars`` on the same
gradients (the same rule, so the values agree to rounding), and the torch.optim
machinery around it (groups, None gradients, state_dict, schedulers,
GradScaler, foreach, torch.compile) is exercised on small models.
"""

from __future__ import annotations

import copy
import io
import math
from functools import partial

import numpy as np
import pytest
from _timm_lars import load_timm_lars
from conftest import torch_randn

torch = pytest.importorskip("torch")

import lars_multi as lm  # noqa: E402
from lars_multi._batching import CPU_BATCH_BYTES  # noqa: E402
from lars_multi.torch import LARS, param_groups  # noqa: E402

SHAPES = {"w1": (8, 4), "b1": (8,), "w2": (3, 8), "b2": (3,)}
STEPS = 50
HYPER = {"trust_coefficient": 0.02}


def make_params(dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.nn.Parameter(torch_randn(*shape, generator=generator, dtype=dtype))
        for name, shape in SHAPES.items()
    }


def make_grads(steps=STEPS, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {name: torch_randn(*shape, generator=generator, dtype=dtype) for name, shape in SHAPES.items()}
        for _ in range(steps)
    ]


def run_torch(opt, params, grads, names=None, on_step=None):
    """Steps of ``opt`` over ``grads`` (a list of dicts; a None gradient is left None)."""
    for t, g in enumerate(grads):
        opt.zero_grad()
        for name in names or params:
            params[name].grad = None if g[name] is None else g[name].clone()
        opt.step()
        if on_step is not None:
            on_step(t)
    return {name: p.detach().clone() for name, p in params.items()}


def run_functional(fopt, params, grads):
    params = {name: p.detach().clone() for name, p in params.items()}
    state = fopt.init(params)
    for g in grads:
        params, state = fopt.step(params, g, state)
    return params


def assert_close(got, expected, rtol=1e-10, atol=1e-12):
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


# --- the same trajectory as lm.optim.lars ---------------------------------------------------------

CONFIGS = [
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"momentum": 0.8, "dampening": 0.1, "weight_decay": 5e-3},
    {"momentum": 0.0, "weight_decay": 1e-3},
    {"momentum": 0.9, "weight_decay": 1e-3, "trust_clip": True, "always_adapt": True, "eps": 1e-6},
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("preset", ["paper", "optax", "timm"])
def test_matches_functional(preset, config, foreach):
    params, grads = make_params(), make_grads()
    expected = run_functional(lm.optim.lars(0.1, preset=preset, **HYPER, **config), params, grads)
    opt = LARS(params.values(), lr=0.1, preset=preset, foreach=foreach, **HYPER, **config)
    got = run_torch(opt, params, grads)
    assert_close(got, expected)
    momentum = config["momentum"]
    for p in params.values():
        assert ("momentum_buffer" in opt.state[p]) == (momentum != 0)


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("where", ["same-group", "other-batch", "other-group"])
@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_gradient_sharing_another_parameters_memory(preset, where, foreach, monkeypatch):
    """A gradient that is (a view of) another parameter's weights, in the same group,
    in another cache-sized batch (after a large layer) or in another group: every
    layer reads the weights as they were, as the functional step does."""
    import lars_multi.backends.torch as torch_backend

    # (CPU batches are sized by the machine's cache: here 4 MiB, whatever the machine)
    monkeypatch.setattr(torch_backend, "_CPU_BATCH_BYTES", CPU_BATCH_BYTES)
    assert len(torch_backend.batches([torch.zeros(6), torch.zeros(2_000_000), torch.zeros(6)])) == 3
    generator = torch.Generator().manual_seed(5)
    sizes = {"a": 6, "large": 2_000_000, "b": 6}  # the large layer is a CPU batch of its own
    values = {k: torch_randn(n, generator=generator, dtype=torch.float32) for k, n in sizes.items()}
    grads = {k: torch_randn(n, generator=generator, dtype=torch.float32) for k, n in sizes.items()}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in values.items()}
    order = ["a", "b", "large"] if where == "same-group" else ["a", "large", "b"]
    groups = [{"params": [params[k] for k in order]}]
    if where == "other-group":
        groups = [{"params": [params["a"], params["large"]]}, {"params": [params["b"]]}]
    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "preset": preset, "foreach": foreach}
    opt = LARS(groups, **config, **HYPER)
    for k in ("a", "large"):
        params[k].grad = grads[k].clone()
    params["b"].grad = params["a"].detach()  # b's gradient lies in a's weights
    opt.step()
    del config["foreach"]
    functional = lm.optim.lars(0.1, **{k: v for k, v in config.items() if k != "lr"}, **HYPER)
    fgrads = dict(grads, b=values["a"].clone())
    expected, _ = functional.step(dict(values), fgrads, functional.init(values))
    assert_close({k: p.detach() for k, p in params.items()}, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_groups_with_their_own_hyper_parameters(preset):
    params, grads = make_params(), make_grads()
    main, other = ["w1", "b1", "w2"], ["b2"]
    opt = LARS(
        [
            {"params": [params[n] for n in main]},
            {
                "params": [params[n] for n in other],
                "lr": 0.03,
                "momentum": 0.5,
                "adapt": False,
                "decay": False,
            },
        ],
        lr=0.1,
        weight_decay=1e-3,
        preset=preset,
        **HYPER,
    )
    start = make_params()
    got = run_torch(opt, params, grads)
    first = lm.optim.lars(0.1, weight_decay=1e-3, preset=preset, **HYPER)
    second = lm.optim.lars(
        0.03,
        momentum=0.5,
        weight_decay=1e-3,
        preset=preset,
        adapt_mask=False,
        weight_decay_mask=False,
        **HYPER,
    )
    pick = lambda d, names: {n: d[n] for n in names}  # noqa: E731
    expected = run_functional(first, pick(start, main), [pick(g, main) for g in grads])
    expected |= run_functional(second, pick(start, other), [pick(g, other) for g in grads])
    assert_close(got, expected)


def test_more_groups_of_their_own_configuration_than_the_cache_keeps():
    """300 groups, each with its own trust coefficient (as one group per layer with a
    cycled momentum makes): every step raised a bare KeyError, since making the later
    groups' configurations evicted the earlier ones' before the step looked them up."""
    torch.manual_seed(0)
    start = [torch.randn(3, 3, dtype=torch.float64) for _ in range(300)]
    grads = [torch.randn(3, 3, dtype=torch.float64) for _ in range(300)]
    params = [torch.nn.Parameter(x.clone()) for x in start]
    coefficients = [1e-3 * (1 + i / 100) for i in range(300)]
    groups = [{"params": [p], "trust_coefficient": c} for p, c in zip(params, coefficients)]
    opt = LARS(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for i in (0, 150, 299):  # against the functional optimizer, one layer at a time
        one = lm.optim.lars(0.1, momentum=0.9, weight_decay=1e-4, trust_coefficient=coefficients[i])
        w = {"w": start[i].clone()}
        state = one.init(w)
        for _ in range(2):
            w, state = one.step(w, {"w": grads[i]}, state)
        torch.testing.assert_close(params[i].detach(), w["w"], rtol=1e-14, atol=1e-15)


def test_adapt_and_decay_switched_on_for_every_layer():
    """``adapt=True, decay=True`` overrides the paper preset's default (matrices only)."""
    params, grads = make_params(), make_grads(10)
    opt = LARS(params.values(), lr=0.1, weight_decay=1e-3, adapt=True, decay=True, **HYPER)
    fopt = lm.optim.lars(0.1, weight_decay=1e-3, adapt_mask=True, weight_decay_mask=True, **HYPER)
    expected = run_functional(fopt, params, grads)
    assert_close(run_torch(opt, params, grads), expected)


def test_float32_and_bfloat16_buffers_keep_the_parameter_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        params, grads = make_params(dtype), make_grads(5, dtype)
        opt = LARS(params.values(), lr=0.1, weight_decay=1e-3, **HYPER)
        pointers = {n: p.data_ptr() for n, p in params.items()}
        expected = run_functional(lm.optim.lars(0.1, weight_decay=1e-3, **HYPER), params, grads)
        got = run_torch(opt, params, grads)
        # In place, float32 buffers take c r g and c r lambda w in two passes (a rounding apart).
        assert_close(got, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 0)
        for name, p in params.items():
            assert p.data_ptr() == pointers[name]  # written in place
            assert opt.state[p]["momentum_buffer"].dtype == dtype


def test_maximize_steps_up_the_gradient():
    params, grads = make_params(), make_grads(10)
    negated = [{n: -g for n, g in step.items()} for step in grads]
    twin = {n: torch.nn.Parameter(p.detach().clone()) for n, p in params.items()}
    up = run_torch(LARS(params.values(), lr=0.1, weight_decay=1e-3, maximize=True, **HYPER), params, grads)
    down = run_torch(LARS(twin.values(), lr=0.1, weight_decay=1e-3, **HYPER), twin, negated)
    assert_close(up, down, rtol=0, atol=0)


# --- None gradients and buffers made at a parameter's first step ----------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_none_gradients_are_skipped(foreach):
    params, grads = make_params(), make_grads(20)
    for g in grads:
        g["b1"] = None
    before = params["b1"].detach().clone()
    opt = LARS(params.values(), lr=0.1, weight_decay=1e-3, foreach=foreach, **HYPER)
    expected = run_functional(lm.optim.lars(0.1, weight_decay=1e-3, **HYPER), params, grads)
    got = run_torch(opt, params, grads)
    assert_close(got, expected)
    assert torch.equal(got["b1"], before)
    assert params["b1"] not in opt.state or not opt.state[params["b1"]]


@pytest.mark.parametrize("foreach", [False, True])
def test_timm_buffers_start_at_each_parameters_first_step(foreach):
    """A parameter whose first gradient comes late starts its timm buffer at r u then,
    in the same step as parameters with old buffers (two calls of the rule)."""
    params, grads = make_params(), make_grads(15)
    late = ("w2", "b2")
    for g in grads[:5]:
        for name in late:
            g[name] = None
    hyper = {"momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3, "preset": "timm", **HYPER}
    opt = LARS(params.values(), lr=0.1, foreach=foreach, **hyper)
    start = make_params()
    got = run_torch(opt, params, grads)
    fopt = lm.optim.lars(0.1, **hyper)
    for name in params:  # layers are independent: one functional run per layer, from its first gradient
        steps = [{name: g[name]} for g in grads if g[name] is not None]
        expected = run_functional(fopt, {name: start[name]}, steps)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)


# --- state_dict, zero_grad, schedulers, GradScaler ------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_state_dict_round_trip_resumes_the_same_trajectory(preset):
    params, grads = make_params(), make_grads(30)
    hyper = {"lr": 0.1, "weight_decay": 1e-3, "preset": preset, **HYPER}
    opt = LARS(params.values(), **hyper)
    run_torch(opt, params, grads[:12])
    saved_params = {n: p.detach().clone() for n, p in params.items()}
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    straight = run_torch(opt, params, grads[12:])

    resumed_params = {n: torch.nn.Parameter(p.clone()) for n, p in saved_params.items()}
    resumed = LARS(resumed_params.values(), lr=1.0, momentum=0.5, preset="optax")  # overwritten by the load
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.param_groups[0]["preset"] == preset
    assert_close(run_torch(resumed, resumed_params, grads[12:]), straight, rtol=0, atol=0)


def test_zero_grad_and_deepcopy():
    params, grads = make_params(), make_grads(3)
    opt = LARS(params.values(), lr=0.1)
    run_torch(opt, params, grads)
    twin = copy.deepcopy(opt)
    assert twin.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    opt.zero_grad()
    assert all(p.grad is None for p in params.values())
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in params.values())


SCHEDULES = {
    "StepLR": (
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5),
        lambda t: 0.5 ** (t // 10),
    ),
    "LambdaLR": (
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t)),
        lambda t: 1 / (1 + t),
    ),
}


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_scheduler(name, tensor_lr):
    make_scheduler, factor = SCHEDULES[name]
    params, grads = make_params(), make_grads(30)
    lr = torch.tensor(0.1, dtype=torch.float64) if tensor_lr else 0.1
    opt = LARS(params.values(), lr=lr, weight_decay=1e-3, **HYPER)
    scheduler = make_scheduler(opt)
    fopt = lm.optim.lars(lambda count: 0.1 * factor(int(count)), weight_decay=1e-3, **HYPER)
    expected = run_functional(fopt, params, grads)
    got = run_torch(opt, params, grads, on_step=lambda t: scheduler.step())
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) == tensor_lr
    assert_close(got, expected)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def test_grad_scaler_steps_with_unscaled_gradients():
    x, y = torch_randn(32, 6, generator=torch.Generator().manual_seed(2)), torch.randn(32, 3)
    results = []
    for scaled in (False, True):
        model = mlp()
        opt = LARS(param_groups(model), lr=0.1, weight_decay=1e-3, **HYPER)
        scaler = torch.amp.GradScaler(x.device.type, init_scale=2.0**12, enabled=scaled)
        for _ in range(20):
            opt.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert_close(results[1], results[0], rtol=0, atol=0)


def test_grad_scaler_skips_a_step_with_inf_gradients():
    model = mlp()
    opt = LARS(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(next(model.parameters()).device.type)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(torch.randn(4, 6)).sum()).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state


# --- torch.compile --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_compiled_step_fullgraph_matches_eager_without_recompiling_for_lr(preset):
    """Tensor lr changed every step: one graph for the first step (new buffers; timm
    starts them at r u, which dampening tells apart), one for the rest, the same values as eager."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch_randn(16, 6, generator=torch.Generator().manual_seed(3))
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = LARS(
            model.parameters(), lr=torch.tensor(0.1), weight_decay=1e-3, dampening=0.1, preset=preset, **HYPER
        )
        step = torch.compile(opt.step, fullgraph=True, backend=counting_backend) if compiled else opt.step
        for t in range(6):
            opt.zero_grad()
            model(x).square().mean().backward()
            step()
            opt.param_groups[0]["lr"].fill_(0.1 / (1 + t))
        results.append([p.detach().clone() for p in model.parameters()])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert len(graphs) == 2


def test_compiled_step_follows_a_later_groups_own_new_hyper_parameters():
    """OneCycleLR cycling each group's momentum over its own range: a later group's new
    configuration was missing from the cache as the trace first read it (Dynamo raised
    "Observed exception" at the second step); compiled now equals eager."""

    results = []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        x = torch_randn(16, 6, generator=torch.Generator().manual_seed(1))
        opt = LARS(param_groups(model), lr=torch.tensor(0.1), weight_decay=1e-4)
        step = torch.compile(opt.step, fullgraph=True, backend="eager") if compiled else opt.step
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=0.5,
            total_steps=20,
            cycle_momentum=True,
            base_momentum=[0.85, 0.8],
            max_momentum=[0.95, 0.9],
        )
        results.append(_scheduled_steps(model, x, opt, step, schedule, 4))
    torch._dynamo.reset()
    for got, want in zip(*results):  # (traced, the multiply-adds round as unfused ones: an ulp)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


def _scheduled_steps(model, x, opt, step, schedule, steps):
    """``steps`` steps on the mean square of ``model(x)``, each followed by the schedule's;
    the parameters after them."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (recompilations; a compiled step is no step to the scheduler)
        for _ in range(steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            step()
            schedule.step()
    return [p.detach().clone() for p in model.parameters()]


def test_compiled_step_with_a_momentum_cycled_at_every_step_compiles_at_most_twice():
    """OneCycleLR with ``cycle_momentum=True`` (its default) sets every group's momentum at
    every step. The momentum was part of the step's configuration, so the compiled step
    made a program per value, and ``fullgraph=True`` failed at Dynamo's recompile limit
    (8). It is the step's argument now, as the rates are: one or two programs (Dynamo
    makes a float dynamic at its second value), and the trajectory is eager's."""

    from torch._dynamo.testing import CompileCounter

    results, counters = [], []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
        x = torch_randn(16, 6, generator=torch.Generator().manual_seed(1)).double()
        opt = LARS(param_groups(model), lr=torch.tensor(0.1, dtype=torch.float64), weight_decay=1e-4)
        counters.append(CompileCounter())
        step = torch.compile(opt.step, fullgraph=True, backend=counters[-1]) if compiled else opt.step
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=30, cycle_momentum=True)
        results.append(_scheduled_steps(model, x, opt, step, schedule, 20))  # (20 momentum values)
    torch._dynamo.reset()
    assert counters[0].frame_count <= 2, counters[0].frame_count
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_nesterov_momentum_scheduled_through_0_steps_as_torch_sgd(compiled):
    """A momentum a scheduler sets to 0 with ``nesterov=True`` raised "nesterov: expected
    momentum > 0" at the step, where torch.optim.SGD and timm's Lars (which check it when
    a group is made) take a plain step, the look-ahead having no buffer; they go on with
    the buffer kept when the momentum comes back. Made so, the group is still refused."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    start = torch_randn(4, 4, generator=gen).double()
    p, q = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    # (timm's rule with no weight decay adapts nothing: SGD's step)
    opt = LARS([p], lr=0.1, momentum=0.9, nesterov=True, preset="timm")
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    step = torch.compile(opt.step, fullgraph=True, backend="eager") if compiled else opt.step
    for k in range(6):
        g = torch_randn(4, 4, generator=gen).double()
        p.grad, q.grad = g.clone(), g.clone()
        momentum = 0.0 if k in (2, 3) else 0.9
        opt.param_groups[0]["momentum"] = sgd.param_groups[0]["momentum"] = momentum
        step()
        sgd.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    torch._dynamo.reset()
    with pytest.raises(lm.LarsMultiValueError, match=r"^nesterov: expected momentum > 0"):
        LARS([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(lm.LarsMultiValueError, match=r"^param_groups\[1\]: nesterov: expected momentum > 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "momentum": 0.0})


def test_a_momentum_set_out_of_range_between_steps_is_refused_before_writing():
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((2, 2), 0.1)
    opt.step()
    before = p.detach().clone(), opt.state[p]["momentum_buffer"].clone()
    bad_values = ((1.0, lm.LarsMultiValueError), (-0.1, lm.LarsMultiValueError), ("0.9", TypeError))
    arrays = ((torch.tensor([0.5, 0.5]), TypeError), (np.array([0.5, 0.5]), TypeError))  # (no truth value)
    for bad, error in (*bad_values, *arrays):
        opt.param_groups[0]["momentum"] = bad
        with pytest.raises(error, match=r"^param_groups\[0\]: momentum: expected a number"):
            opt.step()
        torch.testing.assert_close(p.detach(), before[0], rtol=0, atol=0)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], before[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["trust_coefficient", "eps", "dampening"])
def test_an_array_written_into_a_group_as_a_setting_is_refused_by_name(name):
    """A 0-d NumPy array written into a group after construction as trust_coefficient, eps or
    dampening failed with a bare "unhashable type: 'numpy.ndarray'" (the settings' store is
    keyed by them); it is refused naming the setting, as when the group is made."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((2, 2), 0.1)
    opt.param_groups[0][name] = np.array(0.01)
    match = rf"^param_groups\[0\]: {name}: expected a number, got numpy.ndarray"
    with pytest.raises(lm.LarsMultiTypeError, match=match):
        opt.step()
    torch.testing.assert_close(p.detach(), torch.ones(2, 2), rtol=0, atol=0)


def test_configurations_of_settings_changed_at_every_step_are_bounded():
    """A group whose trust coefficient changes at every step makes a configuration per
    value: an optimizer keeps at most _MOST_CONFIGS (each about 800 bytes), and a group
    whose own stays the same steps as it would alone."""
    import lars_multi.torch as lm_torch

    still, changing = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [still]}, {"params": [changing]}], lr=0.1, momentum=0.5)
    reference = LARS([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1, momentum=0.5)
    for step in range(3 * lm_torch._MOST_CONFIGS // 2):
        opt.param_groups[1]["trust_coefficient"] = 0.001 + step * 1e-6
        for p in (still, changing, *reference.param_groups[0]["params"]):
            p.grad = torch.full((2, 2), 0.1)
        opt.step()
        reference.step()
    assert len(opt._configs) <= lm_torch._MOST_CONFIGS
    torch.testing.assert_close(still, reference.param_groups[0]["params"][0], rtol=0, atol=0)


def test_compiled_steps_of_two_optimizers_stepped_in_turn_compile_once_or_twice():
    """Two lm.torch.LARS of other settings (a GAN's generator and discriminator), each
    step compiled: the configurations were in one process-wide cache, reordered at each
    lookup, and Dynamo guards on its order, so each optimizer's step recompiled at every
    call and fullgraph=True failed at the recompile limit. Each optimizer keeps its own."""
    from torch._dynamo.testing import CompileCounter

    results, counters = [], []
    for compiled in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)]
        opts = [
            LARS(params[:1], lr=torch.tensor(0.1), momentum=0.9),
            LARS(params[1:2], lr=torch.tensor(0.1), momentum=0.0),
            LARS(params[2:], lr=torch.tensor(0.1), momentum=0.9, trust_coefficient=0.05),
        ]
        counters = [CompileCounter() for _ in opts]
        steps = [
            torch.compile(o.step, fullgraph=True, backend=c) if compiled else o.step
            for o, c in zip(opts, counters)
        ]
        for t in range(12):
            for p in params:
                p.grad = torch_randn(8, 4, generator=torch.Generator().manual_seed(t))
            for step in steps:
                step()
        results.append([p.detach().clone() for p in params])
    torch._dynamo.reset()
    assert all(c.frame_count <= 2 for c in counters), [c.frame_count for c in counters]
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "momentum",
    [np.float64(0.9), np.float32(0.5), np.longdouble(0.9), 0.9],
    ids=["f64", "f32", "f128", "float"],
)
def test_compiled_step_takes_a_numpy_momentum(momentum):
    """A NumPy-number momentum (taken eagerly) failed under torch.compile with Dynamo's
    AssertionError: the eager part's result, whether the group has momentum, was a
    NumPy bool, which Dynamo cannot take as a constant."""
    torch._dynamo.reset()
    p, q = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4, 3))
    opt, twin = (
        LARS([p], lr=torch.tensor(0.1), momentum=momentum),
        LARS([q], lr=torch.tensor(0.1), momentum=0.9),
    )
    twin.param_groups[0]["momentum"] = float(momentum)
    step = torch.compile(opt.step, fullgraph=True, backend="eager")
    for t in range(2):
        p.grad = q.grad = torch.full((4, 3), 0.1 * (t + 1))
        step()
        twin.step()
    torch._dynamo.reset()
    torch.testing.assert_close(p, q)


@pytest.mark.parametrize("flag", ["differentiable", "capturable", "fused"])
def test_torch_optim_flags_it_has_no_step_for_are_refused_on_groups(flag):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(lm.LarsMultiValueError, match=rf"^param_groups\[0\]: expected {flag} false or absent"):
        LARS([{"params": [p], flag: True}], lr=0.1)
    LARS([{"params": [p], flag: False}], lr=0.1)  # (as a state saved by torch.optim.SGD has them)
    # Set later (after a step, or on a group whose other settings match an earlier one's),
    # it was ignored: the settings were checked only where they were new.
    q = torch.nn.Parameter(torch.ones(2))
    opt = LARS([{"params": [p]}, {"params": [q]}], lr=0.1)
    p.grad = q.grad = torch.full((2,), 0.5)
    opt.param_groups[1][flag] = True
    with pytest.raises(lm.LarsMultiValueError, match=rf"^param_groups\[1\]: expected {flag} false or absent"):
        opt.step()
    opt.param_groups[1][flag] = False
    opt.step()
    opt.param_groups[0][flag] = True
    before = p.detach().clone()
    with pytest.raises(lm.LarsMultiValueError, match=rf"^param_groups\[0\]: expected {flag} false or absent"):
        opt.step()
    torch.testing.assert_close(p.detach(), before)


@pytest.mark.parametrize("backend", [None, "eager"])
def test_a_parameter_listed_twice_in_a_group_is_stepped_once(backend):
    """torch.optim allows (and warns of) a parameter listed twice in a group: it takes one
    step, compiled too (the compiled step stepped it twice)."""
    torch._dynamo.reset()
    a = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = LARS([a, a], lr=0.5, momentum=0.9, trust_coefficient=1.0)
    step = opt.step if backend is None else torch.compile(opt.step, fullgraph=True, backend=backend)
    a.grad = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    step()
    torch._dynamo.reset()
    # r = |w| / |g| = 10: w - lr r g, one step
    torch.testing.assert_close(a.detach(), torch.tensor([[0.5, 1.0], [1.5, 2.0]]))
    assert len(opt.state) == 1


def test_compiled_step_follows_hyper_parameters_changed_after_compiling():
    """A group's momentum (as OneCycleLR cycles it) or preset changed after compiling, with
    a tensor lr: the step recompiles and equals eager (the checks read lr.item() inside
    the trace, which failed)."""
    torch._dynamo.reset()  # (each change recompiles LARS.step: keep other tests under the recompile limit)
    results = []
    for compiled in (True, False):  # (compiled first: an eager step would have checked the values)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        opt = LARS([{"params": params[:1]}, {"params": params[1:]}], lr=torch.tensor(0.1), weight_decay=1e-3)
        step = torch.compile(opt.step, fullgraph=True, backend="eager") if compiled else opt.step
        for t, change in enumerate([{}, {"momentum": 0.8517}, {"preset": "timm", "momentum": 0.8123}]):
            for group in opt.param_groups:
                group.update(change)
            for p in params:
                p.grad = torch_randn(*p.shape, generator=torch.Generator().manual_seed(t))
            step()
        results.append([p.detach().clone() for p in params])
    torch._dynamo.reset()
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_compiled_step_aot_eager_with_groups():
    model = mlp()
    opt = LARS(param_groups(model), lr=0.1, weight_decay=1e-3, preset="optax", foreach=True, **HYPER)
    twin = copy.deepcopy(model)
    twin_opt = LARS(param_groups(twin), lr=0.1, weight_decay=1e-3, preset="optax", foreach=True, **HYPER)
    step = torch.compile(opt.step, fullgraph=True, backend="aot_eager")
    x = torch.randn(16, 6)
    for _ in range(3):
        for m, o, s in ((model, opt, step), (twin, twin_opt, twin_opt.step)):
            o.zero_grad()
            m(x).square().mean().backward()
            s()
    for got, expected in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


# --- param_groups ---------------------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.norm_proj = torch.nn.Linear(8, 8, bias=False)
        self.subnet = torch.nn.Linear(8, 8, bias=False)  # (contains "bn")
        self.head = torch.nn.Linear(8, 2)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(self.subnet(self.norm_proj(self.bn(self.fc(x)))))


def test_param_groups_splits_matrices_from_biases_and_norms():
    net = Net()
    adapted = [net.fc.weight, net.norm_proj.weight, net.subnet.weight, net.head.weight]
    default = param_groups(net)
    assert [len(g["params"]) for g in default] == [4, 4]  # by dimension only
    assert all(p is q for p, q in zip(default[0]["params"], adapted))
    groups = param_groups(net, exclude=("NORM", "bias"), lr=0.5)
    assert [len(g["params"]) for g in groups] == [3, 5]
    assert [
        p is q for p, q in zip(groups[0]["params"], [net.fc.weight, net.subnet.weight, net.head.weight])
    ] == [True] * 3
    assert (groups[0]["adapt"], groups[0]["decay"], groups[1]["adapt"], groups[1]["decay"]) == (
        True,
        True,
        False,
        False,
    )
    assert groups[0]["lr"] == groups[1]["lr"] == 0.5
    assert any(p is net.norm_proj.weight for p in groups[1]["params"])  # excluded by name

    opt = LARS(groups, lr=0.1, weight_decay=0.1, trust_coefficient=0.02)
    net(torch.randn(5, 4)).sum().backward()
    bias, grad = net.head.bias.detach().clone(), net.head.bias.grad.clone()
    opt.step()
    # excluded: neither adapted nor decayed, the first paper step is w - lr g
    torch.testing.assert_close(net.head.bias.detach(), bias - 0.5 * grad)


def test_param_groups_overrides_win_and_tied_parameters_match_by_any_name():
    """adapt=False / decay=False given to param_groups reach both groups (the fixed settings
    overwrote them); a parameter tied between two modules is excluded by either name
    (named_parameters gives only the first)."""
    groups = param_groups(Net(), adapt=False, decay=False, lr=0.5)
    assert all((g["adapt"], g["decay"], g["lr"]) == (False, False, 0.5) for g in groups)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    for pattern in ("head", "embed"):
        groups = param_groups(model, exclude=(pattern,))
        assert len(groups) == 1 and groups[0]["adapt"] is False, pattern
        assert len(groups[0]["params"]) == 1 and groups[0]["params"][0] is model.embed.weight
    assert [len(g["params"]) for g in param_groups(model)] == [1]  # listed once


# --- errors ---------------------------------------------------------------------------------------

P = [torch.nn.Parameter(torch.ones(2, 2))]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -0.1}, lm.LarsMultiValueError, "^lr: expected a finite number >= 0"),
        ({"lr": "0.1"}, lm.LarsMultiTypeError, "^lr: expected a number"),
        ({"lr": lambda t: 0.1}, lm.LarsMultiTypeError, "lr_scheduler"),
        ({"lr": torch.ones(2)}, lm.LarsMultiValueError, "one element"),
        # (a dtype is a type, as lars_update says of an integer lr: it was a ValueError here)
        ({"lr": torch.tensor(1)}, lm.LarsMultiTypeError, "^lr: expected a number or a floating tensor"),
        # (0 was refused as "> 0", -1 as "in [0.0, inf)")
        ({"lr": 0.1, "trust_coefficient": -1}, lm.LarsMultiValueError, r"in \(0\.0, inf\), got -1$"),
        ({"lr": 0.1, "trust_coefficient": 0}, lm.LarsMultiValueError, r"in \(0\.0, inf\), got 0$"),
        # (an lm.Array of a tensor was taken, and the first step failed with float()'s TypeError)
        (
            {"lr": lm.Array(torch.tensor(0.1))},
            lm.LarsMultiTypeError,
            "^lr: expected a number or a torch.Tensor",
        ),
        (
            {"lr": 0.1, "weight_decay": lm.Array(torch.tensor(-0.1))},
            lm.LarsMultiTypeError,
            "^weight_decay: expected a number",
        ),
        ({"lr": 0.1, "momentum": 1.5}, lm.LarsMultiValueError, "momentum"),
        ({"lr": 0.1, "weight_decay": -1.0}, lm.LarsMultiValueError, "weight_decay"),
        ({"lr": 0.1, "nesterov": True, "dampening": 0.1}, lm.LarsMultiValueError, "nesterov"),
        ({"lr": 0.1, "preset": "lamb"}, lm.LarsMultiValueError, "preset"),
        ({"lr": 0.1, "trust_clip": 1}, lm.LarsMultiTypeError, "trust_clip"),
        ({"lr": 0.1, "adapt": "yes"}, lm.LarsMultiTypeError, "adapt"),
        ({"lr": 0.1, "foreach": 1}, lm.LarsMultiTypeError, "foreach"),
        ({"lr": 0.1, "maximize": None}, lm.LarsMultiTypeError, "maximize"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        LARS(P, **kwargs)
    assert isinstance(info.value, lm.LarsMultiError)


def test_bad_group_is_refused_and_not_added():
    opt = LARS(P, lr=0.1)
    with pytest.raises(lm.LarsMultiValueError, match=r"^param_groups\[1\]: momentum"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "momentum": -1.0})
    with pytest.raises(lm.LarsMultiValueError, match=r"^param_groups\[0\]: momentum"):
        LARS([{"params": P, "momentum": 2.0}], lr=0.1)
    assert len(opt.param_groups) == 1
    # timm's name for the trust coefficient, in a group migrated from timm's Lars: a group
    # may carry entries of its own, so it was kept and ignored (the default 0.001 used)
    match = r": expected trust_coefficient, got 'trust_coeff' \(timm's name for it"
    with pytest.raises(lm.LarsMultiValueError, match=r"^param_groups\[0\]" + match):
        LARS([{"params": P, "trust_coeff": 0.02}], lr=0.1)
    with pytest.raises(lm.LarsMultiValueError, match=r"^param_groups\[1\]" + match):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "trust_coeff": 0.02})
    assert len(opt.param_groups) == 1


# --- a refused step writes nothing -------------------------------------------------------


def _stepped_groups(**kw):
    """An optimizer of two groups after one step (its buffers made), with new gradients."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    opt = LARS([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9, weight_decay=1e-3, **kw)
    a.grad, b.grad = torch.randn(4, 3), torch.randn(3)
    opt.step()
    a.grad, b.grad = torch.randn(4, 3), torch.randn(3)
    return opt


def _snapshot(opt):
    params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
    buffers = {id(p): s["momentum_buffer"].clone() for p, s in opt.state.items()}
    return params, buffers


def _assert_unchanged(opt, before):
    params, buffers = _snapshot(opt)
    assert all(torch.equal(x, y) for x, y in zip(params, before[0]))
    assert buffers.keys() == before[1].keys()
    assert all(torch.equal(buffers[k], before[1][k]) for k in buffers)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"momentum": 1.5}, lm.LarsMultiValueError, "momentum"),
        ({"preset": "bogus"}, lm.LarsMultiValueError, "preset"),
        ({"nesterov": "yes"}, lm.LarsMultiTypeError, "nesterov"),
        ({"lr": math.nan}, lm.LarsMultiValueError, "^lr: expected a finite number >= 0, got nan"),
        ({"lr": -0.1}, lm.LarsMultiValueError, "^lr: expected a finite number >= 0"),
        (
            {"lr": 1e39},
            lm.LarsMultiValueError,
            r"^lr: expected a number that fits float32 .*param_groups\[1\]",
        ),
        ({"lr": torch.tensor([0.1, 0.2])}, lm.LarsMultiValueError, "^lr: .*one element"),
        ({"weight_decay": -1.0}, lm.LarsMultiValueError, "^weight_decay: expected a finite number >= 0"),
        ({"weight_decay": torch.tensor(0.1)}, lm.LarsMultiTypeError, "^weight_decay: expected a number"),
        ({"maximize": "False"}, lm.LarsMultiTypeError, "^maximize: expected a bool"),
        (
            {"weight_decay": 1e39},
            lm.LarsMultiValueError,
            "^weight_decay: expected a number that fits float32",
        ),
        (
            {"trust_coefficient": 1e39},
            lm.LarsMultiValueError,
            "^trust_coefficient: expected a number that fits float32",
        ),
        ({"eps": 1e39}, lm.LarsMultiValueError, "^eps: expected a number that fits float32"),
        ({"always_adapt": 0}, lm.LarsMultiTypeError, "^always_adapt: expected a bool"),  # (0 == False)
        ({"dampening": False}, lm.LarsMultiTypeError, "^dampening: expected a number"),
        ({"adapt": 1}, lm.LarsMultiTypeError, "^adapt: expected None or a bool"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_a_value_changed_on_a_later_group_is_refused_before_anything_is_written(change, error, match):
    """Values set on a group after it was added are checked at every step, all groups
    before the first is written; the error names the group."""
    opt = _stepped_groups()
    opt.param_groups[1].update(change)
    before = _snapshot(opt)
    with pytest.raises(error, match=r"^param_groups\[1\]: " + match.removeprefix("^")):
        opt.step()
    _assert_unchanged(opt, before)


def _complex_parameter():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn(3, dtype=torch.complex64)
    return p, "complex64"


def _integer_tensor():
    t = torch.arange(6).reshape(2, 3)
    t.grad = torch.ones(2, 3, dtype=torch.int64)
    return t, "int64"


def _expanded_tensor():
    t = torch.zeros(1, 3).expand(2, 3)
    t.grad = torch.ones(2, 3)
    return t, "share memory"


def _buffer_of_another_shape(opt):
    p = opt.param_groups[1]["params"][0]
    opt.state[p]["momentum_buffer"] = torch.zeros(5)
    return None, "the momentum buffer of param_groups[1]['params'][0]: expected shape (3,)"


def _buffer_of_another_dtype(opt, dtype):
    """A buffer replaced in ``opt.state`` (the dicts ``state_dict()`` returns are its own):
    its dtype was not checked, and torch raised after earlier groups were written (int32,
    complex64) or the step kept the buffer's precision (float64, float16)."""
    p = opt.param_groups[1]["params"][0]
    buffer = opt.state[p]["momentum_buffer"]
    opt.state[p]["momentum_buffer"] = buffer.to(dtype)
    return None, "the momentum buffer of param_groups[1]['params'][0]: expected dtype float32"


def _buffer_whose_elements_overlap(opt):
    """A buffer whose elements share memory: an expanded one raised torch's RuntimeError
    after the earlier groups were written (one whose strides overlap was written, each
    shared element holding one of its results)."""
    p = opt.param_groups[1]["params"][0]
    opt.state[p]["momentum_buffer"] = torch.zeros(8).as_strided((3,), (0,))
    return None, "the momentum buffer of param_groups[1]['params'][0]: expected a tensor that can be written"


BUFFER_FAULTS = [
    _buffer_of_another_shape,
    *(
        partial(_buffer_of_another_dtype, dtype=d)
        for d in (torch.int32, torch.complex64, torch.float64, torch.float16)
    ),
    _buffer_whose_elements_overlap,
]


@pytest.mark.parametrize("make", [_complex_parameter, _integer_tensor, _expanded_tensor, *BUFFER_FAULTS])
def test_a_bad_tensor_in_a_later_group_is_refused_before_anything_is_written(make):
    opt = _stepped_groups(foreach=False)
    if make in BUFFER_FAULTS:
        _, needle = make(opt)
    else:
        tensor, needle = make()
        opt.add_param_group({"params": [tensor]})
    before = _snapshot(opt)
    with pytest.raises(lm.LarsMultiError) as info:
        opt.step()
    assert needle in str(info.value)
    _assert_unchanged(opt, before)


def test_load_state_dict_refuses_bad_values_and_loads_nothing():
    opt = _stepped_groups()
    saved = opt.state_dict()
    bad = {**saved, "param_groups": [dict(g) for g in saved["param_groups"]]}
    bad["param_groups"][1]["lr"] = math.nan
    bad["state"] = {k: {"momentum_buffer": v["momentum_buffer"] + 1} for k, v in saved["state"].items()}
    before = _snapshot(opt)
    with pytest.raises(lm.LarsMultiValueError, match=r"^state_dict\['param_groups'\]\[1\]: lr: "):
        opt.load_state_dict(bad)
    assert opt.param_groups[1]["lr"] == 0.1
    _assert_unchanged(opt, before)


def test_load_state_dict_checks_the_state_its_pre_hooks_leave():
    """torch's load pre-hooks may change or replace the state: one converting a state
    saved by timm's Lars was never run (its state was refused first), and what a hook
    returned was never checked (fused=True loaded, then was ignored)."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = LARS([p], lr=0.1)
    saved = opt.state_dict()
    timm_like = {**saved, "param_groups": [dict(saved["param_groups"][0])]}
    group = timm_like["param_groups"][0]
    group["trust_coeff"] = group.pop("trust_coefficient")
    group.pop("preset")

    def from_timm(optimizer, state):
        groups = [dict(g) for g in state["param_groups"]]
        for g in groups:
            g["trust_coefficient"], g["preset"] = g.pop("trust_coeff"), "paper"
        return {**state, "param_groups": groups}

    handle = opt.register_load_state_dict_pre_hook(from_timm)
    timm_like["param_groups"][0]["lr"] = 0.25
    opt.load_state_dict(timm_like)
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["trust_coefficient"] == 0.001
    handle.remove()
    handle = opt.register_load_state_dict_pre_hook(
        lambda optimizer, state: {**state, "param_groups": [{**state["param_groups"][0], "fused": True}]}
    )
    match = r"^state_dict\['param_groups'\]\[0\]: expected fused false or absent"
    with pytest.raises(lm.LarsMultiValueError, match=match):
        opt.load_state_dict(saved)
    assert "fused" not in opt.param_groups[0] and opt.param_groups[0]["lr"] == 0.25
    handle.remove()
    opt.load_state_dict(saved)  # (no hook of this optimizer's own is left behind)
    assert opt.param_groups[0]["lr"] == 0.1 and not opt._optimizer_load_state_dict_pre_hooks


def test_load_state_dict_refuses_buffers_of_parameters_in_another_order():
    """torch pairs a saved state with the parameters by position: a state saved with the
    parameters in another order pairs buffers with parameters of other shapes."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(8))
    opt = LARS([a, b], lr=0.1)
    a.grad, b.grad = torch.randn(8, 4), torch.randn(8)
    opt.step()
    reordered = LARS([b, a], lr=0.1)
    with pytest.raises(
        lm.LarsMultiValueError, match=r"expected a tensor of shape \(8,\).*got shape \(8, 4\)"
    ):
        reordered.load_state_dict(opt.state_dict())
    assert not reordered.state


def test_a_bad_tensor_in_the_last_group_is_refused_by_name_before_any_group_steps():
    """A kept momentum buffer with torch's negative bit (no _foreach kernel writes one),
    or a sparse gradient, in the last of three groups: refused by name, every group as
    it was. The buffer went to the kernels, which raised torch's error after the earlier
    groups had stepped; the sparse gradient's message named no parameter."""
    torch.manual_seed(0)
    groups = [[torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)] for _ in range(3)]
    opt = LARS([{"params": g} for g in groups], lr=0.1, momentum=0.9, weight_decay=1e-2)
    for p in (p for g in groups for p in g):
        p.grad = torch.randn(4, 3)
    opt.step()
    last = groups[2][1]
    values = opt.state[last]["momentum_buffer"]
    opt.state[last]["momentum_buffer"] = torch.complex(torch.zeros_like(values), -values).conj().imag
    assert opt.state[last]["momentum_buffer"].is_neg()
    before = [p.detach().clone() for g in groups for p in g]
    buffers = [opt.state[p]["momentum_buffer"].clone() for g in groups for p in g]
    for foreach in (None, True):
        for group in opt.param_groups:
            group["foreach"] = foreach
        with pytest.raises(
            lm.LarsMultiTypeError,
            match=r"^the momentum buffer of param_groups\[2\]\['params'\]\[1\]: .*negative",
        ):
            opt.step()
        for a, b in zip(before, (p for g in groups for p in g)):
            assert torch.equal(a, b)
        for a, p in zip(buffers, (p for g in groups for p in g)):
            assert torch.equal(a, opt.state[p]["momentum_buffer"])
    opt.state[last]["momentum_buffer"] = values
    last.grad = last.grad.to_sparse()
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^param_groups\[2\]\['params'\]\[1\].grad: expected a dense"
    ):
        opt.step()


def test_load_state_dict_refuses_a_state_entry_that_is_no_dict():
    """A parameter's saved state that is not a dict (ZeroRedundancyOptimizer's
    load_state_dict leaves None for the parameters other ranks own, in the dict it was
    given) is refused naming it; it failed with Python's AttributeError."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    opt = LARS([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.randn(4, 3), torch.randn(3)
    opt.step()
    saved = opt.state_dict()
    saved["state"][1] = None
    fresh = LARS([a, b], lr=0.1, momentum=0.9)
    with pytest.raises(
        lm.LarsMultiTypeError, match=r"^state_dict\['state'\]\[1\]: expected the state of .*, got None"
    ):
        fresh.load_state_dict(saved)
    assert not fresh.state


def test_load_state_dict_refuses_named_groups_in_another_order():
    """Groups of named parameters (``named_parameters()``) given in another order than
    saved, with parameters of one shape: torch pairs by position, so each would take the
    other's buffer and settings, silently; the names tell, and the state is refused.
    In the saved order it loads, and resumes the run."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False))
    first, second = model.named_parameters()

    def make(order):
        groups = {"0": {"params": [first], "trust_coefficient": 0.02}, "1": {"params": [second]}}
        return LARS([groups[k] for k in order], lr=0.1, momentum=0.9, trust_coefficient=0.5)

    opt = make("01")
    for p in model.parameters():
        p.grad = torch.randn(3, 3)
    opt.step()
    saved = opt.state_dict()
    reordered = make("10")
    with pytest.raises(
        lm.LarsMultiValueError,
        match=r"^state_dict\['param_groups'\]\[0\]\['param_names'\]: expected .*, got \['0.weight'\]",
    ):
        reordered.load_state_dict(saved)
    assert not reordered.state and reordered.param_groups[0]["trust_coefficient"] == 0.5
    again = make("01")
    again.load_state_dict(saved)
    assert again.param_groups[0]["trust_coefficient"] == 0.02 and len(again.state) == 2


@pytest.mark.parametrize("other", ["sgd", "timm"])
def test_load_state_dict_of_another_optimizer_names_the_missing_settings(other):
    """A state saved by torch.optim.SGD or timm's Lars lacks LARS's settings: a clear
    error naming them (it was a bare KeyError), and nothing is loaded."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 2))
    p.grad = torch.randn(3, 2)
    if other == "timm":
        timm = load_timm_lars()
        if timm is None:
            pytest.skip("timm is not installed")
        saver = timm.Lars([p], lr=0.1, momentum=0.9)
        missing = "'preset', 'trust_coefficient'"
    else:
        saver = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        missing = "'preset', 'trust_coefficient', 'eps', 'trust_clip', 'always_adapt'"
    saver.step()
    opt = _stepped_groups()
    before = _snapshot(opt)
    with pytest.raises(
        lm.LarsMultiValueError,
        match=rf"^state_dict\['param_groups'\]\[0\]: expected the settings of a group of lm\.torch\.LARS, "
        rf"missing {missing} \(saved by another optimizer\?\)$",
    ):
        opt.load_state_dict(saver.state_dict())
    _assert_unchanged(opt, before)


def test_a_group_changed_by_hand_is_checked_for_its_settings_names_at_each_step():
    """timm's name for the trust coefficient written into a group after the first step was
    ignored (checked only where another setting changed), and a state loaded past this
    optimizer's checks (torch.optim.Optimizer.load_state_dict, another optimizer's state)
    failed at the step with a bare KeyError. Both are refused by name, nothing written."""
    opt = _stepped_groups()
    before = _snapshot(opt)
    opt.param_groups[1]["trust_coeff"] = 0.1
    with pytest.raises(
        lm.LarsMultiValueError, match=r"^param_groups\[1\]: expected trust_coefficient, got 'trust_coeff'"
    ):
        opt.step()
    _assert_unchanged(opt, before)
    del opt.param_groups[1]["trust_coeff"]
    step = torch.compile(opt.step, fullgraph=True, backend="eager")
    step()  # (traced, then the name written into a group after it: traced anew, and refused)
    before = _snapshot(opt)
    opt.param_groups[0]["trust_coeff"] = 0.1
    with pytest.raises(Exception, match=r"param_groups\[0\]: expected trust_coefficient, got 'trust_coeff'"):
        step()
    _assert_unchanged(opt, before)
    del opt.param_groups[0]["trust_coeff"]
    p = torch.nn.Parameter(torch.randn(4, 3))
    sgd = torch.optim.SGD([p, torch.nn.Parameter(torch.randn(3))], lr=0.1, momentum=0.9)
    torch.optim.Optimizer.load_state_dict(
        opt,
        {
            "state": {},
            "param_groups": [
                {**sgd.state_dict()["param_groups"][0], "params": [0]},
                {**opt.state_dict()["param_groups"][1], "params": [1]},
            ],
        },
    )
    with pytest.raises(
        lm.LarsMultiValueError,
        match=r"^param_groups\[0\]: expected the settings of a group of lm\.torch\.LARS, missing 'preset'",
    ):
        opt.step()
    params, _ = _snapshot(opt)
    assert all(torch.equal(x, y) for x, y in zip(params, before[0]))


def test_the_settings_of_many_groups_are_kept_between_steps(monkeypatch):
    """Each distinct group's settings are checked once and kept; with more than 256 groups
    of distinct settings (a trust coefficient per layer) the store was emptied group after
    group, and every group's settings were checked anew twice a step."""
    import lars_multi.torch as lm_torch

    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(300)]
    opt = LARS([{"params": [p], "trust_coefficient": 0.001 * (1 + i)} for i, p in enumerate(params)], lr=0.1)
    for p in params:
        p.grad = torch.full((2,), 0.5)
    opt.step()
    checks = []
    check_group = lm_torch._check_group
    monkeypatch.setattr(lm_torch, "_check_group", lambda group: checks.append(1) or check_group(group))
    opt.step()
    assert not checks


def test_a_buffer_left_by_a_cast_model_is_refused_with_the_way_to_cast_it():
    """After model.half() the buffers stay float32 (torch.optim.SGD steps on, promoting):
    refused, and the message now says how to cast them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    opt = LARS(model.parameters(), lr=0.3)
    model(x).sum().backward()
    opt.step()
    model.half()
    opt.zero_grad()
    model(x.half()).float().sum().backward()
    with pytest.raises(
        lm.LarsMultiTypeError,
        match=r"got float32; if the parameter was cast or moved .*"
        r"opt\.load_state_dict\(opt\.state_dict\(\)\) casts and moves the buffers",
    ):
        opt.step()
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert all(s["momentum_buffer"].dtype is torch.float16 for s in opt.state.values())


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_one_element_tensor_lr_of_any_shape_steps_every_parameter(shape):
    """A tensor learning rate of one element acts as a number on every parameter (0-d ones too)."""
    results = []
    for lr in (0.1, torch.full(shape, 0.1)):
        torch.manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(())),
            torch.nn.Parameter(torch.randn(3)),
            torch.nn.Parameter(torch.randn(2, 3)),
        ]
        for p in params:
            p.grad = torch.randn_like(p)
        LARS(params, lr=lr, weight_decay=1e-3).step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("lr", [1, np.float64(0.5)], ids=["int", "numpy-float64"])
def test_a_number_lr_of_another_type_on_the_computed_first_path(lr):
    """A gradient in another parameter's memory sends the step down its computed-then-written
    path, which cut the rates from the graph as arrays: an int or NumPy lr raised there."""
    results = []
    for rate in (float(lr), lr):
        torch.manual_seed(0)
        a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4, 3))
        opt = LARS([a, b], lr=rate, weight_decay=1e-3)
        a.grad, b.grad = b.detach(), torch.randn(4, 3)  # a's gradient is b's memory
        opt.step()
        results.append([a.detach().clone(), b.detach().clone()])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_refused_step_makes_no_buffers():
    """timm starts a buffer at r u on its parameter's first step: a step refused (here:
    overlapping parameters given different values) must not leave buffers that make
    the next step a later one."""
    base = torch.randn(10, 4)
    g1, g2 = torch.randn(6, 4), torch.randn(6, 4)
    kw = dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=1e-2, preset="timm")
    results = []
    for refused_first in (True, False):
        b = base.clone()
        first, second = b[:6].requires_grad_(True), b[4:].requires_grad_(True)
        opt = LARS([first, second], **kw)
        if refused_first:
            first.grad, second.grad = g1.clone(), g2.clone()
            with pytest.raises(lm.LarsMultiValueError):
                opt.step()
            assert not opt.state
            second.grad = None
        else:
            first.grad = g1.clone()
        opt.step()
        results.append(b)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_lazy_front_door_imports():
    from conftest import run_python

    script = """
import sys
import lars_multi as lm
print("torch" in sys.modules)
print(lm.torch.LARS.__name__, "torch" in sys.modules)
"""
    assert run_python(script).splitlines() == ["False", "LARS True"]


def test_strided_view_parameters_take_the_fast_checks(monkeypatch):
    """Parameters that are strided views (torch cannot tell whether their elements
    overlap) were checked one by one, with messages, at every step (about 50% slower on
    300 of them); their strides say they do not overlap."""
    base = torch.randn(4, 3, 8)
    params = [torch.nn.Parameter(base[i, :, ::2]) for i in range(4)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = LARS(params, lr=0.1, momentum=0.9)
    opt.step()
    slow = []
    monkeypatch.setattr(lm._checks, "check_weights", lambda *args: slow.append(args))
    opt.step()
    assert slow == []


@pytest.mark.parametrize("exclude", [3, ["bias", 1], ["bias", None], b"bias"], ids=repr)
def test_param_groups_refuses_an_exclude_that_is_no_names(exclude):
    """Python's TypeError or AttributeError before, naming nothing. (None is no patterns,
    as lm.keras.LARS takes it.)"""
    with pytest.raises(lm.LarsMultiTypeError, match=r"^exclude: expected name patterns \(str\), got"):
        param_groups(torch.nn.Linear(2, 2), exclude=exclude)
    assert len(param_groups(torch.nn.Linear(2, 2), exclude=None)) == 2


@pytest.mark.parametrize("params", [[], "weights"], ids=["empty", "a-parameter"])
def test_param_groups_refuses_params_among_the_settings(params):
    """params= among the settings replaced both groups' parameters: [] gave no groups, with
    no word, and a parameter put it in both groups, which torch refused with its own message."""
    model = torch.nn.Linear(2, 2)
    given = [] if params == [] else [model.weight]
    with pytest.raises(lm.LarsMultiValueError, match=r"^params: expected settings for both groups"):
        param_groups(model, params=given)


def test_param_groups_takes_patterns_from_any_iterable():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    groups = param_groups(model, exclude=(name for name in ["1.weight"]))
    assert [len(g["params"]) for g in groups] == [1, 3]


def test_a_buffer_made_in_inference_mode_is_refused_before_any_group_is_written():
    """A step under torch.inference_mode makes inference-tensor buffers; the next
    step outside it wrote the first group, then raised torch's RuntimeError on the
    second group's buffer. Every group is checked first: the buffer is named."""
    randn = partial(torch_randn, 4, 5, generator=torch.Generator().manual_seed(3))
    a = torch.nn.Parameter(randn())
    b = torch.nn.Parameter(randn())
    opt = LARS([{"params": [a]}, {"params": [b], "momentum": 0.8}], lr=0.1, momentum=0.9)
    a.grad = randn()
    opt.step()
    a.grad, b.grad = None, randn()
    with torch.inference_mode():
        opt.step()
    a.grad = randn()
    before = [a.detach().clone(), b.detach().clone(), opt.state[a]["momentum_buffer"].clone()]
    with pytest.raises(
        lm.LarsMultiTypeError,
        match=r"^the momentum buffer of param_groups\[1\]\['params'\]\[0\]: .*inference",
    ):
        opt.step()
    after = [a.detach(), b.detach(), opt.state[a]["momentum_buffer"]]
    for x, y in zip(before, after):
        assert torch.equal(x, y)


@pytest.mark.parametrize(("preset", "momentum"), [("paper", 0.0), ("timm", 0.9)])
def test_compiled_step_follows_a_weight_decay_that_changes(preset, momentum):
    """A weight decay changed between compiled steps (a schedule) becomes a dynamic
    float by the third value, and torch 2.13's Inductor then kept an earlier value
    where it was a kernel's scalar argument (u = g + lambda w), while the trust
    ratio took the new one: a wrong step, silently. Inductor (the default backend),
    in float64: the compiled steps equal the eager ones."""
    torch._dynamo.reset()
    w0 = torch_randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g0 = torch_randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for compiled in (True, False):
        p = torch.nn.Parameter(w0.clone())
        opt = LARS([p], lr=0.1, momentum=momentum, weight_decay=1e-3, trust_coefficient=0.02, preset=preset)
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        for decay in (1e-3, 0.1, 0.5, 2.0):
            opt.param_groups[0]["weight_decay"] = decay
            p.grad = g0.clone()
            step()
            results.append(p.detach().clone())
    torch._dynamo.reset()
    for got, want in zip(results[:4], results[4:]):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


def test_bad_arguments_of_param_groups_and_lars_are_named():
    """param_groups of a list of parameters raised AttributeError; an empty exclude
    pattern excluded every parameter (no layer adapted), silently; a NaN tensor lr
    was named learning_rate; an eps of 10**400 raised Python's OverflowError."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.raises(lm.LarsMultiTypeError, match=r"^model: expected a torch.nn.Module"):
        param_groups(list(model.parameters()))
    for exclude in ("", ["0.", ""]):
        with pytest.raises(lm.LarsMultiValueError, match=r"^exclude: expected non-empty name patterns"):
            param_groups(model, exclude=exclude)
    with pytest.raises(lm.LarsMultiValueError, match=r"^lr: expected a finite number >= 0, got nan"):
        LARS(model.parameters(), lr=torch.tensor(float("nan")))
    for name in ("eps", "trust_coefficient"):
        with pytest.raises(lm.LarsMultiValueError, match=rf"^{name}: .*too large for a float"):
            LARS(model.parameters(), lr=0.1, **{name: 10**400})


def test_a_gradient_of_another_dtype_is_taken_in_its_parameters_dtype():
    """torch lets a parameter keep gradients of another dtype (grad_dtype): a float32
    gradient stepped a float64 parameter at float32 precision, silently. It is taken
    in the parameter's dtype (a half parameter's float32 gradient as it is)."""
    w0 = torch_randn(16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    g = torch_randn(16, 16, generator=torch.Generator().manual_seed(8))
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    p.grad_dtype = torch.float32
    p.grad, q.grad = g.clone(), g.double()
    LARS([p], lr=0.5, momentum=0.9, weight_decay=1e-3).step()
    LARS([q], lr=0.5, momentum=0.9, weight_decay=1e-3).step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_half_parameters_gradient_of_another_dtype_is_taken_in_float32(param_dtype, grad_dtype):
    """A half parameter's step computes in float32; its float32 gradient was taken as it
    is, but a gradient of any other dtype was cast to the half first: a float64 gradient
    of 1e5 on a float16 parameter became inf, and the weights -inf, silently. Every
    gradient dtype now steps as the same values in float32 do."""
    if grad_dtype is param_dtype:
        pytest.skip("the parameter's own dtype")
    w0 = torch.tensor([[-1.5, -0.4], [0.2, 0.7]], dtype=param_dtype)
    # beyond float16's range, or (float16 gradients) finer than bfloat16's steps
    big = [[1e5, -3e4], [2.5e2, 7e4]] if grad_dtype is not torch.float16 else [[6e4, -3e4], [1 + 2**-10, 7e3]]
    values = torch.tensor(big).to(grad_dtype).float()  # (exact in float32)
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    p.grad_dtype = grad_dtype
    p.grad, q.grad_dtype = values.to(grad_dtype), torch.float32
    q.grad = values.clone()
    for opt in (
        LARS([p], lr=0.1, momentum=0.9, weight_decay=1e-4),
        LARS([q], lr=0.1, momentum=0.9, weight_decay=1e-4),
    ):
        opt.step()
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_optimizers_stepping_in_threads_share_the_configuration_cache_safely():
    """The configuration cache is the process's: two optimizers of 150 groups each,
    stepping in two threads, evicted each other's configurations between a step's
    making and reading them (a bare KeyError). Each steps as it does alone."""
    import sys
    import threading

    device = torch.get_default_device()  # (torch.set_default_device holds in this thread only)

    def run(base, out):
        gen = torch.Generator().manual_seed(int(base * 10))
        ps = [torch.nn.Parameter(torch_randn(4, 4, generator=gen).to(device)) for _ in range(150)]
        groups = [{"params": [p], "momentum": base + i * 1e-4} for i, p in enumerate(ps)]
        opt = LARS(groups, lr=0.1)
        for _ in range(30):
            for p in ps:
                p.grad = torch_randn(4, 4, generator=gen).to(device)
            opt.step()
        out.append([p.detach().clone() for p in ps])

    alone = [[], []]
    for base, out in zip((0.5, 0.6), alone):
        run(base, out)
    together = [[], []]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=args) for args in zip((0.5, 0.6), together)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for got, want in zip(together, alone):
        assert got, "a thread failed"
        for a, b in zip(got[0], want[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
