"""docs/configuration.md lists every setting of `infero server` and `infero llm`."""

from __future__ import annotations

from pathlib import Path

import pytest

from infero.common.durations import format_duration
from infero.common.settings import SettingsModel, field_opts, flag_name
from infero.server.settings import ServerSettings
from infero.worker.settings import WorkerSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
_DURATION_WORDS = ("timeout", "interval", "after", "retention")


def _default(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) or "(empty)"
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, float) and any(word in name for word in _DURATION_WORDS):
        return format_duration(value)
    return str(value)


def rows(cls: type[SettingsModel]) -> list[str]:
    """The table rows the doc must contain, one per setting."""
    out = []
    for name, opt in field_opts(cls).items():
        default = cls.model_fields[name].get_default(call_default_factory=True)
        flags = flag_name(name) + (f", {opt.short}" if opt.short else "")
        secret = " (secret)" if opt.secret else ""
        out.append(
            f"| `{opt.env}` | `{flags}` | `{name}` | `{_default(name, default)}` "
            f"| {opt.help}{secret} |"
        )
    return out


@pytest.mark.parametrize("cls", [WorkerSettings, ServerSettings])
def test_every_setting_has_its_row_in_the_configuration_doc(cls: type[SettingsModel]) -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [row for row in rows(cls) if row not in text]
    assert not missing, "update docs/configuration.md with:\n" + "\n".join(missing)
