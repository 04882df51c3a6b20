"""Client credentials: named API keys, roles, constant-time matching. See docs/security.md.

Sources: `API_KEY` (key named `default`), `API_KEYS_FILE` (lines `name key [operator]`,
`#` comments) and `OPERATOR_KEY` (key named `operator` with the operator role).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from infero.common.settings import ConfigError
from infero.server.settings import ServerSettings

OPERATOR = "operator"
"""Role allowed to drain, undrain and shut down connectors through the server."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One client credential; only `name` ever appears in logs."""

    name: str
    key: str
    roles: frozenset[str] = frozenset()

    @property
    def is_operator(self) -> bool:
        """Whether this key may steer connectors."""
        return OPERATOR in self.roles


class KeyRing:
    """All client keys. Empty ring of client keys means `/api/*` is open (see docs/security.md)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        self._encoded = tuple((key, key.key.encode()) for key in self._keys)
        """Each key with its bytes, encoded once (`match` runs on every request)."""
        self.open = not any(not k.is_operator for k in self._keys)
        """No client key configured: `/api/*` needs no credential (operator actions still do)."""
        self.has_operator = any(k.is_operator for k in self._keys)

    def match(self, token: str) -> ApiKey | None:
        """The key equal to `token`, compared in constant time against every key."""
        found: ApiKey | None = None
        candidate = token.encode()
        for key, encoded in self._encoded:
            if hmac.compare_digest(candidate, encoded) and found is None:
                found = key
        return found


def parse_keys_file(text: str, source: str) -> list[ApiKey]:
    """Keys from the `name key [operator]` file format; raise `ConfigError` on bad lines."""
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != OPERATOR):
            raise ConfigError(f"{source}:{number}: expected `name key [operator]`")
        roles = frozenset({OPERATOR}) if len(parts) == 3 else frozenset()
        keys.append(ApiKey(parts[0], parts[1], roles))
    return keys


def load_keyring(settings: ServerSettings) -> KeyRing:
    """Build the ring from the settings; raise `ConfigError` if the keys file is unusable."""
    keys: list[ApiKey] = []
    if settings.api_key:
        keys.append(ApiKey("default", settings.api_key))
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"invalid setting API_KEYS_FILE: {exc.strerror}: {path}") from None
        keys.extend(parse_keys_file(text, f"API_KEYS_FILE {path}"))
    if settings.operator_key:
        keys.append(ApiKey(OPERATOR, settings.operator_key, frozenset({OPERATOR})))
    return KeyRing(keys)


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if not token.isascii():
        try:
            token.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 (kept as surrogates) match no key
            return None
    return token


def client_key_ok(expected: str, given: str) -> bool:
    """Connector `CLIENT_KEY` check in constant time (empty expected accepts only empty)."""
    return hmac.compare_digest(expected.encode(), given.encode())
