"""Columns and row accessors of the console's tables (no Textual: `tables.py` builds them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Cell = tuple[str, str]
"""Text and rich style of one cell."""


@dataclass(frozen=True, slots=True)
class Column(Generic[T]):
    """One column: how to show a cell, how to sort by it, and the shift+letter that does."""

    key: str
    label: str
    width: int
    cell: Callable[[T], Cell]
    sort: Callable[[T], Any]
    hotkey: str = ""
    """Upper-case letter: shift+letter sorts by this column (again: reverses)."""
    justify: Literal["left", "right"] = "left"
    flex: bool = False
    """Takes the width left over (at least `width`, at most the longest value)."""
    priority: int = 0
    """Columns that do not fit are dropped, highest priority number first (0 = always)."""
    shown: Callable[[], bool] | None = None
    """When given, the column is shown only while this says so (e.g. with several servers)."""
    volatile: bool = False
    """The sort value depends on more than the row (rates, other rows' names): every row is
    ranked again on every update. Otherwise only the rows that changed are."""


@dataclass(frozen=True, slots=True)
class Rows(Generic[T]):
    """How the table reads its items."""

    key: Callable[[T], str]
    gone: Callable[[T], bool]
    """Gone rows are dimmed, sorted last and offer no actions."""
    text: Callable[[T], str]
    """What the `/` filter searches (lower case)."""
    context: Callable[[], object] = lambda: None
    """What the cells read besides their row (e.g. which names are shared): when it changes,
    the flexible column's width is measured again over every row, not only changed ones."""
