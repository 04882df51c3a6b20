"""A virtual table for fleets of any size: only the visible rows are ever rendered.

Rows are items keyed by id (a worker, a model, a relay). `update()` replaces the items in
place: the cursor stays on the same id, the order is recomputed (a few milliseconds at 1,000
rows) and only the lines on screen are drawn again. Columns have fixed widths except one
flexible column (the name), cut with an ellipsis; when the terminal is too narrow the columns
with the lowest priority are left out, never the id, name, status and jobs.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter as Tally
from collections.abc import Iterable
from operator import itemgetter
from typing import Any, ClassVar, Generic, TypeVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from infero_tui.columns import Cell, Column, Rows
from infero_tui.format import ellipsis, printable

T = TypeVar("T")
Layout = tuple[tuple[Column[T], int], ...]
"""The columns shown and their widths."""
Line = tuple[Any, ...]
"""What one line shows (`FleetTable._line`): its row key first ("" for other lines)."""


class FleetTable(Widget, Generic[T], can_focus=True):
    """Sortable, filterable rows with a cursor; Enter posts `Opened`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("home,g", "top", "Top", show=False),
        Binding("end,G", "bottom", "Bottom", show=False),
        Binding("enter", "open", "Detail"),
        Binding("s", "next_sort", "Sort", show=False),
        Binding("r", "reverse", "Reverse", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | j / k, Down / Up | Move the cursor. |
    | g / G, Home / End | First / last row. |
    | PgDn / PgUp | One page down / up. |
    | Enter | Full-screen detail of the row. |
    | Shift+letter | Sort by the column with that letter (again: reverse). |
    | s / r | Sort by the next column / reverse the order. |
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "fleet-table--header",
        "fleet-table--cursor",
        "fleet-table--gone",
    }

    DEFAULT_CSS = """
    FleetTable {
        height: 1fr;
        min-height: 3;
    }
    FleetTable > .fleet-table--header {
        text-style: bold;
        background: $panel;
    }
    FleetTable > .fleet-table--cursor {
        background: $accent 40%;
    }
    FleetTable:focus > .fleet-table--cursor {
        background: $accent;
        color: $text;
    }
    FleetTable > .fleet-table--gone {
        color: $text-disabled;
    }
    """

    class Opened(Message):
        """Enter (or a double click) on a row."""

        def __init__(self, table: FleetTable[Any], key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> FleetTable[Any]:
            return self.table

    class Moved(Message):
        """The cursor moved to another row (or the rows changed under it)."""

        def __init__(self, table: FleetTable[Any], key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> FleetTable[Any]:
            return self.table

    def __init__(
        self,
        columns: Iterable[Column[T]],
        rows: Rows[T],
        *,
        sort: str = "",
        empty: str = "Nothing here yet.",
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.columns = tuple(columns)
        self.rows = rows
        self.empty = empty
        self.items: dict[str, T] = {}
        self.order: list[str] = []
        """Keys of the visible rows, filtered and sorted."""
        self.sort_key = sort or self.columns[0].key
        self.sort_reverse = False
        self.filter_text = ""
        self.cursor = 0
        self.top = 0
        self._selected: str | None = None
        self._ranks: dict[str, tuple[bool, Any]] = {}
        """Per key: gone, and the value of the sort column (as of the row last ranked)."""
        self._live: list[tuple[Any, str]] = []
        self._gone: list[tuple[Any, str]] = []
        """(sort value, key) of the live and the gone rows, ascending: the key breaks ties."""
        self._texts: dict[str, str] = {}
        """What the filter searches, per key."""
        self._widths: dict[str, int] = {}
        self._width_tally: Tally[int] = Tally()
        """Cells of each row's flexible column, and how many rows have each width."""
        self._row_context: object = None
        self._layout: tuple[tuple[int, int, tuple[bool, ...]], Layout[T]] | None = None
        self._styles: tuple[Style, Style, Style, Style] | None = None
        self._strips: dict[str, tuple[Line, Strip]] = {}
        """The last strip drawn for a row, reused while its line is the same."""
        self._drawn: dict[int, Line] = {}
        """What each line on screen shows (see `_line`): an update redraws the others only."""

    # ---- data ----------------------------------------------------------------------------

    @property
    def selected(self) -> str | None:
        """Key of the row under the cursor."""
        return self.order[self.cursor] if self.order else None

    @property
    def selected_item(self) -> T | None:
        key = self.selected
        return self.items.get(key) if key is not None else None

    def update(self, items: Iterable[T]) -> None:
        """Replace the items; the cursor stays on the same key when it is still shown.

        Rows are told apart by identity: an item that is the same object as before (a state
        stream's unchanged row) is not measured, searched or ranked again. Only rows whose sort
        value changed move (a volatile sort column ranks every row again)."""
        key_of = self.rows.key
        old = self.items
        new = {key_of(item): item for item in items}
        self.items = new
        changed = [key for key, item in new.items() if old.get(key) is not item]
        added = sum(1 for key in changed if key not in old)
        removed = [] if len(old) + added == len(new) else [k for k in old if k not in new]
        context = self.rows.context()
        if context != self._row_context:  # every row's cells and text may read it: all again
            self._row_context = context
            self._texts.clear()
            self._widths.clear()
            self._width_tally.clear()
            changed = list(new)
        self._forget(removed)
        self._note(changed)
        self._rank(changed, removed)
        self._reorder(redraw_changed_lines=True)

    def _forget(self, keys: Iterable[str]) -> None:
        widths, tally = self._widths, self._width_tally
        for key in keys:
            self._texts.pop(key, None)
            self._strips.pop(key, None)
            width = widths.pop(key, None)
            if width is not None:
                _untally(tally, width)

    def _note(self, keys: Iterable[str]) -> None:
        """The filter text and the flexible column's width of these (changed) rows."""
        items, text, texts = self.items, self.rows.text, self._texts
        widths, tally = self._widths, self._width_tally
        flex = next((c for c in self.columns if c.flex), None)
        for key in keys:
            item = items[key]
            texts[key] = text(item)
            if flex is not None:
                width = cell_len(flex.cell(item)[0])
                before = widths.get(key)
                if before != width:
                    if before is not None:
                        _untally(tally, before)
                    widths[key] = width
                    tally[width] += 1

    def _rank(self, changed: list[str], removed: list[str]) -> None:
        """Keep `_live` and `_gone` sorted: move the changed rows, or sort everything again
        when the column is volatile or most rows changed."""
        column = self._column(self.sort_key)
        if column.volatile or not self._ranks or len(changed) + len(removed) > len(self.items) // 4:
            self._rank_all()
            return
        for key in removed:
            self._unrank(key)
        gone, sort, items, ranks = self.rows.gone, column.sort, self.items, self._ranks
        for key in changed:
            item = items[key]
            rank = (gone(item), sort(item))
            if ranks.get(key) == rank:
                continue
            if key in ranks:
                self._unrank(key)
            ranks[key] = rank
            insort(self._gone if rank[0] else self._live, (rank[1], key))

    def _unrank(self, key: str) -> None:
        is_gone, value = self._ranks.pop(key)
        ranked = self._gone if is_gone else self._live
        del ranked[bisect_left(ranked, (value, key))]

    def _rank_all(self) -> None:
        gone, sort = self.rows.gone, self._column(self.sort_key).sort
        self._ranks = ranks = {key: (gone(item), sort(item)) for key, item in self.items.items()}
        self._live = sorted((value, key) for key, (is_gone, value) in ranks.items() if not is_gone)
        self._gone = sorted((value, key) for key, (is_gone, value) in ranks.items() if is_gone)

    def set_filter(self, text: str) -> None:
        needle = text.strip().lower()
        if needle != self.filter_text:
            self.filter_text = needle
            self._reorder()

    def sort_by(self, column_key: str) -> None:
        """Sort by a column; asking for the current one reverses the order."""
        if column_key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = column_key, False
            self._rank_all()
        self._reorder()

    def _column(self, key: str) -> Column[T]:
        return next(c for c in self.columns if c.key == key)

    def _reorder(self, redraw_changed_lines: bool = False) -> None:
        """The shown order from the ranked rows: live ones first, then gone ones (each by the
        sort value, reversed or not, then by key), filtered; the cursor stays on its key.
        Redraws the lines that changed, or the whole table."""
        selected = self._selected if self._selected is not None else self.selected
        live, gone = self._live, self._gone
        if self.sort_reverse:  # stable: rows with the same value stay in the order of their keys
            live = sorted(live, key=itemgetter(0), reverse=True)
            gone = sorted(gone, key=itemgetter(0), reverse=True)
        order = [key for _, key in live]
        order += [key for _, key in gone]
        needle = self.filter_text
        if needle:
            texts = self._texts
            order = [key for key in order if needle in texts[key]]
        self.order = order
        if selected is not None and selected in self.items:
            try:
                self.cursor = order.index(selected)
            except ValueError:
                self.cursor = min(self.cursor, max(len(order) - 1, 0))
        else:
            self.cursor = min(self.cursor, max(len(order) - 1, 0))
        self._selected = self.selected
        self._scroll_to_cursor()
        if redraw_changed_lines:
            self._refresh_changed_lines()
        else:
            self.refresh()
        self.post_message(self.Moved(self, self.selected))

    def _refresh_changed_lines(self) -> None:
        """Redraw only the lines whose content differs from what was drawn."""
        size = self.size
        if not size.height or not size.width:
            self.refresh()
            return
        drawn = self._drawn
        stale = [y for y in range(size.height) if drawn.get(y) != self._line(y)]
        if len(stale) == size.height:
            self.refresh()
        elif stale:
            self.refresh(*(Region(0, y, size.width, 1) for y in stale))
        if len(self._strips) > 4 * size.height:  # rows scrolled past: keep the shown ones only
            shown = set(self.order[self.top : self.top + size.height])
            self._strips = {k: v for k, v in self._strips.items() if k in shown}

    # ---- cursor --------------------------------------------------------------------------

    @property
    def page(self) -> int:
        """Rows that fit under the header."""
        return max(self.size.height - 1, 1)

    def move_to(self, index: int) -> None:
        if not self.order:
            return
        index = max(0, min(index, len(self.order) - 1))
        if index != self.cursor:
            before, top = self.cursor, self.top
            self.cursor = index
            self._selected = self.selected
            self._scroll_to_cursor()
            if self.top == top:  # only two lines change: redraw those
                width = self.size.width
                for row in (before, index):
                    self.refresh(Region(0, row - top + 1, width, 1))
            else:
                self.refresh()
            self.post_message(self.Moved(self, self.selected))

    # the cursor's look depends on focus; the theme can change: styles are cached until then
    def on_focus(self, event: events.Focus) -> None:
        self._styles = None
        self.refresh()

    def on_blur(self, event: events.Blur) -> None:
        self._styles = None
        self.refresh()

    def notify_style_update(self) -> None:
        self._styles = None
        super().notify_style_update()

    def styles_for_lines(self) -> tuple[Style, Style, Style, Style]:
        """Base, header, cursor and gone row styles."""
        if self._styles is None:
            base = self.rich_style
            self._styles = (
                base,
                base + self.get_component_rich_style("fleet-table--header"),
                self.get_component_rich_style("fleet-table--cursor"),
                self.get_component_rich_style("fleet-table--gone"),
            )
        return self._styles

    def _scroll_to_cursor(self) -> None:
        page = self.page
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + page:
            self.top = self.cursor - page + 1
        self.top = max(0, min(self.top, max(len(self.order) - page, 0)))

    def on_resize(self, _: events.Resize) -> None:
        self._scroll_to_cursor()

    def action_cursor(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, step: int) -> None:
        self.move_to(self.cursor + step * self.page)

    def action_top(self) -> None:
        self.move_to(0)

    def action_bottom(self) -> None:
        self.move_to(len(self.order) - 1)

    def action_open(self) -> None:
        key = self.selected
        if key is not None:
            self.post_message(self.Opened(self, key))

    def action_sort(self, column_key: str) -> None:
        self.sort_by(column_key)

    def action_next_sort(self) -> None:
        keys = [c.key for c in self.columns]
        self.sort_by(keys[(keys.index(self.sort_key) + 1) % len(keys)])

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._reorder()

    async def on_key(self, event: events.Key) -> None:
        """Shift+letter sorts by the column with that hotkey."""
        char = event.character
        if char and len(char) == 1 and char.isupper():
            for column in self.columns:
                if column.hotkey == char:
                    event.stop()
                    event.prevent_default()
                    self.sort_by(column.key)
                    return

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(self.top + event.y - 1)
            if event.chain == 2:
                self.action_open()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.move_to(self.cursor + 3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.move_to(self.cursor - 3)

    # ---- rendering -----------------------------------------------------------------------

    def layout_columns(self, width: int) -> Layout[T]:
        """The columns that fit in `width` cells, with their widths (one space between); the
        same object while neither the width, the longest flexible value nor the columns shown
        change (so lines drawn with it can be reused)."""
        shown = tuple(c.shown is None or c.shown() for c in self.columns)
        longest = max(self._width_tally, default=0)
        fingerprint = (width, longest, shown)
        cached = self._layout
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        out = self._fit(width, longest)
        self._layout = (fingerprint, out)
        return out

    def _fit(self, width: int, longest_value: int) -> Layout[T]:
        shown = [c for c in self.columns if c.shown is None or c.shown()]
        flex = next((c for c in shown if c.flex), None)
        longest = max(cell_len(flex.label), longest_value) if flex is not None else 0

        def fixed(columns: list[Column[T]]) -> int:
            return sum(c.width + 1 for c in columns if not c.flex)

        while len(shown) > 1 and fixed(shown) + (flex.width + 1 if flex else 0) > width:
            droppable = [c for c in shown if c.priority > 0]
            if not droppable:
                break
            shown.remove(max(droppable, key=lambda c: c.priority))
        out: list[tuple[Column[T], int]] = []
        spare = width - fixed(shown) - 1
        for column in shown:
            if column.flex:
                out.append((column, max(column.width, min(spare, longest))))
            else:
                out.append((column, column.width))
        return tuple(out)

    def _line(self, y: int) -> Line:
        """What line `y` shows, as a value that compares equal only for identical lines."""
        width = self.size.width
        layout = self.layout_columns(width)
        styles = self.styles_for_lines()
        if y == 0:
            return ("", layout, self.sort_key, self.sort_reverse, styles)
        index = self.top + y - 1
        if index >= len(self.order):
            if index == 0:
                return ("", bool(self.filter_text), width, styles)
            return ("", width, styles)
        key = self.order[index]
        item = self.items[key]
        cells = tuple([column.cell(item) for column, _ in layout])
        return (key, cells, index == self.cursor, self.rows.gone(item), layout, styles)

    def render_line(self, y: int) -> Strip:
        line = self._line(y)
        self._drawn[y] = line
        key = line[0]
        if key:
            cached = self._strips.get(key)
            if cached is not None and cached[0] == line:
                return cached[1]  # the same object: Textual's caches on it still apply
        strip = self._draw(y, line)
        if key:
            self._strips[key] = (line, strip)
        return strip

    def _draw(self, y: int, line: Line) -> Strip:
        width = self.size.width
        layout = self.layout_columns(width)
        base, header, cursor, gone = self.styles_for_lines()
        if y == 0:
            cells = [(self._header_label(c), "") for c, _ in layout]
            return self._strip(layout, cells, header, width)
        if not line[0]:
            if len(line) == 4:
                text = self.empty if not self.filter_text else "No row matches the filter."
                return Strip([Segment(ellipsis(" " + text, width).ljust(width), base)], width)
            return Strip.blank(width, base)
        _, cells, is_cursor, is_gone, _, _ = line
        row_style = base + gone if is_gone else base
        if is_cursor:
            return self._strip(layout, [(text, "") for text, _ in cells], row_style + cursor, width)
        return self._strip(layout, list(cells), row_style, width)

    def _header_label(self, column: Column[T]) -> str:
        label = column.label
        if column.key == self.sort_key:
            label += "↓" if self.sort_reverse else "↑"
        return label

    @staticmethod
    def _strip(layout: Layout[T], cells: list[Cell], style: Style, width: int) -> Strip:
        segments = [Segment(" ", style)]
        used = 1
        for (column, size), (text, cell_style) in zip(layout, cells, strict=True):
            shown = ellipsis(printable(text), size)
            pad = " " * (size - cell_len(shown))
            shown = pad + shown if column.justify == "right" else shown + pad
            segments.append(
                Segment(shown, style + Style.parse(cell_style) if cell_style else style)
            )
            segments.append(Segment(" ", style))
            used += size + 1
        if used < width:
            segments.append(Segment(" " * (width - used), style))
        return Strip(segments).crop(0, width)


def _untally(tally: Tally[int], width: int) -> None:
    """One row fewer of this width (widths no row has are dropped, so `max` sees live ones)."""
    if tally[width] <= 1:
        del tally[width]
    else:
        tally[width] -= 1
