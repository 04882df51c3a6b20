"""MCP wire helpers for the broker: JSON-RPC envelope checks and broker error bodies.

The broker relays MCP Streamable HTTP exchanges untouched; it only looks at a POST body
to validate the JSON-RPC envelope, count calls per method and name the request ids it
must answer when a call fails on the way (see docs/mcp.md). No I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

McpCode = Literal[
    "MCP_PROVIDER_UNAVAILABLE",
    "MCP_LIMIT_EXCEEDED",
    "MCP_TIMEOUT",
    "MCP_UNAUTHORIZED",
    "MCP_SCHEMA_ERROR",
    "MCP_UPSTREAM_ERROR",
]
"""Stable `error.data.mcp` codes of broker errors (reference 4.4)."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
SERVER_ERROR = -32000

MAX_METHOD_LENGTH = 128
"""Longer method names are refused (they would only bloat counters and logs)."""

RequestId = str | int


class EnvelopeError(ValueError):
    """A POST body that is not valid JSON-RPC 2.0; `code` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the broker needs to know about one POST body."""

    requests: tuple[tuple[RequestId, str], ...] = ()
    """(id, method) of every request (messages with a method and an id)."""
    notifications: tuple[str, ...] = ()
    """Methods of the notifications."""
    responses: int = 0
    """Responses and errors the client sends back (answers to sampling, elicitation...)."""
    batch: bool = False

    @property
    def is_call(self) -> bool:
        """A POST with at least one request expects an answer stream (it is a call)."""
        return bool(self.requests)

    @property
    def first_method(self) -> str:
        """The method used to label this POST in state and metrics."""
        if self.requests:
            return self.requests[0][1]
        if self.notifications:
            return self.notifications[0]
        return "response"


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _check_message(msg: Any) -> tuple[str, RequestId | None, str]:
    """('request'|'notification'|'response', id, method) of one message; raise EnvelopeError."""
    if not isinstance(msg, dict):
        raise EnvelopeError(INVALID_REQUEST, "a JSON-RPC message must be an object")
    if msg.get("jsonrpc") != "2.0":
        raise EnvelopeError(INVALID_REQUEST, 'a JSON-RPC message needs "jsonrpc": "2.0"')
    method = msg.get("method")
    if method is not None:
        if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LENGTH:
            raise EnvelopeError(INVALID_REQUEST, '"method" must be a non-empty short string')
        params = msg.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise EnvelopeError(INVALID_REQUEST, '"params" must be an object or an array')
        if "id" not in msg:
            return "notification", None, method
        if not _is_id(msg["id"]):
            raise EnvelopeError(INVALID_REQUEST, '"id" must be a string or an integer')
        return "request", msg["id"], method
    if "result" in msg or "error" in msg:
        if not (_is_id(msg.get("id")) or msg.get("id") is None):
            raise EnvelopeError(INVALID_REQUEST, '"id" must be a string or an integer')
        return "response", msg.get("id"), ""
    raise EnvelopeError(INVALID_REQUEST, 'a JSON-RPC message needs "method", "result" or "error"')


def parse_envelope(body: bytes | bytearray) -> Envelope:
    """Validate a POST body (one message or a batch); raise `EnvelopeError` when invalid."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise EnvelopeError(PARSE_ERROR, "body is not valid JSON") from None
    batch = isinstance(data, list)
    messages = data if batch else [data]
    if not messages:
        raise EnvelopeError(INVALID_REQUEST, "empty batch")
    requests: list[tuple[RequestId, str]] = []
    notifications: list[str] = []
    responses = 0
    for msg in messages:
        kind, msg_id, method = _check_message(msg)
        if kind == "request" and msg_id is not None:
            requests.append((msg_id, method))
        elif kind == "notification":
            notifications.append(method)
        else:
            responses += 1
    return Envelope(
        requests=tuple(requests),
        notifications=tuple(notifications),
        responses=responses,
        batch=batch,
    )


def request_id_of(body: bytes | bytearray) -> RequestId | None:
    """Best effort: the id of a single request in `body` (for error replies), else None."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if isinstance(data, dict) and _is_id(data.get("id")):
        value: RequestId = data["id"]
        return value
    return None


def error_object(
    code: McpCode,
    message: str,
    *,
    request_id: RequestId | None = None,
    rpc_code: int = SERVER_ERROR,
) -> dict[str, Any]:
    """A JSON-RPC error response carrying a broker code in `error.data.mcp`."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": rpc_code, "message": message, "data": {"mcp": code}},
    }


def error_body(
    code: McpCode,
    message: str,
    *,
    request_id: RequestId | None = None,
    rpc_code: int = SERVER_ERROR,
) -> bytes:
    """`error_object` encoded as the bytes of a JSON response body."""
    obj = error_object(code, message, request_id=request_id, rpc_code=rpc_code)
    return json.dumps(obj, separators=(",", ":")).encode()


def sse_error_events(
    code: McpCode, message: str, request_ids: tuple[RequestId, ...] | list[RequestId]
) -> bytes:
    """SSE `message` events answering each request id with a broker error.

    Used when a call fails after its SSE answer has started: the client's pending
    requests still get a clean JSON-RPC error instead of a stream that just stops.
    """
    out = bytearray()
    for request_id in request_ids:
        data = json.dumps(error_object(code, message, request_id=request_id), separators=(",", ":"))
        out += b"event: message\ndata: " + data.encode() + b"\n\n"
    return bytes(out)


DISCARDED_EVENT = "infero-discarded"
"""Event type given to a partial SSE event cut off by a failure (clients ignore it)."""


def close_partial_event(tail: bytes) -> bytes:
    """What ends an SSE stream cut after `tail` (its last bytes) before error events follow.

    A partial `message` event would be dispatched with broken JSON by the next blank line
    (SDKs report a parse error). Ending its line and renaming it makes clients skip it, so
    the error events after it are what they see.
    """
    if not tail or tail.endswith((b"\n\n", b"\r\r", b"\r\n\r\n")):
        return b""
    lead = b"" if tail.endswith((b"\n", b"\r")) else b"\n"
    return lead + b"event: " + DISCARDED_EVENT.encode() + b"\n\n"
