"""The MCP access rule, every combination (see infero.server.mcp.access)."""

from __future__ import annotations

import pytest

from infero.server.auth import ApiKey, KeyRing
from infero.server.mcp.access import (
    caller_allowed,
    may_learn_relays,
    may_reach_a_relay,
    token_digest,
)

KEYED = KeyRing([ApiKey("default", "api-key")])
OPEN = KeyRing([])
OPERATOR_ONLY = KeyRing([ApiKey("operator", "op-key", frozenset({"operator"}))])
RELAY = token_digest("relay-token")


@pytest.mark.parametrize(
    ("keyring", "digest", "token", "allowed"),
    [
        (OPEN, "", None, True),
        (OPEN, "", "whatever", True),
        (OPEN, RELAY, None, False),
        (OPEN, RELAY, "wrong", False),
        (OPEN, RELAY, "relay-token", True),
        (KEYED, "", None, False),
        (KEYED, "", "wrong", False),
        (KEYED, "", "relay-token", False),
        (KEYED, "", "api-key", True),
        (KEYED, RELAY, None, False),
        (KEYED, RELAY, "wrong", False),
        (KEYED, RELAY, "api-key", True),
        (KEYED, RELAY, "relay-token", True),
        (OPERATOR_ONLY, "", None, True),
        (OPERATOR_ONLY, RELAY, "op-key", True),
    ],
)
def test_access_rule(keyring: KeyRing, digest: str, token: str | None, allowed: bool) -> None:
    assert caller_allowed(token, keyring=keyring, relay_digest=digest) is allowed
    if allowed:  # checked first, before the relay is looked up: it never refuses its caller
        knows = {digest} - {""}
        assert may_reach_a_relay(token, keyring=keyring, knows_token=knows.__contains__)


def test_on_a_keyed_server_a_caller_no_known_relay_accepts_is_refused_before_any_lookup() -> None:
    known = {RELAY}.__contains__
    assert may_reach_a_relay(None, keyring=OPEN, knows_token=known)
    assert may_reach_a_relay("api-key", keyring=KEYED, knows_token=known)
    assert may_reach_a_relay("relay-token", keyring=KEYED, knows_token=known)
    assert not may_reach_a_relay(None, keyring=KEYED, knows_token=known)
    assert not may_reach_a_relay("wrong", keyring=KEYED, knows_token=known)
    nobody = frozenset[str]().__contains__  # no relay with that AUTH_TOKEN known (yet)
    assert not may_reach_a_relay("relay-token", keyring=KEYED, knows_token=nobody)


def test_only_key_holders_learn_that_a_relay_id_is_unknown_on_a_keyed_server() -> None:
    assert may_learn_relays(None, OPEN)
    assert may_learn_relays("api-key", KEYED)
    assert not may_learn_relays(None, KEYED)
    assert not may_learn_relays("relay-token", KEYED)


def test_the_digest_is_hex_sha256() -> None:
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
