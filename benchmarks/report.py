"""The printed report and the raw figures written as JSON."""

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.load import Comparison, LoadResult, pooled_rate
from benchmarks.stats import median


@dataclass(slots=True)
class Section:
    """One benchmark's part of the report: tables for people, figures for JSON."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A compact table: the first column names the row, the others are right-aligned."""
    grid = Table(title=title, title_justify="left", title_style="bold", padding=(0, 1))
    for index, column in enumerate(columns):
        grid.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        grid.add_row(*row)
    return grid


def comparison_table(title: str, names: tuple[str, str, str], comparison: Comparison) -> Table:
    """Baseline, subject and their ratio; ``names`` names the three rows."""
    ratios = comparison.ratios()

    def row(name: str, results: list[LoadResult]) -> list[str]:
        return [
            name,
            rate(pooled_rate(results)),
            millis(median([r.p50_ms for r in results])),
            millis(median([r.p99_ms for r in results])),
            str(sum(r.failures for r in results)),
        ]

    baseline, subject, ratio = names
    return table(
        title,
        ["target", "req/s", "p50 ms", "p99 ms", "failures"],
        [
            row(baseline, comparison.baseline),
            row(subject, comparison.subject),
            [
                f"ratio: {ratio}",
                times(ratios["requests_per_second"]),
                times(ratios["p50"]),
                times(ratios["p99"]),
                "",
            ],
        ],
    )


def show(console: Console, section: Section) -> None:
    console.rule(f"[bold]{section.title}")
    for grid in section.tables:
        console.print(grid)
    for note in section.notes:
        console.print(f"[dim]- {note}[/dim]", highlight=False)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def rate(value: float) -> str:
    return f"{value:,.0f}"


def millis(value: float) -> str:
    return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


def times(value: float) -> str:
    return f"{value:.2f}x"


def micros(value: float) -> str:
    return f"{value:,.0f}"


def micro_text(value: float) -> str:
    return f"{value:.1f}"


def ratio_text(value: float) -> str:
    return f"{value:.2f}"


def ranged(values: Sequence[float], show: Callable[[float], str]) -> str:
    """The median, and the range of the rounds in brackets: ``28,400 (27,950-29,100)``."""
    if not values:
        return "?"
    return f"{show(median(values))} ({show(min(values))}-{show(max(values))})"
