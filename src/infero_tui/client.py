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
from infero.protocol.errors import ErrorBody
from infero.protocol.state import StateSnapshot
from infero.protocol.status import VersionDoc, WorkerStatusDoc

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

Action = Literal["drain", "undrain", "shutdown"]
ACTIONS: tuple[Action, ...] = ("drain", "undrain", "shutdown")


class ClientError(Exception):
    """The request could not be completed; the message is one line for a human."""


class AuthRefused(ClientError):
    """401 or 403: the key is missing, wrong or lacks the operator right."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
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


async def iter_sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data:` payload of each SSE event; comments, `id:` and `event:` lines are skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


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
        return f"{self.base_url} unreachable ({type(exc).__name__})"

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
            raise ClientError(f"state: {self._unreachable(exc)}") from exc
        _raise_for_status(response, "state")
        return _parse(StateSnapshot, response, "state")

    async def snapshots(self) -> AsyncIterator[StateSnapshot]:
        """Snapshots from `GET /api/state/stream` until it ends (then `StreamLost`)."""
        try:
            async with self._http.stream(
                "GET",
                "/api/state/stream",
                params={"mode": "full"},
                headers={**self.credentials.for_read(), "Accept": "text/event-stream"},
                timeout=self._stream_timeout,
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_status(response, "state stream")
                async for data in iter_sse_data(response.aiter_lines()):
                    try:
                        yield StateSnapshot.model_validate_json(data)
                    except ValidationError:
                        logger.warning("state stream: skipped an invalid snapshot")
        except httpx.HTTPError as exc:
            if verify_failure(exc) is not None:
                raise StreamLost(f"state stream: {self._unreachable(exc)}") from exc
            raise StreamLost(f"state stream lost ({type(exc).__name__})") from exc
        raise StreamLost("state stream ended")

    async def control(self, worker_id: str, action: Action) -> ControlAccepted:
        """`POST /api/workers/{id}/{action}` with the operator key."""
        path = f"/api/workers/{quote(worker_id, safe='')}/{action}"
        try:
            response = await self._http.post(path, headers=self.credentials.for_action())
        except httpx.HTTPError as exc:
            raise ClientError(f"{action}: {self._unreachable(exc)}") from exc
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
