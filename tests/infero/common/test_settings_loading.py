"""Settings precedence (default < YAML < env < flag), one-line errors, shared connector fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from infero.common.settings import (
    ConfigError,
    ConnectorSettings,
    field_opts,
    load_settings,
    read_yaml,
)
from infero.relay.settings import RelaySettings
from infero.worker.settings import WorkerSettings


def test_each_source_overrides_the_previous_one() -> None:
    file = {"max_concurrency": 3, "client_name": "file", "reconnect": "yes"}
    env = {"MAX_CONCURRENCY": "4", "CLIENT_ID": "env-id"}
    flags = {"max_concurrency": "5", "client_name": None}
    assert load_settings(WorkerSettings).max_concurrency == "auto"
    assert load_settings(WorkerSettings, file_values=file).max_concurrency == 3
    merged = load_settings(WorkerSettings, file_values=file, environ=env, flags=flags)
    assert merged.max_concurrency == 5
    assert (merged.client_name, merged.client_id, merged.reconnect) == ("file", "env-id", True)


def test_errors_name_the_setting_where_it_was_written(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    with pytest.raises(ConfigError, match=r"^invalid setting max_concurrency in .*worker.yaml"):
        load_settings(WorkerSettings, file_values={"max_concurrency": "x"}, file_path=path)
    with pytest.raises(ConfigError, match=r"^invalid setting DRAIN_TIMEOUT \(environment\)"):
        load_settings(WorkerSettings, environ={"DRAIN_TIMEOUT": "later"})
    with pytest.raises(ConfigError, match=r"unknown setting 'server_adress'"):
        load_settings(WorkerSettings, file_values={"server_adress": "ws://x"}, file_path=path)


def test_secret_values_are_not_echoed_in_errors_and_are_masked() -> None:
    settings = load_settings(WorkerSettings, environ={"CLIENT_KEY": "s3cret"})
    assert settings.masked()["client_key"] == "***"
    assert settings.client_key == "s3cret"


def test_completion_base_url_with_a_trailing_slash_is_accepted() -> None:
    settings = load_settings(WorkerSettings, flags={"completion_base_url": "http://h:1/v1/"})
    assert settings.completion_base_url == "http://h:1/v1/"


def test_bad_yaml_is_one_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("max_concurrency: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)


TRAILING = [
    "reconnect",
    "metrics_port",
    "drain_timeout",
    "exit_when_drained",
    "log_dir",
    "log_level",
    "log_format",
]


@pytest.mark.parametrize(
    ("cls", "path", "tail"),
    [
        (WorkerSettings, "/api/workers/connect", [*TRAILING, "status_addr"]),
        (RelaySettings, "/api/mcp/connect", [*TRAILING, "status_addr"]),
    ],
)
def test_connectors_share_their_common_settings_and_list_their_own_in_between(
    cls: type[WorkerSettings] | type[RelaySettings], path: str, tail: list[str]
) -> None:
    names = list(field_opts(cls))
    assert names[:4] == ["server_url", "client_key", "client_id", "client_name"]
    assert names[-len(tail) :] == tail
    assert list(cls().masked()) == names
    assert cls().server_url == "ws://localhost:8080" + path
    assert field_opts(cls)["drain_timeout"] is field_opts(ConnectorSettings)["drain_timeout"]
