"""The client's address behind a reverse proxy, believed only from `TRUSTED_PROXIES`.

With `TRUSTED_PROXIES` set, a request whose peer is one of those addresses has its
`X-Forwarded-For` read from the right: the first address that is not a trusted proxy is the
client, and becomes `request.remote` for everything after (link logs, per-address limits).
A peer that is not trusted cannot claim any address. Without the setting, no middleware is
installed and the peer address is used as it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

if TYPE_CHECKING:
    from infero.server.settings import ServerSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`10.0.0.0/8`, `127.0.0.1`, `::1` -> networks; `ValueError` naming a bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(out)


def check_trusted_proxies(entries: tuple[str, ...]) -> tuple[str, ...]:
    """Validator of the `TRUSTED_PROXIES` setting."""
    parse_networks(entries)
    return entries


class ProxyTrust:
    """Finds the client address from the peer and its `X-Forwarded-For` header."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client(self, peer: str | None, forwarded_for: str) -> str | None:
        """The client address, or None to keep the peer (untrusted peer, nothing usable)."""
        if peer is None or not forwarded_for or not self.trusted(peer):
            return None
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not hop:
                return None
            if not self.trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop.strip("[]")))
                except ValueError:
                    return None
        return hops[0]


def middleware(trust: ProxyTrust) -> Middleware:
    """Rewrite `request.remote` for requests that came through a trusted proxy."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = trust.client(request.remote, request.headers.get("X-Forwarded-For", ""))
        if client is not None:
            request = request.clone(remote=client)
        return await handler(request)

    return forwarded


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Install the middleware first when `TRUSTED_PROXIES` is set."""
    if settings.trusted_proxies:
        trust = ProxyTrust(parse_networks(settings.trusted_proxies))
        app.middlewares.insert(0, middleware(trust))
