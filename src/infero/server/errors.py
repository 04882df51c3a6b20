"""Error answers on `/api/v1/*` in OpenAI's shape; the full table is in docs/errors.md."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from infero.protocol.errors import error_json

RETRY_AFTER_S = 1
"""`Retry-After` seconds suggested on 429/503 answers."""


def api_error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error response `{"error": {"message", "type", "code", "param"}}`."""
    return web.Response(
        status=status,
        text=error_json(message, type_, code),
        content_type="application/json",
        headers=headers,
    )


def bad_request(message: str, code: str | None = None) -> web.Response:
    """400 invalid_request_error."""
    return api_error(400, message, "invalid_request_error", code)


def unauthorized() -> web.Response:
    """401 with the code the OpenAI SDKs map to AuthenticationError."""
    return api_error(
        401,
        "Missing or invalid API key.",
        "authentication_error",
        "invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str) -> web.Response:
    """403: a valid key without the role the action needs."""
    return api_error(403, message, "permission_error", "forbidden")


def model_not_found(model: str) -> web.Response:
    """404 for a model no connector advertises (exact or alias)."""
    return api_error(
        404, f"The model {model!r} does not exist.", "invalid_request_error", "model_not_found"
    )


def too_large(limit: int) -> web.Response:
    """413 body over MAX_BODY_BYTES."""
    return api_error(
        413,
        f"Request body larger than {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def retry_later(status: int, message: str, code: str) -> web.Response:
    """429/503 with `Retry-After`."""
    return api_error(
        status, message, "server_error", code, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def overloaded() -> web.Response:
    """503: the request bodies held at once reached MAX_HELD_BODY_BYTES."""
    return retry_later(
        503, "The server holds too many request bodies right now.", "server_overloaded"
    )


def body_timeout() -> web.Response:
    """408: the client stopped sending its body for BODY_TIMEOUT (the connection then closes)."""
    return api_error(
        408,
        "The request body stopped arriving.",
        "invalid_request_error",
        "request_timeout",
        headers={"Connection": "close"},
    )


def draining() -> web.Response:
    """503 while the server drains."""
    return retry_later(503, "The server is shutting down.", "server_draining")


def sse_error_event(message: str, type_: str, code: str | None) -> bytes:
    """A final `data: {"error": ...}` SSE event (OpenAI SDKs raise on it)."""
    return b"data: " + error_json(message, type_, code).encode() + b"\n\n"
