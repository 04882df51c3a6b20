"""Root fixtures: a clean environment so no developer setting leaks into a test."""

from __future__ import annotations

from pathlib import Path

import pytest

_ENV_PREFIXES = ("INFERO_", "MCP_", "BROKER_")
_ENV_NAMES = {
    "PORT",
    "HOST",
    "API_KEY",
    "API_KEYS_FILE",
    "OPERATOR_KEY",
    "CLIENT_KEY",
    "CLIENT_ID",
    "CLIENT_NAME",
    "SERVER_URL",
    "COMPLETION_BASE_URL",
    "COMPLETION_API_KEY",
    "API_STYLE",
    "MODELS",
    "MAX_CONCURRENCY",
    "MODEL_POLL_INTERVAL",
    "REQUEST_TIMEOUT",
    "RECONNECT",
    "STATUS_ADDR",
    "METRICS_PORT",
    "DRAIN_TIMEOUT",
    "LOG_DIR",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "CONFIG_FILE",
    "ALLOWED_ORIGINS",
    "REDIS_ADDR",
    "AUTH_TOKEN",
    "PROVIDER_URL",
    "QUEUE_MAX",
    "QUEUE_TIMEOUT",
    "FIRST_BYTE_TIMEOUT",
    "MAX_BODY_BYTES",
    "NO_COLOR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drop infero's env vars and proxies; point config discovery at an empty dir."""
    import os

    for name in list(os.environ):
        if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("NO_PROXY", "*")
