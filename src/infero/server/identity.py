"""Whether this instance's INSTANCE_ID is free in the fleet: checked at start-up, before the
instance writes anything to Redis.

The lease of the id (`{infero}:instance:<id>`) names the process that wrote it (its `nonce`,
new in every process). A lease of another process is either a previous run of this instance
that died (kill -9, crash: its lease lingers up to LEASE_TTL) or another instance, alive, that
was given the same id. A live holder renews its lease at least every renewal period (a third
of LEASE_TTL, plus one turn of its loop); a dead one does not. So:

* no lease (the normal case): start; one Redis round trip.
* a lease whose address is this instance's INSTANCE_ADDR, where nothing listens (connection
  refused, before this process listens itself): a previous run of this instance; start at once.
* otherwise watch the lease until its holder is due to renew it: renewed (rewritten, or its
  expiry moved) means a live instance holds the id, and this one refuses to start
  (`DuplicateInstance`, exit code 2); not renewed, or gone, means its holder is gone: start.

When Redis cannot be read the instance starts (degraded, as without the check); the running
check in `membership.py` catches a duplicate once Redis answers. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from infero.common.settings import ConfigError
from infero.server.membership import (
    PREFIX,
    REDIS_FAILURES,
    REDIS_TIMEOUT,
    REFRESH,
    Lease,
    duplicate_message,
)

logger = logging.getLogger(__name__)

WATCH_STEP = 0.1
"""Seconds between two reads of a lease being watched for a renewal."""
WATCH_SLACK = 0.5
"""Seconds a live holder may be late with its renewal (a busy machine, a slow Redis)."""
PROBE_TIMEOUT = 1.0
"""Seconds a connection to the holder's address may take before it counts as unanswered."""


class DuplicateInstance(ConfigError):
    """Another live instance holds this INSTANCE_ID."""


def renewal_bound(ttl: float) -> float:
    """Most seconds between two writes of a live instance's lease: its renewal period (a third
    of LEASE_TTL) plus one turn of its loop."""
    renew_every = ttl / 3
    return renew_every + min(REFRESH, renew_every) + WATCH_SLACK


async def ensure_unique_id(redis: Any, instance_id: str, address: str, ttl: float) -> None:
    """Return when this instance may take `instance_id`; raise `DuplicateInstance` when a live
    instance holds it."""
    key = PREFIX + "instance:" + instance_id
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            raw, pttl = await _read(redis, key)
        if raw is None:
            return
        holder = _holder(instance_id, raw)
        if holder is None:
            return
        if holder.address == address and not await _answers(address):
            return  # a previous run of this instance, gone: nothing listens at its address
        renewed = await _renewed(redis, key, raw, pttl, ttl)
    except REDIS_FAILURES as failure:
        logger.warning(
            "cannot check in Redis that INSTANCE_ID %r is free (%s): starting; a duplicate is "
            "found once Redis answers",
            instance_id,
            failure,
        )
        return
    if renewed:
        raise DuplicateInstance(duplicate_message(instance_id, holder, ttl))
    logger.info(
        "INSTANCE_ID %r: the lease of a stopped run at %s was not renewed: taking it",
        instance_id,
        holder.address,
    )


def _holder(instance_id: str, raw: bytes) -> Lease | None:
    """The lease's holder (None: one this version cannot read, taken)."""
    try:
        return Lease.load(raw)
    except (ValueError, KeyError, TypeError):
        logger.warning("the lease of INSTANCE_ID %r cannot be read: taking it", instance_id)
        return None


async def _read(redis: Any, key: str) -> tuple[bytes | None, int]:
    pipe = redis.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    raw, pttl = await pipe.execute()
    return raw, int(pttl)


async def _answers(address: str) -> bool:
    """Whether something accepts a TCP connection at the URL's host and port (refused: no)."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except ConnectionRefusedError:
        return False
    except (OSError, TimeoutError, ValueError):
        return True  # unreachable or unresolvable from here: no proof that it is gone
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _renewed(redis: Any, key: str, raw: bytes, pttl: int, ttl: float) -> bool:
    """Watch the lease until its holder is due to renew it (LEASE_TTL is the same on every
    instance, so its age is LEASE_TTL minus what is left of it): whether it was renewed."""
    age = max(0.0, ttl - pttl / 1000) if pttl > 0 else 0.0
    deadline = time.monotonic() + max(0.0, renewal_bound(ttl) - age)
    while time.monotonic() < deadline:
        await asyncio.sleep(WATCH_STEP)  # Redis tells no one of a write: read on a timer
        async with asyncio.timeout(REDIS_TIMEOUT):
            now_raw, now_pttl = await _read(redis, key)
        if now_raw is None:
            return False
        if now_raw != raw or now_pttl > pttl:
            return True
        pttl = now_pttl
    return False
