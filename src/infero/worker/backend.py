"""Model discovery: OpenAI-style `GET {base}/models` and Ollama `GET {root}/api/tags`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

DISCOVERY_TIMEOUT = 10.0
"""Longest a discovery call may take."""

Style = Literal["auto", "openai", "ollama"]
MAX_MODELS = 4096


class BackendDown(Exception):
    """The backend could not be reached or gave no usable model list (message says why)."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one successful probe found."""

    kind: Literal["openai", "ollama"]
    models: tuple[str, ...]
    owners: frozenset[str] = field(default=frozenset(), compare=False)
    """The `owned_by` values of an OpenAI-style list (`vllm` names vLLM)."""


def ollama_root(base_url: str) -> str:
    """`http://h:11434/v1/` -> `http://h:11434` (the native Ollama API lives at the root)."""
    base = base_url.rstrip("/")
    return base.removesuffix("/v1")


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    api_key: str,
    *,
    limit: int | None = None,
) -> Any:
    """The JSON answer of `GET url` (2xx only, at most `limit` bytes); else `BackendDown`."""
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        async with session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=DISCOVERY_TIMEOUT),
            allow_redirects=False,
        ) as resp:
            if not 200 <= resp.status < 300:
                raise BackendDown(f"GET {url}: HTTP {resp.status}")
            if limit is None:
                raw = await resp.read()
            else:
                raw = await _read_at_most(resp, limit, url)
    except aiohttp.ClientError as exc:
        raise BackendDown(f"GET {url}: {exc or type(exc).__name__}") from None
    except TimeoutError:
        raise BackendDown(f"GET {url}: no answer within {DISCOVERY_TIMEOUT:g}s") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # too deeply nested
        raise BackendDown(f"GET {url}: answer is not JSON") from None


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BackendDown(f"GET {url}: answer larger than {limit} bytes")
    return bytes(body)


def _names(items: Any, key: str, url: str) -> tuple[str, ...]:
    if not isinstance(items, list):
        raise BackendDown(f"GET {url}: unexpected answer (no model list)")
    names: list[str] = []
    for item in items[:MAX_MODELS]:
        name = item.get(key) if isinstance(item, dict) else None
        if isinstance(name, str) and name and len(name) <= 256 and name not in names:
            names.append(name)
    return tuple(names)


async def discover_openai(session: aiohttp.ClientSession, base_url: str, api_key: str) -> Discovery:
    """`GET {base}/models` (vLLM, llama.cpp server, LM Studio, Ollama's /v1)."""
    url = base_url.rstrip("/") + "/models"
    data = await get_json(session, url, api_key)
    items = data.get("data") if isinstance(data, dict) else None
    names = _names(items, "id", url)
    owners = frozenset(
        item["owned_by"]
        for item in (items if isinstance(items, list) else [])[:MAX_MODELS]
        if isinstance(item, dict) and isinstance(item.get("owned_by"), str)
    )
    return Discovery("openai", names, owners)


async def discover_ollama(session: aiohttp.ClientSession, base_url: str, api_key: str) -> Discovery:
    """`GET {root}/api/tags` of an Ollama server."""
    url = ollama_root(base_url) + "/api/tags"
    data = await get_json(session, url, api_key)
    items = data.get("models") if isinstance(data, dict) else None
    return Discovery("ollama", _names(items, "name", url))


async def discover(
    session: aiohttp.ClientSession, base_url: str, api_key: str, style: Style
) -> Discovery:
    """Models of the backend; `auto` tries OpenAI style first, then Ollama."""
    if style == "openai":
        return await discover_openai(session, base_url, api_key)
    if style == "ollama":
        return await discover_ollama(session, base_url, api_key)
    try:
        return await discover_openai(session, base_url, api_key)
    except BackendDown as first:
        try:
            return await discover_ollama(session, base_url, api_key)
        except BackendDown as second:
            raise BackendDown(f"{first}; {second}") from None
