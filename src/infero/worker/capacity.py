"""`MAX_CONCURRENCY=auto`: how many requests the backend runs at once, learned where it says so.

Some backends cannot run two requests at once and do not queue them either: the server of
llama-cpp-python interrupts the running request when another arrives, so both clients get a
200 and a cut answer. The connector therefore asks the backend, after each successful model
discovery (see docs/connector.md):

1. Ollama (found by `/api/tags` or `GET {root}/api/version`): 1, the default of
   `OLLAMA_NUM_PARALLEL`, which its API does not show (Ollama queues what it cannot run).
2. vLLM (`owned_by: vllm` in its model list): 256, vLLM's default `--max-num-seqs`, which its
   API does not show either (vLLM queues beyond it).
3. llama.cpp server: `total_slots` of `GET {root}/props` (its `--parallel`).
4. llama-cpp-python (`GET {root}/openapi.json` titled "llama.cpp Python API"): 1.
5. Anything else: 2.

The runtime is identified again when the backend comes back after being down or its model
list changes; llama.cpp's `/props` is read at every poll (a restart may change `--parallel`;
no answer keeps the last count).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from infero.worker.backend import BackendDown, Discovery, get_json, ollama_root

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
"""Longest one capacity question may take (a backend that does not answer has said nothing)."""

OPENAPI_LIMIT = 1024 * 1024
"""Largest `/openapi.json` read to recognise llama-cpp-python."""

MAX_SLOTS = 100_000


@dataclass(frozen=True, slots=True)
class Capacity:
    """How many requests the connector takes at once, and why."""

    value: int
    runtime: str
    """`configured`, `llama.cpp`, `llama-cpp-python`, `vllm`, `ollama` or `unknown`."""
    reason: str


OLLAMA = Capacity(1, "ollama", "OLLAMA_NUM_PARALLEL's default; not visible over Ollama's API")
VLLM = Capacity(256, "vllm", "vLLM's default --max-num-seqs; not visible over vLLM's API")
LLAMA_CPP_PYTHON = Capacity(
    1, "llama-cpp-python", "it interrupts a running request when another arrives"
)
UNKNOWN = Capacity(2, "unknown", "the backend does not say what it can run at once")


class CapacityLearner:
    """The connector's current capacity: `MAX_CONCURRENCY`, or learned when it is `auto`."""

    def __init__(self, configured: int | Literal["auto"]) -> None:
        self.auto = configured == "auto"
        self.current = (
            UNKNOWN
            if configured == "auto"
            else Capacity(configured, "configured", "MAX_CONCURRENCY")
        )
        self._identified: tuple[str, tuple[str, ...]] | None = None
        """The backend kind and models the current runtime was identified with."""

    @property
    def value(self) -> int:
        """Requests taken at once."""
        return self.current.value

    def backend_down(self) -> None:
        """The backend stopped answering: identify it again when it is back."""
        self._identified = None

    async def learn(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str, found: Discovery
    ) -> bool:
        """Re-learn after a successful discovery; True when the capacity changed."""
        if not self.auto:
            return False
        key = (found.kind, found.models)
        if key != self._identified:
            learned = await identify(session, base_url, api_key, found)
            self._identified = key
        elif self.current.runtime == "llama.cpp":
            # Same server: only its slot count may have changed; no answer keeps the last one.
            learned = await llama_cpp_slots(session, base_url, api_key) or self.current
        else:
            return False
        if learned == self.current:
            return False
        logger.info(
            "backend capacity: %d request(s) at once (%s: %s)",
            learned.value,
            learned.runtime,
            learned.reason,
        )
        changed = learned.value != self.current.value
        self.current = learned
        return changed


async def identify(
    session: aiohttp.ClientSession, base_url: str, api_key: str, found: Discovery
) -> Capacity:
    """What the backend behind `base_url` can run at once (see the module docstring)."""
    if found.kind == "ollama":
        return OLLAMA
    if "vllm" in found.owners:
        return VLLM
    slots = await llama_cpp_slots(session, base_url, api_key)
    if slots is not None:
        return slots
    root = ollama_root(base_url)
    version = await _ask(session, root + "/api/version", api_key)
    if isinstance(version, dict) and isinstance(version.get("version"), str):
        return OLLAMA
    openapi = await _ask(session, root + "/openapi.json", api_key, limit=OPENAPI_LIMIT)
    info = openapi.get("info") if isinstance(openapi, dict) else None
    title = info.get("title") if isinstance(info, dict) else None
    if isinstance(title, str) and "llama.cpp python api" in title.lower():
        return LLAMA_CPP_PYTHON
    return UNKNOWN


async def llama_cpp_slots(
    session: aiohttp.ClientSession, base_url: str, api_key: str
) -> Capacity | None:
    """`total_slots` of a llama.cpp server's `GET {root}/props`, if it answers one."""
    props = await _ask(session, ollama_root(base_url) + "/props", api_key)
    slots = props.get("total_slots") if isinstance(props, dict) else None
    if isinstance(slots, int) and not isinstance(slots, bool) and 1 <= slots <= MAX_SLOTS:
        return Capacity(slots, "llama.cpp", "total_slots of /props (--parallel)")
    return None


async def _ask(
    session: aiohttp.ClientSession, url: str, api_key: str, *, limit: int = 64 * 1024
) -> Any:
    """The JSON at `url`, or None when the backend does not answer it."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return await get_json(session, url, api_key, limit=limit)
    except (BackendDown, TimeoutError):
        return None
