"""The console's only door to the network: an httpx client returning protocol models.

`FleetClient` talks to `infero server` (`/api/state`, `/api/state/stream`, fleet control);
`LocalClient` talks to a connector's status port (`/status`, `/version`, `/control/*`).
No Textual here, so `infero ctl` uses the same code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from infero.common.tls import check_ca_file, client_context, describe_failure, verify_failure
from infero.protocol.delta import EVENT_DELTA, StateDelta, apply_delta
from infero.protocol.errors import ErrorBody
from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

Action = Literal["drain", "undrain", "shutdown"]
ACTIONS: tuple[Action, ...] = ("drain", "undrain", "shutdown")


Target = Literal["worker", "relay"]
"""What fleet control steers: an `infero llm` connector or an `infero mcp` relay."""
_CONTROL_PREFIX: dict[Target, str] = {"worker": "/api/workers", "relay": "/api/mcp/relays"}


class ClientError(Exception):
    """The request could not be completed; the message is one line for a human."""

    cause = "error"
    """A few words on why, for the console's header (`connection refused`, `timeout`)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        if cause:
            self.cause = cause


class AuthRefused(ClientError):
    """401 or 403: the key is missing, wrong or lacks the operator right."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, f"key refused ({status})")
        self.status = status


class NotFound(ClientError):
    """404: the worker (or route) does not exist."""


class StreamLost(ClientError):
    """The state stream ended or failed after it was open."""


class ControlAccepted(BaseModel):
    """`202 {"id", "action", "accepted": true}` from fleet control."""

    id: str
    action: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class Credentials:
    """Keys sent as `Authorization: Bearer`: the API key to read, the operator key to act."""

    api_key: str = ""
    operator_key: str = ""

    def for_read(self) -> dict[str, str]:
        key = self.api_key or self.operator_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def for_action(self) -> dict[str, str]:
        key = self.operator_key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def cause_of(exc: httpx.HTTPError) -> str:
    """Why a request failed, in a few words: refused, TLS, timeout, host not found, ..."""
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}".lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if verify_failure(exc) is not None:
        return "TLS error"
    if isinstance(exc, httpx.ConnectError):
        if "ssl" in text or "certificate" in text or "tls" in text:
            return "TLS error"
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "host not found"
        if "unreachable" in text:
            return "network unreachable"
        return "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed by the server"
    if isinstance(exc, httpx.ReadError):
        return "connection lost"
    return type(exc).__name__


def _error_message(response: httpx.Response) -> str:
    """The `error.message` of an OpenAI-shaped body, else the status line."""
    try:
        return ErrorBody.model_validate_json(response.content).error.message
    except ValidationError:
        return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _raise_for_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code < 400:
        return
    message = f"{what}: {_error_message(response)}"
    if code in (401, 403):
        raise AuthRefused(message, code)
    if code == 404:
        raise NotFound(message)
    raise ClientError(message)


def _parse(model: type[M], response: httpx.Response, what: str) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ClientError(
            f"{what}: unexpected answer ({exc.error_count()} invalid fields)"
        ) from None


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its name ("" when none), id ("" when none) and data."""

    event: str
    id: str
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """The events of an SSE stream; comments and `retry:` lines are skipped."""
    data: list[str] = []
    event = event_id = ""
    async for line in lines:
        if not line:
            if data:
                yield SseEvent(event, event_id, "\n".join(data))
            data, event = [], ""
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            event_id = value
    if data:
        yield SseEvent(event, event_id, "\n".join(data))


def check_base_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; else `ClientError` (a usage problem)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ClientError(f"invalid server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError(f"invalid server URL {url!r}: expected http(s)://host[:port]")
    return url


class FleetClient:
    """Reads the fleet state and sends drain/undrain/shutdown through `infero server`."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials = Credentials(),
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        stream_read_timeout: float = 30.0,
        ca_file: str = "",
    ) -> None:
        self.base_url = check_base_url(base_url).rstrip("/")
        self.credentials = credentials
        self._ca_file = ca_file
        self._held: StateSnapshot | None = None
        """The document the stream's deltas apply to."""
        self._last_event_id = ""
        try:
            check_ca_file(ca_file)
        except ValueError as exc:
            raise ClientError(f"TLS_CA_FILE: {exc}") from None
        self._stream_timeout = httpx.Timeout(timeout, read=stream_read_timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            timeout=timeout,
            trust_env=False,
            verify=client_context(ca_file),
        )

    def _unreachable(self, exc: httpx.HTTPError) -> str:
        failure = verify_failure(exc)
        if failure is not None:
            return describe_failure(self.base_url, failure, self._ca_file)
        return f"{self.base_url} unreachable ({cause_of(exc)})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def set_api_key(self, key: str) -> None:
        """Use another API key from now on (after a 401 prompt)."""
        self.credentials = Credentials(key, self.credentials.operator_key)

    async def state(self) -> StateSnapshot:
        """One `GET /api/state`."""
        try:
            response = await self._http.get("/api/state", headers=self.credentials.for_read())
        except httpx.HTTPError as exc:
            raise ClientError(f"state: {self._unreachable(exc)}", cause_of(exc)) from exc
        _raise_for_status(response, "state")
        return _parse(StateSnapshot, response, "state")

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        """Snapshots from `GET /api/state/stream` until it ends (then `StreamLost`).

        The stream sends a whole document, then deltas (docs/state.md); each delta is applied
        to the document held, and the result yielded. `gone=list` keeps departed connectors
        (shown dimmed). A reconnect sends `Last-Event-ID`, so the server resumes with deltas
        when it still has them, else starts again with a document.
        """
        headers = {**self.credentials.for_read(), "Accept": "text/event-stream"}
        if self._last_event_id and self._held is not None:
            headers["Last-Event-ID"] = self._last_event_id
        try:
            async with self._http.stream(
                "GET",
                "/api/state/stream",
                params={"mode": "delta", "gone": "list"},
                headers=headers,
                timeout=self._stream_timeout,
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_status(response, "state stream")
                async for event in iter_sse(response.aiter_lines()):
                    snapshot = self._apply(event)
                    if snapshot is not None:
                        yield snapshot
        except httpx.HTTPError as exc:
            cause = cause_of(exc)
            if verify_failure(exc) is not None:
                raise StreamLost(f"state stream: {self._unreachable(exc)}", cause) from exc
            raise StreamLost(f"state stream lost ({cause})", cause) from exc
        raise StreamLost("state stream ended", "stream ended")

    def _apply(self, event: SseEvent) -> StateSnapshot | None:
        """The document after one event (None when the event cannot be used)."""
        try:
            if event.event == EVENT_DELTA:
                if self._held is None:
                    return None  # a delta without its document: wait for the next snapshot
                self._held = apply_delta(self._held, StateDelta.model_validate_json(event.data))
            else:
                self._held = StateSnapshot.model_validate_json(event.data)
        except ValidationError:
            logger.warning("state stream: skipped an invalid %s", event.event or "snapshot")
            return None
        self._last_event_id = event.id or self._last_event_id
        return self._held

    @property
    def target(self) -> str:
        """What the console shows as the server it watches."""
        return self.base_url

    replay = False
    """A live server, never a recording."""
    live_heartbeats = False
    """Deltas carry a live row's heartbeat time only when the row changes or turns late."""

    @property
    def can_act(self) -> bool:
        """Whether an operator key was given (actions need one)."""
        return bool(self.credentials.operator_key)

    def with_target(self, base_url: str) -> FleetClient:
        """A client for another server with the same keys (`:ctx URL`)."""
        return FleetClient(base_url, self.credentials, ca_file=self._ca_file)

    async def control(
        self, connector_id: str, action: Action, target: Target = "worker"
    ) -> ControlAccepted:
        """`POST /api/workers/{id}/{action}` (or `/api/mcp/relays/...`) with the operator key."""
        path = f"{_CONTROL_PREFIX[target]}/{quote(connector_id, safe='')}/{action}"
        try:
            response = await self._http.post(path, headers=self.credentials.for_action())
        except httpx.HTTPError as exc:
            raise ClientError(f"{action}: {self._unreachable(exc)}", cause_of(exc)) from exc
        _raise_for_status(response, action)
        return _parse(ControlAccepted, response, action)


def read_token(path: Path) -> str:
    """The connector's control token (`worker.token`), or "" when the file is missing."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ClientError(f"token file {path}: {exc.strerror}") from exc


class LocalClient:
    """Reads `/status` and sends `/control/*` to a connector's local status port."""

    def __init__(
        self,
        addr: str,
        token_file: Path,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.addr = addr
        self.token_file = token_file
        base = addr if "://" in addr else f"http://{addr}"
        self._http = httpx.AsyncClient(
            base_url=base, transport=transport, timeout=timeout, trust_env=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LocalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise ClientError(f"connector at {self.addr} unreachable") from exc
        _raise_for_status(response, path)
        return response

    async def status(self) -> WorkerStatusDoc:
        """`GET /status`."""
        return _parse(WorkerStatusDoc, await self._get("/status"), "status")

    async def version(self) -> VersionDoc:
        """`GET /version`."""
        return _parse(VersionDoc, await self._get("/version"), "version")

    def use_token_file(self, path: Path) -> None:
        self.token_file = path

    async def control(self, action: Action) -> None:
        """`POST /control/{action}` with `X-Auth-Token` read from the token file."""
        token = read_token(self.token_file)
        if not token:
            raise AuthRefused(f"{action}: no control token in {self.token_file}", 401)
        try:
            response = await self._http.post(f"/control/{action}", headers={"X-Auth-Token": token})
        except httpx.HTTPError as exc:
            raise ClientError(f"connector at {self.addr} unreachable") from exc
        _raise_for_status(response, action)
