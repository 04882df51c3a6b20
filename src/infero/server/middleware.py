"""Cross-cutting request handling: request ids, CORS, API-key auth, OpenAI-shaped 404/405."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from infero.server import errors
from infero.server.auth import ApiKey, KeyRing, bearer_token
from infero.server.events import EventBus, RequestRejected

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = "X-Request-Id"
INFERO_REQUEST_ID = "X-Infero-Request-Id"
"""infero's own id of the request, on every answer (a relayed answer keeps the backend's
`X-Request-Id` when it sends one)."""

REQUEST_ID_KEY = web.RequestKey("request_id", str)
"""The request's id (client's `X-Request-Id` or generated)."""
CALLER = web.RequestKey("caller", ApiKey)
"""The matched API key (absent when `/api/*` is open and no key was sent)."""
CORS_ORIGIN = web.RequestKey("cors_origin", str)
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

PUBLIC_API_PREFIXES = (
    "/api/workers/connect",
    "/api/llm/connect",
    "/api/mcp/",
    "/api/client/",
    "/api/peer/",
)
"""Paths under /api that do not take the client API key (links use CLIENT_KEY; the MCP
broker checks its callers itself; the API docs are public; peer instances use PEER_KEY)."""

_CORS_METHODS = "GET, POST, DELETE, OPTIONS"
_EXPOSED = "X-Request-Id, X-Infero-Request-Id, X-Infero-Overhead-Ms, Retry-After, Mcp-Session-Id"


class OriginPolicy:
    """ALLOWED_ORIGINS: exact origins, `*`, or entries with one `*` wildcard."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        self.exact: set[str] = set()
        self.patterns: list[tuple[str, str]] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip("/")
            if not entry:
                continue
            if entry == "*":
                self.any = True
            elif entry.count("*") == 1:
                prefix, suffix = entry.split("*")
                self.patterns.append((prefix, suffix))
            else:
                self.exact.add(entry)

    @property
    def enabled(self) -> bool:
        """Whether any origin at all is allowed."""
        return self.any or bool(self.exact or self.patterns)

    def allows(self, origin: str) -> bool:
        """Whether `origin` may call the API from a browser."""
        if not origin.isascii():  # a browser's origin is ASCII; this one cannot be echoed
            return False
        origin = origin.lower()
        if self.any or origin in self.exact:
            return True
        return any(
            len(origin) > len(p) + len(s) and origin.startswith(p) and origin.endswith(s)
            for p, s in self.patterns
        )


class RequestIds:
    """Request ids: the client's `X-Request-Id` if sane, else 32 new hex digits.

    New ids are a random prefix of this instance and a counter: unique like uuid4, cheaper.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter):016x}"

    def of(self, request: web.Request) -> str:
        """The client's id if sane, else a fresh one."""
        given = request.headers.get(REQUEST_ID)
        if given and _VALID_ID.match(given):
            return given
        return self.new()


def make_middleware(keyring: KeyRing, origins: OriginPolicy, events: EventBus) -> Middleware:
    """One middleware for every request (cheaper than a chain on the hot path)."""

    ids = RequestIds()

    @web.middleware
    async def core(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID_KEY] = ids.of(request)
        origin = request.headers.get("Origin")
        if origin is not None and origins.enabled and origins.allows(origin):
            request[CORS_ORIGIN] = "*" if origins.any else origin
        if (
            request.method == "OPTIONS"
            and origin
            and "Access-Control-Request-Method" in (request.headers)
        ):
            return _preflight(request)
        path = request.path
        if path.startswith("/api/") and not path.startswith(PUBLIC_API_PREFIXES):
            token = bearer_token(request)
            key = keyring.match(token) if token is not None else None
            if key is None and not keyring.open:
                events.request_rejected(RequestRejected(model="", reason="unauthorized"))
                return errors.unauthorized()
            if key is not None:
                request[CALLER] = key
        try:
            return await handler(request)
        except web.HTTPNotFound:
            if not path.startswith("/api/"):
                raise
            return errors.api_error(404, f"No route {path}.", "invalid_request_error", "not_found")
        except web.HTTPMethodNotAllowed as exc:
            if not path.startswith("/api/"):
                raise
            return errors.api_error(
                405,
                f"Method {request.method} not allowed on {path}.",
                "invalid_request_error",
                "method_not_allowed",
                headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
            )

    return core


def _preflight(request: web.Request) -> web.StreamResponse:
    allowed = request.get(CORS_ORIGIN)
    if allowed is None:
        return web.Response(status=403, text="origin not allowed")
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted:
        response.headers["Access-Control-Allow-Headers"] = wanted
    response.headers["Access-Control-Max-Age"] = "600"
    return response


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Add the request id and CORS headers to every answer (streams included)."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is not None:
        response.headers[INFERO_REQUEST_ID] = rid
        response.headers.setdefault(REQUEST_ID, rid)
    if request.headers.get("Origin") is None:
        return  # nor CORS_ORIGIN (looking for an absent key raises and catches a KeyError)
    allowed = request.get(CORS_ORIGIN)
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
    response.headers.add("Vary", "Origin")
