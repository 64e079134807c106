"""``python -m benchmarks``: time lars_multi against native LARS on every backend.

Writes ``latest.json``, ``latest.md`` and ``latest.png`` under ``--out`` and
prints a table per workload and a PASS/MISS line per target. The exit code is
0 whatever the ratios: benchmarks measure, they do not assert.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import contenders, memory, report, targets, timing, workloads
from .checks import check_all
from .timing import Settings

COMPILED = ("jax", "tensorflow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        default=",".join(contenders.BACKENDS),
        help="comma-separated, from: " + ", ".join(contenders.BACKENDS),
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma-separated, from: " + ", ".join(workloads.NAMES) + " (default: all; with --optimizer, "
        "from and by default " + ", ".join(workloads.OPTIMIZER_NAMES) + ")",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: few rounds, about 2 minutes")
    parser.add_argument("--rounds", type=int, help="rounds per (workload, backend) (default 30; quick 5)")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of timing per (workload, backend) after which rounds stop "
        f"(at least {timing.MIN_ROUNDS} rounds; default 8; quick 1.5)",
    )
    parser.add_argument(
        "--compiled-cap",
        type=int,
        help="jax and tensorflow time the many_small tree on its first N tensors only, "
        "since compiling (XLA) or tracing (tf.function) 2,000 leaves takes minutes per "
        "contender on CPU; 0 = all 2,000 (default 100; quick 10)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument(
        "--optimizer",
        action="store_true",
        help="time one optimizer step (momentum, weight decay) of lm.torch.LARS, lm.optax.lars, "
        "lm.optim.lars and lm.keras.LARS against timm, optax, SGD and a NumPy loop instead "
        "(benchmarks/optimizer.py; writes optimizer.json; tensorflow means keras there)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():  # (said before the run, not after it)
        parser.error(f"--out: expected a folder (made if missing), got the file {args.out}")
    if not _can_be_written(args.out):
        parser.error(
            f"--out: expected a folder (made if missing) that files can be written in, got {args.out}"
        )
    return args


def _can_be_written(folder: Path) -> bool:
    """Whether files can be written in ``folder`` once it is made: tried in the nearest
    folder that exists (permissions do not tell, as in /proc); nothing is left there."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or text!r} (known: {', '.join(known)})")
    return names


def _rows(timings: list[timing.Timing], checks: dict[str, Any], skipped: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t in timings:
        c = t.contender
        rows.append(
            {
                "key": c.key,
                "label": c.label,
                "role": c.role,
                "in_place": c.in_place,
                "best_s": t.best,
                "median_s": t.median,
                "rounds": len(t.samples),
                "batch": t.batch,
                "samples_s": t.samples,
                "check": checks[c.key].problem,
                "update_error": checks[c.key].update_error,
            }
        )
    for key in skipped:
        rows.append(
            {
                "key": key,
                "label": key,
                "role": contenders.NATIVE,
                "in_place": False,
                "best_s": None,
                "median_s": None,
                "rounds": 0,
                "batch": 0,
                "samples_s": [],
                "check": checks[key].problem,
                "update_error": None,
            }
        )
    return rows


def run_group(
    backend: str, workload: workloads.Workload, settings: Settings, progress: Progress, task: Any
) -> dict[str, Any]:
    """Build, check, warm up and time one backend's contenders on one workload."""
    full = workload
    if backend in COMPILED and workload.name == "many_small":
        workload = workload.subset(settings.compiled_cap)
    group: dict[str, Any] = {
        "workload": workload.name,
        "backend": backend,
        "description": workload.description,
        "n_tensors": workload.n_tensors,
        "n_elements": workload.n_elements,
    }
    if workload is not full:
        group["n_tensors_note"] = f"first {workload.n_tensors} of {full.n_tensors} tensors"
    progress.update(task, description=f"{workload.name}/{backend}: build, check, compile")
    start = time.perf_counter()
    built = contenders.build(backend, workload)
    checks = check_all(built, workload)
    runnable = [c for c in built if not (checks[c.key].problem or "").startswith("raised")]
    for c in runnable:
        timing.warm_up(c)
    group["setup_s"] = time.perf_counter() - start
    progress.update(task, description=f"{workload.name}/{backend}: timing")
    base = progress.tasks[task].completed
    timings = timing.run_rounds(
        runnable,
        settings.rounds,
        settings.budget_s,
        settings.sample_s,
        lambda r: progress.update(task, completed=base + r),
    )
    progress.update(task, completed=base + settings.rounds)
    group["timing_s"] = time.perf_counter() - start - group["setup_s"]
    group["contenders"] = _rows(timings, checks, [c.key for c in built if c not in runnable])
    return group


def _installed(backends: list[str], console: Console) -> list[str]:
    """The ``backends`` whose framework imports here; the others named once, skipped (each
    workload printed a traceback for them)."""
    from lars_multi._registry import get_backend

    usable, missing = [], []
    for name in backends:
        try:
            get_backend(name)
        except ImportError as error:
            missing.append(f"{name} ({error})")
            continue
        usable.append(name)
    for line in missing:
        console.print(f"[yellow]skipped, not installed:[/yellow] {escape(line)}")
    if not usable:
        raise SystemExit("--backends: none of them is installed here")
    return usable


def run_all(
    backends: list[str], names: list[str], settings: Settings, console: Console
) -> list[dict[str, Any]]:
    """Every (workload, backend) group, workload by workload, with a progress bar."""
    groups = []
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=len(backends) * len(names) * settings.rounds)
        for name in names:
            workload = workloads.build(name)
            for backend in backends:
                try:
                    groups.append(run_group(backend, workload, settings, progress, task))
                except Exception:  # report a broken backend and go on with the others
                    console.print(f"[red]{name}/{backend} failed:[/red]\n{traceback.format_exc()}")
                gc.collect()
    return groups


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.optimizer:
        from . import optimizer

        console = Console(width=None if Console().is_terminal else 200)
        backends = optimizer.backends_from(args.backends)
        names = _names(
            args.workloads or ",".join(workloads.OPTIMIZER_NAMES), workloads.OPTIMIZER_NAMES, "workloads"
        )
        optimizer.run(backends, names, optimizer.settings_from(args), console, args.out)
        return 0
    names = _names(args.workloads or ",".join(workloads.NAMES), workloads.NAMES, "workloads")
    settings = timing.settings_from(args, rounds=30, budget_s=8.0, quick_budget_s=1.5)
    console = Console(width=None if Console().is_terminal else 200)
    backends = _installed(_names(args.backends, contenders.BACKENDS, "backends"), console)
    started = time.time()
    groups = run_all(backends, names, settings, console)
    measured = [] if args.no_memory else memory.measure(backends, contrast=not args.quick)
    for group in groups:
        report.add_ratios(group)
    judged = targets.judge_all(groups, measured)
    report.print_tables(console, groups)
    report.print_targets(console, judged)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = report.payload(settings, started, groups, memory=measured, targets=judged)
    report.write_json(args.out / "latest.json", payload)
    (args.out / "latest.md").write_text(report.markdown(groups, judged))
    report.plot(args.out / "latest.png", groups)
    console.print(f"wrote {args.out}/latest.json, latest.md, latest.png in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
