"""The fleet table's incremental updates: only changed rows are ranked, searched and drawn
again, and the result is always what sorting and filtering every row from scratch gives."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from textual.app import App, ComposeResult

from infero_tui.columns import Column, Rows
from infero_tui.widgets.fleet_table import FleetTable


@dataclass(frozen=True)
class Row:
    id: str
    name: str
    load: int
    gone: bool = False


COLUMNS: list[Column[Row]] = [
    Column("id", "ID", 6, lambda r: (r.id, ""), lambda r: r.id, "I"),
    Column("name", "NAME", 8, lambda r: (r.name, ""), lambda r: r.name, "N", flex=True),
    Column("load", "LOAD", 5, lambda r: (str(r.load), ""), lambda r: r.load, "L"),
]


def rows() -> Rows[Row]:
    return Rows(key=lambda r: r.id, gone=lambda r: r.gone, text=lambda r: r.name.lower())


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield FleetTable(COLUMNS, rows(), sort="name", id="table")

    @property
    def table(self) -> FleetTable[Row]:
        return self.query_one(FleetTable)


def from_scratch(items: list[Row], sort: str, reverse: bool, needle: str) -> list[str]:
    """The order the table must show: live rows then gone ones, each by the sort value
    (reversed or not), ties by id; only rows whose text holds the filter."""
    value = next(c.sort for c in COLUMNS if c.key == sort)
    shown = [r for r in items if needle in r.name.lower()]
    ordered = sorted(shown, key=lambda r: r.id)
    ordered.sort(key=value, reverse=reverse)
    ordered.sort(key=lambda r: r.gone)
    return [r.id for r in ordered]


async def test_random_joins_leaves_and_changes_keep_the_order_of_a_full_sort() -> None:
    rng = random.Random(13)
    fleet = {
        f"r{n:03d}": Row(f"r{n:03d}", f"gpu-{rng.randrange(40)}", rng.randrange(9))
        for n in range(120)
    }
    next_id = 120
    app = TableApp()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.table
        table.update(fleet.values())
        for step in range(60):
            for _ in range(rng.randrange(6)):  # a few rows change, some of them their sort value
                key = rng.choice(sorted(fleet))
                row = fleet[key]
                fleet[key] = rng.choice(
                    [
                        replace(row, load=rng.randrange(9)),
                        replace(row, name=f"gpu-{rng.randrange(40)}"),
                        replace(row, gone=not row.gone),
                        replace(row),  # a new object with the same values
                    ]
                )
            for _ in range(rng.randrange(3)):  # joins and leaves
                del fleet[rng.choice(sorted(fleet))]
                fleet[f"r{next_id:03d}"] = Row(f"r{next_id:03d}", f"gpu-{rng.randrange(40)}", 1)
                next_id += 1
            if step % 10 == 0:  # a burst: most rows change at once
                fleet = {k: replace(r, load=rng.randrange(9)) for k, r in fleet.items()}
            if step % 15 == 7:
                table.sort_by(rng.choice(["id", "name", "load"]))
            if step % 12 == 5:
                table.set_filter(rng.choice(["", "gpu-1", "3"]))
            table.update(fleet.values())
            await pilot.pause()
            want = from_scratch(
                list(fleet.values()), table.sort_key, table.sort_reverse, table.filter_text
            )
            assert table.order == want, f"step {step}"


async def test_a_row_whose_sort_value_changes_moves_and_the_cursor_stays_on_its_row() -> None:
    a, b, c = Row("a", "alpha", 1), Row("b", "bravo", 2), Row("c", "charlie", 3)
    app = TableApp()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.table
        table.update([a, b, c])
        table.sort_by("load")
        table.move_to(1)
        assert table.selected == "b"
        table.update([a, replace(b, load=9), c])
        await pilot.pause()
        assert table.order == ["a", "c", "b"]
        assert table.selected == "b"
        table.update([replace(a, load=5), replace(b, load=9), c])
        assert table.order == ["c", "a", "b"]
        table.update([replace(a, load=5, gone=True), replace(b, load=9), c])
        assert table.order == ["c", "b", "a"]  # gone last


async def test_a_filtered_out_row_that_changes_to_match_appears_and_one_that_stops_leaves() -> None:
    a, b, c = Row("a", "gpu-1", 1), Row("b", "cpu-2", 2), Row("c", "gpu-3", 3)
    app = TableApp()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.table
        table.update([a, b, c])
        table.set_filter("gpu")
        assert table.order == ["a", "c"]
        table.update([a, replace(b, name="gpu-2"), replace(c, name="cpu-3")])
        await pilot.pause()
        assert table.order == ["a", "b"]


async def test_an_update_draws_again_only_the_lines_whose_row_changed() -> None:
    items = [Row(f"r{n}", f"name-{n}", n) for n in range(10)]
    app = TableApp()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.table
        table.update(items)
        await pilot.pause()
        before = [table.render_line(y) for y in range(1, 11)]
        items[4] = replace(items[4], load=99)  # name-4 stays on line 5
        table.update(items)
        await pilot.pause()
        after = [table.render_line(y) for y in range(1, 11)]
        assert [x is y for x, y in zip(before, after, strict=True)] == [n != 4 for n in range(10)]
        assert "99" in after[4].text
