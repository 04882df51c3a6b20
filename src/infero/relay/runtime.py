"""The MCP relay runtime: link to the server, provider probe, exchanges, drain.

Every MCP exchange the server relays (POST, GET or DELETE on `/api/mcp/id/<id>`) arrives
as a link Request and is performed by the shared executor against a Streamable HTTP
endpoint: the provider itself (`PROVIDER_URL`), or the loopback facade that bridges stdio
and legacy SSE providers. So the server side is identical for every provider kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry

from infero.common.backoff import Backoff
from infero.common.buildinfo import BUILD
from infero.common.connector import (
    HttpPorts,
    LinkStatus,
    StartupError,
    first_of,
    new_link_client,
)
from infero.common.drain import Drain
from infero.common.linkclient import Link
from infero.protocol import link
from infero.protocol.mcp import EnvelopeError, parse_envelope
from infero.protocol.status import ConnectorState, WorkerStatusDoc
from infero.relay.metrics import RelayMetrics
from infero.relay.probe import ProviderDown, probe
from infero.relay.settings import RelaySettings
from infero.worker.executor import HttpExchanges, Outcome
from infero.worker.statusport import connector_state, last_heartbeat, serve_status

if TYPE_CHECKING:
    from infero.relay.facade import Facade
    from infero.relay.oauth import ProviderOAuth

logger = logging.getLogger(__name__)

COMPONENT = "infero-mcp"


def is_call(request: link.Request) -> bool:
    """Whether an exchange is a call (a POST with requests) that counts against the limit.

    The broker labels each exchange (`Request.model`) with its JSON-RPC method: the first
    request's, else `notifications/...` or `response` for POSTs without requests. GET
    (listening streams) and DELETE are not calls either.
    """
    label = request.model
    return (
        request.method == "POST"
        and label not in ("response", "subscriptions/listen")
        and not label.startswith("notifications/")
    )


class _Steering:
    """What the status port reads and steers: the relay's status and its drain."""

    def __init__(self, relay: McpRelay) -> None:
        self._relay = relay

    def status_doc(self) -> WorkerStatusDoc:
        return self._relay.status_doc()

    def drain(self, *, by: str = "") -> None:
        self._relay.drain.drain(by=by)

    def undrain(self, *, by: str = "") -> bool:
        return self._relay.drain.undrain(by=by)

    def shutdown(self, *, by: str = "") -> None:
        self._relay.drain.shutdown(by=by)


def is_listening(request: link.Request) -> bool:
    """A listening stream: the GET stream, or a 2026-07-28 `subscriptions/listen` POST."""
    return request.method == "GET" or request.model == "subscriptions/listen"


DRAIN_GRACE = 1.0
"""Seconds a draining relay waits after its last exchange before it leaves, so that what a
client sends right after its last answer (a DELETE of its session) still gets through."""

PROVIDER_FAILURES = frozenset({"backend_unreachable", "backend_error"})
"""Exchange errors that say the provider may be down: the monitor probes at once."""

CANCEL_HEADERS = frozenset({"mcp-session-id", "mcp-protocol-version"})


@dataclass(slots=True)
class _Call:
    """A POST in flight to a session-holding provider, kept to cancel it there."""

    headers: list[tuple[str, str]]
    size: int
    body: bytearray = field(default_factory=bytearray)


def provider_session(*, verify_tls: bool) -> aiohttp.ClientSession:
    """Client session for the provider: raw bodies, no total timeout, no env proxies."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        connector=aiohttp.TCPConnector(limit=0, ssl=verify_tls),
        trust_env=False,
    )


def split_endpoint(url: str) -> tuple[str, str, str]:
    """`http://h:1/mcp?x=1` -> (`http://h:1`, `/mcp`, `x=1`)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path or "/", parts.query


def provider_path(endpoint_path: str, endpoint_query: str, relayed: str) -> str:
    """The provider path for a relayed `/` or `/?query` (queries are merged)."""
    _, _, query = relayed.partition("?")
    queries = "&".join(q for q in (endpoint_query, query) if q)
    return endpoint_path + (f"?{queries}" if queries else "")


class ProviderMonitor:
    """Probe until the provider answers (backoff), then every `interval` (or `recheck`)."""

    def __init__(
        self,
        check: Callable[[], Awaitable[str]],
        *,
        interval: float | Callable[[], float],
        on_change: Callable[[], None],
        recheck: Callable[[], Awaitable[str]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self._check = check
        self._recheck = recheck
        self._interval = interval
        self._on_change = on_change
        self._sleep = sleep
        self.backoff = backoff or Backoff()
        self.healthy = False
        self.last_error = ""
        self.probed = asyncio.Event()
        """Set after the first probe, whatever its result."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Probe now (a call just failed on the way to the provider)."""
        self._wake.set()

    async def probe_once(self) -> float:
        """Probe now and update the state; returns the delay before the next probe.

        Any failure of the probe, expected (`ProviderDown`) or not (a hostile answer making
        the JSON parser recurse too deep, a bug), is a provider that is not ready.
        """
        check = self._recheck if self.healthy and self._recheck is not None else self._check
        was = self.healthy
        try:
            name = await check()
        except Exception as exc:  # supervisor of the probe: every failure is "not ready"
            expected = isinstance(exc, ProviderDown)
            reason = str(exc) if expected else f"the probe failed unexpectedly: {exc!r}"[:500]
            delay = self.backoff.next_delay()
            if was or self.last_error != reason:
                logger.warning(
                    "MCP provider not ready: %s (next try in %gs)",
                    reason,
                    delay,
                    exc_info=None if expected else exc,
                )
            self.healthy = False
            self.last_error = reason
        else:
            self.backoff.reset()
            if not was:
                logger.info("MCP provider ready: %s", name)
            self.healthy = True
            self.last_error = ""
            delay = self._interval if isinstance(self._interval, float | int) else self._interval()
        first = not self.probed.is_set()
        self.probed.set()
        if first or was != self.healthy:
            self._on_change()
        return delay

    async def run(self) -> None:
        """Probe forever (cancel to stop); `wake()` cuts a wait short."""
        while True:
            delay = await self.probe_once()
            self._wake.clear()
            await first_of(self._sleep(delay), self._wake.wait())


class McpRelay:
    """One `infero mcp` process: `await McpRelay(settings).run()` returns the exit code."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        link_backoff: Backoff | None = None,
        probe_backoff: Backoff | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.relay_id = settings.client_id
        """Asked for at every (re)connect; the server's choice once welcomed."""
        self.name = settings.display_name()
        self.transport = settings.transport()
        self.metrics = RelayMetrics(registry or CollectorRegistry())
        self._link_status = LinkStatus(self._status_update, self.metrics.connected_to_server)
        self.connected = self._link_status.connected
        self.stopped = asyncio.Event()
        self.endpoint = ""
        """The Streamable HTTP URL exchanges go to (provider or facade)."""
        self.metrics_url = ""
        self.status_url = ""
        """`http://host:port` of the status port once it is listening (STATUS_ADDR)."""
        self.config_path = config_path
        self._link: Link | None = None
        self._started = False
        self._environ = environ if environ is not None else dict(os.environ)
        self._clock = clock
        self._sleep = sleep
        self._calls = 0
        self._session: aiohttp.ClientSession | None = None
        self._facade: Facade | None = None
        self._exchanges: HttpExchanges | None = None
        self._origin = ""
        self._path = "/"
        self._query = ""
        self.drain = Drain(
            timeout=settings.drain_timeout,
            inflight=lambda: self._busy,
            changed=self._drain_changed,
            stop=self._stop,
            unit="call",
            exit_when_drained=settings.exit_when_drained,
        )
        self._ports = HttpPorts()
        self.oauth: ProviderOAuth | None = None
        if self.transport == "http" and settings.mcp_oauth_token_file:
            from infero.relay.oauth import ProviderOAuth

            self.oauth = ProviderOAuth(settings, on_waiting=self._authorization_pending)
        self._open_calls: dict[int, _Call] = {}
        self._chores: set[asyncio.Task[None]] = set()
        self._busy = 0
        """Exchanges in flight that hold a drain open: all but listening streams."""
        self._grace: asyncio.TimerHandle | None = None
        self.monitor = ProviderMonitor(
            self._probe,
            interval=self._probe_interval,
            on_change=self._provider_changed,
            recheck=self._recheck_stdio if self.transport == "stdio" else None,
            sleep=sleep,
            backoff=probe_backoff,
        )
        self.link_client = new_link_client(
            settings, self, COMPONENT, backoff=link_backoff, sleep=sleep, clock=clock
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; 0 after a shutdown or stop, non-zero on a fatal failure."""
        s = self.settings
        self._session = provider_session(verify_tls=not s.mcp_http_insecure_skip_verify)
        monitor: asyncio.Task[None] | None = None
        try:
            try:
                await self._start_provider()
                await self._start_ports()
            except StartupError as exc:
                logger.error("%s", exc)
                return 1
            self._started = True
            monitor = asyncio.create_task(self._supervise_monitor(), name="provider-monitor")
            await first_of(self.monitor.probed.wait(), self.stopped.wait())
            if self.stopped.is_set():
                return 0
            code = await self.link_client.run()
            return 0 if self.drain.shutting_down or self.stopped.is_set() else code
        finally:
            self.stopped.set()
            if self._grace is not None:
                self._grace.cancel()
            await self.drain.close()
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
            for chore in list(self._chores):
                chore.cancel()
            await asyncio.gather(*self._chores, return_exceptions=True)
            await self._close_facade()
            if self.oauth is not None:
                await self.oauth.close()
            await self._ports.close()
            await self._session.close()

    async def _supervise_monitor(self) -> None:
        """Keep probing whatever happens: a monitor that died would leave the relay blind."""
        while True:
            try:
                await self.monitor.run()
            except Exception:  # outermost supervisor of the monitor task
                logger.exception("the provider monitor failed; restarting it")
                self.monitor.probed.set()
                await self._sleep(self.monitor.backoff.next_delay())

    def request_stop(self) -> None:
        """Leave now: close the link (in-flight calls are aborted)."""
        self.drain.leave()

    def signal_received(self, name: str) -> None:
        """SIGTERM/SIGINT: the first shuts down (drain, then exit), the second exits at once."""
        self.drain.signal(name)

    def _stop(self) -> None:
        if not self.stopped.is_set():
            logger.info("relay stopping")
        self.stopped.set()
        self.link_client.stop()

    async def _start_provider(self) -> None:
        s = self.settings
        if self.transport == "http":
            self.endpoint = s.http_url()
        else:
            from infero.relay.providers import open_facade

            try:
                facade = await open_facade(s, self._environ)
            except (ValueError, OSError) as exc:
                raise StartupError(
                    f"cannot start the {self.transport} provider bridge: {exc}"
                ) from None
            self._facade = facade
            self.endpoint = facade.url
            self.metrics.sessions.set_function(lambda: facade.session_count)
        self._origin, self._path, self._query = split_endpoint(self.endpoint)
        logger.info("relaying MCP to %s provider %s", self.transport, self._describe_provider())

    async def _start_ports(self) -> None:
        s = self.settings
        if s.status_addr:
            self.status_url = await serve_status(
                self._ports, _Steering(self), s.status_addr, self.config_path
            )
        if s.metrics_port is not None:
            self.metrics_url = await self._ports.serve_metrics(
                self.metrics.registry, s.metrics_port
            )

    def _describe_provider(self) -> str:
        s = self.settings
        if self.transport == "stdio":
            return " ".join([s.mcp_stdio_command, *s.mcp_stdio_args])
        return s.mcp_sse_url if self.transport == "sse" else self.endpoint

    async def _close_facade(self) -> None:
        facade, self._facade = self._facade, None
        if facade is not None:
            await facade.close()

    # ---- provider ----------------------------------------------------------------------------

    async def _probe(self) -> str:
        if self.oauth is not None:
            return await self.oauth.probe(self.settings.mcp_protocol_version)
        assert self._session is not None
        return await probe(
            self._session,
            self.endpoint,
            protocol_version=self.settings.mcp_protocol_version,
            within=min(self.settings.mcp_http_timeout, 30.0),
        )

    async def _recheck_stdio(self) -> str:
        """A ready stdio provider is rechecked cheaply: its command must still be runnable."""
        command = self.settings.mcp_stdio_command
        found = shutil.which(command) if not os.path.isabs(command) else command
        if not found or not os.access(found, os.X_OK):
            raise ProviderDown(f"stdio command {command!r} is no longer executable")
        return command

    def _probe_interval(self) -> float:
        """MCP_PROBE_INTERVAL, or sooner when the OAuth access token is due for a refresh."""
        refresh = self.oauth.refresh_in() if self.oauth is not None else None
        interval = self.settings.mcp_probe_interval
        return interval if refresh is None else min(interval, refresh)

    def _authorization_pending(self, state: str) -> None:
        """The first OAuth authorization waits for a person: link up, not ready, saying so."""
        self.monitor.healthy = False
        self.monitor.last_error = state
        self.monitor.probed.set()
        self._provider_changed()

    def _provider_changed(self) -> None:
        self.metrics.provider_ready.set(1 if self.monitor.healthy else 0)
        self._link_status.changed()

    def _status(self) -> link.Status:
        if self.drain.draining:
            return "draining"
        return "ready" if self.monitor.healthy else "not_ready"

    # ---- link handler ------------------------------------------------------------------------

    def hello(self) -> link.Hello:
        """Who we are, rebuilt at every (re)connect."""
        token = self.settings.auth_token
        return link.Hello(
            kind="mcp",
            client_key=self.settings.client_key,
            id=self.relay_id,
            name=self.name,
            version=BUILD.version,
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            backend=self.transport,
            max_concurrency=self.settings.mcp_max_inflight,
            status=self._status(),
            last_error=self.monitor.last_error[:2048],
            auth_sha256=hashlib.sha256(token.encode()).hexdigest() if token else "",
        )

    def link_up(self, current: Link, welcome: link.Welcome) -> None:
        """Accepted: remember our id for reconnects and serve exchanges on this link."""
        assert self._session is not None
        if welcome.id != self.relay_id:
            logger.info("the server assigned relay id %s", welcome.id)
        self.relay_id = welcome.id
        self._link = current
        logger.info("MCP clients can use %s", _public_mcp_url(self.link_client.url, welcome.id))
        self._exchanges = HttpExchanges(
            current,
            self._session,
            self._origin,
            window=welcome.window,
            api_key=self._bearer,
            read_timeout=self.settings.mcp_http_timeout,
            read_timeout_for=self._read_timeout,
            observer=self,
            clock=self._clock,
        )
        self._link_status.up(current)

    def _bearer(self) -> str:
        """The OAuth access token for the provider ('' without OAuth)."""
        return self.oauth.access_token() if self.oauth is not None else ""

    def _read_timeout(self, request: link.Request) -> float:
        """How long the provider may stay silent: a listening stream as long as a session
        may stay idle, anything else MCP_HTTP_TIMEOUT."""
        s = self.settings
        return s.mcp_session_idle_timeout if is_listening(request) else s.mcp_http_timeout

    def frame_received(self, frame: link.ServerFrame) -> None:
        """Dispatch one server frame (requests are pointed at the provider's path)."""
        exchanges = self._exchanges
        if exchanges is None:
            return
        if isinstance(frame, link.Request):
            self._remember(frame)
            path = provider_path(self._path, self._query, frame.path)
            exchanges.on_request(frame.model_copy(update={"path": path}))
        elif isinstance(frame, link.Credit):
            exchanges.on_credit(frame)
        elif isinstance(frame, link.Cancel):
            exchanges.on_cancel(frame)
            call = self._open_calls.pop(frame.id, None)
            if call is not None:
                chore = asyncio.create_task(self._cancel_on_provider(call))
                self._chores.add(chore)
                chore.add_done_callback(self._chores.discard)
        elif isinstance(frame, link.Control):
            self.drain.control(frame)

    def body_received(self, stream_id: int, payload: memoryview) -> None:
        """Request body bytes."""
        call = self._open_calls.get(stream_id)
        if call is not None and len(call.body) + len(payload) <= call.size:
            call.body += payload
        if self._exchanges is not None:
            self._exchanges.on_body(stream_id, payload)

    def _remember(self, request: link.Request) -> None:
        """Keep POSTs to a session of an http provider, to cancel them there if asked.

        A Streamable HTTP provider does not take a dropped connection as a cancellation,
        so a client that goes away is turned into `notifications/cancelled` for its
        requests (stdio/SSE sessions get the same from the facade).
        """
        if self.transport != "http" or request.method != "POST":
            return
        headers = [(k, v) for k, v in request.headers if k.lower() in CANCEL_HEADERS]
        if any(k.lower() == "mcp-session-id" for k, _ in headers):
            self._open_calls[request.id] = _Call(headers, request.body_len)

    async def _cancel_on_provider(self, call: _Call) -> None:
        try:
            envelope = parse_envelope(bytes(call.body))
        except EnvelopeError:
            return
        assert self._session is not None
        headers = dict(call.headers)
        headers["Accept"] = "application/json, text/event-stream"
        for request_id, _ in envelope.requests:
            note = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request_id, "reason": "the MCP client went away"},
            }
            try:
                async with asyncio.timeout(10):
                    async with self._session.post(self.endpoint, json=note, headers=headers):
                        pass
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.info("could not tell the provider about a cancelled call: %s", exc)
                return

    async def link_down(self) -> None:
        """The link closed: abort its exchanges."""
        self._link = None
        await self._link_status.down()
        if self._exchanges is not None:
            exchanges, self._exchanges = self._exchanges, None
            await exchanges.close()

    def _status_update(self) -> link.StatusUpdate:
        return link.StatusUpdate(
            max_concurrency=self.settings.mcp_max_inflight,
            status=self._status(),
            last_error=self.monitor.last_error[:2048],
            shutting_down=self.drain.shutting_down,
        )

    # ---- exchange observer -------------------------------------------------------------------

    def admit(self, request: link.Request) -> link.LinkError | None:
        """Refuse new calls while draining or at MCP_MAX_INFLIGHT calls.

        Other exchanges still pass while draining: a client cancelling its call or answering
        the provider's sampling request must reach it, or in-flight calls could not finish.
        """
        if not is_call(request):
            return None
        if self.drain.draining or self.stopped.is_set():
            return link.LinkError(code="draining", message="relay is draining")
        if self._calls >= self.settings.mcp_max_inflight:
            self.metrics.exchanges.labels("refused").inc()
            return link.LinkError(
                code="busy", message=f"relay at MCP_MAX_INFLIGHT ({self.settings.mcp_max_inflight})"
            )
        return None

    def started(self, request: link.Request) -> None:
        """An exchange occupies a slot (only calls count, see `is_call`)."""
        if is_call(request):
            self._calls += 1
            self.metrics.calls_inflight.set(self._calls)
        if not is_listening(request):
            self._busy += 1
        self.metrics.inflight.inc()

    def finished(self, request: link.Request, outcome: Outcome) -> None:
        """An exchange ended; a shutting-down relay leaves after its last one (and a grace)."""
        self._open_calls.pop(request.id, None)
        if is_call(request):
            self._calls -= 1
            self.metrics.calls_inflight.set(self._calls)
        if not is_listening(request):
            self._busy -= 1
        self.metrics.inflight.dec()
        self.metrics.duration.observe(outcome.duration)
        if outcome.error is None:
            self.metrics.exchanges.labels("success").inc()
        elif outcome.error.code == "cancelled":
            self.metrics.exchanges.labels("cancelled").inc()
        elif outcome.error.code == "timeout" and is_listening(request):
            self.metrics.exchanges.labels("success").inc()
            logger.info("a listening stream was idle for MCP_SESSION_IDLE_TIMEOUT; closed it")
        else:
            self.metrics.exchanges.labels("error").inc()
            logger.warning("MCP exchange failed: %s: %s", outcome.error.code, outcome.error.message)
            if outcome.error.code in PROVIDER_FAILURES:
                self.monitor.wake()
        if outcome.status == 401 and self.oauth is not None:
            self.monitor.wake()  # the provider refused our token: refresh or re-authorize
        if self._busy == 0 and self.drain.draining and self._grace is None:
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(DRAIN_GRACE, self._drained)

    def _drained(self) -> None:
        """The grace after the last exchange is over: leave if nothing new arrived."""
        self._grace = None
        if self._busy == 0:
            self.drain.idle()

    # ---- status port -------------------------------------------------------------------------

    def _drain_changed(self) -> None:
        self.metrics.draining.set(1 if self.drain.draining else 0)
        self._link_status.changed()

    def state(self) -> ConnectorState:
        """The `/status` state name."""
        return connector_state(
            stopped=self.stopped.is_set() or self.drain.shutting_down,
            draining=self.drain.draining,
            probed=self.monitor.probed.is_set(),
            healthy=self.monitor.healthy,
            connected=self.connected.is_set(),
            busy=bool(self._calls),
            started=self._started,
            link_error=self.link_client.last_error,
        )

    def status_doc(self) -> WorkerStatusDoc:
        """`GET /status` of the status port (`STATUS_ADDR`)."""
        s = self.settings
        provider = s.mcp_stdio_command if self.transport == "stdio" else self._describe_provider()
        return WorkerStatusDoc(
            state=self.state(),
            connected_to_server=self.connected.is_set(),
            connected_to_backend=self.monitor.healthy,
            current_jobs=self._calls,
            max_concurrency=s.mcp_max_inflight,
            last_error=self.monitor.last_error or self.link_client.last_error,
            last_heartbeat=last_heartbeat(self._link, self._clock),
            worker_id=self.relay_id,
            worker_name=self.name,
            version=BUILD.version,
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            draining=self.drain.draining,
            backend=self.transport,
            server_url=self.link_client.url.split("?", 1)[0],
            kind="mcp",
            sessions=self._facade.session_count if self._facade is not None else 0,
            provider=provider,
            authorization=self.oauth.state if self.oauth is not None else "",
        )


def _public_mcp_url(server_url: str, relay_id: str) -> str:
    parts = urlsplit(server_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{scheme}://{host}/api/mcp/id/{relay_id}"
