"""A loopback Streamable HTTP front for stdio and legacy HTTP+SSE MCP providers.

The relay forwards every MCP exchange as plain HTTP to a Streamable HTTP endpoint. For
providers that do not speak it, this facade serves one on 127.0.0.1 and bridges each
client session to its OWN provider connection, opened with the official `mcp` SDK client
transports (`stdio_client` starts one child process per session, `sse_client` opens one
SSE connection per session). Sessions are therefore isolated by construction: ids, state
and subscriptions of one client never reach another.

Handshake era (`initialize`), per session:
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
- A session is idle while no request is in flight (an open GET stream does not count).

2026-07-28 (stateless): a POST whose `MCP-Protocol-Version` is not a handshake version
(or an enveloped request without a session) is one self-contained request. All of them
share ONE provider connection, which the SDK's dual-era server loop serves in the modern
era; the facade gives each request its own id and progress token there and maps them
back, so concurrent clients never see each other's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS
from mcp_types import (
    PROTOCOL_VERSION_META_KEY,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    jsonrpc_message_adapter,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from infero.relay.sessions import Call, Opener, RequestId, Session, error_body

logger = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
PATH = "/mcp"
RETRY_AFTER = "5"


def _event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


def _sse_response(session_id: str | None) -> web.StreamResponse:
    """An SSE answer, carrying the session's `Mcp-Session-Id` when there is a session."""
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
    return web.StreamResponse(headers=headers)


def _json_error(
    status: int,
    request_id: RequestId | None,
    code: int,
    message: str,
    *,
    mcp: str = "",
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(request_id, code, message, mcp),
        content_type="application/json",
        headers=headers,
    )


def _enveloped(message: JSONRPCMessage) -> bool:
    """A request carrying the 2026-07-28 per-request `_meta` envelope."""
    if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
        return False
    meta = (message.params or {}).get("_meta")
    return isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta


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
        self._sessions: dict[str, Session] = {}
        self._shared: Session | None = None
        self._shared_lock = asyncio.Lock()
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
        """Close every session (their provider connections, all at once) and stop listening."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        open_now = list(self._sessions.values())
        if self._shared is not None:
            open_now.append(self._shared)
        await asyncio.gather(*(self._close_session(s, "the relay is stopping") for s in open_now))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- sessions ------------------------------------------------------------------------

    async def _start_session(self, session: Session) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.task = asyncio.create_task(session.run(self._opener, ready))
        session.last_used = self._clock()
        try:
            await ready
        except BaseException:
            await self._stop(session)
            raise

    async def _open_session(self) -> Session:
        session = Session(secrets.token_hex(16), self._forget, label=self._label)
        self._sessions[session.id] = session
        try:
            await self._start_session(session)
        except BaseException:
            self._sessions.pop(session.id, None)
            raise
        logger.info("%s opened", session.name)
        return session

    async def _shared_session(self) -> Session:
        """The one provider connection for 2026-07-28 requests (opened on first use)."""
        async with self._shared_lock:
            if self._shared is None:
                session = Session("shared", self._forget, label=self._label, shared=True)
                await self._start_session(session)
                self._shared = session
                logger.info("%s opened", session.name)
            return self._shared

    async def reap(self) -> int:
        """Close connections idle (no request in flight) for `idle_timeout`; how many closed.

        Clients such as hosted LLMs often never DELETE their sessions; without this their
        provider processes would pile up until MCP_MAX_SESSIONS.
        """
        now = self._clock()
        candidates = list(self._sessions.values())
        if self._shared is not None:
            candidates.append(self._shared)
        idle = [s for s in candidates if not s.busy and now - s.last_used >= self._idle_timeout]
        await asyncio.gather(*(self._close_session(s, "idle") for s in idle))
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
        await self._close_session(oldest, "MCP_MAX_SESSIONS reached, least recently used")
        return True

    def _forget(self, session: Session) -> None:
        if session is self._shared:
            self._shared = None
        self._sessions.pop(session.id, None)

    async def _stop(self, session: Session) -> None:
        task = session.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_session(self, session: Session, why: str) -> None:
        if session.closing:
            return
        session.closing = True
        logger.info("%s closed (%s)", session.name, why)
        session.close_streams("the MCP session was closed")
        await self._stop(session)
        self._forget(session)

    def _lookup(self, request: web.Request) -> Session | web.Response:
        sid = request.headers.get(SESSION_HEADER)
        if not sid:
            return _json_error(400, None, -32600, f"Bad Request: {SESSION_HEADER} header required")
        session = self._sessions.get(sid)
        if session is None:
            return _json_error(404, None, -32001, "Session not found")
        session.last_used = self._clock()
        return session

    @staticmethod
    def _modern_header(request: web.Request) -> bool:
        version = request.headers.get(VERSION_HEADER)
        return version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS

    # ---- handlers ------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            raw = json.loads(body)
            items = raw if isinstance(raw, list) else [raw]
            messages = [jsonrpc_message_adapter.validate_python(m, by_name=False) for m in items]
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValidationError):
            return _json_error(400, None, -32700, "Parse error: not a JSON-RPC message")
        if not messages:
            return _json_error(400, None, -32600, "Invalid Request: empty batch")
        requests = [m for m in messages if isinstance(m, JSONRPCRequest)]
        if SESSION_HEADER not in request.headers and (
            self._modern_header(request) or (len(messages) == 1 and _enveloped(messages[0]))
        ):
            return await self._modern(request, raw, messages)
        if SESSION_HEADER in request.headers:
            found = self._lookup(request)
            if isinstance(found, web.Response):
                return found
            session = found
        elif len(requests) == 1 and requests[0].method == "initialize":
            if not await self._make_room():
                return _json_error(
                    503,
                    requests[0].id,
                    -32000,
                    f"too many MCP sessions open on this relay (MCP_MAX_SESSIONS "
                    f"{self._max_sessions}, each with a request in flight)",
                    mcp="MCP_LIMIT_EXCEEDED",
                    headers={"Retry-After": RETRY_AFTER},
                )
            try:
                session = await self._open_session()
            except Exception as exc:  # any failure to start the provider is reported to the client
                logger.warning("%s provider could not be started: %s", self._label, exc)
                return _json_error(
                    502,
                    requests[0].id,
                    -32000,
                    f"the MCP provider could not be started: {exc}",
                    mcp="MCP_UPSTREAM_ERROR",
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
                return await self._stream(request, session.id, call)
            return await self._collect(session, call, batch=isinstance(raw, list))
        finally:
            session.end(call)
            session.last_used = self._clock()

    async def _modern(
        self, request: web.Request, raw: Any, messages: list[JSONRPCMessage]
    ) -> web.StreamResponse:
        """One 2026-07-28 request, on the shared provider connection."""
        if isinstance(raw, dict) and "id" not in raw:
            return web.Response(status=202)  # no client notifications at 2026-07-28 (as the SDK)
        message = messages[0]
        if isinstance(raw, list) or not isinstance(message, JSONRPCRequest):
            return _json_error(
                400, None, -32600, "Body must be a single JSON-RPC request or notification object"
            )
        try:
            shared = await self._shared_session()
        except Exception as exc:  # any failure to start the provider is reported to the client
            logger.warning("%s provider could not be started: %s", self._label, exc)
            return _json_error(
                502,
                message.id,
                -32000,
                f"the MCP provider could not be started: {exc}",
                mcp="MCP_UPSTREAM_ERROR",
            )
        call, renumbered = shared.begin_renumbered(message)
        try:
            await shared.send(renumbered)
            if "text/event-stream" in request.headers.get("Accept", ""):
                return await self._stream(request, None, call)
            reply: dict[str, Any] = {}
            while True:
                data, last = await call.queue.get()
                answer = json.loads(data) if data else {}
                if "method" not in answer:  # notifications cannot ride a JSON answer
                    reply = answer or reply
                if last:
                    break
            error = reply.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            status = ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200
            return web.json_response(reply, status=status)
        finally:
            shared.end(call)
            shared.last_used = self._clock()

    @staticmethod
    def _note_cancel(session: Session, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            rid = (message.params or {}).get("requestId")
            if isinstance(rid, int | str):
                session.cancelled(rid)

    async def _stream(
        self, request: web.Request, session_id: str | None, call: Call
    ) -> web.StreamResponse:
        response = _sse_response(session_id)
        await response.prepare(request)
        while True:
            data, last = await call.queue.get()
            if data:
                await response.write(_event(data))
            if last:
                break
        await response.write_eof()
        return response

    async def _collect(self, session: Session, call: Call, *, batch: bool) -> web.Response:
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
        if SESSION_HEADER not in request.headers and self._modern_header(request):
            return web.Response(status=405, headers={"Allow": "POST"})
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
            response = _sse_response(session.id)
            await response.prepare(request)
            while (data := await queue.get()) is not None:
                await response.write(_event(data))
            await response.write_eof()
            return response
        finally:
            if session.listener is queue:
                session.listener = None

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        if SESSION_HEADER not in request.headers and self._modern_header(request):
            return web.Response(status=405, headers={"Allow": "POST"})
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        await self._close_session(found, "DELETE from the client")
        return web.Response(status=200)
