"""One FIFO queue per model across the instances of a fleet sharing REDIS_ADDR.

Each model with waiters has a sorted set `{infero}:queue:<model>` in Redis: the score is a
fleet-wide sequence number (`INCR {infero}:queue-seq`), the member `<instance>/<ticket>/<ms>`
(the waiter's instance, its id there, and when it joined, in Unix milliseconds). A request that
takes its place back (its connector refused it `busy`) joins at the head instead: one below the
head's score, so it may be zero or negative. The set
`{infero}:queues` names the models with waiters. A request that queues costs a constant number
of Redis commands (join: one script; each time it may take a slot: one; leave: one); one that
does not queue costs none. Each script may run twice to the same effect: the client sends a
command again after a connection error, so one whose answer was lost runs again.

Only the fleet's head may take a slot: when capacity may be free (a local release, a wake
message from another instance, a fresher view of the others) the oldest local waiter of a model
checks that it heads the fleet queue, then takes a local slot or reserves one at a remote
connector's home (`Seats`, see federated.py). A home with a free slot whose local waiters are
not the head wakes the head's instance instead. Every instance mirrors the sets in memory (read
on a timer, about twice a second while anyone waits) for positions, `/api/state` and routing
newcomers behind the queue, and purges entries of instances whose lease expired. When Redis
cannot be reached a waiter goes by local order. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from infero.server.changes import ChangeFeed
from infero.server.membership import PREFIX, REDIS_FAILURES, REDIS_TIMEOUT
from infero.server.scheduler import Queued, Scheduler
from infero.server.shared import QueueFull, Route

logger = logging.getLogger(__name__)

QUEUES = PREFIX + "queues"
"""The set of models with waiters."""
SEQUENCE = PREFIX + "queue-seq"
"""The fleet-wide arrival counter (scores of every queue)."""
REFRESH_BUSY = 0.5
"""Seconds between two reads of the queues while anyone in the fleet waits."""
REFRESH_IDLE = 1.0
"""Seconds between two reads of the queues otherwise (one SMEMBERS)."""
PURGE_GRACE = 5.0
"""Seconds beyond QUEUE_TIMEOUT + LEASE_TTL after which any entry is purged as stale."""
RACE_WINDOW = 5.0
"""Seconds after a connector last had no free slot (or linked, or changed its status) during
which a newcomer that takes one of its slots first asks Redis whether anyone waits: a waiter
may have joined at another instance (seeing it full) since this instance last read the queues.
Longer than a read of the queues (REFRESH_IDLE) plus the time the other instances take to see
the connector's room (membership: a coalesced write, then the change log or a header read)."""

Failure = REDIS_FAILURES
"""What a Redis call raises when Redis cannot be reached or answered badly."""
CALL_TIMEOUT = 2 * REDIS_TIMEOUT
"""Most seconds one queue command of a waiter may take, the client's retries and Cluster
redirections included (then it counts as failed): a request is answered, or refused, within
QUEUE_TIMEOUT plus a few of these, whatever Redis does."""

_JOIN = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then return tonumber(score) end
if ARGV[4] == '1' then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if head[2] then score = tonumber(head[2]) - 1 end
elseif redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return false
end
if not score then score = redis.call('INCR', KEYS[2]) end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return score
"""
"""Join a queue: at the tail with a new sequence number, unless it holds QUEUE_MAX waiters
(nil); or, with ARGV[4] = 1, at the head (one below the head's score; a new number when the
queue is empty) whatever its length. A member already in the queue keeps its number: the script
sent again after its answer was lost (the client retries on a new connection) neither moves the
waiter nor refuses it."""

_HEAD = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  score = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], score, ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[2])
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
return {head, tostring(score)}
"""
"""The head of a queue, and the waiter's score (it rejoins at the tail when its entry was lost:
Redis restarted empty, or it was purged while this instance could not renew its lease)."""

_LEAVE = """
if #ARGV > 1 then redis.call('ZREM', KEYS[1], unpack(ARGV, 2)) end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""
"""Remove members (ARGV[2..]) of model ARGV[1]'s queue, and the model from the set once empty."""


def queue_key(model: str) -> str:
    """The sorted set of `model`'s waiters."""
    return PREFIX + "queue:" + model


@dataclass(frozen=True, slots=True)
class Entry:
    """One waiter of the fleet queue, as mirrored in memory."""

    member: str
    seq: int
    instance: str
    joined: float
    """Unix time it joined."""
    enqueued_at: float
    """The same moment on this instance's monotonic clock (for ages in `/api/state`)."""


class Seats(Protocol):
    """What the queue needs of the dispatcher: where a head finds a slot."""

    def room(self, ticket: FleetTicket, hint: str | None) -> bool:
        """Whether a slot looks free for the ticket (no I/O): locally, or remotely by the
        others' leases (`hint`: a connector said to be free by its home)."""
        ...

    def local_room(self, model: str) -> str | None:
        """A connector of this instance with a free slot for `model`."""
        ...

    async def take(self, ticket: FleetTicket, hint: str | None) -> Route | None:
        """A local slot, else a slot reserved at a remote connector's home."""
        ...

    def abandon(self, route: Route) -> None:
        """Free a slot taken for a waiter that left before using it."""
        ...

    async def wake(self, instance_id: str, model: str, hint: str) -> None:
        """Tell another instance that its waiter heads the queue and `hint` has room."""
        ...


class FleetTicket:
    """A place in a model's fleet-wide queue, held by this instance."""

    __slots__ = (
        "_again",
        "_hint",
        "_left",
        "_route",
        "_signal",
        "_taken",
        "_task",
        "enqueued_at",
        "exclude",
        "local_only",
        "member",
        "model",
        "queue",
        "removed",
        "seq",
        "target",
    )

    def __init__(
        self,
        queue: FleetQueue,
        model: str,
        exclude: frozenset[str],
        target: str | None,
        *,
        local_only: bool,
        member: str,
        enqueued_at: float,
    ) -> None:
        self.queue = queue
        self.model = model
        self.exclude = exclude
        self.target = target
        self.local_only = local_only
        """Only this instance's connectors (a request relayed here by another instance)."""
        self.member = member
        self.seq: int | None = None
        """The score in the fleet queue, its order there (None until Redis gave it)."""
        self.enqueued_at = enqueued_at
        self.removed = False
        """Out of the queue (a route was found, or it left)."""
        self._signal = asyncio.Event()
        """Set when a route arrived or the position changed."""
        self._route: Route | None = None
        self._taken = False
        self._left = False
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._hint: str | None = None

    async def position(self) -> int:
        """1-based place in the fleet queue as last mirrored (0 once a route was found)."""
        return 0 if self._route is not None else self.queue.position(self)

    async def wait(self) -> Route | None:
        if self._route is None and not self._signal.is_set():
            await self._signal.wait()
        self._signal.clear()
        if self._route is not None:
            self._taken = True
        return self._route

    async def leave(self) -> None:
        if self._left:
            return
        self._left = True
        task = self._task
        if task is not None and not task.done():
            if self._route is None:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # a found route: let it leave
        if self._route is not None and not self._taken:
            self.queue.seats.abandon(self._route)
        if not self.removed:
            await self.queue.remove(self)

    def moved(self) -> None:
        """The position changed."""
        self._signal.set()

    def kick(self, hint: str | None = None) -> None:
        """Try to take a slot now, unless the ticket is already trying (then once more)."""
        if self._left or self._route is not None or self.seq is None:
            return
        if hint is not None:
            self._hint = hint
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._try(), name="fleet-queue-attempt")

    async def _try(self) -> None:
        while True:
            self._again = False
            hint, self._hint = self._hint, None
            route = await self.queue.attempt(self, hint)
            if route is not None:
                self._route = route  # before any await: `leave` frees it if not taken
                self._signal.set()
                await self.queue.remove(self)
                return
            if not self._again:
                return


class FleetQueue:
    """This instance's waiters in the fleet-wide queues, and the mirror of every waiter."""

    def __init__(
        self,
        *,
        redis: Any,
        instance_id: str,
        queue_max: int,
        queue_timeout: float,
        lease_ttl: float,
        changes: ChangeFeed,
        alive: Callable[[], set[str] | None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.instance_id = instance_id
        self.queue_max = queue_max
        self.queue_timeout = queue_timeout
        self.lease_ttl = lease_ttl
        self.changes = changes
        self.alive = alive
        """Ids of the live instances (None while membership cannot tell: Redis unreachable)."""
        self.clock = clock
        self.wall = wall
        self._offset = clock() - wall()
        """Monotonic minus Unix time, taken once: a mirrored entry's `enqueued_at` stays the
        same from one read to the next (its row in `/api/state` changes only when it does)."""
        self.seats: Seats = _NoSeats()
        """Set by the owner before the first request."""
        self.local: dict[str, list[FleetTicket]] = {}
        """This instance's waiters per model, in fleet order."""
        self.others: dict[str, tuple[Entry, ...]] = {}
        """The other instances' waiters per model, as last read."""
        self.mirror: dict[str, tuple[Entry, ...]] = {}
        """Every waiter per model in fleet order: `others` merged with `local`."""
        self.degraded = False
        """The last queue command failed: new waiters use the local queue."""
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)
        self._tasks: set[asyncio.Task[None]] = set()
        self._join = redis.register_script(_JOIN)
        self._head = redis.register_script(_HEAD)
        self._leave = redis.register_script(_LEAVE)

    # ---- the request path --------------------------------------------------------------

    def waiting(self, model: str) -> bool:
        """Whether anyone in the fleet waits for `model` (as mirrored: no Redis command)."""
        return bool(self.mirror.get(model))

    async def waiting_now(self, model: str) -> bool:
        """Whether anyone in the fleet waits for `model`, asked of Redis (one ZRANGE); the
        answer is mirrored at once. For a newcomer that may race a waiter who joined at another
        instance since the last read of the queues (False when Redis cannot answer)."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                pairs = await self.redis.zrange(queue_key(model), 0, -1, withscores=True)
        except Failure as failure:
            self.failed(failure)
            return False
        wall, alive = self.wall(), self.alive()
        kept = []
        for raw, score in pairs:
            entry = _entry(_text(raw), score, self._offset)
            if entry is None or entry.instance == self.instance_id:
                continue  # not ours to mirror (this instance's waiters are merged at once)
            if not self._stale(entry, wall, alive):
                kept.append(entry)
        if kept:
            self._set_others({**self.others, model: tuple(kept)})
        return self.waiting(model)

    async def enqueue(
        self,
        model: str,
        exclude: frozenset[str],
        target: str | None,
        *,
        local_only: bool,
        first: bool = False,
    ) -> FleetTicket:
        """Join `model`'s fleet queue (raises `QueueFull`, or a Redis failure).

        `first`: at the head, for a request its connector refused `busy`. It was admitted
        before (it held a slot, so every waiter joined after it), so it is no new arrival:
        QUEUE_MAX does not refuse it, as in the embedded scheduler."""
        if self.queue_max <= 0 and not first:
            raise QueueFull(model)
        now = self.clock()
        member = f"{self.instance_id}/{self._prefix}{next(self._ids)}/{int(self.wall() * 1000)}"
        ticket = FleetTicket(
            self, model, exclude, target, local_only=local_only, member=member, enqueued_at=now
        )
        waiters = self.local.setdefault(model, [])
        waiters.append(ticket)  # before the script: a refresh meanwhile keeps its entry
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                seq = await self._join(
                    keys=[queue_key(model), SEQUENCE, QUEUES],
                    args=[member, self.queue_max, model, 1 if first else 0],
                )
        except BaseException:
            self._forget(ticket)
            raise
        if seq is None:
            self._forget(ticket)
            raise QueueFull(model)
        ticket.seq = int(seq)
        waiters.sort(key=_order)
        self._remirror(model)
        ticket.kick()
        return ticket

    def position(self, ticket: FleetTicket) -> int:
        """1-based place of a waiter of this instance in the mirrored fleet queue."""
        seq = ticket.seq
        if seq is None:
            return 0
        entries = self.mirror.get(ticket.model, ())
        return 1 + sum(1 for e in entries if e.seq < seq)

    async def attempt(self, ticket: FleetTicket, hint: str | None) -> Route | None:
        """Take a slot for `ticket` if it heads the fleet queue and one is free."""
        seats = self.seats
        model = ticket.model
        waiters = self.local.get(model)
        if not waiters or waiters[0] is not ticket or not seats.room(ticket, hint):
            return None  # an earlier waiter of this instance goes first, or nothing is free
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                head, score = await self._head(
                    keys=[queue_key(model), SEQUENCE, QUEUES], args=[ticket.member, model]
                )
            head = head.decode() if isinstance(head, bytes) else str(head)
            seq = int(float(score))
        except Failure as failure:
            self.failed(failure)
            return await seats.take(ticket, hint)  # it heads this instance's waiters
        if seq != ticket.seq:
            ticket.seq = seq  # it rejoined at the tail
            self.local[model].sort(key=_order)
            self._remirror(model)
        if head != ticket.member:
            self._pass_on(model, head)
            return None
        return await seats.take(ticket, hint)

    async def remove(self, ticket: FleetTicket) -> None:
        """The waiter found a route or left: out of the queue, and the next one may try."""
        model = ticket.model
        ticket.removed = True
        self._forget(ticket)
        if ticket.seq is not None:
            with contextlib.suppress(*Failure):  # a stale entry is purged by the next refresh
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._leave(keys=[queue_key(model), QUEUES], args=[model, ticket.member])
        self.offer(model)

    # ---- capacity appeared -------------------------------------------------------------

    def capacity(self) -> None:
        """Capacity may have appeared on this instance: offer it to the heads of the queues."""
        if not self.mirror:
            return
        for model in list(self.mirror):
            hint = self.seats.local_room(model)
            if hint is not None:
                self.offer(model, hint)

    def offer(self, model: str, hint: str | None = None) -> None:
        """Let the oldest local waiter of `model` try; without one, wake the head's instance
        when a local connector has room."""
        waiters = self.local.get(model)
        if waiters:
            waiters[0].kick(hint)
            return
        if not self.mirror.get(model):
            return
        hint = hint or self.seats.local_room(model)
        if hint is not None:
            self._spawn(self._wake_head(model, hint))

    def woken(self, model: str, hint: str | None) -> None:
        """Another instance says our waiter heads `model`'s queue and `hint` has room."""
        waiters = self.local.get(model)
        if waiters:
            waiters[0].kick(hint)

    def view_changed(self) -> None:
        """The others' connectors changed (one became ready, load dropped): heads try again."""
        for waiters in self.local.values():
            if waiters:
                waiters[0].kick()

    async def _wake_head(self, model: str, hint: str) -> None:
        try:
            found = await self.redis.zrange(queue_key(model), 0, 0)
        except Failure as failure:
            self.failed(failure)
            return
        if found:
            self._pass_on(model, _text(found[0]))

    def _pass_on(self, model: str, head: str) -> None:
        """`head` heads the queue, not our waiter: wake its instance if we have room for it."""
        instance = _instance_of(head)
        if not instance or instance == self.instance_id:
            return
        hint = self.seats.local_room(model)
        if hint is not None:  # in the background: an unreachable peer holds up nobody here
            self._spawn(self.seats.wake(instance, model, hint))

    # ---- the mirror ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read the queues, purge stale entries and retry the heads, until cancelled."""
        try:
            while True:
                try:
                    await self.refresh()
                    self._healthy()
                except Failure as failure:
                    self.failed(failure)
                    self._set_others({})
                    self.view_changed()  # the heads try again, as a degraded instance routes
                busy = bool(self.mirror)
                # A timer: the queues of the other instances are read, not pushed.
                await asyncio.sleep(REFRESH_BUSY if busy else REFRESH_IDLE)
        finally:
            tasks = list(self._tasks)
            for waiters in self.local.values():
                tasks += [t._task for t in waiters if t._task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def refresh(self) -> None:
        """Read every queue once; purge entries of gone instances and this one's stale ones."""
        models = sorted(_text(m) for m in await self.redis.smembers(QUEUES))
        read: list[Any] = []
        if models:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.zrange(queue_key(model), 0, -1, withscores=True)
                read = await pipe.execute()
        wall = self.wall()
        alive = self.alive()
        own = {t.member for waiters in self.local.values() for t in waiters}
        others: dict[str, tuple[Entry, ...]] = {}
        for model, pairs in zip(models, read, strict=True):
            kept: list[Entry] = []
            stale: list[str] = []
            for raw, score in pairs:
                entry = _entry(_text(raw), score, self._offset)
                if entry is None:
                    stale.append(_text(raw))
                elif entry.instance == self.instance_id:
                    if entry.member not in own:
                        stale.append(entry.member)
                elif self._stale(entry, wall, alive):
                    stale.append(entry.member)
                else:
                    kept.append(entry)
            if stale or not pairs:
                await self._leave(keys=[queue_key(model), QUEUES], args=[model, *stale])
            if kept:
                others[model] = tuple(kept)
        self._set_others(others)
        self.view_changed()

    def _stale(self, entry: Entry, wall: float, alive: set[str] | None) -> bool:
        """Another instance's entry is too old, or its instance's lease is gone."""
        age = wall - entry.joined
        if age > self.queue_timeout + self.lease_ttl + PURGE_GRACE:
            return True
        return alive is not None and entry.instance not in alive and age > self.lease_ttl

    def _set_others(self, others: dict[str, tuple[Entry, ...]]) -> None:
        if others == self.others:
            return
        models = set(others) | set(self.others)
        self.others = others
        for model in models:
            self._remirror(model)

    def _remirror(self, model: str) -> None:
        """Rebuild `model`'s mirror; tell local waiters whose position changed."""
        waiters = self.local.get(model, ())
        old = self.mirror.get(model, ())
        own = [
            Entry(t.member, t.seq, self.instance_id, 0.0, t.enqueued_at)
            for t in waiters
            if t.seq is not None
        ]
        merged = tuple(sorted((*self.others.get(model, ()), *own), key=_seq))
        if merged == old:
            return
        if merged:
            self.mirror[model] = merged
        else:
            self.mirror.pop(model, None)
        self.changes.bump()
        before = {e.member: n for n, e in enumerate(old)}
        for n, entry in enumerate(merged):
            if entry.instance == self.instance_id and before.get(entry.member) != n:
                for t in waiters:
                    if t.member == entry.member:
                        t.moved()

    def _forget(self, ticket: FleetTicket) -> None:
        waiters = self.local.get(ticket.model)
        if waiters is not None and ticket in waiters:
            waiters.remove(ticket)
            if not waiters:
                del self.local[ticket.model]
            self._remirror(ticket.model)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work, name="fleet-queue-wake")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _healthy(self) -> None:
        if self.degraded:
            self.degraded = False
            logger.warning("the fleet queue answers again: new waiters join it")
            self.changes.bump()

    def failed(self, failure: BaseException) -> None:
        """A queue command failed: degraded (said once in the log)."""
        if not self.degraded:
            self.degraded = True
            logger.warning(
                "the fleet queue is unreachable (%s): new waiters use this instance's own queue",
                failure,
            )
            self.changes.bump()


class QueueView:
    """The queues `/api/state` and `/metrics` show: the fleet mirror, plus this instance's
    own queue (waiters that joined while the fleet queue was unreachable)."""

    def __init__(self, fleet: FleetQueue, scheduler: Scheduler) -> None:
        self.fleet = fleet
        self.scheduler = scheduler

    @property
    def queues(self) -> Mapping[str, Sequence[Queued]]:
        local = self.scheduler.queues
        if not local:
            return self.fleet.mirror
        merged: dict[str, Sequence[Queued]] = dict(self.fleet.mirror)
        for model, waiters in local.items():
            merged[model] = (*merged.get(model, ()), *waiters)
        return merged

    def queue_len(self, model: str) -> int:
        return len(self.fleet.mirror.get(model, ())) + self.scheduler.queue_len(model)

    def oldest_wait_s(self, model: str) -> float:
        entries = self.fleet.mirror.get(model)
        oldest = self.scheduler.oldest_wait_s(model)
        if entries:
            oldest = max(oldest, self.fleet.clock() - min(e.enqueued_at for e in entries))
        return oldest


class _NoSeats:
    """Until the owner sets the real seats: nothing is ever free."""

    def room(self, ticket: FleetTicket, hint: str | None) -> bool:
        return False

    def local_room(self, model: str) -> str | None:
        return None

    async def take(self, ticket: FleetTicket, hint: str | None) -> Route | None:
        return None

    def abandon(self, route: Route) -> None:
        pass

    async def wake(self, instance_id: str, model: str, hint: str) -> None:
        pass


def _seq(entry: Entry) -> int:
    return entry.seq


def _order(ticket: FleetTicket) -> tuple[bool, int]:
    """Local waiters in fleet order; one still joining (no score yet) last, so the first of
    the list is one that may try."""
    return (ticket.seq is None, ticket.seq or 0)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _instance_of(member: str) -> str:
    """The instance of `<instance>/<ticket>/<ms>` (an instance id may hold slashes)."""
    return member.rsplit("/", 2)[0] if member.count("/") >= 2 else ""


def _entry(member: str, score: float, offset: float) -> Entry | None:
    """Parse a member (`offset`: monotonic minus Unix time); None when it is not one of ours."""
    instance = _instance_of(member)
    try:
        joined = int(member.rpartition("/")[2]) / 1000
    except ValueError:
        return None
    if not instance:
        return None
    return Entry(member, int(score), instance, joined, joined + offset)
