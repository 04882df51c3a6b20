"""A loopback Streamable HTTP front for stdio and legacy HTTP+SSE MCP providers.

The relay forwards every MCP exchange as plain HTTP to a Streamable HTTP endpoint. For
providers that do not speak it, this facade serves one on 127.0.0.1 and bridges each
client session to its OWN provider connection, opened with the official `mcp` SDK client
transports (`stdio_client` starts one child process per session, `sse_client` opens one
SSE connection per session). Sessions are therefore isolated by construction: ids, state
and subscriptions of one client never reach another.

Per session:
- `initialize` without `Mcp-Session-Id` opens the provider connection and issues the id;
  later messages must carry it (unknown id -> 404, so the client re-initializes).
- A POST with requests is answered with an SSE stream carrying its responses, progress
  notifications for its progress tokens, and any server-initiated request or notification
  (sampling, elicitation, logging) while it is the newest open call; otherwise those go
  to the GET stream (or wait in a bounded backlog for it).
- `notifications/cancelled` ends the waiting for that request; a client that disconnects
  makes the facade send `notifications/cancelled` for its unanswered requests.
- DELETE closes the provider connection; a provider that exits ends the session, and the
  next `initialize` starts a fresh one (that is how a dead stdio child is restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage
from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

logger = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"
PATH = "/mcp"
BACKLOG = 256
"""Server messages kept for a GET stream that is not open yet (oldest dropped first)."""

Opener = Callable[[], AbstractAsyncContextManager[TransportStreams]]
"""Opens one provider connection (a child process, an SSE connection)."""

RequestId = int | str


def _dump(message: JSONRPCMessage) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode()


def _event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


def _sse_response(session: _Session) -> web.StreamResponse:
    """An SSE answer carrying the session's `Mcp-Session-Id`."""
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            SESSION_HEADER: session.id,
        }
    )


def _error(request_id: RequestId | None, code: int, message: str) -> bytes:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return json.dumps(body, separators=(",", ":")).encode()


def _json_error(status: int, request_id: RequestId | None, code: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=_error(request_id, code, message), content_type="application/json"
    )


@dataclass(eq=False)
class _Call:
    """One POST waiting for the answers to its requests."""

    outstanding: set[RequestId]
    queue: asyncio.Queue[tuple[bytes, bool]] = field(default_factory=asyncio.Queue)
    """(JSON message, last) pairs to write to this POST's answer."""

    def deliver(self, data: bytes, answers: RequestId | None = None) -> None:
        if answers is not None:
            self.outstanding.discard(answers)
        self.queue.put_nowait((data, not self.outstanding))

    def cancel(self, request_id: RequestId) -> None:
        if request_id in self.outstanding:
            self.outstanding.discard(request_id)
            if not self.outstanding:
                self.queue.put_nowait((b"", True))

    def fail(self, message: str) -> None:
        for request_id in sorted(self.outstanding, key=str):
            self.deliver(_error(request_id, -32000, message), request_id)


class _Session:
    """One client session bridged to its own provider connection."""

    def __init__(self, session_id: str, on_closed: Callable[[_Session], None]) -> None:
        self.id = session_id
        self._on_closed = on_closed
        self.write: Any = None
        self.task: asyncio.Task[None] | None = None
        self.by_id: dict[RequestId, _Call] = {}
        self.by_token: dict[RequestId, _Call] = {}
        self.calls: list[_Call] = []
        self.listener: asyncio.Queue[bytes | None] | None = None
        self.backlog: deque[bytes] = deque(maxlen=BACKLOG)
        self.closed = asyncio.Event()
        self.last_used = 0.0
        """Monotonic time of the last request on this session."""
        self._chores: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """A call or a listening stream is open on this session."""
        return bool(self.calls) or self.listener is not None

    async def run(self, opener: Opener, ready: asyncio.Future[None]) -> None:
        """Own the provider connection for the session's lifetime (a task supervisor)."""
        try:
            async with opener() as (read, write):
                self.write = write
                ready.set_result(None)
                async for item in read:
                    if isinstance(item, Exception):
                        logger.warning("session %s: provider sent an unreadable message", self.id)
                        continue
                    self.route(item.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # outermost supervisor of this session's connection
            if not ready.done():
                ready.set_exception(exc)
            else:
                logger.exception("session %s: provider connection failed", self.id)
        finally:
            self.close_streams("the MCP provider connection closed")
            self._on_closed(self)

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
        data = _dump(message)
        if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id in self.by_id:
            self.by_id.pop(message.id).deliver(data, message.id)
            return
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
            token = (message.params or {}).get("progressToken")
            call = self.by_token.get(token) if isinstance(token, int | str) else None
            if call is not None:
                call.deliver(data)
                return
        if self.calls:
            self.calls[-1].deliver(data)
        else:
            self.unsolicited(data)

    def unsolicited(self, data: bytes) -> None:
        """A message no open call takes: the GET stream, or the backlog until one opens."""
        if self.listener is not None:
            self.listener.put_nowait(data)
        else:
            self.backlog.append(data)

    async def send(self, message: JSONRPCMessage) -> None:
        await self.write.send(SessionMessage(message))

    def begin(self, requests: list[JSONRPCRequest]) -> _Call:
        call = _Call(outstanding={r.id for r in requests})
        for request in requests:
            self.by_id[request.id] = call
            meta = (request.params or {}).get("_meta")
            token = meta.get("progressToken") if isinstance(meta, dict) else None
            if isinstance(token, int | str):
                self.by_token[token] = call
        self.calls.append(call)
        return call

    def end(self, call: _Call) -> None:
        """Forget a finished call; tell the provider about requests left unanswered."""
        self.calls.remove(call)
        for key, owner in list(self.by_token.items()):
            if owner is call:
                del self.by_token[key]
        abandoned = [rid for rid, owner in self.by_id.items() if owner is call]
        for rid in abandoned:
            del self.by_id[rid]
        if abandoned and not self.closed.is_set():
            task = asyncio.create_task(self._cancel(abandoned))
            self._chores.add(task)
            task.add_done_callback(self._chores.discard)

    def cancelled(self, request_id: RequestId) -> None:
        call = self.by_id.pop(request_id, None)
        if call is not None:
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


class Facade:
    """The loopback Streamable HTTP endpoint; `url` is valid after `start()`."""

    def __init__(
        self,
        opener: Opener,
        *,
        max_sessions: int = 32,
        idle_timeout: float = 1800.0,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._max_sessions = max_sessions
        self._idle_timeout = idle_timeout
        self._label = label
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.url = ""

    @property
    def session_count(self) -> int:
        """Open client sessions (each one holds a provider connection)."""
        return len(self._sessions)

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); return the endpoint URL."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, self._post)
        app.router.add_get(PATH, self._get)
        app.router.add_delete(PATH, self._delete)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self._reaper = asyncio.create_task(self._reap_forever(), name="facade-reaper")
        return self.url

    async def close(self) -> None:
        """Close every session (their provider connections) and stop listening."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for session in list(self._sessions.values()):
            await self._close_session(session)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- sessions ------------------------------------------------------------------------

    async def _open_session(self) -> _Session:
        session = _Session(secrets.token_hex(16), self._forget)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.task = asyncio.create_task(session.run(self._opener, ready))
        session.last_used = self._clock()
        self._sessions[session.id] = session
        try:
            await ready
        except BaseException:
            self._sessions.pop(session.id, None)
            await self._stop(session)
            raise
        logger.info("%s session %s opened", self._label, session.id)
        return session

    async def reap(self) -> int:
        """Close sessions idle (no call, no GET stream) for `idle_timeout`; how many closed.

        Clients such as hosted LLMs often never DELETE their sessions; without this their
        provider processes would pile up until MCP_MAX_SESSIONS.
        """
        now = self._clock()
        idle = [
            s
            for s in self._sessions.values()
            if not s.busy and now - s.last_used >= self._idle_timeout
        ]
        for session in idle:
            if session.busy:
                continue
            logger.info("%s session %s idle, closing it", self._label, session.id)
            await self._close_session(session)
        return len(idle)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._idle_timeout, 60.0))
            await self.reap()

    async def _make_room(self) -> bool:
        """At MCP_MAX_SESSIONS, close the least recently used idle session; False if none."""
        if len(self._sessions) < self._max_sessions:
            return True
        idle = [s for s in self._sessions.values() if not s.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.last_used)
        logger.info("%s session limit reached, closing idle session %s", self._label, oldest.id)
        await self._close_session(oldest)
        return True

    def _forget(self, session: _Session) -> None:
        if self._sessions.pop(session.id, None) is not None:
            logger.info("%s session %s ended", self._label, session.id)

    async def _stop(self, session: _Session) -> None:
        task = session.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_session(self, session: _Session) -> None:
        session.close_streams("the MCP session was closed")
        await self._stop(session)
        self._forget(session)

    def _lookup(self, request: web.Request) -> _Session | web.Response:
        sid = request.headers.get(SESSION_HEADER)
        if not sid:
            return _json_error(400, None, -32600, f"Bad Request: {SESSION_HEADER} header required")
        session = self._sessions.get(sid)
        if session is None:
            return _json_error(404, None, -32001, "Session not found")
        session.last_used = self._clock()
        return session

    # ---- handlers ------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            raw = json.loads(body)
            items = raw if isinstance(raw, list) else [raw]
            messages = [jsonrpc_message_adapter.validate_python(m, by_name=False) for m in items]
        except (UnicodeDecodeError, json.JSONDecodeError, ValidationError):
            return _json_error(400, None, -32700, "Parse error: not a JSON-RPC message")
        if not messages:
            return _json_error(400, None, -32600, "Invalid Request: empty batch")
        requests = [m for m in messages if isinstance(m, JSONRPCRequest)]
        if SESSION_HEADER in request.headers:
            found = self._lookup(request)
            if isinstance(found, web.Response):
                return found
            session = found
        elif len(requests) == 1 and requests[0].method == "initialize":
            if not await self._make_room():
                return _json_error(
                    503, requests[0].id, -32000, "too many MCP sessions open on this relay"
                )
            try:
                session = await self._open_session()
            except Exception as exc:  # any failure to start the provider is reported to the client
                logger.warning("%s provider could not be started: %s", self._label, exc)
                return _json_error(
                    502, requests[0].id, -32000, f"the MCP provider could not be started: {exc}"
                )
        else:
            return _json_error(
                400, None, -32600, f"Bad Request: {SESSION_HEADER} required (initialize first)"
            )
        if not requests:
            for message in messages:
                await session.send(message)
                self._note_cancel(session, message)
            return web.Response(status=202, headers={SESSION_HEADER: session.id})
        call = session.begin(requests)
        try:
            for message in messages:
                await session.send(message)
                self._note_cancel(session, message)
            if "text/event-stream" in request.headers.get("Accept", ""):
                return await self._stream(request, session, call)
            return await self._collect(session, call, batch=isinstance(raw, list))
        finally:
            session.end(call)
            session.last_used = self._clock()

    @staticmethod
    def _note_cancel(session: _Session, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            rid = (message.params or {}).get("requestId")
            if isinstance(rid, int | str):
                session.cancelled(rid)

    async def _stream(
        self, request: web.Request, session: _Session, call: _Call
    ) -> web.StreamResponse:
        response = _sse_response(session)
        await response.prepare(request)
        while True:
            data, last = await call.queue.get()
            if data:
                await response.write(_event(data))
            if last:
                break
        await response.write_eof()
        return response

    async def _collect(self, session: _Session, call: _Call, *, batch: bool) -> web.Response:
        replies: list[Any] = []
        while True:
            data, last = await call.queue.get()
            if data:
                message = json.loads(data)
                if "method" in message:
                    session.unsolicited(data)  # a JSON answer cannot carry it
                else:
                    replies.append(message)
            if last:
                break
        payload: Any = replies if batch else (replies[0] if replies else None)
        if payload is None:
            return web.Response(status=202, headers={SESSION_HEADER: session.id})
        return web.json_response(payload, headers={SESSION_HEADER: session.id})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        session = found
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return _json_error(406, None, -32600, "Not Acceptable: text/event-stream required")
        if session.listener is not None:
            return _json_error(409, None, -32600, "Conflict: a GET stream is already open")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        while session.backlog:
            queue.put_nowait(session.backlog.popleft())
        session.listener = queue
        try:
            response = _sse_response(session)
            await response.prepare(request)
            while (data := await queue.get()) is not None:
                await response.write(_event(data))
            await response.write_eof()
            return response
        finally:
            if session.listener is queue:
                session.listener = None
            session.last_used = self._clock()

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        await self._close_session(found)
        return web.Response(status=200)
