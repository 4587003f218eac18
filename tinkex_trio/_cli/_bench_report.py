"""The bench's outputs: the table on stdout, and the optional plot (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import math
from typing import Any

from tinkex_trio._cli._bench import BenchReport, Row, ScenarioResult, fmt_ms

__all__ = ["PLOT_HINT", "format_report", "plot_report", "require_matplotlib"]

PLOT_HINT = "--plot needs matplotlib: pip install 'tinkex_trio[plot]'"

_HEADER = ("scenario", "side", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "reqs", "retries", "breaker", "notes")
_WIDTHS = (9, 11, 12, 8, 8, 8, 8, 6, 7, 7, 0)


def _cells(row: Row) -> tuple[str, ...]:
    lat = row.summary() or {}
    ops_per_s = row.ops_per_s
    return (
        row.scenario,
        row.side,
        f"{row.ops} {row.unit}",
        "-" if ops_per_s is None else f"{ops_per_s:.1f}",
        fmt_ms(lat.get("p50")),
        fmt_ms(lat.get("p95")),
        fmt_ms(lat.get("p99")),
        _num(row.requests),
        _num(row.retries),
        _num(row.breaker_transitions),
        row.note,
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"x{value:.2f}"


def _line(cells: tuple[str, ...]) -> str:
    parts = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells[:-1], _WIDTHS, strict=False))]
    return ("  ".join(parts) + "  " + cells[-1]).rstrip()


def _ratio_line(label: str, ratios: dict[str, float], prefix: str = "") -> str:
    cells = (
        "",
        label,
        "",
        _ratio(ratios.get(f"{prefix}throughput")),
        _ratio(ratios.get(f"{prefix}p50")),
        _ratio(ratios.get(f"{prefix}p95")),
        _ratio(ratios.get(f"{prefix}p99")),
        "",
        "",
        "",
        "ops/s above x1 and latency below x1 favour the first",
    )
    return _line(cells)


def _facts(result: ScenarioResult) -> list[str]:
    f = result.facts
    if result.name == "breaker" and f:
        opened, recovered = f.get("time_to_open_s"), f.get("time_to_recover_s")
        return [
            f"breaker: a {f['outage_s']:g} s outage; opened after "
            + ("never" if opened is None else f"{opened:.2f} s")
            + f" ({f['failure_threshold']} failed calls); {f['refused_calls']} calls refused without reaching the "
            f"server, {f['failed_trials']} half-open trials failed; closed "
            + ("never (limit reached)" if recovered is None else f"{recovered:.2f} s after the outage ended")
            + f" (open timeout {f['timeout_s']:g} s)"
        ]
    if result.name == "faults" and f:
        verdict = "exactly once" if f.get("exactly_once") else "NOT exactly once"
        return [
            f"faults: {f['steps_done']} steps under injected 5xx/429/resets: {f['faults_injected']} faults, every "
            f"step applied {verdict} ({f['optim_steps_applied']} optim steps, "
            f"{f['forward_backward_applied']} forward_backward on the server)"
        ]
    return []


def format_report(report: BenchReport) -> str:
    """The table (one row per side of each scenario, ratio rows, then each scenario's findings)."""
    sdk = f"tinker {report.sdk} side by side" if report.sdk else "tinker SDK not compared"
    title = f"tinkex-trio bench ({report.size}) on {report.target}; {sdk}; {report.elapsed_s:.1f} s"
    lines = [title]
    if report.interrupted:
        lines.append("INTERRUPTED: partial results")
    lines.append(_line(_HEADER))
    lines.append("-" * (len(lines[-1]) + 20))
    findings: list[str] = []
    for result in report.scenarios.values():
        for row in result.rows:
            lines.append(_line(_cells(row)))
        if result.name in ("train", "sample") and result.ratios:
            lines.append(_ratio_line("ours/sdk", result.ratios))
        if result.name == "batch":
            for mode in ("batch", "window"):
                if f"{mode}_throughput" in result.ratios:
                    lines.append(_ratio_line(f"{mode}/seq", result.ratios, f"{mode}_"))
        if not result.complete and report.interrupted:
            findings.append(f"{result.name}: interrupted")
        findings.extend(_facts(result))
    lines.extend(findings)
    for name, reason in report.skipped.items():
        lines.append(f"skipped {name}: {reason}")
    lines.append(
        "ops/s and p50/p95/p99: per operation (a step, a sample, a batch run, a call); reqs, retries, breaker "
        "(transitions): from our session's Metrics and telemetry"
    )
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise ImportError (with :data:`PLOT_HINT`) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        raise ImportError(PLOT_HINT) from None


def plot_report(report: BenchReport, path: str) -> None:
    """Latency distributions of every row (log scale) and the breaker's timeline, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt_any: Any = plt
    breaker = report.scenarios.get("breaker")
    panels = 2 if breaker is not None and breaker.facts else 1
    fig, axes_obj = plt_any.subplots(panels, 1, figsize=(10, 4.5 * panels), squeeze=False)
    axes: Any = axes_obj
    ax = axes[0][0]
    for result in report.scenarios.values():
        for row in result.rows:
            values = sorted(v for v in row.latencies_ms if v > 0)
            if not values:
                continue
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, fractions, where="post", label=f"{row.scenario} {row.side} (n={len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency per operation (ms)")
    ax.set_ylabel("fraction of operations")
    ax.set_title(f"tinkex-trio bench ({report.size}): latency distributions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    if panels == 2 and breaker is not None:
        _plot_breaker(axes[1][0], breaker)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt_any.close(fig)


def _plot_breaker(ax: Any, breaker: ScenarioResult) -> None:
    facts = breaker.facts
    codes = {"closed": 0, "half_open": 1, "open": 2}
    times, states = [0.0], [0]
    for t in facts.get("transitions", []):
        times.append(float(t["t_s"]))
        states.append(codes.get(str(t["to"]), 0))
    calls = facts.get("calls", [])
    end = max([times[-1], *(float(c["t_s"]) for c in calls)]) + 0.1
    times.append(end)
    states.append(states[-1])
    ax.step(times, states, where="post", color="black", label="breaker state")
    ax.axvspan(0, float(facts["outage_s"]), color="red", alpha=0.1, label="outage")
    colours = {"ok": "green", "failed": "red", "trial": "purple", "refused": "orange"}
    for kind, colour in colours.items():
        xs = [float(c["t_s"]) for c in calls if c["outcome"] == kind]
        ax.scatter(xs, [-0.3] * len(xs), s=8, color=colour, label=f"{kind} calls")
    ax.set_yticks([-0.3, 0, 1, 2], ["calls", "closed", "half-open", "open"])
    ax.set_xlabel("seconds since the outage began")
    ax.set_title("circuit breaker during an outage")
    ax.legend(fontsize="small", loc="upper right")
