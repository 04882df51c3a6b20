"""A virtual table for fleets of any size: only the visible rows are ever rendered.

Rows are items keyed by id (a worker, a model, a relay). `update()` replaces the items in
place: the cursor stays on the same id, the order is recomputed (a few milliseconds at 1,000
rows) and only the lines on screen are drawn again. Columns have fixed widths except one
flexible column (the name), cut with an ellipsis; when the terminal is too narrow the columns
with the lowest priority are left out, never the id, name, status and jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
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
        self._layout: tuple[int, int, list[tuple[Column[T], int]]] | None = None
        self._version = 0
        self._styles: tuple[Style, Style, Style, Style] | None = None

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
        """Replace the items; the cursor stays on the same key when it is still shown."""
        key = self.rows.key
        self.items = {key(item): item for item in items}
        self._version += 1
        self._reorder()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self._reorder()

    def sort_by(self, column_key: str) -> None:
        """Sort by a column; asking for the current one reverses the order."""
        if column_key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = column_key, False
        self._reorder()

    def _column(self, key: str) -> Column[T]:
        return next(c for c in self.columns if c.key == key)

    def _reorder(self) -> None:
        selected = self._selected if self._selected is not None else self.selected
        needle = self.filter_text
        items: Iterable[T] = self.items.values()
        if needle:
            text = self.rows.text
            items = [item for item in items if needle in text(item)]
        sort, gone, key = self._column(self.sort_key).sort, self.rows.gone, self.rows.key
        ordered = sorted(items, key=sort, reverse=self.sort_reverse)
        ordered.sort(key=gone)  # stable: gone rows last, the chosen order kept within
        self.order = [key(item) for item in ordered]
        if selected is not None and selected in self.items:
            try:
                self.cursor = self.order.index(selected)
            except ValueError:
                self.cursor = min(self.cursor, max(len(self.order) - 1, 0))
        else:
            self.cursor = min(self.cursor, max(len(self.order) - 1, 0))
        self._selected = self.selected
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Moved(self, self.selected))

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
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
        self.sort_reverse = False
        self._reorder()

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

    def layout_columns(self, width: int) -> list[tuple[Column[T], int]]:
        """The columns that fit in `width` cells, with their widths (one space between)."""
        cached = self._layout
        if cached is not None and cached[:2] == (width, self._version):
            return cached[2]
        out = self._fit(width)
        self._layout = (width, self._version, out)
        return out

    def _fit(self, width: int) -> list[tuple[Column[T], int]]:
        shown = [c for c in self.columns if c.shown is None or c.shown()]
        flex = next((c for c in shown if c.flex), None)
        longest = 0
        if flex is not None:
            values = (flex.cell(item)[0] for item in self.items.values())
            longest = max([cell_len(flex.label), *map(cell_len, values)])

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
        return out

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        layout = self.layout_columns(width)
        base, header, cursor, gone = self.styles_for_lines()
        if y == 0:
            cells = [(self._header_label(c), "") for c, _ in layout]
            return self._strip(layout, cells, header, width)
        index = self.top + y - 1
        if index >= len(self.order):
            if index == 0 and not self.order:
                text = self.empty if not self.filter_text else "No row matches the filter."
                return Strip([Segment(ellipsis(" " + text, width).ljust(width), base)], width)
            return Strip.blank(width, base)
        item = self.items[self.order[index]]
        row_style = base + gone if self.rows.gone(item) else base
        cells = [column.cell(item) for column, _ in layout]
        if index == self.cursor:
            cells = [(text, "") for text, _ in cells]
            return self._strip(layout, cells, row_style + cursor, width)
        return self._strip(layout, cells, row_style, width)

    def _header_label(self, column: Column[T]) -> str:
        label = column.label
        if column.key == self.sort_key:
            label += "↓" if self.sort_reverse else "↑"
        return label

    @staticmethod
    def _strip(
        layout: list[tuple[Column[T], int]], cells: list[Cell], style: Style, width: int
    ) -> Strip:
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
