"""Perform link Requests as HTTP calls against a base URL and stream the answers back.

One `HttpExchanges` serves one link: it collects each Request's body frames, calls
`base_url + path` with aiohttp, and relays the answer as Head, RESPONSE_BODY frames and End,
honouring per-stream Credit (flow control) and Cancel (the backend call is aborted).
It knows nothing about models; `infero llm` and `infero mcp` both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from yarl import URL

from infero.protocol import link

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "authorization", "accept-encoding"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}

LARGE_BODY = 1024 * 1024
"""Request bodies from this size on are handed to aiohttp as a stream, not raw bytes."""

CONNECT_TIMEOUT = 10.0
"""Longest wait for a TCP connection to the backend."""


class FrameSender(Protocol):
    """Where exchange frames go (the current `Link`)."""

    async def send(self, frame: link.Head | link.End) -> None:
        """Queue one JSON frame; raise `ConnectionError` when the link is gone."""

    async def send_body(self, stream_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Queue one RESPONSE_BODY frame; raise `ConnectionError` when the link is gone."""


class UsageScanner(Protocol):
    """Finds token counts in a relayed answer (fed every chunk)."""

    def feed(self, chunk: bytes) -> None:
        """See one more chunk of the answer body."""

    def result(self) -> link.Usage | None:
        """Token counts found, if any."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one exchange ended, for counters and logs."""

    status: int | None
    """The backend's HTTP status; None when no answer started."""
    error: link.LinkError | None
    usage: link.Usage | None
    duration: float
    first_byte: float | None
    """Seconds from start to the backend's headers."""


class ExchangeObserver(Protocol):
    """Admission and accounting hooks of the runtime that owns the exchanges."""

    def admit(self, request: link.Request) -> link.LinkError | None:
        """None to accept the request, else the error it ends with at once."""

    def started(self, request: link.Request) -> None:
        """An admitted request now occupies a slot."""

    def finished(self, request: link.Request, outcome: Outcome) -> None:
        """Called exactly once for every admitted request."""


class AcceptAll:
    """Observer that admits everything and counts nothing."""

    def admit(self, request: link.Request) -> link.LinkError | None:
        return None

    def started(self, request: link.Request) -> None:
        return None

    def finished(self, request: link.Request, outcome: Outcome) -> None:
        return None


def new_session(*, limit: int = 0) -> aiohttp.ClientSession:
    """The backend client session exchanges expect: raw bodies (no decompression)."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
        timeout=aiohttp.ClientTimeout(total=None),
        connector=aiohttp.TCPConnector(limit=limit, enable_cleanup_closed=False),
        trust_env=False,
    )


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = link.LinkError.model_validate({"code": code, "message": message[:500]})


@dataclass(slots=True)
class _Exchange:
    request: link.Request
    credit: int
    body: bytearray = field(default_factory=bytearray)
    credit_added: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_reason: str = ""
    notify_cancel: bool = True
    reading: bool = False
    """Waiting on the backend (not on credit): what the read timeout measures."""
    read_since: float = 0.0
    """Loop time at which the current wait on the backend began."""
    timed_out: bool = False
    timer: asyncio.TimerHandle | None = None
    read_timeout: float | None = None


def forward_request_headers(
    headers: Iterable[tuple[str, str]], api_key: str
) -> list[tuple[str, str]]:
    """Client headers minus hop-by-hop, Host, length, Authorization; plus our own."""
    out = [(k, v) for k, v in headers if k.lower() not in _DROP_REQUEST]
    out.append(("Accept-Encoding", "identity"))
    if api_key:
        out.append(("Authorization", f"Bearer {api_key}"))
    return out


def relayed_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Backend headers minus hop-by-hop and Content-Length (the server re-frames)."""
    return [(k, v) for k, v in headers if k.lower() not in _DROP_RESPONSE]


class HttpExchanges:
    """All exchanges of one link."""

    def __init__(
        self,
        sender: FrameSender,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        window: int = link.DEFAULT_WINDOW,
        api_key: str | Callable[[], str] = "",
        read_timeout: float | None = 300.0,
        read_timeout_for: Callable[[link.Request], float | None] | None = None,
        observer: ExchangeObserver | None = None,
        usage: Callable[[], UsageScanner] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sender = sender
        self._session = session
        self._base = base_url.rstrip("/")
        self._window = window
        self._api_key = api_key
        # The read timeout is ours (`_check_idle`): aiohttp's sock_read re-arms a loop timer
        # on every packet, a heap operation per streamed token.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        self._read_timeout = read_timeout
        self._read_timeout_for = read_timeout_for
        """Per-request read timeout (e.g. longer for listening streams), else `read_timeout`."""
        self._observer: ExchangeObserver = observer or AcceptAll()
        self._usage = usage
        self._clock = clock
        self._streams: dict[int, _Exchange] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Admitted exchanges that have not ended."""
        return len(self._streams)

    # ---- inbound frames (called by the link reader; never block) ---------------------------

    def on_request(self, request: link.Request) -> None:
        """A new exchange: admit it, then wait for its body (or start at once)."""
        if request.id in self._streams:
            logger.warning("ignoring request with duplicate stream id %d", request.id)
            return
        refusal = self._observer.admit(request)
        if refusal is not None:
            self._spawn(self._send_end(link.End(id=request.id, error=refusal)))
            return
        ex = _Exchange(request=request, credit=self._window)
        self._streams[request.id] = ex
        self._observer.started(request)
        if request.body_len == 0:
            self._start(ex)

    def on_body(self, stream_id: int, payload: memoryview) -> None:
        """Request body bytes; the exchange starts once `body_len` bytes arrived."""
        ex = self._streams.get(stream_id)
        if ex is None or ex.task is not None:
            logger.warning("ignoring body bytes for unknown stream %d", stream_id)
            return
        ex.body += payload
        if len(ex.body) > ex.request.body_len:
            self._fail_early(ex, "request body longer than announced")
        elif len(ex.body) == ex.request.body_len:
            self._start(ex)

    def on_credit(self, frame: link.Credit) -> None:
        """More response bytes may be sent on a stream."""
        ex = self._streams.get(frame.id)
        if ex is not None:
            ex.credit += frame.bytes
            ex.credit_added.set()

    def on_cancel(self, frame: link.Cancel) -> None:
        """The client went away: abort the backend call."""
        ex = self._streams.get(frame.id)
        if ex is None:
            return
        if ex.task is None:
            self._fail_early(ex, "cancelled by the server", code="cancelled")
        else:
            ex.cancel_reason = "cancelled by the server"
            ex.task.cancel()

    async def close(self) -> None:
        """The link is gone: abort every exchange without sending anything."""
        tasks = []
        for ex in list(self._streams.values()):
            ex.notify_cancel = False
            ex.cancel_reason = "link to server lost"
            if ex.task is None:
                self._finish(ex, None, _error("cancelled", ex.cancel_reason), None, None)
            else:
                ex.task.cancel()
                tasks.append(ex.task)
        for task in self._side_tasks:
            task.cancel()
        tasks.extend(self._side_tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- internals ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _send_end(self, frame: link.End) -> None:
        with contextlib.suppress(ConnectionError):
            await self._sender.send(frame)

    def _fail_early(self, ex: _Exchange, message: str, *, code: str = "invalid") -> None:
        error = _error(code, message)
        self._finish(ex, None, error, None, None)
        self._spawn(self._send_end(link.End(id=ex.request.id, error=error)))

    def _start(self, ex: _Exchange) -> None:
        ex.task = asyncio.create_task(self._run(ex), name=f"exchange-{ex.request.id}")

    def _finish(
        self,
        ex: _Exchange,
        status: int | None,
        error: link.LinkError | None,
        usage: link.Usage | None,
        first_byte: float | None,
        started: float | None = None,
    ) -> None:
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        if self._streams.pop(ex.request.id, None) is None:
            return
        duration = self._clock() - started if started is not None else 0.0
        self._observer.finished(
            ex.request,
            Outcome(
                status=status, error=error, usage=usage, duration=duration, first_byte=first_byte
            ),
        )

    async def _run(self, ex: _Exchange) -> None:
        started = self._clock()
        state = _Progress()
        end: link.End | None
        try:
            await self._relay(ex, state, started)
            end = link.End(id=ex.request.id, usage=state.usage)
            error = None
        except _Failed as failed:
            error = failed.error
            end = link.End(id=ex.request.id, error=error)
        except ConnectionError:
            error = _error("cancelled", "link to server lost")
            end = None
        except asyncio.CancelledError:
            if ex.timed_out:
                silent = "backend did not answer in time" if state.status is None else None
                error = _error("timeout", silent or "backend stopped sending")
            else:
                error = _error("cancelled", ex.cancel_reason or "cancelled")
            end = link.End(id=ex.request.id, error=error) if ex.notify_cancel else None
        except Exception:  # supervisor of this exchange: end it, keep the link serving
            logger.exception("exchange %d failed unexpectedly", ex.request.id)
            error = _error("backend_error", "internal error in the connector")
            end = link.End(id=ex.request.id, error=error)
        self._finish(ex, state.status, error, state.usage, state.first_byte, started)
        if end is not None:
            await self._send_end(end)

    async def _relay(self, ex: _Exchange, state: _Progress, started: float) -> None:
        req = ex.request
        if not req.path.startswith("/"):
            raise _Failed("invalid", "request path must start with /")
        loop = asyncio.get_running_loop()
        self._watch(ex, loop)
        try:
            url = URL(self._base + req.path, encoded=True)
            key = self._api_key if isinstance(self._api_key, str) else self._api_key()
            headers = forward_request_headers(req.headers, key)
            resp = await self._session.request(
                req.method,
                url,
                data=_payload(ex.body),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise _Failed("backend_unreachable", f"backend unreachable: {exc}") from None
        except TimeoutError:
            raise _Failed("timeout", "backend did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise _Failed("backend_unreachable", f"backend call failed: {exc}") from None
        except ValueError as exc:
            raise _Failed("invalid", f"request rejected: {exc}") from None
        ex.body = bytearray()
        complete = False
        try:
            state.status = resp.status
            state.first_byte = self._clock() - started
            ex.reading = False
            await self._sender.send(
                link.Head(
                    id=req.id,
                    status=resp.status,
                    headers=relayed_response_headers(resp.headers.items()),
                )
            )
            ex.read_since = loop.time()
            ex.reading = True
            scanner = self._usage() if self._usage is not None else None
            async for data in resp.content.iter_any():
                ex.reading = False
                if scanner is not None:
                    scanner.feed(data)
                await self._send_body(ex, data)
                ex.read_since = loop.time()
                ex.reading = True
            complete = True
            if scanner is not None:
                state.usage = scanner.result()
        except TimeoutError:
            raise _Failed("timeout", "backend stopped sending") from None
        except aiohttp.ClientError as exc:
            raise _Failed("backend_error", f"backend answer broke off: {exc}") from None
        finally:
            if complete:
                resp.release()
            else:
                resp.close()

    def _watch(self, ex: _Exchange, loop: asyncio.AbstractEventLoop) -> None:
        """Start the read timeout: the backend may stay silent `read_timeout` s at most."""
        pick = self._read_timeout_for
        ex.read_timeout = self._read_timeout if pick is None else pick(ex.request)
        if ex.read_timeout is None:
            return
        ex.read_since = loop.time()
        ex.reading = True
        ex.timer = loop.call_at(ex.read_since + ex.read_timeout, self._check_idle, ex)

    def _check_idle(self, ex: _Exchange) -> None:
        """Timer: abort a backend silent for too long, else re-arm (one timer per exchange,
        not one per chunk)."""
        ex.timer = None
        timeout = ex.read_timeout
        assert timeout is not None
        if ex.task is None or ex.task.done():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not ex.reading:
            when = now + timeout
        elif now - ex.read_since >= timeout:
            ex.timed_out = True
            ex.task.cancel()
            return
        else:
            when = ex.read_since + timeout
        ex.timer = loop.call_at(when, self._check_idle, ex)

    async def _send_body(self, ex: _Exchange, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while ex.credit <= 0:
                ex.credit_added.clear()
                await ex.credit_added.wait()
            n = min(len(view), ex.credit, link.BODY_CHUNK)
            await self._sender.send_body(ex.request.id, view[:n])
            ex.credit -= n
            view = view[n:]


@dataclass(slots=True)
class _Progress:
    status: int | None = None
    first_byte: float | None = None
    usage: link.Usage | None = None


def _payload(body: bytearray) -> bytes | io.BytesIO | None:
    # aiohttp warns that big raw bytes may block the loop; a BytesIO is written in pieces.
    if not body:
        return None
    return bytes(body) if len(body) < LARGE_BODY else io.BytesIO(body)


def _error(code: str, message: str) -> link.LinkError:
    return link.LinkError.model_validate({"code": code, "message": message})
