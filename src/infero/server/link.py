"""What the routing core needs of a connector's link (implemented by `linkserver.Link`).

The fleet, the MCP relay table and the shared-state seam hold links through this protocol,
so none of them imports the WebSocket endpoint (`linkserver.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from infero.common.liveness import Liveness
from infero.protocol import link as lp
from infero.server.exchange import Exchange


class ConnectorLink(Protocol):
    """One accepted link of this instance: opens exchanges, sends control frames."""

    shutting_down: bool
    """The connector shuts down (asked by an operator or said in its status): no undrain."""

    late: bool
    """Nothing heard for `STALE_AFTER` heartbeat intervals (set by the endpoint's watchdog)."""

    @property
    def id(self) -> str:
        """The connector id the link was accepted under."""
        ...

    @property
    def closed(self) -> bool:
        """True once the link is closing or closed."""
        ...

    @property
    def liveness(self) -> Liveness:
        """When the connector was last heard from."""
        ...

    async def open_exchange(
        self,
        *,
        method: str,
        path: str,
        headers: lp.Headers,
        body: bytes | bytearray,
        stream: bool = False,
        model: str = "",
        request_id: str = "",
    ) -> Exchange:
        """Start one HTTP exchange (raises a retryable `ExchangeFailed` if the link is gone)."""
        ...

    def replaceable_by(self, hello: lp.Hello) -> bool:
        """May a newcomer with `hello` take this link's id (same instance, or this one stale)?"""
        ...

    def forget(self, exchange: Exchange) -> None:
        """Drop an exchange the handler no longer reads."""
        ...

    def release_after_end(self, exchange: Exchange, release: Callable[[], None]) -> None:
        """Forget `exchange`; call `release` once the connector has ended its stream (its
        `end`, the link gone, or a bound), at once if it has."""
        ...

    def release_at_next_end(self, release: Callable[[], None]) -> None:
        """Call `release` when the connector next ends a stream (it refused one `busy`), the
        link goes, or after a bound."""
        ...

    async def send(self, frame: lp.Cancel | lp.Credit | lp.Control | lp.Ping | lp.Pong) -> None:
        """Send a control frame (dropped once closed)."""
        ...

    def fail_exchanges(self, message: str) -> None:
        """Every exchange on the link fails."""
        ...

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Close the link."""
        ...


class LinkHandler(Protocol):
    """What a link kind does with its links (implemented by `Fleet` and the MCP broker)."""

    def connecting(self, peer: str) -> contextlib.AbstractContextManager[None]:
        """Held while a link from `peer` is in its handshake (WebSocket open, no hello yet)."""
        ...

    def admit(self, hello: lp.Hello) -> lp.Refused | str:
        """Refuse the hello, or return the id the link will have (may differ from hello.id)."""
        ...

    def attached(self, hello: lp.Hello, link: ConnectorLink) -> ConnectorLink | None:
        """The link is live; return an older link it replaces (closed by the endpoint)."""
        ...

    def status(self, link: ConnectorLink, update: lp.StatusUpdate) -> None:
        """The connector reported a new status."""
        ...

    def detached(self, link: ConnectorLink) -> None:
        """The link closed (for any reason)."""
        ...


def duplicate_refusal(client_id: str) -> lp.Refused:
    """The answer to a second connector that asks for the id of a live one."""
    return lp.Refused(
        reason="duplicate",
        message=f"another connector with CLIENT_ID={client_id} is linked; "
        "give each connector its own CLIENT_ID",
    )
