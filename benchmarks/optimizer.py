"""One optimizer step (momentum 0.9, weight decay 1e-4), lars_multi against each framework's own.

``python -m benchmarks --optimizer`` (or ``python -m benchmarks.optimizer``) times, side by side
in one process and interleaved by :mod:`benchmarks.timing`, one step of

* torch: ``lm.torch.LARS`` (foreach default, True, False) against timm's ``Lars`` (its
  defaults otherwise) and ``torch.optim.SGD`` (foreach False and True); gradients are set
  once on ``.grad``;
* jax: ``lm.optax.lars`` against ``optax.lars`` and ``add_decayed_weights + sgd``, each as
  update + apply_updates in one ``jax.jit``; and the eager ``lm.optim.lars(...).step``;
* numpy: ``lm.optim.lars(...).step(..., out=params)`` against a hand-written in-place loop
  of the same paper-preset LARS and, on a tree of vectors (float32), a sketch of only what a
  checked in-place step must do (``checked_vectors_sketch``: the floor of the checks);
* keras (TensorFlow backend): ``lm.keras.LARS`` against ``keras.optimizers.SGD(momentum=0.9)``,
  ``apply_gradients`` on the same variables;

on ResNet-50's 161 tensors and on 2,000 small tensors (jax and keras: the first
``compiled_cap`` of them). Parameters drift slowly across rounds (lr 1e-3); that is fine.
It prints a table per workload (each time also over the best floor: SGD, or NumPy's
sketch), the targets as PASS/MISS/INFO (never asserted) and the
extra peak memory of one in-place step (torch: peak RSS in a fresh subprocess; NumPy:
tracemalloc), and writes ``optimizer.json`` under ``--out``.

``python -m benchmarks.optimizer --memory-child VARIANT`` is one torch RSS measurement (JSON).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
from rich.console import Console
from rich.table import Table

import lars_multi as lm

from . import report, targets, timing, workloads
from .contenders import FLOOR, LARS_MULTI, NATIVE, Contender
from .timing import Settings

LR = 1e-3
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
TRUST = 0.001
BACKENDS = ("torch", "jax", "numpy", "keras")
COMPILED = ("jax", "keras")


def _no_read(result: Any, key: str) -> np.ndarray:  # Contender.read: no checks here
    raise NotImplementedError


def _c(key: str, label: str, role: str, step: Callable[[], Any]) -> Contender:
    return Contender(key, label, role, step, _no_read)


# --- timm, loaded without the timm package ------------------------------------------


def load_timm_lars() -> Any | None:
    """timm's ``lars`` module (``.Lars``), or None where timm is not installed: by the
    loader the tests use (``tests/_timm_lars.py``, which says why timm is loaded so)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "_timm_lars.py"
    spec = importlib.util.spec_from_file_location("_timm_lars", path)
    if spec is None or spec.loader is None:
        return None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.load_timm_lars()


# --- torch --------------------------------------------------------------------


def _torch_params(wl: workloads.Workload, grads: list[Any]) -> list[Any]:
    """A private copy of the weights as Parameters (in memory torch allocates, as a
    model's), with the shared gradients on ``.grad``."""
    import torch

    params = [torch.nn.Parameter(torch.from_numpy(w).clone()) for w in wl.w.values()]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def torch_optimizers() -> dict[str, tuple[str, str, Callable[[list[Any]], Any]]]:
    """key -> (label, role, factory(params) -> optimizer)."""
    import torch

    def lm_lars(**kw: Any) -> Callable[[list[Any]], Any]:
        import lars_multi.torch as lmt

        return lambda ps: lmt.LARS(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, **kw)

    def sgd(foreach: bool) -> Callable[[list[Any]], Any]:
        return lambda ps: torch.optim.SGD(
            ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=foreach
        )

    found: dict[str, tuple[str, str, Callable[[list[Any]], Any]]] = {
        "lm": ("lm.torch.LARS (foreach default)", LARS_MULTI, lm_lars()),
        "lm_foreach": ("lm.torch.LARS foreach=True", LARS_MULTI, lm_lars(foreach=True)),
        "lm_loop": ("lm.torch.LARS foreach=False", LARS_MULTI, lm_lars(foreach=False)),
        "lm_timm_preset": ('lm.torch.LARS preset="timm"', LARS_MULTI, lm_lars(preset="timm")),
    }
    timm = load_timm_lars()
    if timm is not None:
        found["timm"] = (
            "timm Lars (defaults: foreach off on CPU)",
            NATIVE,
            lambda ps: timm.Lars(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        )
        found["timm_foreach"] = (
            "timm Lars foreach=True",
            NATIVE,
            lambda ps: timm.Lars(ps, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True),
        )
    found["sgd_loop"] = ("torch.optim.SGD foreach=False", FLOOR, sgd(False))
    found["sgd_foreach"] = ("torch.optim.SGD foreach=True", FLOOR, sgd(True))
    return found


def torch_grads(wl: workloads.Workload) -> list[Any]:
    """The gradients in memory torch allocates, as autograd's are."""
    import torch

    return [torch.from_numpy(g).clone() for g in wl.g.values()]


def _torch(wl: workloads.Workload, settings: Settings) -> list[Contender]:
    grads = torch_grads(wl)
    out = []
    for key, (label, role, factory) in torch_optimizers().items():
        out.append(_c(key, label, role, factory(_torch_params(wl, grads)).step))
    return out


# --- jax ----------------------------------------------------------------------


def _jax(wl: workloads.Workload, settings: Settings) -> list[Contender]:
    import jax
    import jax.numpy as jnp
    import optax

    params = {k: jnp.asarray(v) for k, v in wl.w.items()}
    grads = {k: jnp.asarray(v) for k, v in wl.g.items()}

    def jitted(tx: Any) -> Callable[[], Any]:
        @jax.jit
        def fn(p: Any, s: Any, g: Any) -> Any:
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        box: list[Any] = [params, tx.init(params)]

        def step() -> None:
            box[0], box[1] = fn(box[0], box[1], grads)
            jax.block_until_ready(box[0])

        return step

    def eager() -> Callable[[], Any]:
        opt = lm.optim.lars(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        box: list[Any] = [params, opt.init(params)]

        def step() -> None:
            box[0], box[1] = opt.step(box[0], grads, box[1])
            jax.block_until_ready(box[0])

        return step

    out = []
    try:
        import lars_multi.optax as lmo

        out.append(
            _c(
                "lm_optax",
                "lm.optax.lars, jitted",
                LARS_MULTI,
                jitted(lmo.lars(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)),
            )
        )
    except ImportError:
        pass
    out.append(_c("lm_eager", "lm.optim.lars(...).step, eager", LARS_MULTI, eager()))
    out.append(
        _c(
            "optax_lars",
            "optax.lars, jitted",
            NATIVE,
            jitted(optax.lars(LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM, trust_coefficient=TRUST)),
        )
    )
    sgd = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
    out.append(_c("optax_sgd", "optax add_decayed_weights + sgd, jitted", FLOOR, jitted(sgd)))
    return out


# --- numpy --------------------------------------------------------------------


def hand_loop_step(ws: list[np.ndarray], gs: list[np.ndarray], bufs: list[np.ndarray]) -> None:
    """The paper preset with momentum, in place, per layer: matrices (more than one
    dimension) are decayed and adapted, r = c|w| / (|g| + wd|w|) (1 where a norm is 0),
    v <- mu v + lr r (g + wd w), w <- w - v; vectors take v <- mu v + lr g."""
    for w, g, v in zip(ws, gs, bufs):
        v *= MOMENTUM
        if w.ndim > 1:
            w_norm, g_norm = float(np.linalg.norm(w)), float(np.linalg.norm(g))
            r = TRUST * w_norm / (g_norm + WEIGHT_DECAY * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            u = np.multiply(w, WEIGHT_DECAY)  # the one temporary of the layer
            u += g
            u *= LR * r
            v += u
        else:
            v += LR * g
        w -= v


def _numpy_trees(wl: workloads.Workload) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return {k: v.copy() for k, v in wl.w.items()}, wl.g


def check_numpy(wl: workloads.Workload) -> float:
    """Largest relative difference between lars_multi and the hand loop after two steps."""
    opt = lm.optim.lars(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    keys = [*list(wl.w)[:20], wl.largest]
    w1 = {k: wl.w[k].astype(np.float64) for k in keys}
    g = {k: wl.g[k].astype(np.float64) for k in keys}
    w2 = {k: v.copy() for k, v in w1.items()}
    state = opt.init(w1)
    bufs = [np.zeros_like(v) for v in w2.values()]
    for _ in range(2):
        w1, state = opt.step(w1, g, state, out=w1)
        hand_loop_step(list(w2.values()), list(g.values()), bufs)
    return max(float(np.max(np.abs(w1[k] - w2[k]) / (np.abs(w2[k]) + 1e-3))) for k in keys)


def _numpy(wl: workloads.Workload, settings: Settings) -> list[Contender]:
    opt = lm.optim.lars(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    params, grads = _numpy_trees(wl)
    box = [opt.init(params)]

    def lm_step() -> None:
        _, box[0] = opt.step(params, grads, box[0], out=params)

    hw, hg = _numpy_trees(wl)
    ws, gs = list(hw.values()), list(hg.values())
    bufs = [np.zeros_like(w) for w in ws]
    contenders = [
        _c("lm", "lm.optim.lars(...).step(out=params)", LARS_MULTI, lm_step),
        _c("hand_loop", "hand-written in-place NumPy loop", NATIVE, lambda: hand_loop_step(ws, gs, bufs)),
    ]
    if all(w.ndim == 1 for w in wl.w.values()) and importlib.util.find_spec("scipy") is not None:
        sketch_params, sketch_grads = _numpy_trees(wl)
        momentum = {k: np.zeros_like(v) for k, v in sketch_params.items()}
        contenders.append(
            _c(
                "checks_sketch",
                "sketch: pairing and checks only, then BLAS",
                FLOOR,
                lambda: checked_vectors_sketch(sketch_params, sketch_grads, momentum),
            )
        )
    return contenders


def checked_vectors_sketch(params: Any, grads: Any, momentum: Any) -> None:
    """A floor for ``lm.optim`` on trees of float32 vectors (which the paper preset leaves out of
    adaptation): only what a checked in-place step must do, with no messages and nothing
    else. It pairs the three trees by key (optree), checks every array's type, dtype,
    shape, writability and memory (each owns it; no output is a gradient), then makes the
    three BLAS calls per array that lars_multi makes: v <- mu v + lr g, w <- w - v."""
    import optree
    from scipy.linalg import blas

    ws, spec = optree.tree_flatten(params)
    gs, g_spec = optree.tree_flatten(grads)
    bs, b_spec = optree.tree_flatten(momentum)
    if g_spec != spec or b_spec != spec:
        raise ValueError("trees of other structures")
    for xs in (gs, bs):
        if not all(
            [type(x) is type(w) and x.dtype == w.dtype and x.shape == w.shape for x, w in zip(xs, ws)]
        ):
            raise ValueError("arrays unlike the weights")
    if not (all([x.flags.writeable for x in ws]) and all([x.flags.writeable for x in bs])):
        raise ValueError("read-only arrays")
    if any([x.base is not None for x in (*ws, *gs, *bs)]):
        raise ValueError("views")
    outputs = {id(x) for x in (*ws, *bs)}
    if len(outputs) != 2 * len(ws) or not outputs.isdisjoint(map(id, gs)):
        raise ValueError("aliased arrays")
    sizes = [w.size for w in ws]
    list(map(blas.sscal, itertools.repeat(MOMENTUM), bs))
    list(map(blas.saxpy, gs, bs, sizes, itertools.repeat(LR)))
    list(map(blas.saxpy, bs, ws, sizes, itertools.repeat(-1.0)))


# --- keras (TensorFlow backend) -----------------------------------------------


def _keras(wl: workloads.Workload, settings: Settings) -> list[Contender]:
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not tensorflow")
    variables = [keras.Variable(w.copy(), name=f"v{i}") for i, w in enumerate(wl.w.values())]
    grads = [tf.constant(g) for g in wl.g.values()]
    last = variables[-1]

    def apply(opt: Any, compiled: bool) -> Callable[[], Any]:
        def eager() -> None:
            opt.apply_gradients(zip(grads, variables))

        call = tf.function(eager) if compiled else eager

        def step() -> None:
            call()
            last.numpy()  # one small fetch: the step has run

        return step

    out = []
    try:
        import lars_multi.keras as lmk

        if not hasattr(lmk, "LARS"):
            raise ImportError
        out.append(
            _c(
                "lm",
                "lm.keras.LARS apply_gradients (eager)",
                LARS_MULTI,
                apply(lmk.LARS(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY), False),
            )
        )
        out.append(
            _c(
                "lm_tf_function",
                "lm.keras.LARS apply_gradients in tf.function",
                LARS_MULTI,
                apply(lmk.LARS(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY), True),
            )
        )
    except ImportError:
        pass
    out.append(
        _c(
            "sgd",
            "keras SGD(momentum=0.9) apply_gradients (eager)",
            FLOOR,
            apply(keras.optimizers.SGD(LR, momentum=MOMENTUM), False),
        )
    )
    out.append(
        _c(
            "sgd_tf_function",
            "keras SGD(momentum=0.9) in tf.function",
            FLOOR,
            apply(keras.optimizers.SGD(LR, momentum=MOMENTUM), True),
        )
    )
    return out


BUILDERS: dict[str, Callable[[workloads.Workload, Settings], list[Contender]]] = {
    "torch": _torch,
    "jax": _jax,
    "numpy": _numpy,
    "keras": _keras,
}


# --- running ------------------------------------------------------------------


def run_group(backend: str, wl: workloads.Workload, settings: Settings) -> dict[str, Any]:
    full = wl
    if backend in COMPILED and wl.name == "many_small":
        wl = wl.subset(settings.compiled_cap)
    start = time.perf_counter()
    built = BUILDERS[backend](wl, settings)
    for c in built:
        timing.warm_up(c, 2)  # the first step makes the buffers (and compiles)
    setup_s = time.perf_counter() - start
    # A group of many slow contenders gets more seconds, so that each still gets several rounds.
    budget = settings.budget_s * max(1.0, len(built) / 4)
    timings = timing.run_rounds(built, settings.rounds, budget, settings.sample_s)
    group: dict[str, Any] = {
        "workload": wl.name,
        "backend": backend,
        "n_tensors": wl.n_tensors,
        "n_tensors_note": f"first {wl.n_tensors} of {full.n_tensors}" if wl is not full else "",
        "setup_s": setup_s,
        "timing_s": time.perf_counter() - start - setup_s,
        "contenders": [
            {
                "key": t.contender.key,
                "label": t.contender.label,
                "role": t.contender.role,
                "best_s": t.best,
                "median_s": t.median,
                "rounds": len(t.samples),
                "batch": t.batch,
                "samples_s": t.samples,
            }
            for t in timings
        ],
    }
    if backend == "numpy":
        group["check_max_rel_diff_vs_hand_loop"] = check_numpy(wl)
    return group


def _best(group: dict[str, Any], role: str) -> dict[str, Any] | None:
    rows = [c for c in group["contenders"] if c["role"] == role]
    return min(rows, key=lambda c: c["best_s"]) if rows else None


def table(workload: str, groups: list[dict[str, Any]]) -> Table:
    wl = workloads.SPECS[workload].description
    t = report.timing_table(f"one optimizer step, {workload}: {wl}", ("/ best LARS", "/ best floor"))
    order = (LARS_MULTI, NATIVE, FLOOR)
    for group in groups:
        lars, sgd = _best(group, NATIVE), _best(group, FLOOR)
        rows = sorted(group["contenders"], key=lambda c: (order.index(c["role"]), c["best_s"]))
        for i, c in enumerate(rows):
            backend = group["backend"] + (f" ({group['n_tensors_note']})" if group["n_tensors_note"] else "")
            t.add_row(
                backend if i == 0 else "",
                c["label"],
                report.fmt_time(c["best_s"]),
                report.fmt_time(c["median_s"]),
                str(c["rounds"]),
                report.fmt_ratio(c["best_s"] / lars["best_s"]) if lars else "-",
                report.fmt_ratio(c["best_s"] / sgd["best_s"]) if sgd else "-",
                style="bold" if c["role"] == LARS_MULTI else "",
                end_section=i == len(rows) - 1,
            )
    return t


def _targets() -> list[targets.Target]:
    t = targets.Target
    found = []
    for w, timm_limit in (("resnet50", 0.8), ("many_small", 0.5)):
        found += [
            t(w, "torch", "lm", ("timm",), timm_limit, "(lm.torch.LARS) vs timm Lars (defaults)"),
            t(w, "torch", "lm", ("sgd_loop", "sgd_foreach"), 1.5, "vs the better torch SGD"),
            t(w, "torch", "lm_foreach", ("timm",), None, "(foreach=True) vs timm"),
            t(w, "torch", "lm_loop", ("timm",), None, "(foreach=False) vs timm"),
            t(w, "torch", "lm_timm_preset", ("timm",), None, '(preset="timm") vs timm'),
            t(w, "torch", "lm", ("timm_foreach",), None, "vs timm foreach=True"),
            t(w, "jax", "lm_optax", ("optax_lars",), 0.6, "(jitted) vs optax.lars jitted"),
            t(w, "jax", "lm_optax", ("optax_sgd",), None, "(jitted) vs optax sgd jitted"),
            t(w, "jax", "lm_eager", ("optax_lars",), None, "(lm.optim eager) vs optax.lars jitted"),
            t(w, "numpy", "lm", ("hand_loop",), 1.0, "(out=params) vs hand in-place loop"),
            t(w, "keras", "lm", ("sgd",), 1.0, "(lm.keras.LARS) vs keras SGD (eager)"),
            t(w, "keras", "lm_tf_function", ("sgd_tf_function",), None, "vs keras SGD (tf.function)"),
        ]
    # The sketch of the checks runs on trees of vectors only.
    found += [
        t("many_small", "numpy", "hand_loop", ("checks_sketch",), None, "vs the checks sketch"),
        t("many_small", "numpy", "lm", ("checks_sketch",), None, "(out=params) vs the checks sketch"),
    ]
    return found


TARGETS = _targets()


def judge(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdict of every target whose group was run."""
    return [judged for target in TARGETS if (judged := targets.judge(target, groups)) is not None]


# --- memory -------------------------------------------------------------------

RSS_VARIANTS = ("none", "lm", "timm", "sgd_loop", "sgd_foreach")


def _nothing() -> None:
    pass


def _rss_child(variant: str) -> dict[str, Any]:
    """In this (fresh) process: peak-RSS growth of one step on ResNet-50, buffers already made."""

    from .memory import _reset_peak, _status_bytes

    wl = workloads.build("resnet50")
    grads = torch_grads(wl)
    params = _torch_params(wl, grads)
    step = torch_optimizers()[variant][2](params).step if variant != "none" else _nothing
    step()  # the first step makes the momentum buffers
    step()
    gc.collect()
    before = _reset_peak()
    step()
    return {"variant": variant, "peak_bytes": _status_bytes("VmHWM") - before}


def _rss(variant: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.optimizer", "--memory-child", variant],
        capture_output=True,
        text=True,
        # A fixed mmap threshold: every buffer of 128 KiB or more is mapped when made and
        # unmapped when freed, so the peak RSS counts the temporaries alive at once, not
        # what glibc's heap kept from earlier steps (without it timm's per-layer temporary
        # reads as 0 bytes).
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MALLOC_MMAP_THRESHOLD_": "131072"},
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _numpy_traced(step: Callable[[], Any]) -> int:
    step()
    step()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        step()
        return int(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def measure_memory(backends: list[str]) -> list[dict[str, Any]]:
    wl = workloads.build("resnet50")
    largest = int(wl.w[wl.largest].nbytes)
    mib = 2**20
    lines = []

    def line(label: str, peak: int | None, note: str, error: str | None = None) -> dict[str, Any]:
        if error:
            return {"label": label, "status": "SKIP", "detail": error}
        assert peak is not None
        detail = (
            f"{peak / mib:.2f} MiB extra ({peak / largest:.2f}x largest tensor, "
            f"{largest / mib:.2f} MiB); {note}"
        )
        return {"label": label, "status": "INFO", "detail": detail, "peak_bytes": peak}

    if "numpy" in backends:
        for c in _numpy(wl, Settings(1, 0, 0, 0)):
            lines.append(line(f"memory resnet50 numpy: {c.label}", _numpy_traced(c.step), "tracemalloc peak"))
    if "torch" in backends:
        results = {v: _rss(v) for v in RSS_VARIANTS}
        floor = results["none"].get("peak_bytes", 0)
        for v, r in results.items():
            name = "no step (noise floor)" if v == "none" else torch_optimizers()[v][0]
            peak = r.get("peak_bytes")
            note = "peak RSS delta (VmHWM), fresh subprocess, MALLOC_MMAP_THRESHOLD_=128K" + (
                "" if v == "none" else f", floor {floor / mib:.2f} MiB"
            )
            lines.append(line(f"memory resnet50 torch: {name}", peak, note, r.get("error")))
    del wl
    return lines


# --- entry points -------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    return timing.settings_from(args, rounds=20, budget_s=6.0, quick_budget_s=1.0)


def run(
    backends: list[str], names: list[str], settings: Settings, console: Console, out: Path | None
) -> dict[str, Any]:
    """Time the optimizer step of the workloads ``names`` on ``backends``, report it and
    write ``optimizer.json`` under ``out`` (where given)."""
    started = time.time()
    groups = []
    for name in names:
        wl = workloads.build(name)
        for backend in backends:
            console.print(f"[dim]optimizer step: {name}/{backend} ...[/dim]")
            try:
                groups.append(run_group(backend, wl, settings))
            except Exception:  # report a broken backend and go on
                console.print(f"[red]{name}/{backend} failed:[/red]\n{traceback.format_exc()}")
            gc.collect()
        del wl
        gc.collect()
    memory = measure_memory(backends) if settings.memory else []
    for name in names:
        these = [g for g in groups if g["workload"] == name]
        if these:
            console.print(table(name, these))
    for g in groups:
        if "check_max_rel_diff_vs_hand_loop" in g:
            console.print(
                f"check {g['workload']} numpy: lm vs hand loop after 2 steps, "
                f"max rel diff {g['check_max_rel_diff_vs_hand_loop']:.1e}"
            )
    judged = judge(groups) + memory
    report.print_targets(console, judged)
    payload = report.payload(settings, started, groups, targets=judged)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "optimizer.json", payload)
        console.print(f"wrote {out}/optimizer.json in {payload['wall_s']:.0f} s")
    return payload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.optimizer", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated, from: " + ", ".join(BACKENDS)
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--budget", type=float)
    parser.add_argument("--compiled-cap", type=int)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def backends_from(text: str) -> list[str]:
    """The optimizer benchmark's backends; the suite's "tensorflow" means keras here."""
    names = ["keras" if n.strip() == "tensorflow" else n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise SystemExit(f"--backends: expected some of {', '.join(BACKENDS)} (or tensorflow), got {text!r}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(_rss_child(args.memory_child)))
        return 0
    console = Console(width=None if Console().is_terminal else 200)
    run(backends_from(args.backends), list(workloads.OPTIMIZER_NAMES), settings_from(args), console, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
