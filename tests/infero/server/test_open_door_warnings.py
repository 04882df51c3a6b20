"""`infero server` warns at start about each way in that needs no secret."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infero.server.auth import load_keyring
from infero.server.runner import warn_open_doors
from infero.server.settings import ServerSettings

OPEN_API = "no API key configured: /api/* is open to anyone who can reach this port"
OPEN_LINKS = "CLIENT_KEY is empty: any connector can register"


def _warnings(caplog: pytest.LogCaptureFixture, settings: ServerSettings) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infero.server.runner"):
        warn_open_doors(settings, load_keyring(settings))
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    return [r.getMessage() for r in caplog.records]


def test_a_server_without_any_key_warns_once_about_each_open_door(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _warnings(caplog, ServerSettings()) == [OPEN_API, OPEN_LINKS]


def test_a_server_with_an_api_key_and_a_client_key_warns_about_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _warnings(caplog, ServerSettings(api_key="ak", client_key="ck")) == []


def test_a_keys_file_with_a_client_key_closes_the_api(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = tmp_path / "keys"
    path.write_text("alice sk-alice\n", encoding="utf-8")
    settings = ServerSettings(api_keys_file=str(path))
    assert _warnings(caplog, settings) == [OPEN_LINKS]


def test_an_operator_key_alone_leaves_the_api_open_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ServerSettings(operator_key="ok", client_key="ck")
    assert _warnings(caplog, settings) == [OPEN_API]


def test_the_warnings_never_show_a_key(caplog: pytest.LogCaptureFixture) -> None:
    _warnings(caplog, ServerSettings(operator_key="secret-operator-key"))
    assert "secret-operator-key" not in caplog.text
