"""Collectives in one ``lm.torch.LARS`` step under FSDP2: a constant number per group.

Two processes on gloo at 127.0.0.1 (this file run as a script, one process per
rank, on a free port), as tests/test_distributed_torch.py does. The torch
backend's ``norms`` stacks the local squared norms of all the sharded layers of
a call and sums them in one all-reduce; before, each layer's weight and gradient
norms were Partial DTensors, each reduced where it was used (5 all-reduces per
adapted layer). Collectives are counted with ``CommDebugMode`` during
``opt.step()`` only, on an MLP of 2 and of 6 Linear layers.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

WORLD = 2
STEPS = 3
REL_TOL = 1e-6
CASE_TIMEOUT_S = 60
HYPER = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
WIDTHS = {2: (4, 7, 3), 6: (4, 7, 5, 3, 7, 5, 3)}  # first dimensions split unevenly over 2 ranks


@pytest.fixture(autouse=True)
def _torch_distributed() -> None:
    from conftest import require_gloo

    require_gloo()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict[str, Any]]:
    from conftest import require_gloo, run_ranks

    require_gloo()  # (module-scoped: it runs before the autouse check)
    out = tmp_path_factory.mktemp("collectives")
    return run_ranks(__file__, [], out, "collectives", world=WORLD, timeout=CASE_TIMEOUT_S)


def test_collectives_per_step_do_not_grow_with_layers(reports):
    """foreach=True: one call of the rule per group and step, one all-reduce for all
    its layers' weight and gradient norms, whether the MLP has 2 or 6 layers."""
    for report in reports:
        counts = report["counts"]["foreach=True"]
        assert counts["2"]["total"] == counts["6"]["total"], report
        assert 1 <= counts["6"]["total"] <= 2, report  # one parameter group
        assert set(counts["6"]["per_op"]) <= {"c10d_functional.all_reduce"}, report


def test_collectives_per_step_one_per_adapted_layer_without_foreach(reports):
    """foreach=False (the default on the CPU): the rule runs once per layer; each
    adapted layer's two norms then take one all-reduce (before: five)."""
    for report in reports:
        for layers, counts in report["counts"]["foreach=False"].items():
            assert counts["total"] <= int(layers), report


def test_fsdp2_still_equals_the_single_process_run(reports):
    """FSDP2, each rank on half of every batch, equals full-batch training in one process."""
    for report in reports:
        for variant, rel in report["max_rel"].items():
            assert rel <= REL_TOL, (variant, report)


# --- the ranks ---------------------------------------------------------------------------------


def _mlp(layers: int) -> Any:
    import torch

    torch.manual_seed(0)
    widths = WIDTHS[layers]
    mods: list[Any] = []
    for i in range(layers):
        mods.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < layers - 1:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods)


def _fsdp2(layers: int, mesh: Any) -> Any:
    """The MLP under FSDP2 on ``mesh``, the CPU mesh (by default ``fully_shard`` takes
    the accelerator where there is one, which gloo cannot serve)."""
    import torch
    from torch.distributed.fsdp import fully_shard

    model = _mlp(layers)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train(model: Any, opt: Any, layers: int, rank: int | None, counts: list | None = None) -> None:
    import torch
    from torch.distributed.tensor.debug import CommDebugMode

    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(8, WIDTHS[layers][0], generator=g)
        y = torch.randn(8, WIDTHS[layers][-1], generator=g)
        if rank is not None:
            half = x.shape[0] // WORLD
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        torch.nn.functional.mse_loss(model(x), y).backward()
        if counts is None:
            opt.step()
        else:
            mode = CommDebugMode()
            with mode:
                opt.step()
            counts.append((mode.get_total_counts(), {str(k): v for k, v in mode.get_comm_counts().items()}))
        opt.zero_grad()


def _worker() -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    import lars_multi as lm

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (WORLD,))
    counts: dict[str, dict[str, Any]] = {}
    max_rel: dict[str, float] = {}
    for layers in (2, 6):
        model = _mlp(layers)
        _train(model, lm.torch.LARS(model.parameters(), **HYPER), layers, None)
        ref = {n: p.detach() for n, p in model.named_parameters()}
        for foreach in (True, False):
            model = _fsdp2(layers, mesh)
            assert all(isinstance(p, DTensor) for p in model.parameters())
            seen: list = []
            _train(model, lm.torch.LARS(model.parameters(), foreach=foreach, **HYPER), layers, rank, seen)
            total, per_op = seen[-1]  # a step with momentum buffers (the first makes them)
            counts.setdefault(f"foreach={foreach}", {})[str(layers)] = {"total": total, "per_op": per_op}
            for n, p in model.named_parameters():
                full = p.detach().full_tensor()
                scale = float(ref[n].abs().max()) or 1.0
                rel = float((full.double() - ref[n].double()).abs().max()) / scale
                key = f"layers={layers}/foreach={foreach}"
                max_rel[key] = max(max_rel.get(key, 0.0), rel)
    del torch
    return {"counts": counts, "max_rel": max_rel}


if __name__ == "__main__":
    path = Path(os.environ["LARS_MULTI_DIST_OUT"]) / f"collectives-{os.environ['RANK']}.json"
    try:
        import datetime

        import torch
        import torch.distributed as dist

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=CASE_TIMEOUT_S))
        report = _worker()
    except BaseException:
        path.write_text(json.dumps({"error": traceback.format_exc()}))
        sys.stdout.flush()
        os._exit(1)
    path.write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()
