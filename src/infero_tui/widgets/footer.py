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
    milliseconds at 1,000 rows. This one recomposes only when the keys shown differ, and
    otherwise greys keys out (or back in) in place.
    """

    _shown: Shown | None = None
    """The keys of the last composition asked for."""

    def bindings_changed(self, screen: Screen[object]) -> None:
        if screen is self.screen and self.is_attached and screen.app.app_focus:
            shown = shown_keys(screen)
            if shown == self._shown:
                enabled = {key: active.enabled for key, active in screen.active_bindings.items()}
                for footer_key in self.query("FooterKey"):  # the class is not public: by CSS type
                    key = getattr(footer_key, "key", "")
                    footer_key.set_class(not enabled.get(key, True), "-disabled")
                return
            self._shown = shown
        super().bindings_changed(screen)
