"""Verified TLS for everything that dials `infero server` (connectors, console, `infero ctl`).

Certificates are checked against `TLS_CA_FILE` when set (a private CA), else against
`SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else against the system store. There is no way to
skip verification. A failed verification is described in one line: which host, which CA
source, and why.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context (TLS 1.2 or later); `ca_file` replaces the default trust."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_ca_file(value: str) -> str:
    """Validator of `TLS_CA_FILE`: empty, or a readable file of PEM certificates."""
    if value:
        try:
            client_context(value)
        except FileNotFoundError:
            raise ValueError(f"no such file: {value}") from None
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        except ssl.SSLError as exc:
            raise ValueError(f"{value} holds no usable PEM certificate ({exc.reason})") from None
    return value


def trust_source(ca_file: str = "") -> str:
    """The CA certificates a connection is verified against, in words."""
    if ca_file:
        return f"TLS_CA_FILE {ca_file}"
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        if os.environ.get(name):
            return f"{name} {os.environ[name]}"
    paths = ssl.get_default_verify_paths()
    return f"the system store ({paths.cafile or paths.capath or 'OpenSSL default'})"


def verify_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind `exc` (its cause or context), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_failure(url: str, error: ssl.SSLCertVerificationError, ca_file: str = "") -> str:
    """One line: `TLS certificate of host:port not trusted (CA: ...): reason`."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    reason = error.verify_message or error.reason or str(error)
    return f"TLS certificate of {host} not trusted (CA: {trust_source(ca_file)}): {reason}"
