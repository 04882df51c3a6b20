"""HTTPS and WSS in `infero server`: one SSLContext, reloaded in place when the files change.

`TLS_CERT_FILE`/`TLS_KEY_FILE` turn TLS on for the main port and a separate metrics port.
A renewed certificate is loaded into the same `SSLContext`, so new handshakes present it
while every open connection (client streams, connector links) keeps going untouched. The
reload runs on SIGHUP (see `runner.py`) and when the files' modification times change
(checked every `POLL_INTERVAL` seconds: two `stat` calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

from infero.common.settings import ConfigError
from infero.server.settings import ServerSettings

logger = logging.getLogger(__name__)

POLL_INTERVAL = 10.0
"""Seconds between two looks at the certificate files' modification times."""

Stamp = tuple[tuple[int, int, int] | None, ...]


class ServerTls:
    """The server's TLS context (TLS 1.2 or later) and the files it was loaded from."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file or None
        """None: the private key is in the certificate file."""
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._files_stamp()
        try:
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS_CERT_FILE/TLS_KEY_FILE (--tls-cert/--tls-key): {self._problem(exc)}"
            ) from None

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert_file, self.key_file)

    def _problem(self, exc: OSError | ssl.SSLError) -> str:
        if isinstance(exc, ssl.SSLError):
            return f"cannot use {self._files()}: {exc.reason or exc}"
        return f"cannot read {exc.filename or self._files()}: {exc.strerror or exc}"

    def _files(self) -> str:
        return " and ".join(f for f in (self.cert_file, self.key_file) if f)

    def _files_stamp(self) -> Stamp:
        out = []
        for path in (self.cert_file, self.key_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        return tuple(out)

    def reload(self) -> bool:
        """Load the files again into the same context; on a problem keep the current pair.

        The pair is first checked in a scratch context, so a half-written renewal (a new
        certificate beside the old key) never reaches the live one.
        """
        self._stamp = self._files_stamp()
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            self._load(scratch)
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            logger.error("TLS: keeping the current certificate: %s", self._problem(exc))
            return False
        logger.info("TLS: certificate reloaded from %s (new connections use it)", self._files())
        return True

    def poll(self) -> bool:
        """Reload when either file changed since the last load; True when reloaded."""
        if self._files_stamp() == self._stamp:
            return False
        return self.reload()

    async def watch(self, interval: float) -> None:
        """Poll the files for ever (the app's cleanup context cancels it)."""
        while True:
            await asyncio.sleep(interval)
            self.poll()


TLS = web.AppKey("tls", ServerTls)
"""Present when the server serves TLS."""


def from_settings(settings: ServerSettings) -> ServerTls | None:
    """The TLS context the settings ask for, or None for plain HTTP; `ConfigError` if unusable."""
    if not settings.tls_cert_file:
        if settings.tls_key_file:
            raise ConfigError("TLS_KEY_FILE (--tls-key) is set but TLS_CERT_FILE is not")
        return None
    return ServerTls(settings.tls_cert_file, settings.tls_key_file)


def setup(app: web.Application, settings: ServerSettings) -> None:
    """Load the certificate (if configured) and watch its files while the app runs."""
    tls = from_settings(settings)
    if tls is None:
        return
    app[TLS] = tls

    async def watching(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(tls.watch(POLL_INTERVAL), name="tls-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watching)


def context_of(app: web.Application) -> ssl.SSLContext | None:
    """The SSLContext listeners of `app` serve with, or None for plain HTTP."""
    tls = app.get(TLS)
    return tls.context if tls is not None else None
