"""Who may call an MCP relay through `/api/mcp/id/{id}` (see docs/mcp.md, "Access").

The caller presents `Authorization: Bearer <token>`. The rule:

| server has client API keys | relay has AUTH_TOKEN | accepted tokens                  |
|----------------------------|----------------------|----------------------------------|
| no                         | no                   | anything, or no token (open)     |
| no                         | yes                  | the relay's AUTH_TOKEN           |
| yes                        | no                   | a server API key                 |
| yes                        | yes                  | a server API key or AUTH_TOKEN   |

So a relay is never callable without a credential when the server has an API key, and a
relay with AUTH_TOKEN can be shared without handing out a server key. The relay sends
only a SHA-256 of its token; the server compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from infero.server.auth import KeyRing


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token, as relays announce it in their hello."""
    return hashlib.sha256(token.encode()).hexdigest()


def caller_allowed(token: str | None, *, keyring: KeyRing, relay_digest: str) -> bool:
    """Apply the table above to one call."""
    if token is not None:
        if keyring.match(token) is not None:
            return True
        if relay_digest and hmac.compare_digest(token_digest(token), relay_digest):
            return True
    return keyring.open and not relay_digest


def may_learn_relays(token: str | None, keyring: KeyRing) -> bool:
    """Whether a caller may be told that a relay id is unknown (else it just gets 401).

    Without this, anyone could probe which relay ids exist on a keyed server.
    """
    return keyring.open or (token is not None and keyring.match(token) is not None)


def may_reach_a_relay(
    token: str | None, *, keyring: KeyRing, knows_token: Callable[[str], bool]
) -> bool:
    """Whether some relay could accept the caller: an open server, a server API key, or the
    AUTH_TOKEN of a relay the server knows (`knows_token`: a digest). Checked before a relay
    id is looked up, so that a caller no relay accepts costs no lookup (no Redis read in a
    fleet). The digest's set lookup is not constant-time: it tells nothing of the token."""
    if keyring.open:
        return True
    if token is None:
        return False
    return keyring.match(token) is not None or knows_token(token_digest(token))
