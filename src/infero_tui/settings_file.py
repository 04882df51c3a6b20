"""Edit `worker.yaml` keeping its comments (ruamel round trip), validated like the connector."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from infero.common.settings import ConfigError, field_opts, load_settings
from infero.worker.settings import WorkerSettings

_TEXT_TYPES: tuple[Any, ...] = (str, tuple[str, ...])


def _yaml() -> YAML:
    handle = YAML()
    handle.preserve_quotes = True
    return handle


def load_document(path: Path) -> CommentedMap:
    """The file as a comment-keeping mapping (empty if the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CommentedMap()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML") from exc
    if data is None:
        return CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    return data


def load_worker_settings(path: Path) -> WorkerSettings:
    """The connector's settings from this file alone (defaults for the rest)."""
    return validate(load_document(path), path)


def validate(document: CommentedMap, path: Path) -> WorkerSettings:
    """Validate with the connector's own model; `ConfigError` names the bad setting."""
    values = {str(k): v for k, v in document.items()}
    return load_settings(WorkerSettings, file_values=values, file_path=Path(path.name))


def field_values(document: CommentedMap) -> dict[str, str]:
    """Every editable setting as the text shown in the editor ("" = not set in the file)."""
    out: dict[str, str] = {}
    for name in field_opts(WorkerSettings):
        value = document.get(name)
        if value is None:
            out[name] = ""
        elif isinstance(value, list | tuple):
            out[name] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def _typed(name: str, text: str) -> Any:
    annotation = WorkerSettings.model_fields[name].annotation
    if annotation in _TEXT_TYPES:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_edits(document: CommentedMap, edits: dict[str, str]) -> CommentedMap:
    """Set changed settings in place (an empty value removes the key); comments stay."""
    current = field_values(document)
    for name, text in edits.items():
        text = text.strip()
        if text == current.get(name, ""):
            continue
        if text == "":
            document.pop(name, None)
        else:
            document[name] = _typed(name, text)
    return document


def dump(document: CommentedMap) -> str:
    """The document as YAML text, comments included."""
    buffer = io.StringIO()
    _yaml().dump(document, buffer)
    return buffer.getvalue()


def save(path: Path, document: CommentedMap) -> WorkerSettings:
    """Validate, then write the file; nothing is written when validation fails."""
    settings = validate(document, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(document), encoding="utf-8")
    return settings
