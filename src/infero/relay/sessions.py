"""Provider connections behind the facade: one per client session, or the shared 2026-07-28 one.

A `Session` owns one connection opened with the SDK's client transport and routes what the
provider sends to the POST (`Call`) or GET stream it belongs to: answers by request id,
progress by token, 2026-07-28 subscription events by subscription id. On the shared
2026-07-28 connection requests are renumbered (`begin_renumbered`) and mapped back, so clients
never see each other's ids. A line that is not JSON-RPC, or an answer to an id not in flight,
fails the requests in flight at once (`MCP_UPSTREAM_ERROR`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage
from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from pydantic import ValidationError

logger = logging.getLogger(__name__)

SUBSCRIPTION_META_KEY = "io.modelcontextprotocol/subscriptionId"
BACKLOG = 256
"""Server messages kept for a GET stream that is not open yet (oldest dropped first)."""
FORGOTTEN = 256
"""Ids of abandoned requests remembered, so their late answers are dropped quietly."""

Opener = Callable[[], AbstractAsyncContextManager[TransportStreams]]
"""Opens one provider connection (a child process, an SSE connection)."""

RequestId = int | str


def dump(message: JSONRPCMessage) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode()


def error_body(request_id: RequestId | None, code: int, message: str, mcp: str = "") -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if mcp:
        error["data"] = {"mcp": mcp}
    body = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return json.dumps(body, separators=(",", ":")).encode()


def _blank_line(exc: Exception) -> bool:
    """Whether a parse failure is about an empty or blank line (harmless, not a message)."""
    if not isinstance(exc, ValidationError):
        return False
    inputs = [e.get("input") for e in exc.errors()]
    return bool(inputs) and all(isinstance(i, str) and not i.strip() for i in inputs)


@dataclass(eq=False)
class Call:
    """One POST waiting for the answers to its requests."""

    outstanding: set[RequestId]
    queue: asyncio.Queue[tuple[bytes, bool]] = field(default_factory=asyncio.Queue)
    """(JSON message, last) pairs to write to this POST's answer."""
    ids: dict[RequestId, RequestId] = field(default_factory=dict)
    """Provider-side request id -> the client's (2026-07-28 calls on the shared connection)."""
    tokens: dict[RequestId, RequestId] = field(default_factory=dict)
    """Provider-side progress token -> the client's."""

    def deliver(self, data: bytes, answers: RequestId | None = None) -> None:
        if answers is not None:
            self.outstanding.discard(answers)
        self.queue.put_nowait((data, not self.outstanding))

    def cancel(self, request_id: RequestId) -> None:
        if request_id in self.outstanding:
            self.outstanding.discard(request_id)
            if not self.outstanding:
                self.queue.put_nowait((b"", True))

    def fail(self, message: str, mcp: str = "MCP_UPSTREAM_ERROR") -> list[RequestId]:
        """Answer every outstanding request with an error; returns their (provider) ids."""
        failed = sorted(self.outstanding, key=str)
        for request_id in failed:
            client_id = self.ids.get(request_id, request_id)
            self.deliver(error_body(client_id, -32000, message, mcp), request_id)
        return failed

    def outward(self, message: JSONRPCMessage) -> bytes:
        """The provider's message as the client must see it (its own ids and tokens)."""
        if not self.ids:
            return dump(message)
        if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id is not None:
            message = message.model_copy(update={"id": self.ids.get(message.id, message.id)})
        elif isinstance(message, JSONRPCNotification) and message.params:
            params = dict(message.params)
            token = params.get("progressToken")
            if isinstance(token, int | str) and token in self.tokens:
                params["progressToken"] = self.tokens[token]
            meta = params.get("_meta")
            subscription = meta.get(SUBSCRIPTION_META_KEY) if isinstance(meta, dict) else None
            if isinstance(meta, dict) and subscription in self.ids:
                params["_meta"] = {**meta, SUBSCRIPTION_META_KEY: self.ids[subscription]}
            message = message.model_copy(update={"params": params})
        return dump(message)


class Session:
    """One provider connection: a client session's own, or the shared 2026-07-28 one."""

    def __init__(
        self,
        session_id: str,
        on_closed: Callable[[Session], None],
        *,
        label: str = "",
        shared: bool = False,
    ) -> None:
        self.id = session_id
        self.shared = shared
        """The 2026-07-28 connection: requests are renumbered, nothing goes to a GET stream."""
        self._on_closed = on_closed
        self._label = label
        self.write: Any = None
        self.task: asyncio.Task[None] | None = None
        self.by_id: dict[RequestId, Call] = {}
        self.by_token: dict[RequestId, Call] = {}
        self.calls: list[Call] = []
        self.listener: asyncio.Queue[bytes | None] | None = None
        self.backlog: deque[bytes] = deque(maxlen=BACKLOG)
        self.closed = asyncio.Event()
        self.closing = False
        """The facade is closing this session (not the provider going away)."""
        self.last_used = 0.0
        """Monotonic time of the last request on this session."""
        self._forgotten: deque[RequestId] = deque(maxlen=FORGOTTEN)
        self._numbers = itertools.count(1)
        self._chores: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """A request is in flight on this session (a GET stream alone is idle)."""
        return bool(self.calls)

    @property
    def name(self) -> str:
        return f"{self._label} {'2026-07-28 connection' if self.shared else 'session'} {self.id}"

    async def run(self, opener: Opener, ready: asyncio.Future[None]) -> None:
        """Own the provider connection for the session's lifetime (a task supervisor)."""
        try:
            async with opener() as (read, write):
                self.write = write
                ready.set_result(None)
                async for item in read:
                    if isinstance(item, Exception):
                        self.unreadable(item)
                    else:
                        self.route(item.message)
            if not self.closing:
                logger.warning("%s: the provider ended the connection", self.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # outermost supervisor of this session's connection
            if not ready.done():
                ready.set_exception(exc)
            elif not self.closing:
                logger.warning("%s: the provider connection failed: %r", self.name, exc)
        finally:
            self.close_streams("the MCP provider connection closed")
            self._on_closed(self)

    def unreadable(self, exc: Exception) -> None:
        """The transport handed us an error instead of a message."""
        if _blank_line(exc):
            return
        if not isinstance(exc, ValueError):
            logger.warning("%s: the provider connection failed: %r", self.name, exc)
            return
        failed = self.fail_pending("the MCP provider sent a message that is not JSON-RPC")
        logger.warning(
            "%s: the provider sent a message that is not JSON-RPC; %d pending request(s) failed",
            self.name,
            failed,
        )

    def fail_pending(self, reason: str) -> int:
        """Fail every request in flight on this connection; how many."""
        count = 0
        for call in self.calls:
            for rid in call.fail(reason):
                self.by_id.pop(rid, None)
                self._forgotten.append(rid)
                count += 1
        return count

    def close_streams(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for call in self.calls:
            call.fail(reason)
        if self.listener is not None:
            self.listener.put_nowait(None)

    def route(self, message: JSONRPCMessage) -> None:
        """Send one provider message to the POST or GET stream it belongs to."""
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            call = self.by_id.pop(message.id, None) if message.id is not None else None
            if call is None:
                self._stray(message)
            else:
                call.deliver(call.outward(message), message.id)
            return
        if isinstance(message, JSONRPCNotification):
            owner = self._owner(message)
            if owner is not None:
                owner.deliver(owner.outward(message))
                return
        if self.shared:
            # Nothing is sent outside a request at 2026-07-28; an untagged notification can
            # only be attributed when a single request is in flight.
            if isinstance(message, JSONRPCNotification) and len(self.calls) == 1:
                self.calls[0].deliver(dump(message))
            return
        data = dump(message)
        if self.calls:
            self.calls[-1].deliver(data)
        else:
            self.unsolicited(data)

    def _owner(self, message: JSONRPCNotification) -> Call | None:
        """The call a notification is tagged for (progress token, subscription id)."""
        params = message.params or {}
        if message.method == "notifications/progress":
            token = params.get("progressToken")
            if isinstance(token, int | str):
                return self.by_token.get(token)
        meta = params.get("_meta")
        if self.shared and isinstance(meta, dict):
            subscription = meta.get(SUBSCRIPTION_META_KEY)
            if isinstance(subscription, int | str):
                return self.by_id.get(subscription)
        return None

    def _stray(self, message: JSONRPCResponse | JSONRPCError) -> None:
        """An answer to no request in flight: late (dropped) or a broken provider."""
        if message.id is not None and message.id in self._forgotten:
            return
        failed = self.fail_pending(
            f"the MCP provider answered an unknown request id {message.id!r}"
        )
        logger.warning(
            "%s: the provider answered an unknown request id %r; %d pending request(s) failed",
            self.name,
            message.id,
            failed,
        )

    def unsolicited(self, data: bytes) -> None:
        """A message no open call takes: the GET stream, or the backlog until one opens."""
        if self.listener is not None:
            self.listener.put_nowait(data)
        else:
            self.backlog.append(data)

    async def send(self, message: JSONRPCMessage) -> None:
        await self.write.send(SessionMessage(message))

    def begin(self, requests: list[JSONRPCRequest]) -> Call:
        call = Call(outstanding={r.id for r in requests})
        for request in requests:
            self.by_id[request.id] = call
            meta = (request.params or {}).get("_meta")
            token = meta.get("progressToken") if isinstance(meta, dict) else None
            if isinstance(token, int | str):
                self.by_token[token] = call
        self.calls.append(call)
        return call

    def begin_renumbered(self, request: JSONRPCRequest) -> tuple[Call, JSONRPCRequest]:
        """A 2026-07-28 request under an id (and progress token) of this connection."""
        number = next(self._numbers)
        params = dict(request.params or {})
        meta = params.get("_meta")
        tokens: dict[RequestId, RequestId] = {}
        if isinstance(meta, dict) and isinstance(meta.get("progressToken"), int | str):
            tokens[number] = meta["progressToken"]
            params["_meta"] = {**meta, "progressToken": number}
        renumbered = JSONRPCRequest(
            jsonrpc="2.0", id=number, method=request.method, params=params or None
        )
        call = self.begin([renumbered])
        call.ids[number] = request.id
        call.tokens.update(tokens)
        return call, renumbered

    def end(self, call: Call) -> None:
        """Forget a finished call; tell the provider about requests left unanswered."""
        self.calls.remove(call)
        for key, owner in list(self.by_token.items()):
            if owner is call:
                del self.by_token[key]
        abandoned = [rid for rid, owner in self.by_id.items() if owner is call]
        for rid in abandoned:
            del self.by_id[rid]
            self._forgotten.append(rid)
        if abandoned and not self.closed.is_set():
            task = asyncio.create_task(self._cancel(abandoned))
            self._chores.add(task)
            task.add_done_callback(self._chores.discard)

    def cancelled(self, request_id: RequestId) -> None:
        call = self.by_id.pop(request_id, None)
        if call is not None:
            self._forgotten.append(request_id)
            call.cancel(request_id)

    async def _cancel(self, request_ids: list[RequestId]) -> None:
        for rid in request_ids:
            note = JSONRPCNotification(
                jsonrpc="2.0",
                method="notifications/cancelled",
                params={"requestId": rid, "reason": "client disconnected"},
            )
            with contextlib.suppress(Exception):  # the connection may be going away
                await self.send(note)
