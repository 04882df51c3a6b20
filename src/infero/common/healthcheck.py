"""`python -m infero.common.healthcheck`: the container image's HEALTHCHECK.

The image runs `infero server`, `infero llm` or `infero mcp`; this probe asks the one running
in its container. The server answers `GET /healthz` on `PORT` (over TLS when
`TLS_CERT_FILE` is set); a connector answers `GET /status` on `STATUS_ADDR` when it has one,
and is otherwise judged by its process alone (exit 0). Exit 1 means unhealthy.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

TIMEOUT = 4.0


def command(cmdline: bytes) -> str:
    """Which infero command a process runs: `server`, `llm` or `mcp`."""
    words = [Path(w.decode(errors="replace")).name for w in cmdline.split(b"\0") if w]
    for word in words:
        if word in ("llm", "infero-llm"):
            return "llm"
        if word in ("mcp", "infero-mcp"):
            return "mcp"
    return "server"


def probe_url(kind: str, environ: Mapping[str, str]) -> str | None:
    """The URL to probe, or None when a connector has no status port."""
    if kind == "server":
        scheme = "https" if environ.get("TLS_CERT_FILE") else "http"
        return f"{scheme}://127.0.0.1:{environ.get('PORT') or '8080'}/healthz"
    addr = environ.get("STATUS_ADDR", "")
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/status"


def check(url: str) -> bool:
    """True when `url` answers 200 within `TIMEOUT`."""
    # A loopback liveness probe of this container's own process: the certificate names the
    # public host, not 127.0.0.1, so it is not verified here (connectors always verify it).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> int:
    try:
        cmdline = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    url = probe_url(command(cmdline), os.environ)
    if url is None:
        return 0
    return 0 if check(url) else 1


if __name__ == "__main__":
    sys.exit(main())
