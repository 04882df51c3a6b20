"""The footer of key bindings, rebuilt only when the keys it shows change."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer

Shown = tuple[tuple[str, str, str], ...]
"""(key, description, action) of every binding the footer shows, in order."""


def shown_keys(screen: Screen[object]) -> Shown:
    """What a footer on `screen` shows now, enabled or not."""
    return tuple(
        (active.binding.key, active.binding.description, active.binding.action)
        for active in screen.active_bindings.values()
        if active.binding.show
    )


class KeyFooter(Footer):
    """Textual's `Footer`, which recomposes itself whenever the bindings may have changed
    (every focus change, every `refresh_bindings`): a relayout of the whole screen, tens of
    milliseconds at 1,000 rows. This one recomposes only when a key it has not composed is to
    be shown; otherwise it greys keys out (or back in) and hides or shows them in place (the
    filter box, for one, takes the letter keys while it has the focus).
    """

    _shown: Shown | None = None
    """The keys of the last composition asked for."""

    def bindings_changed(self, screen: Screen[object]) -> None:
        if screen is self.screen and self.is_attached and screen.app.app_focus:
            shown = shown_keys(screen)
            if self._shown is not None and self._in_place(shown, self._shown):
                return
            self._shown = shown
        super().bindings_changed(screen)

    def _in_place(self, shown: Shown, composed: Shown) -> bool:
        """Show `shown` with the keys already composed, if they are enough (in their order)."""
        wanted = set(shown)
        if [entry for entry in composed if entry in wanted] != list(shown):
            return False
        visible = {(key, action) for key, _, action in shown}
        enabled = {key: active.enabled for key, active in self.screen.active_bindings.items()}
        for footer_key in self.query("FooterKey"):  # the class is not public: by CSS type
            if footer_key.has_class("-command-palette"):
                continue
            key, action = getattr(footer_key, "key", ""), getattr(footer_key, "action", "")
            footer_key.display = (key, action) in visible
            footer_key.set_class(not enabled.get(key, True), "-disabled")
        return True
