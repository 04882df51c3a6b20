"""Request counters of a fleet sharing REDIS_ADDR: kept in Redis, counted once, shown everywhere.

The rule: a request is counted once, fleet-wide, by the instance whose connector served it
(its home); the instance that relayed it there counts it only as relayed (`request_relayed`,
a per-instance Prometheus counter). Each instance adds what it counted to Redis every
`FLUSH_INTERVAL`: one `EVALSHA` of a Lua script applies every increment (HINCRBY,
HINCRBYFLOAT, HSET of a connector's `last_error`) and answers, only when something changed
since this instance last read, the models' totals and the connectors whose counters changed
since (a sorted set scores each connector hash with the version of its last change). So Redis
sees at most one command per instance and interval, whatever the number of requests or
chunks, and its size is that of what changed: an idle flush names no connector and reads
nothing, one that counted requests names the connectors that served them. An instance reads
every connector's counters once (at start, and after Redis restarted empty), then only the
changes. What an instance shows is the last totals read plus what it counted since
(`pending`), so its own requests appear at once, and the figures never go back (except when
Redis restarted empty, see docs/scale-out.md).

Keys (every one in the `{infero}` slot): `{infero}:counters` (per model, `<counter>/<model>`,
plus the version `v` and the epoch `e` of the data set), one `{infero}:counters:connector:<id>`
per connector id (its totals, `last_error`, and `<counter>/<model>`), which expires
`CONNECTOR_RETENTION` after it last counted a request, and `{infero}:counters:changed` (a
sorted set: each connector hash, scored with the version of its last change; the hashes that
expired leave it as flushes go by, oldest first), and one `{infero}:counters:flushed:<instance
id>` per instance: the last flush applied (`<writer>:<sequence number>`, the writer a random id
of the process), so a flush sent again after its answer was lost is not counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from infero.server.events import RequestFinished, RequestRejected
from infero.server.membership import PREFIX, REDIS_FAILURES, REDIS_TIMEOUT
from infero.server.registry import Counters, WorkerStats

logger = logging.getLogger(__name__)

FLEET_KEY = PREFIX + "counters"
CONNECTOR_KEY = PREFIX + "counters:connector:"
CHANGED_KEY = PREFIX + "counters:changed"
FLUSHED_KEY = PREFIX + "counters:flushed:"
FLUSH_INTERVAL = 1.0
"""Seconds between two flushes: what an instance killed with kill -9 may lose at most."""
CONNECTOR_RETENTION = 7 * 24 * 3600.0
"""Seconds the counters of a connector id stay in Redis after it last counted a request."""

ERROR_LIMIT = 1000
"""Characters of a connector's `last_error` stored in Redis."""

_FLOATS = frozenset({"ttft_s_total", "duration_s_total"})
_COUNTERS = tuple(f.name for f in fields(Counters))
_PER_MODEL = (
    "success_total",
    "error_total",
    "cancelled_total",
    "tokens_in_total",
    "tokens_out_total",
)
"""A connector's counters per model (`per_model` of its `/api/state` row)."""

_SCRIPT = """
local n = tonumber(ARGV[7])
local apply = n > 0
if apply then
  local last = redis.call('GET', KEYS[3])
  if last then
    local writer, seq = string.match(last, '^(%x+):(%d+)$')
    if writer == ARGV[5] and tonumber(seq) >= tonumber(ARGV[6]) then apply = false end
  end
end
local touched = {}
if apply then
  local a = 8
  for i = 1, n do
    local key = KEYS[tonumber(ARGV[a])]
    local op = ARGV[a + 1]
    if op == 'i' then
      redis.call('HINCRBY', key, ARGV[a + 2], ARGV[a + 3])
    elseif op == 'f' then
      redis.call('HINCRBYFLOAT', key, ARGV[a + 2], ARGV[a + 3])
    else
      redis.call('HSET', key, ARGV[a + 2], ARGV[a + 3])
    end
    touched[key] = true
    a = a + 4
  end
  redis.call('SET', KEYS[3], ARGV[5] .. ':' .. ARGV[6], 'PX', ARGV[3])
end
redis.call('HSETNX', KEYS[1], 'e', ARGV[4])
local epoch = redis.call('HGET', KEYS[1], 'e')
local v
if apply then
  v = redis.call('HINCRBY', KEYS[1], 'v', 1)
  for key in pairs(touched) do
    if key ~= KEYS[1] then
      redis.call('PEXPIRE', key, ARGV[3])
      redis.call('ZADD', KEYS[2], v, key)
    end
  end
  for _ = 1, 10 do
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    if oldest == nil or redis.call('EXISTS', oldest) == 1 then break end
    redis.call('ZREM', KEYS[2], oldest)
  end
else
  v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
end
local same = epoch == ARGV[1]
if same and tostring(v) == ARGV[2] then return {epoch, v} end
local out = {epoch, v, redis.call('HGETALL', KEYS[1])}
local changed
if same then
  changed = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf')
else
  changed = redis.call('ZRANGE', KEYS[2], 0, -1)
end
for _, key in ipairs(changed) do
  local counts = redis.call('HGETALL', key)
  if #counts == 0 then redis.call('ZREM', KEYS[2], key) end
  out[#out + 1] = key
  out[#out + 1] = counts
end
return out
"""
"""KEYS: the fleet hash, the change set, the instance's last applied flush, then the connector
hashes this flush adds to. ARGV: the epoch and version last read, retention in ms, a fresh
epoch, the writer (this process) and the flush's sequence number, the number of operations,
then for each operation the index of its key in KEYS, `i`/`f`/`s`, the field and the value.
The operations are applied once: a flush whose writer and sequence number (or a later one)
were already applied (its answer was lost and it was sent again) only reads. The change set
scores each connector hash with the version of its last change; a flush that
adds something forgets up to 10 expired hashes there, oldest first. The answer:
the epoch, the version, and when they differ from those last read, the fleet hash and each
connector hash (name, fields) that changed since that version (every one in the change set
when the epoch differs: a full read, which also forgets hashes that expired)."""


@dataclass(slots=True)
class ConnectorCounts:
    """One connector id's counters (totals, per model, its last error)."""

    total: Counters = field(default_factory=Counters)
    per_model: dict[str, Counters] = field(default_factory=dict)
    last_error: str = ""

    def stats(self) -> WorkerStats:
        """As the registry keeps them for a local connector."""
        total = self.total
        return WorkerStats(
            processed_total=total.requests_total,
            failures_total=total.error_total,
            processing_s_total=total.duration_s_total,
            last_error=self.last_error,
            total=total,
            per_model=self.per_model,
        )


@dataclass(slots=True)
class Counts:
    """Counters by model and by connector id."""

    models: dict[str, Counters] = field(default_factory=dict)
    connectors: dict[str, ConnectorCounts] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.models or self.connectors)

    def record(self, event: RequestFinished) -> None:
        """Count one finished request."""
        args: dict[str, Any] = {
            "outcome": event.outcome,
            "duration_s": event.duration_s,
            "ttft_s": event.ttft_s,
            "tokens_in": event.tokens_in,
            "tokens_out": event.tokens_out,
        }
        _counters(self.models, event.model).record(**args)
        connector = self.connectors.get(event.worker_id)
        if connector is None:
            connector = self.connectors[event.worker_id] = ConnectorCounts()
        connector.total.record(**args)
        _counters(connector.per_model, event.model).record(**args)
        if event.outcome == "error":
            connector.last_error = event.error

    def add(self, other: Counts) -> None:
        """Add `other` into these counts (its last errors win)."""
        for name, counters in other.models.items():
            _add(_counters(self.models, name), counters)
        for connector_id, theirs in other.connectors.items():
            mine = self.connectors.get(connector_id)
            if mine is None:
                mine = self.connectors[connector_id] = ConnectorCounts()
            _add(mine.total, theirs.total)
            for name, counters in theirs.per_model.items():
                _add(_counters(mine.per_model, name), counters)
            mine.last_error = theirs.last_error or mine.last_error


def _counters(into: dict[str, Counters], name: str) -> Counters:
    found = into.get(name)
    if found is None:
        found = into[name] = Counters()
    return found


def _add(into: Counters, other: Counters) -> None:
    for name in _COUNTERS:
        setattr(into, name, getattr(into, name) + getattr(other, name))


def _sum(parts: Iterable[Counters | None]) -> Counters | None:
    found = [p for p in parts if p is not None]
    if len(found) <= 1:
        return found[0] if found else None
    total = Counters()
    for part in found:
        _add(total, part)
    return total


class FleetCounters:
    """This instance's share of the fleet's counters, flushed to Redis; the fleet's totals.

    An `EventBus` listener: `request_finished` costs a few dict updates (no I/O).
    """

    def __init__(
        self,
        redis: Any,
        *,
        instance_id: str,
        on_change: Callable[[set[str]], None] = lambda ids: None,
        degraded: Callable[[], bool] = lambda: False,
        interval: float = FLUSH_INTERVAL,
        retention: float = CONNECTOR_RETENTION,
    ) -> None:
        self.redis = redis
        self.on_change = on_change
        """Called when a read brought other totals, with the connector ids whose number of
        requests changed."""
        self.degraded = degraded
        """Redis is known unreachable: do not try (the counts wait in `pending`)."""
        self.interval = interval
        self.retention = retention
        self.totals = Counts()
        """The fleet's totals as last read from Redis."""
        self.sending = Counts()
        """Counts of the flush in progress or not answered (shown until the read that includes
        them; sent again as they are, under the same sequence number, until answered)."""
        self.pending = Counts()
        """Counts of this instance not sent yet."""
        self.epoch = ""
        """Names the data set in Redis (a new one after Redis restarted empty)."""
        self.version = 0
        """The fleet's counters as last read are those of this version (of `epoch`)."""
        self.flushed_key = FLUSHED_KEY + instance_id
        self.writer = secrets.token_hex(8)
        """This process, in the flushes' (writer, sequence number)."""
        self.seq = 0
        """The sequence number of the last flush that carried counts."""
        self._failing = False
        self._script = redis.register_script(_SCRIPT)

    # ---- Listener -------------------------------------------------------------------------

    def request_finished(self, event: RequestFinished) -> None:
        """Count a request served by a connector of this instance."""
        self.pending.record(event)

    def request_rejected(self, event: RequestRejected) -> None:
        """Rejections are per instance (Prometheus only)."""

    def request_relayed(self, event: RequestFinished) -> None:
        """Counted by the home instance, not here."""

    # ---- what is shown --------------------------------------------------------------------

    def model(self, name: str) -> Counters | None:
        """The fleet's counters of a model (None: never counted)."""
        return _sum(c.models.get(name) for c in (self.totals, self.sending, self.pending))

    def connector(self, connector_id: str) -> WorkerStats | None:
        """The fleet's counters of a connector id (None: never counted)."""
        merged = Counts()
        for part in (self.totals, self.sending, self.pending):
            found = part.connectors.get(connector_id)
            if found is not None:
                merged.add(Counts(connectors={connector_id: found}))
        counts = merged.connectors.get(connector_id)
        return counts.stats() if counts is not None else None

    def requests_of_model(self, name: str) -> int:
        """Requests counted for a model (a row's fingerprint)."""
        return sum(
            c.models[name].requests_total
            for c in (self.totals, self.sending, self.pending)
            if name in c.models
        )

    def requests_of_connector(self, connector_id: str) -> int:
        """Requests counted for a connector id (a row's fingerprint)."""
        return _requests(connector_id, self.totals, self.sending, self.pending)

    def models(self) -> dict[str, Counters]:
        """The fleet's counters of every model counted."""
        merged = Counts()
        for part in (self.totals, self.sending, self.pending):
            for name, counters in part.models.items():
                _add(_counters(merged.models, name), counters)
        return merged.models

    # ---- Redis ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send what was counted and read what changed since the last read (one command).

        Each flush that carries counts has a sequence number; one that failed (or whose answer
        was lost) is sent again as it was, and Redis applies it once. Raises one of
        REDIS_FAILURES; the counts then wait for the next flush (what was counted since, for the
        one after).
        """
        if not self.sending:  # else the last flush was not answered: the same one again
            self.sending, self.pending = self.pending, Counts()
            if self.sending:
                self.seq += 1
        ids = sorted(self.sending.connectors)
        keys = [FLEET_KEY, CHANGED_KEY, self.flushed_key, *(CONNECTOR_KEY + i for i in ids)]
        index = {connector_id: n for n, connector_id in enumerate(ids, start=4)}
        ops = list(_operations(self.sending, index))
        fresh = secrets.token_hex(8)
        retention = int(self.retention * 1000)
        args = [self.epoch, self.version, retention, fresh, self.writer, self.seq, len(ops) // 4]
        answer = await self._script(keys=keys, args=[*args, *ops])
        epoch, version = _text(answer[0]), int(answer[1])
        changed: set[str] = set()
        if len(answer) > 2:
            full = epoch != self.epoch  # every connector hash was read
            connectors = {} if full else dict(self.totals.connectors)
            read = set(self.sending.connectors)
            for key, reply in zip(answer[3::2], answer[4::2], strict=True):
                connector_id = _text(key).removeprefix(CONNECTOR_KEY)
                read.add(connector_id)
                if reply:
                    connectors[connector_id] = _parse_connector(reply)
                else:  # expired
                    connectors.pop(connector_id, None)
            if full:
                read |= self.totals.connectors.keys()
            totals = Counts(models=_parse_models(answer[2]), connectors=connectors)
            changed = {
                i for i in read if _requests(i, self.totals, self.sending) != _requests(i, totals)
            }
            self.totals = totals
        self.sending = Counts()
        if (epoch, version) != (self.epoch, self.version) or changed:
            self.epoch, self.version = epoch, version
            self.on_change(changed)

    async def run(self) -> None:
        """Flush every `interval` until cancelled (a Redis failure waits for the next one)."""
        while True:
            await asyncio.sleep(self.interval)  # a timer: counts are coalesced by the clock
            if self.degraded():
                continue
            try:
                await self.flush()
            except REDIS_FAILURES as failure:
                if not self._failing:  # once per run of failures
                    logger.warning("counters not flushed to Redis (%s); kept for later", failure)
                self._failing = True
            else:
                self._failing = False

    async def close(self) -> None:
        """The last flushes at shutdown (best effort, bounded by REDIS_TIMEOUT): a flush not
        answered yet, then what was counted since."""
        if self.degraded():
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                while self.pending or self.sending:
                    await self.flush()
        except REDIS_FAILURES as failure:
            logger.warning("counters of the last %ss not flushed (%s)", self.interval, failure)


def _requests(connector_id: str, *parts: Counts) -> int:
    """Requests counted for a connector id in `parts`."""
    return sum(
        p.connectors[connector_id].total.requests_total
        for p in parts
        if connector_id in p.connectors
    )


def _operations(counts: Counts, index: dict[str, int]) -> Iterable[Any]:
    """Flat (key index, op, field, value) of every increment in `counts`."""
    for name, counters in counts.models.items():
        yield from _increments(1, counters, _COUNTERS, "/" + name)
    for connector_id, connector in counts.connectors.items():
        n = index[connector_id]
        yield from _increments(n, connector.total, _COUNTERS, "")
        for name, counters in connector.per_model.items():
            yield from _increments(n, counters, _PER_MODEL, "/" + name)
        if connector.last_error:
            yield from (n, "s", "last_error", connector.last_error[:ERROR_LIMIT])


def _increments(n: int, counters: Counters, names: Iterable[str], suffix: str) -> Iterable[Any]:
    for name in names:
        value = getattr(counters, name)
        if not value:
            continue
        if name in _FLOATS:
            yield from (n, "f", name + suffix, format(value, ".9f"))
        else:
            yield from (n, "i", name + suffix, value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[Any]) -> Iterable[tuple[str, str]]:
    for n in range(0, len(flat) - 1, 2):
        yield _text(flat[n]), _text(flat[n + 1])


def _store(into: Counters, name: str, value: str) -> None:
    if name in _FLOATS:
        setattr(into, name, float(value))
    elif name in _COUNTERS:
        setattr(into, name, int(value))


def _parse_models(flat: list[Any]) -> dict[str, Counters]:
    """Counters by model from the fleet hash (other fields skipped)."""
    models: dict[str, Counters] = {}
    for key, value in _pairs(flat):
        name, _, model = key.partition("/")
        if model:
            _store(_counters(models, model), name, value)
    return models


def _parse_connector(flat: list[Any]) -> ConnectorCounts:
    """A connector's counters from its hash (unknown fields, `_v` among them, skipped)."""
    connector = ConnectorCounts()
    for key, value in _pairs(flat):
        name, _, model = key.partition("/")
        if model:
            _store(_counters(connector.per_model, model), name, value)
        elif name == "last_error":
            connector.last_error = value
        else:
            _store(connector.total, name, value)
    return connector
