"""`infero ctl`: the console's client as a scriptable CLI (plain tables or JSON, exit codes).

No Textual here. Exit codes: 0 ok, 1 server or transport error, 2 usage (e.g. an ambiguous
worker name), 3 key refused (401/403), 4 unknown worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from infero.protocol.state import InstanceInfo, McpClientInfo, StateSnapshot, WorkerInfo
from infero_tui.client import (
    Action,
    AuthRefused,
    ClientError,
    Credentials,
    FleetClient,
    NotFound,
    Target,
)
from infero_tui.format import age, millis, rate

OK, FAILED, USAGE, AUTH, NOT_FOUND = 0, 1, 2, 3, 4

Echo = Callable[[str], None]


class UsageError(ClientError):
    """The command line cannot be carried out as given (exit 2)."""


def exit_code(error: ClientError) -> int:
    """The documented exit code for an error."""
    if isinstance(error, AuthRefused):
        return AUTH
    if isinstance(error, NotFound):
        return NOT_FOUND
    if isinstance(error, UsageError):
        return USAGE
    return FAILED


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def workers_table(snapshot: StateSnapshot) -> str:
    """One row per worker; with several server instances, the INSTANCE each is linked to."""
    now = snapshot.server.now
    several = bool(snapshot.server.instances)
    rows = [
        [
            w.id,
            w.name,
            w.status,
            f"{w.inflight}/{w.max_concurrency}",
            str(w.queue_len),
            rate(w.avg_tokens_per_second),
            millis(w.avg_ttft_ms, compact=True),
            str(w.failures_total),
            _seen(now, w),
            w.version,
            *([w.instance or "-"] if several else []),
        ]
        for w in snapshot.workers
    ]
    headers = ["ID", "NAME", "STATUS", "JOBS", "QUEUE", "TOK/S", "TTFT", "FAIL", "SEEN", "VERSION"]
    return table(headers + (["INSTANCE"] if several else []), rows)


def _seen(now: datetime, w: WorkerInfo) -> str:
    """`live` for a live connector that is not late: `/api/state` gives its `last_heartbeat` as
    of its row's last change (docs/state.md), so only a late or gone row's age means anything."""
    if w.status != "gone" and not w.heartbeat_late:
        return "live"
    return age(now, w.last_heartbeat, compact=True)


def instances_table(snapshot: StateSnapshot) -> str:
    """The server instances sharing the fleet (REDIS_ADDR), the one asked first; one row for a
    single server."""
    server = snapshot.server
    now = server.now
    instances = server.instances or [
        InstanceInfo(
            id=server.instance or "-",
            version=server.version,
            started_at=server.started_at,
            links=sum(w.status not in ("gone", "connecting") for w in snapshot.workers)
            + sum(c.status != "gone" for c in snapshot.mcp.clients),
            inflight=server.jobs_inflight_total,
        )
    ]
    rows = [
        [
            i.id,
            i.address or "-",
            i.version,
            age(now, i.started_at, compact=True),
            str(i.links),
            str(i.inflight),
        ]
        for i in instances
    ]
    return table(["INSTANCE", "ADDRESS", "VERSION", "UP", "LINKS", "INFLIGHT"], rows)


def models_table(snapshot: StateSnapshot) -> str:
    rows = [
        [
            m.name,
            f"{m.ready_workers}/{m.workers}",
            str(m.queue_len),
            millis(m.oldest_wait_ms, compact=True),
            str(m.requests_total),
            str(m.error_total),
            millis(m.avg_ttft_ms, compact=True),
            rate(m.avg_tokens_per_second),
        ]
        for m in snapshot.models
    ]
    headers = ["MODEL", "WORKERS", "QUEUE", "OLDEST", "REQUESTS", "ERRORS", "TTFT", "TOK/S"]
    return table(headers, rows)


def mcp_tables(snapshot: StateSnapshot) -> str:
    """Relays and sessions; with several server instances, the INSTANCE of each relay and of
    each session's relay."""
    several = bool(snapshot.server.instances)
    relays = [
        [
            c.id,
            c.name,
            c.status,
            str(c.inflight),
            str(c.calls_total),
            str(c.errors_total),
            *([c.instance or "-"] if several else []),
        ]
        for c in snapshot.mcp.clients
    ]
    relay_headers = ["RELAY", "NAME", "STATUS", "INFLIGHT", "CALLS", "ERRORS"]
    sessions = [
        [
            s.id,
            s.client_id,
            s.method,
            str(s.inflight),
            millis(s.duration_ms, compact=True),
            *([s.instance or "-"] if several else []),
        ]
        for s in snapshot.mcp.sessions
    ]
    where = ["INSTANCE"] if several else []
    return (
        table(relay_headers + where, relays)
        + "\n\n"
        + table(["SESSION", "RELAY", "METHOD", "INFLIGHT", "DURATION", *where], sessions)
    )


def as_json(snapshot: StateSnapshot, what: str) -> str:
    """The part of the snapshot a listing shows, as JSON (`instances`: `server.instances`)."""
    if what == "instances":
        data = snapshot.server.model_dump(mode="json", include={"instances"})
        return json.dumps(data["instances"], indent=2)
    data = snapshot.model_dump(mode="json", include={what})
    return json.dumps(data[what], indent=2)


Named = TypeVar("Named", WorkerInfo, McpClientInfo)


def _resolve(rows: Sequence[Named], wanted: str, what: str) -> Named:
    """The live row whose id, else whose unique name, is `wanted`."""
    live = [row for row in rows if row.status != "gone"]
    for row in live:
        if row.id == wanted:
            return row
    named = [row for row in live if row.name == wanted]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(row.id for row in named)
        raise UsageError(f"{len(named)} {what}s are named {wanted!r}; use an id ({ids})")
    raise NotFound(f"no connected {what} with id or name {wanted!r}")


def resolve_worker(snapshot: StateSnapshot, wanted: str) -> WorkerInfo:
    """The live worker whose id, else whose name, is `wanted`."""
    return _resolve(snapshot.workers, wanted, "worker")


def resolve_relay(snapshot: StateSnapshot, wanted: str) -> McpClientInfo:
    """The live MCP relay whose id, else whose name, is `wanted`."""
    return _resolve(snapshot.mcp.clients, wanted, "MCP relay")


def open_client(server: str, api_key: str, operator_key: str) -> FleetClient:
    """The client for `server` (https:// verified, with `TLS_CA_FILE` from the environment when
    set); a malformed URL is a usage error (exit 2)."""
    try:
        return FleetClient(
            server, Credentials(api_key, operator_key), ca_file=os.environ.get("TLS_CA_FILE", "")
        )
    except ClientError as exc:
        raise UsageError(str(exc)) from None


async def list_command(client: FleetClient, what: str, as_json_output: bool, echo: Echo) -> int:
    """`workers`, `models`, `mcp` or `instances`."""
    snapshot = await client.state()
    if as_json_output:
        echo(as_json(snapshot, what))
    elif what == "workers":
        echo(workers_table(snapshot))
    elif what == "models":
        echo(models_table(snapshot))
    elif what == "instances":
        echo(instances_table(snapshot))
    else:
        echo(mcp_tables(snapshot))
    return OK


async def control_command(
    client: FleetClient,
    action: Action,
    wanted: str,
    as_json_output: bool,
    echo: Echo,
    target: Target = "worker",
) -> int:
    """`drain|undrain|shutdown WORKER` and `relay drain|undrain|shutdown RELAY`."""
    snapshot = await client.state()
    found = (
        resolve_worker(snapshot, wanted) if target == "worker" else resolve_relay(snapshot, wanted)
    )
    result = await client.control(found.id, action, target)
    if as_json_output:
        echo(result.model_dump_json())
    else:
        echo(f"{action} accepted for {found.name} ({found.id})")
    return OK


def changes(previous: StateSnapshot | None, current: StateSnapshot) -> list[str]:
    """Human lines for what changed between two snapshots (everything, the first time)."""
    stamp = current.server.now.strftime("%H:%M:%S")
    lines: list[str] = []
    if previous is None or previous.server.state != current.server.state:
        lines.append(f"{stamp} server {current.server.state}")
    before = {w.id: w for w in previous.workers} if previous else {}
    for worker in current.workers:
        old = before.pop(worker.id, None)
        label = f"{worker.name} ({worker.id})"
        if old is None:
            lines.append(f"{stamp} worker {label} {worker.status}")
        elif old.status != worker.status:
            lines.append(f"{stamp} worker {label} {old.status} -> {worker.status}")
    lines.extend(f"{stamp} worker {w.name} ({w.id}) left" for w in before.values())
    return lines


async def watch_command(client: FleetClient, as_json_output: bool, echo: Echo) -> int:
    """Print changes (or every snapshot as one JSON line) until the stream ends."""
    previous: StateSnapshot | None = None
    async for snapshot in client.snapshots():
        if as_json_output:
            echo(snapshot.model_dump_json())
        else:
            for line in changes(previous, snapshot):
                echo(line)
        previous = snapshot
    return FAILED
