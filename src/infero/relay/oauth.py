"""OAuth 2.1 towards a Streamable HTTP provider that requires it (`MCP_OAUTH_TOKEN_FILE`).

The flow is the MCP SDK's (`mcp.client.auth.OAuthClientProvider`): protected resource and
authorization server metadata discovery, dynamic client registration (or the configured
`MCP_OAUTH_CLIENT_ID`), PKCE, refresh. The relay drives it with its readiness probe, sent
through httpx2 with the provider as auth; exchanges then carry the current access token.
Tokens and the client registration are cached in the token file (mode 0600), so a restarted
relay refreshes instead of asking again.

A first authorization needs a person: the relay logs the URL to open (and reports it as its
`last_error`, so the server's state and `infero tui` show it) and waits for the browser to
come back to `MCP_OAUTH_REDIRECT_URL`, which the relay serves on loopback while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from aiohttp import web
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl, ValidationError

from infero.common.buildinfo import BUILD
from infero.relay.probe import ProviderDown, first_message, initialize_body, server_name
from infero.relay.settings import RelaySettings

logger = logging.getLogger(__name__)

REFRESH_MARGIN = 60.0
"""Seconds before the access token expires at which the relay refreshes it."""


class FileTokenStorage:
    """The SDK's `TokenStorage` in one JSON file written with mode 0600.

    Next to the tokens it keeps when the access token expires (an absolute time), which the
    SDK does not persist, so a restarted relay knows to refresh before using it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable OAuth token file %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)

    def _update(self, **fields: Any) -> None:
        data = self.read()
        data.update(fields)
        self._write(data)

    def expires_at(self) -> float | None:
        value = self.read().get("expires_at")
        return float(value) if isinstance(value, int | float) else None

    async def get_tokens(self) -> OAuthToken | None:
        raw = (await asyncio.to_thread(self.read)).get("tokens")
        try:
            return OAuthToken.model_validate(raw) if raw else None
        except ValidationError:
            return None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        expires = time.time() + tokens.expires_in if tokens.expires_in else None
        dumped = tokens.model_dump(mode="json", exclude_none=True)
        await asyncio.to_thread(self._update, tokens=dumped, expires_at=expires)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        raw = (await asyncio.to_thread(self.read)).get("client")
        try:
            return OAuthClientInformationFull.model_validate(raw) if raw else None
        except ValidationError:
            return None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        dumped = client_info.model_dump(mode="json", exclude_none=True)
        await asyncio.to_thread(self._update, client=dumped)


class ProviderOAuth:
    """OAuth state of the relay's http provider: the SDK flow, its token file, the callback."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        on_waiting: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._on_waiting = on_waiting
        self._clock = clock
        self.url = settings.http_url()
        self.storage = FileTokenStorage(Path(settings.mcp_oauth_token_file).expanduser())
        self.state = "not authorized yet"
        """What the operator should know: authorized, waiting (with the URL), or why not."""
        redirect = settings.mcp_oauth_redirect_url
        secret = settings.mcp_oauth_client_secret
        metadata = OAuthClientMetadata(
            redirect_uris=[AnyUrl(redirect)],
            client_name="infero mcp relay",
            software_version=BUILD.version,
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="client_secret_post" if secret else "none",
            scope=settings.mcp_oauth_scopes or None,
        )
        self.provider = OAuthClientProvider(
            server_url=self.url,
            client_metadata=metadata,
            storage=self.storage,
            redirect_handler=self._redirect,
            callback_handler=self._callback,
        )
        self._configured: OAuthClientInformationFull | None = None
        if settings.mcp_oauth_client_id:
            self._configured = OAuthClientInformationFull(
                client_id=settings.mcp_oauth_client_id,
                client_secret=secret or None,
                redirect_uris=[AnyUrl(redirect)],
                token_endpoint_auth_method="client_secret_post" if secret else "none",
            )
        # The SDK keeps the expiry only in memory: seed it from the file, so an expired access
        # token is refreshed before it is sent.
        expires = self.storage.expires_at()
        # (the SDK reads an expiry of 0 as "none", so a past one is kept above 0)
        self.provider.context.token_expiry_time = None if expires is None else max(expires, 1.0)
        self._http = httpx2.AsyncClient(
            auth=self.provider,
            verify=not settings.mcp_http_insecure_skip_verify,
            timeout=httpx2.Timeout(min(settings.mcp_http_timeout, 30.0)),
        )

    async def close(self) -> None:
        await self._http.aclose()

    def access_token(self) -> str:
        """The access token exchanges carry ('' before the first authorization)."""
        tokens = self.provider.context.current_tokens
        return tokens.access_token if tokens else ""

    def refresh_in(self) -> float | None:
        """Seconds until the access token should be refreshed (None: no expiry known)."""
        expiry = self.provider.context.token_expiry_time
        return None if expiry is None else max(1.0, expiry - REFRESH_MARGIN - self._clock())

    async def probe(self, protocol_version: str) -> str:
        """`initialize` through the OAuth flow (authorizing or refreshing as needed)."""
        if self._configured is not None and await self.storage.get_client_info() is None:
            await self.storage.set_client_info(self._configured)
        body = initialize_body(protocol_version)
        headers = {"Accept": "application/json, text/event-stream"}
        try:
            response = await self._http.post(self.url, json=body, headers=headers)
            session = response.headers.get("Mcp-Session-Id")
            if session:
                with contextlib.suppress(httpx2.HTTPError):
                    await self._http.delete(self.url, headers={"Mcp-Session-Id": session})
        except OAuthFlowError as exc:
            self.state = f"authorization failed: {exc}"
            raise ProviderDown(f"OAuth authorization with {self.url} failed: {exc}") from None
        except httpx2.HTTPError as exc:
            raise ProviderDown(f"cannot reach {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            self.state = f"refused: HTTP {response.status_code}"
            raise ProviderDown(f"{self.url} refused our OAuth token: HTTP {response.status_code}")
        self.state = "authorized"
        if response.status_code >= 400:
            snippet = response.text[:200].strip()
            raise ProviderDown(
                f"{self.url} answered initialize with HTTP {response.status_code}: {snippet}"
            )
        message = first_message(response.content, response.headers.get("Content-Type", ""))
        return server_name(self.url, message)

    async def _redirect(self, authorization_url: str) -> None:
        self.state = f"waiting for authorization: open {authorization_url}"
        logger.warning(
            "the MCP provider needs an OAuth authorization: open %s in a browser; it returns to %s"
            " (on another machine: ssh -L %s, or curl the URL the browser ends on, on this host)",
            authorization_url,
            self._settings.mcp_oauth_redirect_url,
            _forward_hint(self._settings.mcp_oauth_redirect_url),
        )
        self._on_waiting(self.state)

    async def _callback(self) -> AuthorizationCodeResult:
        """Serve the redirect URL on loopback until the browser (or curl) comes back."""
        parts = urlsplit(self._settings.mcp_oauth_redirect_url)
        arrived: asyncio.Future[AuthorizationCodeResult] = (
            asyncio.get_running_loop().create_future()
        )

        async def back(request: web.Request) -> web.Response:
            query = request.query
            if "error" in query:
                description = query.get("error_description", "")
                if not arrived.done():
                    arrived.set_exception(OAuthFlowError(f"{query['error']} {description}".strip()))
                return web.Response(text="infero mcp: the authorization was refused.\n")
            if "code" not in query:
                return web.Response(status=400, text="infero mcp: no code in this URL.\n")
            if not arrived.done():
                arrived.set_result(
                    AuthorizationCodeResult(
                        code=query["code"], state=query.get("state"), iss=query.get("iss")
                    )
                )
            return web.Response(text="infero mcp: authorized; you can close this page.\n")

        app = web.Application()
        app.router.add_get(parts.path or "/", back)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                why = f"cannot listen on {host}:{port} for the callback: {exc}"
                raise OAuthFlowError(why) from None
            return await arrived
        finally:
            await runner.cleanup()


def _forward_hint(redirect_url: str) -> str:
    parts = urlsplit(redirect_url)
    port = parts.port or 80
    return f"{port}:{parts.hostname}:{port} <this host>"
