"""``python -m lars_multi info | demo | bench | train`` (or ``lars-multi ...``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import lars_multi as lm

# The reference's examples: (title, w, dcdw, lr), with float32 inputs. "one grad":
# a Container of weights with one gradient array for every leaf; "grads": a
# Container of gradients.
EXAMPLES = [
    ("2x3", [[3.0, 1, 5], [7, 2, 9]], [[0.3, 0.1, 0.2], [0.1, 0.2, 0.4]], 0.1),
    ("out=", [3.0, 1, 5], [0.3, 0.1, 0.2], 0.1),
    ("one grad", {"a": [3.2, 2.6, 1.3], "b": [1.4, 3.1, 5.1]}, [0.2, 0.4, 0.1], 0.1),
    (
        "grads",
        {"a": [3.2, 2.6, 1.3], "b": [1.4, 3.1, 5.1]},
        {"a": [0.2, 0.4, 0.1], "b": [0.3, 0.1, 0.2]},
        0.1,
    ),
]


def info(console: Console) -> None:
    """Every registered backend: installed or not, version, devices."""
    table = Table(title="lars_multi backends")
    for column in ("backend", "installed", "version", "devices"):
        table.add_column(column)
    for name in lm.available_backends():
        try:
            details = lm._registry.get_backend(name).info()
        except ImportError as error:
            table.add_row(name, "[red]no[/red]", "", escape(str(error)))  # ("[torch]" is no style)
            continue
        table.add_row(name, "[green]yes[/green]", details["version"], details["devices"])
    console.print(f"lars_multi {lm.__version__}, Python {sys.version.split()[0]}")
    console.print(table)


def _run_example(name: str, w: object, dcdw: object, lr: float) -> dict[str, np.ndarray]:
    """One example on one backend, as named float64 leaves."""
    with lm.using_backend(name):
        if isinstance(w, dict):
            grads: lm.Container | lm.Array
            if isinstance(dcdw, dict):
                grads = lm.Container({k: lm.array(v) for k, v in dcdw.items()})
            else:
                grads = lm.array(dcdw)
            result = lm.Container({k: lm.array(v) for k, v in w.items()}).lars_update(grads, lm.array(lr))
            return {k: np.asarray(v, dtype=np.float64) for k, v in result.items()}
        out = lm.zeros_like(lm.array(w))
        lm.lars_update(lm.array(w), lm.array(dcdw), lm.array(lr), out=out)
        return {"": np.asarray(out, dtype=np.float64)}


def _exact(w: object, dcdw: object, lr: float) -> dict[str, np.ndarray]:
    """The rule in float64 from the float32-rounded inputs: the exact answer."""

    def f32(x: object) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).astype(np.float64)

    leaves = w if isinstance(w, dict) else {"": w}
    result = {}
    for key, weights in leaves.items():
        grad = f32(dcdw[key] if isinstance(dcdw, dict) else dcdw)
        weights = f32(weights)
        rate = np.linalg.norm(weights) * f32(lr) / (np.linalg.norm(grad) + 1e-12)
        result[key] = weights - rate * grad
    return result


def demo(console: Console) -> None:
    """The reference's examples on every installed backend, element by element."""
    backends = lm.installed_backends()
    table = Table(title="lars_update: the reference's examples on every installed backend")
    table.add_column("example")
    table.add_column("element")
    for name in backends:
        table.add_column(name, justify="right")
    table.add_column("exact", justify="right")
    table.add_column("ulps", justify="right")
    for title, w, dcdw, lr in EXAMPLES:
        results = {name: _run_example(name, w, dcdw, lr) for name in backends}
        for key, exact in _exact(w, dcdw, lr).items():
            spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
            for index in np.ndindex(exact.shape):
                values = [results[name][key][index] for name in backends]
                ulps = max(abs(v - exact[index]) / spacing[index] for v in values)
                element = f"{key}{list(index)}"
                cells = [f"{v:.7f}" for v in values]
                table.add_row(title, element, *cells, f"{exact[index]:.8f}", f"{ulps:.2f}")
                title = ""
        table.add_section()
    console.print(table)
    console.print(
        "exact: the rule in float64 on the float32 inputs; ulps: the largest distance of any "
        "backend from it, in float32 units in the last place. Every backend is within one ulp; "
        "torch and XLA fuse the multiply-add and round once, so they are the closer ones."
    )


COMMANDS = {
    "info": "every backend: installed or not, version, devices",
    "demo": "the reference's examples on every installed backend",
    "bench": "the benchmark suite of a checkout (python -m lars_multi bench --help)",
    "train": "an MLP on scikit-learn's digits with LARS (python -m lars_multi train --help)",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=_program(),
        description="lars_multi: LARS on NumPy, PyTorch, JAX and TensorFlow.",
        epilog="commands: " + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the arguments of bench and train")
    if not (sys.argv[1:] if argv is None else argv):  # (argparse would call the optional rest required)
        parser.error("a command is required: info, demo, bench or train")
    args = parser.parse_args(argv)
    if args.rest and args.command in ("info", "demo"):
        if args.rest in (["-h"], ["--help"]):
            print(f"usage: {parser.prog} {args.command}\n\n{COMMANDS[args.command]} (no arguments)")
            return
        parser.error(f"{args.command} takes no arguments, got {' '.join(args.rest)}")
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.command == "info":
        info(console)
    elif args.command == "demo":
        demo(console)
    elif args.command == "train":
        from . import _train

        train_parser = argparse.ArgumentParser(prog=f"{_program()} train", description=_train.__doc__)
        _train.add_arguments(train_parser)
        _train.run(train_parser.parse_args(args.rest), console)
    else:
        bench(args.rest, console)


def _program() -> str:
    """How this command line was started: the console script, or ``python -m lars_multi``."""
    return "lars-multi" if os.path.basename(sys.argv[0]) == "lars-multi" else "python -m lars_multi"


def bench(rest: list[str], console: Console) -> None:
    """The benchmark suite of the checkout this lars_multi is imported from (its
    ``benchmarks/`` folder, beside the package), whatever the current directory:
    never another ``benchmarks`` package that happens to be importable."""
    root = Path(lm.__file__).resolve().parent.parent  # (a checkout's; an install's site-packages)
    if not ((root / "benchmarks" / "__main__.py").is_file() and (root / "pyproject.toml").is_file()):
        console.print(
            f"bench runs the suite in the benchmarks/ folder of a checkout of lars_multi; this lars_multi "
            f"({root}) is installed without it: clone the repository and install it with pip install -e ."
        )
        raise SystemExit(2)
    sys.path.insert(0, str(root))
    spec = importlib.util.find_spec("benchmarks")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != root / "benchmarks":
        found = "nothing" if spec is None else spec.origin
        console.print(
            f"bench: another benchmarks package was imported first ({found}); run it in a fresh process"
        )
        raise SystemExit(2)
    sys.argv = ["benchmarks", *rest]
    runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
