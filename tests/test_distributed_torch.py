"""lars_multi on sharded and replicated torch parameters: DTensor, FSDP2, DDP, FSDP1.

Each test starts two processes on the gloo backend at 127.0.0.1 (this file run
as a script, one process per rank, on a free port) and compares what they
computed with the same computation on the full tensors in one process (done in
every rank, on the same seeds, without any collective). Per-layer norms must be
the norms of the whole layer, wherever its shards live: a LARS that took
shard-local norms would give each shard its own trust ratio; the negative
control below shows that these comparisons see it.

Tolerances: 1e-6 relative to a parameter's scale (its largest magnitude),
1e-5 absolute for order-one values (losses). Everything runs in float32 on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

WORLD = 2
STEPS = 5
REL_TOL = 1e-6  # relative to a parameter's scale
ABS_TOL = 1e-5  # for order-one values (losses)
CASE_TIMEOUT_S = 60
HYPER = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "trust_coefficient": 0.02}

# --- the parent: start the ranks, collect what they report -------------------------------------


@pytest.fixture(autouse=True)
def _torch_distributed() -> None:
    from conftest import require_gloo

    require_gloo()


def run_ranks(case: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Run ``case`` in WORLD processes (this file as a program); each rank's report."""
    from conftest import run_ranks as launch

    return launch(__file__, [case], tmp_path, case, world=WORLD, timeout=CASE_TIMEOUT_S)


def test_lars_update_on_dtensors(tmp_path):
    """``lm.lars_update`` on DTensors (uneven Shard(0), Replicate, both in one tree),
    functional and in place, single arrays and dicts, equals the update of the full tensors."""
    for report in run_ranks("dtensor_update", tmp_path):
        assert report["types_kept"], report
        for variant, rel in report["max_rel"].items():
            assert rel <= REL_TOL, (variant, report)


def test_torch_lars_on_dtensors(tmp_path):
    """``lm.torch.LARS`` (momentum, weight decay) on DTensor parameters, 5 steps,
    equals the optimizer on the full tensors; also with a plain tensor in the group."""
    for report in run_ranks("dtensor_optimizer", tmp_path):
        for variant, rel in report["max_rel"].items():
            assert rel <= REL_TOL, (variant, report)


def test_compiled_steps_on_dtensors_of_two_placements(tmp_path):
    """``torch.compile(opt.step, fullgraph=True, dynamic=False)`` of two optimizers in one
    process, over Shard(0) and then Replicate() parameters (the README's recipe: a second,
    dynamic compile fails inside torch 2.13's Dynamo), equals the eager steps."""
    for report in run_ranks("compiled_placements", tmp_path):
        for variant, rel in report["max_rel"].items():
            assert rel <= REL_TOL, (variant, report)


def test_dtensors_on_two_meshes(tmp_path):
    """DTensors on two device meshes in one tree or group (FSDP2 with tensor parallelism
    puts some layers on the 2-D mesh, the others on its data-parallel mesh): each
    mesh's layers are stepped together, as the full tensors are; a layer larger than a
    CPU batch, on the first mesh, was written before the step failed on stacking norms
    of both meshes."""
    for report in run_ranks("dtensors_on_two_meshes", tmp_path):
        for variant, rel in report["max_rel"].items():
            assert rel <= REL_TOL, (variant, report)


def test_fsdp2_equals_full_batch(tmp_path):
    """An MLP under FSDP2 (``fully_shard`` on each Linear and the root), each rank
    on half of every batch, 5 steps of ``lm.torch.LARS``, equals full-batch training."""
    for report in run_ranks("fsdp2", tmp_path):
        assert report["all_dtensors"], report
        assert report["uneven"], report  # some parameter's shards differ in size
        assert report["max_rel"] <= REL_TOL, report
        assert report["max_loss_diff"] <= ABS_TOL, report


def test_ddp_equals_full_batch(tmp_path):
    """The MLP under DDP, each rank on half of every batch, equals full-batch training."""
    for report in run_ranks("ddp", tmp_path):
        assert report["max_rel"] <= REL_TOL, report
        assert report["max_loss_diff"] <= ABS_TOL, report


def test_negative_control_shard_local_norms_are_detected(tmp_path):
    """A LARS written by hand with shard-local norms (``p.to_local().norm()``) equals
    ``lm.torch.LARS`` in one process but fails the FSDP2 comparison by far."""
    for report in run_ranks("fsdp2_local_norms", tmp_path):
        # the hand-written rule is the same rule: unsharded it agrees with lm.torch.LARS
        assert report["control_single_rel"] <= REL_TOL, report
        # and sharded, its local norms are caught
        assert report["max_rel"] > 1e3 * REL_TOL, report


def test_fsdp2_step_reads_nothing_on_the_host(tmp_path):
    """The FSDP2 run of the FSDP2 test with ``Tensor.item``, ``__float__``, ``__int__``,
    ``__bool__``, ``tolist`` and ``DTensor.to_local`` raising inside ``opt.step``."""
    for report in run_ranks("fsdp2_no_host_sync", tmp_path):
        assert report["patch_active"], report
        assert report["max_rel"] <= REL_TOL, report


def test_fsdp1_flat_parameters_are_refused(tmp_path):
    """FSDP1 with ``use_orig_params=False`` hands the optimizer flat parameters that
    hide the layers: LARS cannot be right on them and should say so."""
    (report, _) = run_ranks("fsdp1_flat", tmp_path)
    if not report["flat_params"]:  # the case really gives FlatParameters
        pytest.fail(f"FSDP1 gave no FlatParameter: {report}")
    assert report["refused"], report
    assert "LarsMultiValueError" in report["message"] and "flattened FSDP parameter" in report["message"]
    for message in report["functional"]:  # (lars_update and lm.optim took them)
        assert message.startswith("w[0]: expected dense weights") or message.startswith(
            "params[0]: expected"
        ), report
        assert "flattened FSDP" in message, report
    assert report["unchanged"], report


# --- the ranks ---------------------------------------------------------------------------------


def _rel(a: Any, ref: Any) -> float:
    """max |a - ref| relative to the scale of ``ref`` (its largest magnitude)."""
    scale = float(ref.abs().max()) or 1.0
    return float((a.double() - ref.double()).abs().max()) / scale


def _full(p: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def _mlp(seed: int = 0) -> Any:
    """Layers whose first dimensions (7, 5, 3) split unevenly over two ranks."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    )


def _batches(steps: int = STEPS, n: int = 16) -> list[tuple[Any, Any]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)) for _ in range(steps)]


def _train(model: Any, opt: Any, rank: int | None, step_context: Any = None) -> list[float]:
    """STEPS steps; ``rank`` None: the whole batch, else this rank's half. The
    losses of the whole batch (averaged over the ranks)."""
    import torch
    import torch.distributed as dist

    losses = []
    for x, y in _batches():
        if rank is not None:
            half = x.shape[0] // WORLD
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        with step_context() if step_context else contextlib.nullcontext():
            opt.step()
        opt.zero_grad()
        loss = loss.detach()
        if rank is not None:
            dist.all_reduce(loss)
            loss = loss / WORLD
        losses.append(float(loss))
    return losses


def _reference() -> tuple[dict[str, Any], list[float]]:
    """The MLP trained on the whole batches in this process, with lm.torch.LARS."""
    import lars_multi as lm

    model = _mlp()
    losses = _train(model, lm.torch.LARS(model.parameters(), **HYPER), None)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, losses


def _compare_model(model: Any, losses: list[float]) -> dict[str, Any]:
    ref, ref_losses = _reference()
    rels = {n: _rel(_full(p.detach()), ref[n]) for n, p in model.named_parameters()}
    return {
        "max_rel": max(rels.values()),
        "per_param": rels,
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses, ref_losses)),
    }


def case_dtensor_update(mesh: Any) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    import lars_multi as lm

    g = torch.Generator().manual_seed(2)
    shapes = {"a": (5, 3), "b": (5,), "c": (3, 5), "zero_grad": (5, 2)}
    w = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    dcdw = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    dcdw["zero_grad"].zero_()
    lr, decay = 0.1, 1e-2
    ref = lm.lars_update(w, dcdw, lr, decay_lambda=decay)
    placements = {
        "shard": {k: [Shard(0)] for k in shapes},
        "replicate": {k: [Replicate()] for k in shapes},
        "mixed": {"a": [Shard(0)], "b": [Replicate()], "c": [Shard(1)], "zero_grad": [Shard(0)]},
    }
    max_rel: dict[str, float] = {}
    types_kept = True
    for name, place in placements.items():

        def dist_tree(tree, place=place):
            return {k: distribute_tensor(v.clone(), mesh, place[k]) for k, v in tree.items()}

        dw, dg = dist_tree(w), dist_tree(dcdw)
        new = lm.lars_update(dw, dg, lr, decay_lambda=decay)
        types_kept &= all(
            isinstance(new[k], DTensor) and tuple(new[k].placements) == tuple(place[k]) for k in shapes
        )
        max_rel[f"{name}/dict"] = max(_rel(new[k].full_tensor(), ref[k]) for k in shapes)
        # the inputs are unchanged by the functional update
        max_rel[f"{name}/dict/input_kept"] = max(_rel(dw[k].full_tensor(), w[k]) for k in shapes)
        returned = lm.lars_update(dw, dg, lr, decay_lambda=decay, out=dw)
        types_kept &= returned is dw or all(returned[k] is dw[k] for k in shapes)
        max_rel[f"{name}/dict/in_place"] = max(_rel(dw[k].full_tensor(), ref[k]) for k in shapes)
        for k in shapes:  # one array at a time
            one = distribute_tensor(w[k].clone(), mesh, place[k])
            grad = distribute_tensor(dcdw[k].clone(), mesh, place[k])
            single_ref = lm.lars_update(w[k], dcdw[k], lr, decay_lambda=decay)
            max_rel[f"{name}/{k}/single"] = _rel(
                lm.lars_update(one, grad, lr, decay_lambda=decay).full_tensor(), single_ref
            )
            lm.lars_update(one, grad, lr, decay_lambda=decay, out=one)
            max_rel[f"{name}/{k}/single/in_place"] = _rel(one.full_tensor(), single_ref)
    return {"max_rel": max_rel, "types_kept": types_kept}


def case_dtensor_optimizer(mesh: Any) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import lars_multi as lm

    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (5, 3), "b": (5,), "c": (3, 5)}
    init = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(STEPS)]
    hyper = {**HYPER, "weight_decay": 1e-2}

    def run(place, foreach):
        def placed(k, v):  # (a placement of None: a plain tensor, as in a partly sharded model)
            return (
                v.clone()
                if place is None or place[k] is None
                else distribute_tensor(v.clone(), mesh, place[k])
            )

        params = {k: torch.nn.Parameter(placed(k, v)) for k, v in init.items()}
        opt = lm.torch.LARS(params.values(), foreach=foreach, **hyper)
        for step in grads:
            for k, p in params.items():
                p.grad = placed(k, step[k])
            opt.step()
        return {k: _full(p.detach()) for k, p in params.items()}

    placements = {
        "shard": {k: [Shard(0)] for k in shapes},
        "replicate": {k: [Replicate()] for k in shapes},
        "mixed": {"a": [Shard(0)], "b": [Replicate()], "c": [Shard(1)]},
        "dtensors_and_a_plain_tensor": {"a": [Shard(0)], "b": None, "c": [Shard(1)]},
    }
    max_rel = {}
    for foreach in (False, True):
        ref = run(None, foreach)
        for name, place in placements.items():
            got = run(place, foreach)
            max_rel[f"{name}/foreach={foreach}"] = max(_rel(got[k], ref[k]) for k in shapes)
    return {"max_rel": max_rel}


def case_compiled_placements(mesh: Any) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import lars_multi as lm

    gen = torch.Generator().manual_seed(5)
    init = torch.randn(5, 3, generator=gen)
    grads = [torch.randn(5, 3, generator=gen) for _ in range(3)]

    def run(place, compiled):
        p = torch.nn.Parameter(distribute_tensor(init.clone(), mesh, place))
        opt = lm.torch.LARS([p], **HYPER)
        step = torch.compile(opt.step, fullgraph=True, dynamic=False) if compiled else opt.step
        for g in grads:
            p.grad = distribute_tensor(g.clone(), mesh, place)
            step()
        return _full(p.detach())

    max_rel = {}
    for name, place in (("shard", [Shard(0)]), ("replicate", [Replicate()])):
        max_rel[name] = _rel(run(place, True), run(place, False))
    return {"max_rel": max_rel}


def case_dtensors_on_two_meshes(mesh: Any) -> dict[str, Any]:
    import lars_multi.backends.torch as torch_backend
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import lars_multi as lm
    from lars_multi._batching import CPU_BATCH_BYTES

    # (CPU batches are sized by the machine's cache: here 4 MiB, whatever the machine)
    torch_backend._CPU_BATCH_BYTES = CPU_BATCH_BYTES
    other = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("dp", "tp"))
    gen = torch.Generator().manual_seed(4)
    # "big": more than a CPU batch (4 MiB), a batch of its own, before the others
    shapes = {"big": (1100, 1000), "a": (6, 4), "b": (4, 6), "c": (6,)}
    meshes = {"big": (mesh, [Shard(0)]), "a": (mesh, [Shard(0)]), "b": (other, [Shard(0), Replicate()])}
    meshes["c"] = (other, [Replicate(), Replicate()])
    init = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(3)]

    def placed(k, v, sharded):
        return distribute_tensor(v.clone(), *meshes[k]) if sharded else v.clone()

    def run(sharded, foreach):
        params = {k: torch.nn.Parameter(placed(k, v, sharded)) for k, v in init.items()}
        opt = lm.torch.LARS(params.values(), foreach=foreach, **HYPER)
        for step in grads:
            for k, p in params.items():
                p.grad = placed(k, step[k], sharded)
            opt.step()
        return {k: _full(p.detach()) for k, p in params.items()}

    max_rel = {}
    for foreach in (None, False):
        ref, got = run(False, foreach), run(True, foreach)
        max_rel[f"optimizer/foreach={foreach}"] = max(_rel(got[k], ref[k]) for k in shapes)
    w = {k: placed(k, v, True) for k, v in init.items()}
    g = {k: placed(k, v, True) for k, v in grads[0].items()}
    ref = lm.lars_update(init, grads[0], 0.1, decay_lambda=1e-2)
    new = lm.lars_update(w, g, 0.1, decay_lambda=1e-2)
    max_rel["lars_update"] = max(_rel(new[k].full_tensor(), ref[k]) for k in shapes)
    lm.lars_update(w, g, 0.1, decay_lambda=1e-2, out=w)
    max_rel["lars_update/in_place"] = max(_rel(w[k].full_tensor(), ref[k]) for k in shapes)
    return {"max_rel": max_rel}


def _fsdp2_model(mesh: Any) -> Any:
    """The MLP under FSDP2 on ``mesh``: the CPU mesh (by default ``fully_shard`` takes
    the accelerator where there is one, which gloo cannot serve)."""
    import torch
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def case_fsdp2(mesh: Any, step_context: Any = None) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    import lars_multi as lm

    model = _fsdp2_model(mesh)
    params = list(model.parameters())
    opt = lm.torch.LARS(params, **HYPER)
    losses = _train(model, opt, dist.get_rank(), step_context)
    return {
        **_compare_model(model, losses),
        "all_dtensors": all(isinstance(p, DTensor) for p in params),
        "uneven": any(p.to_local().shape[0] * WORLD != p.shape[0] for p in params),
    }


class _HostReadError(AssertionError):
    pass


@contextlib.contextmanager
def _no_host_reads():
    """Reading a tensor's value on the host (or unwrapping a DTensor by hand) raises."""
    import torch
    from torch.distributed.tensor import DTensor

    def refuse(name):
        def method(*args, **kwargs):
            raise _HostReadError(f"{name} called inside opt.step")

        return method

    targets = [(torch.Tensor, n) for n in ("item", "__float__", "__int__", "__bool__", "tolist")]
    targets.append((DTensor, "to_local"))
    missing = object()  # the method is inherited (torch._C.TensorBase): delete the patch after
    saved = [(cls, n, cls.__dict__.get(n, missing)) for cls, n in targets]
    for cls, n in targets:
        setattr(cls, n, refuse(f"{cls.__name__}.{n}"))
    try:
        yield
    finally:
        for cls, n, original in saved:
            if original is missing:
                delattr(cls, n)
            else:
                setattr(cls, n, original)


def case_fsdp2_no_host_sync(mesh: Any) -> dict[str, Any]:
    import torch

    patch_active = True
    with _no_host_reads():  # the patch is really in force
        for read in (
            lambda: torch.ones(()).item(),
            lambda: float(torch.ones(())),
            lambda: bool(torch.ones(())),
        ):
            try:
                read()
                patch_active = False
            except _HostReadError:
                pass
    return {**case_fsdp2(mesh, _no_host_reads), "patch_active": patch_active}


class _LocalNormLARS:
    """The paper's LARS (as lm.torch.LARS with preset "paper") written by hand, with the
    norms of each rank's shard (``p.to_local()``) instead of the whole layer: the bug
    the FSDP2 comparison must catch."""

    def __init__(self, params, lr, momentum, weight_decay, trust_coefficient):
        self.params = list(params)
        self.lr, self.mu, self.wd, self.c = lr, momentum, weight_decay, trust_coefficient
        self.buffers = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        import torch
        from torch.distributed.tensor import DTensor

        with torch.no_grad():
            for p in self.params:
                local = p.to_local() if isinstance(p, DTensor) else p
                g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                u = g
                if p.ndim > 1:  # the paper preset's default: adapt and decay matrices only
                    w_norm, g_norm = local.norm(), g.norm()
                    u = g + self.wd * local
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0), self.c * w_norm / (g_norm + self.wd * w_norm), 1.0
                    )
                    u = ratio * u
                if id(p) not in self.buffers:
                    self.buffers[id(p)] = torch.zeros_like(local)
                buffer = self.buffers[id(p)]
                buffer.mul_(self.mu).add_(self.lr * u)
                local.sub_(buffer)


def case_fsdp2_local_norms(mesh: Any) -> dict[str, Any]:
    import torch.distributed as dist

    # the hand-written rule, unsharded, is lm.torch.LARS
    model = _mlp()
    _train(model, _LocalNormLARS(model.parameters(), **HYPER), None)
    ref, _ = _reference()
    control = max(_rel(p.detach(), ref[n]) for n, p in model.named_parameters())
    model = _fsdp2_model(mesh)
    losses = _train(model, _LocalNormLARS(model.parameters(), **HYPER), dist.get_rank())
    return {**_compare_model(model, losses), "control_single_rel": control}


def case_ddp(mesh: Any) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import lars_multi as lm

    model = DistributedDataParallel(_mlp())
    losses = _train(model, lm.torch.LARS(model.parameters(), **HYPER), dist.get_rank())
    return _compare_model(model.module, losses)


def case_fsdp1_flat(mesh: Any) -> dict[str, Any]:
    import warnings

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    import lars_multi as lm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP1 is deprecated; on the CPU it warns
        # device_id: on a machine without an accelerator FSDP1 runs on the CPU only when told so
        model = FullyShardedDataParallel(_mlp(), use_orig_params=False, device_id=torch.device("cpu"))
    params = list(model.parameters())
    report: dict[str, Any] = {
        "flat_params": all(
            getattr(p, "_is_flat_param", False) or type(p).__name__ == "FlatParameter" for p in params
        ),
        "param_shapes": [list(p.shape) for p in params],
    }
    grads = [torch.ones_like(p) for p in params]
    before = [p.detach().clone() for p in params]
    report["functional"] = []  # lars_update and lm.optim (took them silently, with one norm for all)
    for step in (
        lambda: lm.lars_update(params, grads, 0.1),
        lambda: lm.lars_update(params, grads, 0.1, out=params),
        lambda: lm.optim.lars(0.1).step(params, grads, lm.optim.lars(0.1).init(params)),
    ):
        try:
            with torch.no_grad():
                step()
            report["functional"].append("taken")
        except lm.LarsMultiTypeError as e:
            report["functional"].append(str(e))
    report["unchanged"] = all(torch.equal(p, b) for p, b in zip(params, before))
    try:
        opt = lm.torch.LARS(params, **HYPER)
        losses = _train(model, opt, dist.get_rank())
    except lm.LarsMultiError as e:  # a refusal: the library saw the flat parameters
        report.update(refused=True, message=f"{type(e).__name__}: {e}")
        return report
    with FullyShardedDataParallel.summon_full_params(model):
        full = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    ref, ref_losses = _reference()
    report.update(
        refused=False,
        max_rel=max(_rel(full[n], ref[n]) for n in ref),
        max_loss_diff=max(abs(a - b) for a, b in zip(losses, ref_losses)),
    )
    return report


CASES = {name.removeprefix("case_"): f for name, f in globals().items() if name.startswith("case_")}


def _worker(case: str) -> None:
    """One rank of ``case`` (this file run as a script): its report, as JSON, into
    LARS_MULTI_DIST_OUT/<case>-<rank>.json (an "error" key on failure)."""
    rank = int(os.environ["RANK"])
    path = Path(os.environ["LARS_MULTI_DIST_OUT"]) / f"{case}-{rank}.json"
    try:
        import datetime

        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        torch.set_num_threads(1)
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=CASE_TIMEOUT_S))
        mesh = init_device_mesh("cpu", (WORLD,))
        report = CASES[case](mesh)
    except BaseException:
        path.write_text(json.dumps({"error": traceback.format_exc()}))
        sys.stdout.flush()
        os._exit(1)  # the other rank sees the connection drop instead of waiting
    path.write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
