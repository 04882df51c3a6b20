"""Outbound connector link: dial the server, say hello, keep the link alive, reconnect.

Shared by `infero llm` and `infero mcp`. The runtime supplies a `LinkHandler`; this module
owns the WebSocket, the single writer with its bounded queue, app-level liveness (Ping when
quiet, close a silent link) and the reconnect loop with the shared backoff schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from infero.common.backoff import Backoff
from infero.common.liveness import Action, Liveness
from infero.common.settings import url_list
from infero.common.tls import client_context, describe_failure, verify_failure
from infero.protocol import link

logger = logging.getLogger(__name__)

OUTBOUND_QUEUE = 256
"""Frames waiting for the writer; senders wait when it is full (backpressure)."""

BATCH_BYTES = 256 * 1024
"""Queued frames are sent in one write up to about this many bytes."""

HANDSHAKE_TIMEOUT = 10.0
"""Longest wait for the server's Welcome/Refused after our Hello."""

FATAL_REFUSALS = frozenset({"unauthorized", "protocol", "invalid"})
"""Refusals that retrying cannot fix (wrong key, unsupported version, bad hello)."""

LEAVING = "connector leaving"
"""Why a link (or a dial) ended when the connector was told to stop."""

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
T = TypeVar("T")


class LinkClosed(ConnectionError):
    """The link is gone; the frame was not sent."""


class LinkRefused(Exception):
    """The server answered the hello with Refused."""

    def __init__(self, frame: link.Refused) -> None:
        super().__init__(f"{frame.reason}: {frame.message[:300]}")
        self.frame = frame


class LinkHandler(Protocol):
    """What a connector runtime plugs into the link client."""

    def hello(self) -> link.Hello:
        """The hello to send now (rebuilt at every connect: current models and status)."""

    def link_up(self, current: Link, welcome: link.Welcome) -> None:
        """The server accepted us; `current` sends frames until `link_down`."""

    def frame_received(self, frame: link.ServerFrame) -> None:
        """A Request, Cancel, Credit or Control frame (must not block)."""

    def body_received(self, stream_id: int, payload: memoryview) -> None:
        """Request body bytes for `stream_id` (must not block)."""

    async def link_down(self) -> None:
        """The link closed: abort what depended on it."""


class Link:
    """One accepted connection: a bounded outbound queue drained by a single writer."""

    def __init__(self, ws: ClientConnection, *, clock: Clock) -> None:
        self._ws = ws
        self._clock = clock
        self._queue: asyncio.Queue[str | bytes] = asyncio.Queue(OUTBOUND_QUEUE)
        self._closed = False
        self._dead: str | None = None
        self.last_received = clock()

    @property
    def closed(self) -> bool:
        """True once the link has gone down (sends raise `LinkClosed`)."""
        return self._closed

    async def send(self, frame: link.Hello | link.StatusUpdate | link.Head | link.End) -> None:
        """Queue one JSON frame (waits while the queue is full)."""
        await self._put(link.encode(frame))

    async def send_body(self, stream_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Queue one RESPONSE_BODY frame (payload at most `link.BODY_CHUNK`)."""
        await self._put(link.pack_body(link.RESPONSE_BODY, stream_id, payload))

    async def _put(self, item: str | bytes) -> None:
        if self._closed:
            raise LinkClosed("link to server is closed")
        await self._queue.put(item)

    async def close(self, reason: str = "") -> None:
        """Close the WebSocket (normal closure)."""
        self._closed = True
        await self._ws.close(1000, reason[:100])

    async def serve(self, handler: LinkHandler, liveness: Liveness) -> str:
        """Run reader, writer and heartbeat until one ends; returns why the link ended."""
        tasks = {
            asyncio.create_task(self._read(handler, liveness), name="link-read"),
            asyncio.create_task(self._write(liveness), name="link-write"),
            asyncio.create_task(self._heartbeat(liveness), name="link-heartbeat"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = self._dead or next(iter(done)).result()
        finally:
            self._closed = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._ws.close()
        return reason

    async def _read(self, handler: LinkHandler, liveness: Liveness) -> str:
        try:
            async for message in self._ws:
                now = self._clock()
                liveness.received(now)
                self.last_received = now
                if isinstance(message, bytes):
                    self._dispatch_body(handler, message)
                else:
                    await self._dispatch_text(handler, message)
        except ConnectionClosed:
            pass
        if self._ws.close_reason:
            return f"server closed the link ({self._ws.close_code} {self._ws.close_reason[:200]})"
        return "server closed the link"

    def _dispatch_body(self, handler: LinkHandler, message: bytes) -> None:
        try:
            kind, stream_id, payload = link.unpack_body(message)
        except link.BadFrame as exc:
            logger.warning("ignoring malformed binary frame from server: %s", exc)
            return
        if kind != link.REQUEST_BODY:
            logger.warning("ignoring binary frame of kind %d from server", kind)
            return
        handler.body_received(stream_id, payload)

    async def _dispatch_text(self, handler: LinkHandler, message: str) -> None:
        try:
            frame = link.SERVER_FRAMES.validate_json(message)
        except ValidationError as exc:
            logger.warning(
                "ignoring invalid frame from server: %s", exc.errors(include_url=False)[0]["msg"]
            )
            return
        if isinstance(frame, link.Ping):
            await self._put(link.encode(link.Pong(ts=frame.ts)))
        elif isinstance(frame, link.Pong):
            return
        elif isinstance(frame, link.Welcome | link.Refused):
            logger.warning("ignoring unexpected %s frame after the handshake", frame.type)
        else:
            handler.frame_received(frame)

    async def _write(self, liveness: Liveness) -> str:
        queue = self._queue
        try:
            while True:
                item = await queue.get()
                if queue.empty():
                    await self._ws.send(item)
                else:
                    batch = [item]
                    size = len(item)
                    while not queue.empty() and size < BATCH_BYTES:
                        item = queue.get_nowait()
                        batch.append(item)
                        size += len(item)
                    await _send_batch(self._ws, batch)
                liveness.sent(self._clock())
        except ConnectionClosed:
            return "link closed while sending"

    async def _heartbeat(self, liveness: Liveness) -> str:
        while True:
            action = liveness.tick(self._clock())
            if action is Action.CLOSE:
                self._dead = f"no frame from the server for {liveness.dead_after:g}s"
                with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                    await asyncio.wait_for(self._ws.close(1001, "heartbeat timeout"), 2)
                return self._dead
            if action is Action.PING:
                await self._put(link.encode(link.Ping(ts=time.time())))
            await asyncio.sleep(max(0.01, liveness.next_deadline(self._clock())))


async def _send_batch(ws: ClientConnection, items: list[str | bytes]) -> None:
    """Send frames that were queued together in one write (one system call, one wake-up of
    the server) instead of one write per frame; same frames, same order."""
    async with ws.send_context():
        protocol = ws.protocol
        for item in items:
            if isinstance(item, str):
                protocol.send_text(item.encode())
            else:
                protocol.send_binary(item)
        data = protocol.data_to_send()
        ws.transport.write(b"".join(data))
        if not all(data):  # an end-of-stream marker: the protocol wants the link closed
            ws.transport.close()


def public_url(url: str) -> str:
    """The URL without userinfo or query, safe for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class LinkClient:
    """Dial, handshake, serve, and (with `reconnect`) start over after a backoff delay.

    `url` may list several server URLs, comma-separated: after a failure the next one is tried
    at once; the backoff delay applies only once every URL failed in a row.
    """

    def __init__(
        self,
        url: str,
        handler: LinkHandler,
        *,
        component: str,
        reconnect: bool,
        ca_file: str = "",
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self._urls = url_list(url) or [url]
        self._url = self._urls[0]
        self._ca_file = ca_file
        self._tls = (
            client_context(ca_file) if any(u.startswith("wss:") for u in self._urls) else None
        )
        self._accepted = False
        self._handler = handler
        self._component = component
        self._reconnect = reconnect
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._stop = asyncio.Event()
        self.link: Link | None = None
        self.last_error = ""
        self.instance = secrets.token_hex(8)
        """Sent in every hello: lets this process replace its own stale link at once."""

    def stop(self) -> None:
        """Leave: close the current link, or abandon a dial before its hello or a backoff
        wait, and do not reconnect; `run` returns 0."""
        self._stop.set()

    @property
    def url(self) -> str:
        """The server URL in use (or tried last)."""
        return self._url

    async def run(self) -> int:
        """Connect until stopped; the exit code (0 after `stop()`, 1 on a fatal failure)."""
        index = 0
        missed = 0
        """Attempts in a row without an accepted link (one per URL before a backoff delay)."""
        while not self._stop.is_set():
            self._url = self._urls[index]
            where = public_url(self._url)
            self._accepted = False
            try:
                reason = await self._session()
            except LinkRefused as exc:
                self.last_error = f"refused by server: {exc}"
                logger.error("server %s refused the connector: %s", where, exc)
                if exc.frame.reason in FATAL_REFUSALS:
                    return 1
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                why = self._describe(exc)
                self.last_error = f"cannot reach server: {why}"
                last_try = missed + 1 >= len(self._urls)
                if not self._reconnect and last_try:
                    logger.error(
                        "cannot reach the server at %s: %s (pass --reconnect/-r to keep trying)",
                        where,
                        why,
                    )
                    return 1
                logger.warning("cannot reach the server at %s: %s", where, why)
            else:
                if self._stop.is_set():
                    break
                self.last_error = f"link lost: {reason}"
                if not self._reconnect:
                    logger.error(
                        "link to %s lost: %s (pass --reconnect/-r to reconnect)", where, reason
                    )
                    return 1
                logger.warning("link to %s lost: %s", where, reason)
            if self._stop.is_set():
                break
            index = (index + 1) % len(self._urls)
            missed = 1 if self._accepted else missed + 1
            if missed < len(self._urls):
                continue
            missed = 0
            if not self._reconnect:
                return 1
            delay = self.backoff.next_delay()
            logger.info("reconnecting in %gs (attempt %d)", delay, self.backoff.attempt)
            await self._unless_stopped(self._sleep(delay))
        return 0

    def _describe(self, exc: BaseException) -> str:
        failure = verify_failure(exc)
        if failure is not None:
            return describe_failure(self._url, failure, self._ca_file)
        return _describe(exc)

    async def _unless_stopped(self, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None when `stop()` came first: `work` is cancelled then."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (task, stopper):
                waiting.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def _session(self) -> str:
        """One connection: returns why it ended; raises when it never got accepted.

        A `stop()` while dialing abandons the dial (websockets closes the half-open socket),
        and one before the hello closes the open WebSocket without a word: the server never
        sees a link from a connector that is leaving."""
        ws = await self._unless_stopped(
            connect(
                self._url,
                max_size=link.MAX_FRAME,
                compression=None,
                ping_interval=None,
                open_timeout=HANDSHAKE_TIMEOUT,
                close_timeout=2,
                user_agent_header=self._component,
                ssl=self._tls if self._url.startswith("wss:") else None,  # a list may mix both
            )
        )
        if ws is None:
            return LEAVING
        async with ws:
            welcome = await self._unless_stopped(self._handshake(ws))
            if welcome is None:
                return LEAVING
            self._accepted = True
            self.backoff.reset()
            self.last_error = ""
            current = Link(ws, clock=self._clock)
            liveness = _liveness(welcome, self._clock())
            self.link = current
            logger.info("connected to %s as %s", public_url(self._url), welcome.id)
            self._handler.link_up(current, welcome)
            stopper = asyncio.create_task(self._close_on_stop(current))
            try:
                return await current.serve(self._handler, liveness)
            finally:
                stopper.cancel()
                await asyncio.gather(stopper, return_exceptions=True)
                self.link = None
                await self._handler.link_down()

    async def _close_on_stop(self, current: Link) -> None:
        await self._stop.wait()
        with contextlib.suppress(ConnectionClosed, OSError):
            await current.close(LEAVING)

    async def _handshake(self, ws: ClientConnection) -> link.Welcome | None:
        """Hello, then the server's Welcome; None (nothing sent) once told to stop."""
        if self._stop.is_set():
            return None
        hello = self._handler.hello().model_copy(update={"instance": self.instance})
        await ws.send(link.encode(hello))
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                raw = await ws.recv()
        except ConnectionClosed as exc:
            raise ConnectionResetError(
                f"server closed the link during the handshake: {exc}"
            ) from exc
        try:
            frame = link.SERVER_FRAMES.validate_json(raw)
        except ValidationError:
            raise ConnectionResetError("server sent an invalid handshake answer") from None
        if isinstance(frame, link.Refused):
            raise LinkRefused(frame)
        if not isinstance(frame, link.Welcome):
            raise ConnectionResetError(f"server answered the hello with {frame.type!r}")
        return frame


def _liveness(welcome: link.Welcome, now: float) -> Liveness:
    """Heartbeat timing from the welcome; the defaults when the server sent nonsense."""
    try:
        return Liveness(interval=welcome.heartbeat_interval, dead_after=welcome.dead_after, now=now)
    except ValueError:
        logger.warning(
            "server sent unusable heartbeat timing (%s/%s); using 5s/15s",
            welcome.heartbeat_interval,
            welcome.dead_after,
        )
        return Liveness(interval=5.0, dead_after=15.0, now=now)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]
