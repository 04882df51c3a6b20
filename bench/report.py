"""The benchmark's report: sections of rows, printed as text, written as JSON and Markdown."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of a table; `key` is stable (the smoke test and scripts look rows up by it)."""

    key: str
    cells: list[str]
    """Rendered values, one per column after the label."""
    label: str = ""
    target: str = ""
    met: bool | None = None
    """Whether the issue's target is met; `None` where the row has no target."""
    measured: str = ""
    """The figure the target is about, for the summary of targets."""

    def __post_init__(self) -> None:
        self.label = self.label or self.key


@dataclass
class Section:
    """One table."""

    key: str
    title: str
    columns: list[str]
    """Column headers after the label column (the target columns are added when rendering)."""
    rows: list[Row] = field(default_factory=list)
    note: str = ""

    def row(self, key: str) -> Row:
        """The row with this key."""
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)


def ms(value: float | None) -> str:
    """Milliseconds, or `-` when there is no sample."""
    return "-" if value is None else f"{value:.2f}"


def signed_ms(value: float | None) -> str:
    """An added delay in milliseconds, with its sign."""
    return "-" if value is None else f"{value:+.2f}"


def ratio(value: float | None) -> str:
    """A fraction such as infero/direct."""
    return "-" if value is None else f"{value:.2f}"


def count(value: float | None) -> str:
    """A rate or a count, without decimals."""
    return "-" if value is None else f"{value:,.0f}"


def mib(value: float | None) -> str:
    """Mebibytes."""
    return "-" if value is None else f"{value:.1f} MiB"


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def _grid(section: Section) -> list[list[str]]:
    with_targets = any(r.target for r in section.rows)
    head = [section.title, *section.columns, *(["target", "met"] if with_targets else [])]
    body = [
        [r.label, *r.cells, *([r.target, _verdict(r.met)] if with_targets else [])]
        for r in section.rows
    ]
    return [head, *body]


def text_table(section: Section) -> str:
    """A fixed-width table for the terminal."""
    grid = _grid(section)
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    lines = []
    for n, line in enumerate(grid):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if section.note:
        lines.append(section.note)
    return "\n".join(lines)


def markdown_table(section: Section) -> str:
    """A GitHub Markdown table (pasted into docs/performance.md)."""
    grid = _grid(section)
    head, body = grid[0], grid[1:]
    lines = [
        "| " + " | ".join(f"**{head[0]}**" if i == 0 else c for i, c in enumerate(head)) + " |",
        "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(head))) + " |",
    ]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    if section.note:
        lines += ["", section.note]
    return "\n".join(lines)


def targets(sections: list[Section]) -> Section:
    """Every row that carries a target, gathered into one table."""
    summary = Section("targets", "Targets", ["measured"])
    for s in sections:
        for r in s.rows:
            if r.met is not None:
                summary.rows.append(Row(f"{s.key}.{r.key}", [r.measured], r.label, r.target, r.met))
    return summary


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor()
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "infero": _version("infero"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "websockets": _version("websockets"),
        "httpx": _version("httpx"),
    }
