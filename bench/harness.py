"""What every benchmark here shares: alternating rounds against a baseline measured in the same run, medians
with their spread, targets that fail the run, one table and one CSV per bench (PERFORMANCE.md).

A bench measures its baseline and each figure in turn, round after round (``alternate``): baseline, A, B, ...
then again, the order of the figures rotated each round, so a neighbour's load drifting in or out weighs on
every figure alike. A ratio is taken per round against that round's baseline (never median / median), and
the row reports the median of the rounds with their min-max. A row with a target is met or missed on its
median (a count such as 5xx answers on its sum); ``finish`` prints the table, writes ``bench/out/<name>.csv``
and returns 1 when any target is missed, unless ``--report-only``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"

Measurement = Mapping[str, float]
Runner = Callable[[], Measurement | float]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, target: value >= target,
    "<=": lambda value, target: value <= target,
    "<": lambda value, target: value < target,
    "==": lambda value, target: value == target,
}


def parser(doc: str | None, *, rounds: int = 5) -> argparse.ArgumentParser:
    """The options every bench takes; each adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"alternating rounds of baseline and figures (default {rounds}; medians are reported)")
    p.add_argument("--report-only", action="store_true", help="print and write the figures, exit 0 on a miss")
    return p


def machine_line() -> str:
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}, {load}"


@dataclass
class Rounds:
    """Every round's measurement of the baseline and of each figure, in measuring order."""

    baseline: list[dict[str, float]] = field(default_factory=list)
    figures: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    paired_baseline: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def values(self, figure: str, metric: str) -> list[float]:
        source = self.baseline if figure == "" else self.figures[figure]
        return [m[metric] for m in source]

    def ratios(self, figure: str, metric: str, base_metric: str | None = None) -> list[float]:
        """figure / baseline, round by round (the baseline measured next to it when paired)."""
        base = self.paired_baseline.get(figure, self.baseline)
        key = base_metric or metric
        return [f[metric] / b[key] if b[key] else float("nan") for f, b in zip(self.figures[figure], base, strict=True)]


def _as_dict(value: Measurement | float) -> dict[str, float]:
    return {"value": float(value)} if isinstance(value, int | float) else {k: float(v) for k, v in value.items()}


def alternate(rounds: int, baseline: Runner, figures: Mapping[str, Runner], *, paired: bool = False,
              progress: Callable[[str], None] | None = None) -> Rounds:
    """Run baseline and figures ``rounds`` times, alternating; with ``paired`` the baseline runs before every
    figure (baseline, A, baseline, B, ...) and each ratio uses the baseline next to it."""
    out = Rounds(figures={name: [] for name in figures},
                 paired_baseline={name: [] for name in figures} if paired else {})
    names = list(figures)
    for n in range(rounds):
        shift = n % len(names) if names else 0
        order = names[shift:] + names[:shift]
        if not paired:
            out.baseline.append(_as_dict(baseline()))
        for name in order:
            if paired:
                b = _as_dict(baseline())
                out.baseline.append(b)
                out.paired_baseline[name].append(b)
            out.figures[name].append(_as_dict(figures[name]()))
        if progress:
            progress(f"round {n + 1}/{rounds} done")
    return out


@dataclass
class Row:
    group: str  # e.g. the database
    figure: str  # what was measured
    metric: str  # which of its numbers
    values: list[float]
    unit: str = ""
    target: float | None = None
    op: str = ">="  # how the value compares with the target
    agg: str = "median"  # "median" (figures) or "sum" / "max" (counts that must stay at zero)
    note: str = ""

    @property
    def value(self) -> float:
        finite = [v for v in self.values if v == v]  # noqa: PLR0124 - drops NaN
        if not finite:
            return float("nan")
        if self.agg == "sum":
            return sum(finite)
        if self.agg == "max":
            return max(finite)
        return statistics.median(finite)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        value = self.value
        return value == value and _OPS[self.op](value, self.target)  # noqa: PLR0124 - NaN never meets


class Bench:
    """Collects rows; ``finish`` prints, writes the CSV and gives the exit status."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.report_only = bool(getattr(args, "report_only", False))
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.started = datetime.now(UTC)

    def add(self, group: str, figure: str, metric: str, values: Sequence[float] | float, **kw: object) -> Row:
        row = Row(group, figure, metric, [float(values)] if isinstance(values, int | float) else
                  [float(v) for v in values], **kw)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.met is False]

    def table(self) -> str:
        def fmt(x: float) -> str:
            if x != x:  # noqa: PLR0124 - NaN
                return "-"
            if abs(x) >= 100 or x == int(x):
                return f"{x:,.0f}"
            return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"

        lines = []
        header = ["group", "figure", "metric", "value", "min-max", "n", "target", "met"]
        body = []
        for r in self.rows:
            spread = f"{fmt(min(r.values))}-{fmt(max(r.values))}" if len(r.values) > 1 and r.agg == "median" else ""
            target = f"{r.op} {fmt(r.target)}" if r.target is not None else ""
            met = "" if r.met is None else ("yes" if r.met else "NO")
            value = fmt(r.value) + (f" {r.unit}" if r.unit else "") + (f" ({r.agg})" if r.agg != "median" else "")
            body.append([r.group, r.figure, r.metric, value, spread, str(len(r.values)), target, met])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        right = {3, 4, 5, 6}

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                             enumerate(zip(cells, widths, strict=True))).rstrip()

        lines.append(line(header))
        lines.append("-" * len(lines[0]))
        lines.extend(line(cells) for cells in body)
        return "\n".join(lines)

    def write_csv(self) -> Path:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUT_DIR / f"{self.name}.csv"
        stamp = self.started.isoformat(timespec="seconds")
        with path.open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["bench", "group", "figure", "metric", "unit", "agg", "value", "min", "max", "n",
                          "samples", "target_op", "target", "met", "note", "measured_at"])
            for r in self.rows:
                out.writerow([self.name, r.group, r.figure, r.metric, r.unit, r.agg, f"{r.value:.6g}",
                              f"{min(r.values):.6g}", f"{max(r.values):.6g}", len(r.values),
                              " ".join(f"{v:.6g}" for v in r.values), r.op if r.target is not None else "",
                              "" if r.target is None else f"{r.target:g}",
                              "" if r.met is None else ("yes" if r.met else "no"), r.note, stamp])
        return path

    def finish(self) -> int:
        print()
        print(self.table())
        for text in self.notes:
            print(text)
        path = self.write_csv()
        missed = self.missed
        try:
            shown = path.relative_to(Path.cwd())
        except ValueError:
            shown = path
        print(f"\nwrote {shown}; load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        if not missed:
            print(f"{self.name}: every target met" if any(r.target is not None for r in self.rows) else
                  f"{self.name}: no targets")
            return 0
        print(f"{self.name}: {len(missed)} target(s) MISSED: " +
              "; ".join(f"{r.group} {r.figure} {r.metric} {r.value:.4g} (target {r.op} {r.target:g})"
                        for r in missed))
        if self.report_only:
            print("(--report-only: exit status 0)")
            return 0
        return 1

