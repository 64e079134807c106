"""Reports: rich tables, target lines, JSON, markdown and a bar chart."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .contenders import FLOOR, LARS_MULTI, NATIVE, ROLES

STATUS_STYLE = {"PASS": "green", "MISS": "bold red", "INFO": "cyan", "SKIP": "yellow"}
ROLE_COLOR = {NATIVE: "#4c72b0", "optax": "#8172b2", FLOOR: "#999999", LARS_MULTI: "#dd8452"}


def fmt_time(seconds: float | None) -> str:
    """``1.23 ms``-style: three significant digits in the best unit."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def add_ratios(group: dict[str, Any]) -> None:
    """Give each lars_multi row its ratios to the best native contender of the same kind
    (functional against functional, in place against in place) and to the floor."""
    rows = [c for c in group["contenders"] if c["best_s"] is not None]
    floors = [c["best_s"] for c in rows if c["role"] == FLOOR]
    for c in group["contenders"]:
        mine = c["best_s"]
        natives = [n["best_s"] for n in rows if n["role"] == NATIVE and n["in_place"] == c["in_place"]]
        is_lm = c["role"] == LARS_MULTI and mine is not None
        c["ratio_best_native"] = mine / min(natives) if is_lm and natives else None
        c["ratio_floor"] = mine / min(floors) if is_lm and floors else None


# --- console ----------------------------------------------------------------


def timing_table(title: str, ratios: Sequence[str]) -> Table:
    """A table of contenders' times: backend, contender, best, median and rounds, then
    the ``ratios`` columns."""
    table = Table(title=title, title_justify="left")
    for name in ("backend", "contender"):
        table.add_column(name, justify="left")
    for name in ("best", "median", "rounds", *ratios):
        table.add_column(name, justify="right")
    return table


def payload(
    settings: Any, started: float, groups: Sequence[dict[str, Any]], **results: Any
) -> dict[str, Any]:
    """What a run writes: the machine, the settings, when it started and how long it
    took, its groups, and its other ``results``."""
    return {
        "machine": machine_info(),
        "settings": vars(settings),
        "started": started,
        "wall_s": time.time() - started,
        "groups": groups,
        **results,
    }


def workload_table(workload: str, groups: Sequence[dict[str, Any]]) -> Table:
    """One table for a workload: every backend's contenders, fastest first."""
    first = groups[0]
    table = timing_table(
        f"{workload}: {first['description']}", ("lm / best native (same kind)", "lm / floor")
    )
    for group in groups:
        rows = sorted(group["contenders"], key=lambda c: (ROLES.index(c["role"]), c["best_s"] or 1e9))
        for i, c in enumerate(rows):
            style = "bold" if c["role"] == LARS_MULTI else ("dim" if c["role"] == FLOOR else "")
            label = c["label"] + ("  [red](check: " + c["check"] + ")[/red]" if c["check"] else "")
            table.add_row(
                group["backend"] if i == 0 else "",
                label,
                fmt_time(c["best_s"]),
                fmt_time(c["median_s"]),
                str(c["rounds"]),
                fmt_ratio(c["ratio_best_native"]),
                fmt_ratio(c["ratio_floor"]),
                style=style,
                end_section=i == len(rows) - 1,
            )
    return table


def print_tables(console: Console, groups: Sequence[dict[str, Any]]) -> None:
    for workload in dict.fromkeys(g["workload"] for g in groups):
        console.print(workload_table(workload, [g for g in groups if g["workload"] == workload]))


def target_line(target: dict[str, Any]) -> str:
    """``PASS  label: 0.83x (limit 1.00x, vs key)`` as plain text."""
    if "detail" in target:
        return f"{target['status']:4s}  {target['label']}: {target['detail']}"
    limit = "" if target["limit"] is None else f", limit {target['limit']:.2f}x"
    against = f" vs {target['against']}" if target.get("against") else ""
    return f"{target['status']:4s}  {target['label']}: {fmt_ratio(target['ratio'])}{against}{limit}"


def print_targets(console: Console, targets: Sequence[dict[str, Any]]) -> None:
    console.rule("targets (measured; nothing is asserted)")
    for t in targets:
        style = STATUS_STYLE.get(t["status"], "")
        console.print(target_line(t), style=style, markup=False, highlight=False)


# --- files ------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _memory_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("MemTotal")), "")
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    """Machine, interpreter and library versions, for the JSON report."""
    packages = (
        "lars-multi",
        "numpy",
        "torch",
        "jax",
        "jaxlib",
        "tensorflow-cpu",
        "tensorflow",
        "optax",
        "optree",
    )
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total": _memory_total(),
        "python": sys.version.split()[0],
        "versions": {p: v for p in packages if (v := _version(p)) is not None},
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def markdown(groups: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> str:
    """Tables per workload, then the targets, as GitHub markdown."""
    lines: list[str] = []
    for workload in dict.fromkeys(g["workload"] for g in groups):
        these = [g for g in groups if g["workload"] == workload]
        lines += [
            f"#### {workload}: {these[0]['description']}",
            "",
            "| backend | contender | best | lm / best native (same kind) | lm / floor |",
            "|---|---|--:|--:|--:|",
        ]
        for group in these:
            for c in sorted(group["contenders"], key=lambda c: (ROLES.index(c["role"]), c["best_s"] or 1e9)):
                name = f"**{c['label']}**" if c["role"] == LARS_MULTI else c["label"]
                lines.append(
                    f"| {group['backend']} | {name} | {fmt_time(c['best_s'])} | "
                    f"{fmt_ratio(c['ratio_best_native'])} | {fmt_ratio(c['ratio_floor'])} |"
                )
        lines.append("")
    lines += ["#### Targets", "", "| status | target | measured |", "|---|---|---|"]
    for t in targets:
        measured = (
            t["detail"]
            if "detail" in t
            else fmt_ratio(t["ratio"]) + ("" if t["limit"] is None else f" (limit {t['limit']:.2f}x)")
        )
        lines.append(f"| {t['status']} | {t['label']} | {measured} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, groups: Sequence[dict[str, Any]]) -> None:
    """Horizontal bars of best times (log scale), one panel per workload and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    workloads = list(dict.fromkeys(g["workload"] for g in groups))
    backends = list(dict.fromkeys(g["backend"] for g in groups))
    fig, axes = plt.subplots(
        len(workloads), len(backends), squeeze=False, figsize=(6.5 * len(backends), 3.2 * len(workloads))
    )
    for i, workload in enumerate(workloads):
        for j, backend in enumerate(backends):
            ax = axes[i][j]
            group = next((g for g in groups if g["workload"] == workload and g["backend"] == backend), None)
            if group is None:
                ax.axis("off")
                continue
            _panel(ax, group)
    fig.legend(
        handles=[Patch(color=c, label=r) for r, c in ROLE_COLOR.items()],
        loc="upper center",
        ncol=len(ROLE_COLOR),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax: Any, group: dict[str, Any]) -> None:
    from matplotlib.ticker import NullFormatter

    rows = [c for c in group["contenders"] if c["best_s"] is not None]
    rows.sort(key=lambda c: (ROLES.index(c["role"]), c["best_s"]))
    labels = [c["label"] if len(c["label"]) <= 44 else c["label"][:42] + "…" for c in rows]
    times = [c["best_s"] * 1e3 for c in rows]
    ax.barh(range(len(rows)), times, color=[ROLE_COLOR[c["role"]] for c in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping labels on short log axes
    ax.set_xlabel("best time per call (ms, log scale)", fontsize=8)
    ax.set_title(f"{group['workload']} / {group['backend']}", fontsize=9)
    for k, t in enumerate(times):
        ax.text(t, k, " " + fmt_time(t / 1e3), va="center", fontsize=6)
