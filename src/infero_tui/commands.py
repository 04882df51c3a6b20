"""Command palette provider: every console action by name ("Drain worker alpha")."""

from __future__ import annotations

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ConsoleCommands(Provider):
    """Lists the main screen's commands; the fleet's worker actions included."""

    def _commands(self) -> list[tuple[str, object, str]]:
        from infero_tui.screens.main import MainScreen

        screen = self.screen
        if isinstance(screen, MainScreen):
            return list(screen.palette_commands())
        return []

    async def discover(self) -> Hits:
        for title, callback, help_text in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)  # type: ignore[arg-type]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)  # type: ignore[arg-type]
