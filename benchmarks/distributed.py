"""Two-rank FSDP2 optimizer steps: step time and collectives per step.

    python -m benchmarks.distributed [--layers 6] [--width 256] [--repeats 20] [--json PATH]

Starts two processes on gloo at 127.0.0.1 (a free port), each holding an MLP of
``--layers`` Linear layers under FSDP2 (``fully_shard`` per Linear and on the
root). For each optimizer (``lm.torch.LARS`` with its defaults and with
``foreach=True``, ``torch.optim.SGD(momentum=0.9)``, timm's ``Lars``) it runs
one warm-up step, counts the collectives of one ``opt.step()`` with
``CommDebugMode`` (functional and c10d collectives, per op), then times
``--repeats`` steps (a barrier before and after each; forward and backward are
not timed) and reports the best, on rank 0, as a rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

WORLD = 2
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
TIMEOUT_S = 300


def _contenders() -> dict[str, tuple[str, Any]]:
    import torch

    import lars_multi as lm

    from .optimizer import load_timm_lars

    found: dict[str, tuple[str, Any]] = {
        "lm": (
            "lm.torch.LARS (defaults)",
            lambda ps: lm.torch.LARS(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        ),
        "lm_foreach": (
            "lm.torch.LARS foreach=True",
            lambda ps: lm.torch.LARS(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True),
        ),
        "sgd": ("torch.optim.SGD momentum=0.9", lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM)),
    }
    timm = load_timm_lars()
    if timm is not None:
        found["timm"] = (
            "timm Lars (defaults)",
            lambda ps: timm.Lars(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        )
    return found


def _model(layers: int, width: int) -> Any:
    import torch
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    mods: list[Any] = []
    for i in range(layers):
        mods.append(torch.nn.Linear(width, width))
        if i < layers - 1:
            mods.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*mods)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def count_step_collectives(opt: Any) -> tuple[int, dict[str, int]]:
    """Run ``opt.step()`` once under CommDebugMode: the total and the count per op."""
    from torch.distributed.tensor.debug import CommDebugMode

    mode = CommDebugMode()
    with mode:
        opt.step()
    return mode.get_total_counts(), {str(k): v for k, v in mode.get_comm_counts().items()}


def _rank_main(args: argparse.Namespace) -> dict[str, Any]:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(1 + rank)
    x = torch.randn(args.batch, args.width, generator=g)
    y = torch.randn(args.batch, args.width, generator=g)
    results = {}
    for key, (label, make) in _contenders().items():
        if args.only and key not in args.only:
            continue
        model = _model(args.layers, args.width)
        opt = make(model.parameters())

        def backward(model=model):
            torch.nn.functional.mse_loss(model(x), y).backward()

        backward()
        opt.step()  # warm-up: momentum buffers made
        backward()
        total, per_op = count_step_collectives(opt)
        times = []
        for _ in range(args.repeats):
            backward()
            dist.barrier()
            t0 = time.perf_counter()
            opt.step()
            dist.barrier()
            times.append(time.perf_counter() - t0)
            opt.zero_grad()
        results[key] = {
            "label": label,
            "collectives": total,
            "per_op": per_op,
            "best_ms": 1e3 * min(times),
            "median_ms": 1e3 * sorted(times)[len(times) // 2],
            "params": len(list(model.parameters())),
        }
    dist.destroy_process_group()
    return results


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str]) -> dict[str, Any]:
    """Run the ranks (this module with ``--rank-out``); rank 0's results."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as out:
        env = {k: v for k, v in os.environ.items() if k != "LARS_MULTI_BACKEND"}
        env.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.distributed", *argv, "--rank-out", out],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(WORLD)
        ]
        deadline = time.monotonic() + TIMEOUT_S
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise SystemExit(f"timed out after {TIMEOUT_S} s") from None
        reports = []
        for r in range(WORLD):
            path = Path(out) / f"rank{r}.json"
            if not path.exists():
                raise SystemExit(f"rank {r} left no report\n{logs[r][-4000:]}")
            report = json.loads(path.read_text())
            if "error" in report:
                raise SystemExit(f"rank {r} failed\n{report['error']}")
            reports.append(report)
    return reports[0]


def _table(results: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{WORLD}-rank FSDP2 (gloo, CPU), MLP of {args.layers} Linear({args.width}, {args.width}), "
        f"opt.step() best of {args.repeats}"
    )
    for col in ("optimizer", "params", "step best (ms)", "step median (ms)", "collectives / step", "by op"):
        table.add_column(col, justify="left" if col in ("optimizer", "by op") else "right")
    for r in results.values():
        by_op = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in r["per_op"].items())
        table.add_row(
            r["label"],
            str(r["params"]),
            f"{r['best_ms']:.3f}",
            f"{r['median_ms']:.3f}",
            str(r["collectives"]),
            by_op,
        )
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=None, help="contender keys (lm, lm_foreach, sgd, timm)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rank-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_out is not None:  # one rank
        path = Path(args.rank_out) / f"rank{os.environ['RANK']}.json"
        try:
            report = _rank_main(args)
        except BaseException:
            path.write_text(json.dumps({"error": traceback.format_exc()}))
            sys.stdout.flush()
            os._exit(1)
        path.write_text(json.dumps(report))
        return
    argv = [a for a in sys.argv[1:]]
    results = launch(argv)
    _table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
