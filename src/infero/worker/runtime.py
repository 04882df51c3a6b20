"""The LLM connector runtime: link to the server, backend monitor, exchanges, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

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
from infero.protocol.status import ConnectorState, WorkerStatusDoc
from infero.worker.backend import BackendDown, Discovery, discover
from infero.worker.capacity import CapacityLearner
from infero.worker.executor import HttpExchanges, Outcome, new_session
from infero.worker.metrics import WorkerMetrics
from infero.worker.monitor import BackendMonitor
from infero.worker.settings import WorkerSettings
from infero.worker.statusport import connector_state, last_heartbeat, serve_status
from infero.worker.usage import TokenUsageScanner

logger = logging.getLogger(__name__)

COMPONENT = "infero-llm"


class Connector:
    """One `infero llm` process: `await Connector(settings).run()` returns the exit code."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        config_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        registry: CollectorRegistry | None = None,
        link_backoff: Backoff | None = None,
        backend_backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.worker_id = settings.client_id or str(uuid.uuid4())
        self.name = settings.display_name()
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.metrics.max_concurrency.set(0)
        self._link_status = LinkStatus(self._status_update, self.metrics.connected_to_server)
        self.connected = self._link_status.connected
        """Set while the server has accepted our hello and the link is up."""
        self.stopped = asyncio.Event()
        """Set once the connector decided to leave."""
        self._clock = clock
        self._crashed = False
        self._jobs = 0
        self._job_error = ""
        self._started = False
        self._session: aiohttp.ClientSession | None = None
        self._link: Link | None = None
        self._exchanges: HttpExchanges | None = None
        self._drain = Drain(
            timeout=settings.drain_timeout,
            inflight=lambda: self._jobs,
            changed=self._link_status.changed,
            stop=self._stop,
            unit="request",
            exit_when_drained=settings.exit_when_drained,
        )
        self._ports = HttpPorts()
        self.capacity = CapacityLearner(settings.max_concurrency)
        """Requests taken at once: MAX_CONCURRENCY, or learned from the backend (auto)."""
        self.status_url = ""
        """`http://host:port` of the status port once it is listening."""
        self.metrics_url = ""
        """`http://host:port/metrics` once the metrics port is listening."""
        self.monitor = BackendMonitor(
            self._probe,
            poll_interval=settings.model_poll_interval,
            on_change=self._backend_changed,
            static_models=settings.models,
            sleep=sleep,
            backoff=backend_backoff,
        )
        self.link_client = new_link_client(
            settings, self, COMPONENT, backoff=link_backoff, sleep=sleep, clock=clock
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; 0 after a shutdown or stop, non-zero on a fatal failure."""
        self._session = new_session()
        monitor = asyncio.create_task(self._supervise_monitor(), name="backend-monitor")
        try:
            try:
                await self._start_ports()
            except StartupError as exc:
                logger.error("%s", exc)
                return 1
            self._started = True
            await first_of(self.monitor.probed.wait(), self.stopped.wait())
            if self.stopped.is_set():
                return 1 if self._crashed else 0
            code = await self.link_client.run()
            if self._crashed:
                return 1
            return 0 if self._drain.shutting_down or self.stopped.is_set() else code
        finally:
            self.stopped.set()
            self._drain.leave()  # once `run` ends, nothing can undrain the connector
            await self._drain.close()
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await self._ports.close()
            await self._session.close()

    async def _supervise_monitor(self) -> None:
        try:
            await self.monitor.run()
        except Exception:  # outermost supervisor of the monitor task
            logger.exception("backend monitor failed; stopping the connector")
            self._crashed = True
            self.request_stop()

    @property
    def draining(self) -> bool:
        """True while no new request is taken."""
        return self._drain.draining

    def request_stop(self) -> None:
        """Leave now: close the link (in-flight requests are aborted) and return from `run`."""
        self._drain.leave()

    def drain(self, *, by: str = "") -> None:
        """Take nothing new, finish in-flight, stay linked until undrained."""
        self._drain.drain(by=by)

    def undrain(self, *, by: str = "") -> bool:
        """Take requests again; refused (False) once a shutdown was asked for."""
        return self._drain.undrain(by=by)

    def shutdown(self, *, by: str = "") -> None:
        """Drain and exit; unlike `drain`, it cannot be undone with `undrain`."""
        self._drain.shutdown(by=by)

    def signal_received(self, name: str) -> None:
        """SIGTERM/SIGINT: the first shuts down (drain, then exit), the second exits at once."""
        self._drain.signal(name)

    def _stop(self) -> None:
        if not self.stopped.is_set():
            logger.info("connector stopping")
        self.stopped.set()
        self.link_client.stop()

    async def _start_ports(self) -> None:
        settings = self.settings
        if settings.status_addr:
            self.status_url = await serve_status(
                self._ports, self, settings.status_addr, self.config_path, log_dir=settings.log_dir
            )
        if settings.metrics_port is not None:
            self.metrics_url = await self._ports.serve_metrics(
                self.metrics.registry, settings.metrics_port
            )

    # ---- backend --------------------------------------------------------------------------

    async def _probe(self) -> Discovery:
        assert self._session is not None
        s = self.settings
        try:
            found = await discover(
                self._session, s.completion_base_url, s.completion_api_key, s.api_style
            )
        except BackendDown:
            self.capacity.backend_down()
            raise
        if await self.capacity.learn(
            self._session, s.completion_base_url, s.completion_api_key, found
        ):
            self._backend_changed()
        return found

    def relay_base_url(self) -> str:
        """Where requests go: `COMPLETION_BASE_URL`, plus `/v1` for an Ollama root URL."""
        base = self.settings.completion_base_url.rstrip("/")
        if self.monitor.kind == "ollama" and not base.endswith("/v1"):
            return base + "/v1"
        return base

    def _backend_changed(self) -> None:
        healthy = self.monitor.healthy
        self.metrics.connected_to_backend.set(1 if healthy else 0)
        self.metrics.max_concurrency.set(self._capacity())
        self._link_status.changed()

    def _capacity(self) -> int:
        return self.capacity.value if self.monitor.healthy else 0

    def _status(self) -> link.Status:
        if self.draining:
            return "draining"
        return "ready" if self.monitor.healthy else "not_ready"

    def _last_error(self) -> str:
        return self.monitor.last_error or self.link_client.last_error or self._job_error

    # ---- link handler ---------------------------------------------------------------------

    def hello(self) -> link.Hello:
        """Who we are, rebuilt at every (re)connect with the current models and status."""
        return link.Hello(
            kind="llm",
            client_key=self.settings.client_key,
            id=self.worker_id,
            name=self.name,
            version=BUILD.version,
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            backend=self.monitor.kind,
            models=list(self.monitor.models),
            max_concurrency=self._capacity(),
            status=self._status(),
            last_error=self._last_error()[:2048],
        )

    def link_up(self, current: Link, welcome: link.Welcome) -> None:
        """Accepted by the server: start serving requests on this link."""
        assert self._session is not None
        self._link = current
        self._exchanges = HttpExchanges(
            current,
            self._session,
            self.relay_base_url(),
            window=welcome.window,
            api_key=self.settings.completion_api_key,
            read_timeout=self.settings.request_timeout,
            observer=self,
            usage=TokenUsageScanner,
            clock=self._clock,
        )
        self._link_status.up(current)

    def frame_received(self, frame: link.ServerFrame) -> None:
        """Dispatch one server frame."""
        exchanges = self._exchanges
        if exchanges is None:
            return
        if isinstance(frame, link.Request):
            exchanges.on_request(frame)
        elif isinstance(frame, link.Credit):
            exchanges.on_credit(frame)
        elif isinstance(frame, link.Cancel):
            exchanges.on_cancel(frame)
        elif isinstance(frame, link.Control):
            self._drain.control(frame)

    def body_received(self, stream_id: int, payload: memoryview) -> None:
        """Request body bytes."""
        if self._exchanges is not None:
            self._exchanges.on_body(stream_id, payload)

    async def link_down(self) -> None:
        """The link closed: abort its exchanges."""
        self._link = None
        await self._link_status.down()
        if self._exchanges is not None:
            exchanges, self._exchanges = self._exchanges, None
            await exchanges.close()

    def _status_update(self) -> link.StatusUpdate:
        return link.StatusUpdate(
            models=list(self.monitor.models),
            max_concurrency=self._capacity(),
            status=self._status(),
            last_error=self._last_error()[:2048],
            shutting_down=self._drain.shutting_down,
        )

    # ---- exchange observer ----------------------------------------------------------------

    def admit(self, request: link.Request) -> link.LinkError | None:
        """Refuse new work while draining or at `MAX_CONCURRENCY`."""
        if self.draining or self.stopped.is_set():
            return link.LinkError(code="draining", message="connector is draining")
        if self._jobs >= self.capacity.value:
            return link.LinkError(
                code="busy", message=f"connector at capacity ({self.capacity.value} in flight)"
            )
        return None

    def started(self, request: link.Request) -> None:
        """Count a request that now occupies a slot."""
        self._jobs += 1
        self.metrics.jobs_started.inc()
        self.metrics.current_jobs.set(self._jobs)
        logger.debug("request %s started: %s %s", request.request_id, request.method, request.path)

    def finished(self, request: link.Request, outcome: Outcome) -> None:
        """Count a request that ended; a shutting-down connector leaves after its last one."""
        self._jobs -= 1
        self.metrics.current_jobs.set(self._jobs)
        self.metrics.job_duration.observe(outcome.duration)
        if outcome.error is None:
            self.metrics.jobs_succeeded.inc()
        elif outcome.error.code != "cancelled":
            self.metrics.jobs_failed.inc()
            self._job_error = f"{outcome.error.code}: {outcome.error.message}"[:2048]
            logger.warning(
                "request %s failed: %s", request.request_id or request.id, self._job_error
            )
        if self._jobs == 0:
            self._drain.idle()

    # ---- status port ----------------------------------------------------------------------

    def state(self) -> ConnectorState:
        """The `/status` state name."""
        return connector_state(
            stopped=self.stopped.is_set() or self._drain.shutting_down,
            draining=self.draining,
            probed=self.monitor.probed.is_set(),
            healthy=self.monitor.healthy,
            connected=self.connected.is_set(),
            busy=bool(self._jobs),
            started=self._started,
            link_error=self.link_client.last_error,
        )

    def status_doc(self) -> WorkerStatusDoc:
        """`GET /status`."""
        last = last_heartbeat(self._link, self._clock)
        s = self.settings
        return WorkerStatusDoc(
            state=self.state(),
            connected_to_server=self.connected.is_set(),
            connected_to_backend=self.monitor.healthy,
            current_jobs=self._jobs,
            max_concurrency=self._capacity(),
            models=list(self.monitor.models),
            last_error=self._last_error(),
            last_heartbeat=last,
            worker_id=self.worker_id,
            worker_name=self.name,
            version=BUILD.version,
            build_sha=BUILD.sha,
            build_date=BUILD.date,
            draining=self.draining,
            backend=self.monitor.kind,
            server_url=self.link_client.url.split("?", 1)[0],
            completion_base_url=s.completion_base_url,
        )
