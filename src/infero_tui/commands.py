"""Command palette provider: every action by name, built lazily as the query is typed.

Fixed entries (tabs, the command line's verbs, local actions and settings) come from the
main screen; per-row entries ("Drain worker alpha") are generated while searching, so a
fleet of 1,000 connectors costs nothing until someone types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from textual.command import DiscoveryHit, Hit, Hits, Provider

PaletteCommand = tuple[str, Callable[[], object], str]
"""Title, what it runs, help text."""


class PaletteSource(Protocol):
    def palette_fixed(self) -> list[PaletteCommand]: ...

    def palette_rows(self) -> Iterator[PaletteCommand]: ...


class ConsoleCommands(Provider):
    """The main screen's commands (also while a detail view is open on top of it)."""

    def _source(self) -> PaletteSource | None:
        from infero_tui.screens.main import MainScreen

        for screen in reversed(self.app.screen_stack):
            if isinstance(screen, MainScreen):
                return screen
        return None

    async def discover(self) -> Hits:
        source = self._source()
        if source is None:
            return
        for title, callback, help_text in source.palette_fixed():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        source = self._source()
        if source is None:
            return
        matcher = self.matcher(query)
        for index, (title, callback, help_text) in enumerate(
            _chain(source.palette_fixed(), source.palette_rows())
        ):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
            if index % 200 == 199:
                await _yield_to_loop()


def _chain(first: list[PaletteCommand], rest: Iterator[PaletteCommand]) -> Iterator[PaletteCommand]:
    yield from first
    yield from rest


async def _yield_to_loop() -> None:
    import asyncio

    await asyncio.sleep(0)  # let keys through while a big fleet is searched
