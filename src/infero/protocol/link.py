"""The connector link (server <-> `infero llm`), protocol version 1. See docs/protocol.md.

Text frames carry one JSON object with a `type` tag (the models below). Body bytes travel
in binary frames: 1 byte kind, 4 bytes stream id (big-endian), then the payload. On the peer
link a small request may travel whole in one binary frame (`REQUEST_WITH_BODY`), and so may
a small answer (`RESPONSE_WHOLE`).
"""

from __future__ import annotations

import struct
from json.encoder import encode_basestring
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; the server refuses versions it does not speak."""

SUPPORTED_VERSIONS = frozenset({1})

BODY_CHUNK = 256 * 1024
"""Largest payload the sender puts in one binary frame."""

MAX_FRAME = 4 * 1024 * 1024
"""Largest frame either side accepts (text or binary); senders stay far below it."""

DEFAULT_WINDOW = 1024 * 1024
"""Initial per-stream flow-control window for response bodies, in bytes."""

Status = Literal["ready", "not_ready", "draining"]
"""What a connector says about itself: able to serve, backend down, or draining."""

Headers = list[tuple[str, str]]

RefusedReason = Literal["unauthorized", "protocol", "invalid", "draining", "duplicate"]
"""Why the server refused a hello."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Hello(_Frame):
    """Connector -> server, first frame: who I am and what I serve."""

    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    """Link protocol version the connector speaks."""
    kind: Literal["llm", "mcp"] = "llm"
    """`llm` connectors serve models; `mcp` relays serve one MCP server by id."""
    client_key: str = ""
    """The shared `CLIENT_KEY`; compared in constant time."""
    id: str = Field(default="", max_length=128)
    """Stable connector id (`CLIENT_ID`); empty `mcp` relay ids are assigned by the server."""
    name: str = Field(default="", max_length=128)
    """Display name (`CLIENT_NAME`)."""
    instance: str = Field(default="", max_length=64)
    """Random nonce of this connector process, the same on every reconnect: the server lets
    a link of the same instance replace its stale predecessor at once, and refuses another
    instance while the holder of the id is live (`duplicate`). Empty: an unknown instance."""
    version: str = Field(default="", max_length=64)
    build_sha: str = Field(default="", max_length=64)
    build_date: str = Field(default="", max_length=64)
    backend: str = Field(default="", max_length=32)
    """Backend kind: `openai`, `ollama` or `demo`."""
    models: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=4096
    )
    max_concurrency: int = Field(default=0, ge=0, le=100_000)
    status: Status = "ready"
    last_error: str = Field(default="", max_length=2048)
    auth_sha256: str = Field(default="", max_length=64)
    """`mcp` relays: hex SHA-256 of the relay's `AUTH_TOKEN` (empty: none). MCP clients that
    present that token may call this relay; the token itself never crosses the link."""


class Welcome(_Frame):
    """Server -> connector: accepted; the link's timing and window parameters."""

    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    id: str
    server_version: str = ""
    heartbeat_interval: float = 5.0
    """Seconds of silence after which each side sends a ping."""
    dead_after: float = 15.0
    """Seconds of silence after which each side closes the link."""
    window: int = DEFAULT_WINDOW
    """Initial flow-control window per response stream, in bytes."""


class Refused(_Frame):
    """Server -> connector: registration refused; the link closes right after."""

    type: Literal["refused"] = "refused"
    reason: RefusedReason
    message: str


class StatusUpdate(_Frame):
    """Connector -> server: capacity, models or state changed (sent at once)."""

    type: Literal["status"] = "status"
    models: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=4096
    )
    """New model list; `None` keeps the previous one."""
    max_concurrency: int = Field(ge=0, le=100_000)
    status: Status = "ready"
    last_error: str = Field(default="", max_length=2048)
    shutting_down: bool = False
    """The connector was told to shut down: it drains, then exits, and refuses `undrain`."""


class Ping(_Frame):
    """Either side: are you there? Any frame counts as proof of life."""

    type: Literal["ping"] = "ping"
    ts: float = 0.0


class Pong(_Frame):
    """Answer to a ping, echoing its timestamp."""

    type: Literal["pong"] = "pong"
    ts: float = 0.0


class Request(_Frame):
    """Server -> connector: perform one HTTP exchange against the backend.

    The body (`body_len` bytes) follows in REQUEST_BODY binary frames for this `id`.
    """

    type: Literal["request"] = "request"
    id: int = Field(ge=1, le=0xFFFFFFFF)
    """Stream id, unique on this link while the exchange lives."""
    request_id: str = ""
    """The client's `X-Request-Id`, for logs on both sides."""
    method: str = "POST"
    path: str
    """Path relative to the backend's OpenAI base, with query (`/chat/completions`)."""
    headers: Headers = Field(default_factory=list)
    body_len: int = Field(default=0, ge=0)
    stream: bool = False
    """The client asked for a streamed answer."""
    model: str = ""
    """The model the server routed on (for the connector's counters)."""


class Cancel(_Frame):
    """Server -> connector: the client went away or timed out; abort the backend call."""

    type: Literal["cancel"] = "cancel"
    id: int


class Credit(_Frame):
    """Server -> connector: `bytes` more of response body may be sent on stream `id`."""

    type: Literal["credit"] = "credit"
    id: int
    bytes: int = Field(gt=0)


class Head(_Frame):
    """Connector -> server: the backend's status line and headers."""

    type: Literal["head"] = "head"
    id: int
    status: int = Field(ge=100, le=599)
    headers: Headers = Field(default_factory=list)


class Usage(_Frame):
    """Token counts the connector found in the backend's answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class LinkError(_Frame):
    """Why an exchange failed on the connector side."""

    code: Literal[
        "backend_unreachable",
        "backend_error",
        "cancelled",
        "draining",
        "timeout",
        "invalid",
        "busy",
    ]
    """`busy`: the connector already runs `max_concurrency` requests (try another one)."""
    message: str = ""


class End(_Frame):
    """Connector -> server: the exchange is over (with an error if it failed)."""

    type: Literal["end"] = "end"
    id: int
    error: LinkError | None = None
    usage: Usage | None = None


class Control(_Frame):
    """Server -> connector: an operator asked to drain, undrain or shut down this connector."""

    type: Literal["control"] = "control"
    action: Literal["drain", "undrain", "shutdown"]
    by: str = ""
    """Name of the operator credential that asked (for the connector's log)."""


ServerFrame = Annotated[
    Welcome | Refused | Ping | Pong | Request | Cancel | Credit | Control,
    Field(discriminator="type"),
]
ConnectorFrame = Annotated[
    Hello | StatusUpdate | Ping | Pong | Head | End,
    Field(discriminator="type"),
]

SERVER_FRAMES: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
"""Decodes what the server sends (used by connectors)."""
CONNECTOR_FRAMES: TypeAdapter[ConnectorFrame] = TypeAdapter(ConnectorFrame)
"""Decodes what connectors send (used by the server)."""


def encode(frame: _Frame) -> str:
    """One text frame."""
    return frame.model_dump_json(exclude_none=True)


# ---- binary body frames -----------------------------------------------------------------

REQUEST_BODY = 1
"""Server -> connector: request body bytes."""
RESPONSE_BODY = 2
"""Connector -> server: response body bytes."""
REQUEST_WITH_BODY = 3
"""Peer link only, asking instance -> home: a `request` frame and its whole body in one
frame (payload: 4-byte big-endian length of the frame's JSON, the JSON, then the body)."""
RESPONSE_WHOLE = 4
"""Peer link only, home -> asking instance, when the asking instance announced it: a `head`
frame and the whole answer's body in one frame, laid out as `REQUEST_WITH_BODY`; the stream
ends with it (as with an `end` frame without error)."""

_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size


def pack_body(kind: int, stream_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Binary frame: kind, stream id, payload."""
    return _HEADER.pack(kind, stream_id) + bytes(payload)


class BadFrame(ValueError):
    """A binary frame that cannot be decoded."""


def unpack_body(frame: bytes) -> tuple[int, int, memoryview]:
    """(kind, stream id, payload) of a binary frame; raise `BadFrame` when malformed."""
    if len(frame) < HEADER_SIZE:
        raise BadFrame("binary frame shorter than its header")
    kind, stream_id = _HEADER.unpack_from(frame)
    if kind not in (REQUEST_BODY, RESPONSE_BODY, REQUEST_WITH_BODY, RESPONSE_WHOLE):
        raise BadFrame(f"unknown binary frame kind {kind}")
    return kind, stream_id, memoryview(frame)[HEADER_SIZE:]


_LENGTH = struct.Struct(">I")
_WHOLE_HEADER = struct.Struct(">BII")
"""A whole frame's kind, stream id and JSON length."""


def _pack_whole(
    kind: int, frame: _Frame, stream_id: int, body: bytes | bytearray | memoryview
) -> bytes:
    head = encode(frame).encode()
    return b"".join((_HEADER.pack(kind, stream_id), _LENGTH.pack(len(head)), head, body))


def _split_whole(payload: memoryview, what: str) -> tuple[bytes, memoryview]:
    """(JSON, body) of a whole frame's payload; raise `BadFrame` when malformed."""
    if len(payload) < _LENGTH.size:
        raise BadFrame(f"{what} frame shorter than its length")
    (size,) = _LENGTH.unpack_from(payload)
    end = _LENGTH.size + size
    if len(payload) < end:
        raise BadFrame(f"{what} frame shorter than its JSON")
    return bytes(payload[_LENGTH.size : end]), payload[end:]


def pack_request(frame: Request, body: bytes | bytearray) -> bytes:
    """A `REQUEST_WITH_BODY` frame: the request and its whole body (`frame.body_len` bytes)."""
    return _pack_whole(REQUEST_WITH_BODY, frame, frame.id, body)


def pack_new_request(
    stream_id: int,
    *,
    request_id: str,
    method: str,
    path: str,
    headers: Headers,
    body: bytes | bytearray,
    stream: bool,
    model: str,
) -> bytes:
    """`pack_request(Request(...), body)` for `body_len=len(body)`, the same bytes, without
    building and validating the model (the asking instance's hot path; the home validates).

    The JSON is laid out as pydantic writes it; for ASCII text (the usual case) the standard
    library's escaping is pydantic's byte for byte. Any other text takes pydantic's way.
    """
    q = encode_basestring
    text = (
        f'{{"type":"request","id":{stream_id:d},"request_id":{q(request_id)},'
        f'"method":{q(method)},"path":{q(path)},"headers":['
        + ",".join([f"[{q(key)},{q(value)}]" for key, value in headers])
        + f'],"body_len":{len(body):d},"stream":{"true" if stream else "false"},'
        f'"model":{q(model)}}}'
    )
    if not text.isascii() or not 1 <= stream_id <= 0xFFFFFFFF:
        frame = Request(
            id=stream_id,
            request_id=request_id,
            method=method,
            path=path,
            headers=headers,
            body_len=len(body),
            stream=stream,
            model=model,
        )
        return pack_request(frame, body)
    head = text.encode()
    return b"".join((_WHOLE_HEADER.pack(REQUEST_WITH_BODY, stream_id, len(head)), head, body))


def unpack_request(payload: memoryview) -> tuple[Request, memoryview]:
    """The request and body of a `REQUEST_WITH_BODY` frame's payload; raise `BadFrame` when
    malformed (the body's length is the caller's to check against `body_len`)."""
    text, body = _split_whole(payload, "request")
    try:
        return Request.model_validate_json(text), body
    except ValueError as exc:
        raise BadFrame(f"bad request frame: {exc}") from None


def pack_answer(head: Head, body: bytes | bytearray | memoryview) -> bytes:
    """A `RESPONSE_WHOLE` frame: the answer's head and its whole body."""
    return _pack_whole(RESPONSE_WHOLE, head, head.id, body)


def unpack_answer(payload: memoryview) -> tuple[Head, memoryview]:
    """The head and body of a `RESPONSE_WHOLE` frame's payload; raise `BadFrame` when
    malformed."""
    text, body = _split_whole(payload, "answer")
    try:
        return Head.model_validate_json(text), body
    except ValueError as exc:
        raise BadFrame(f"bad answer frame: {exc}") from None
