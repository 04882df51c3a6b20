"""`python -m bench.forwarder --target-port N`: the cheapest extra process in a request's path.

Listens on a free loopback port and copies bytes both ways between each accepted connection
and a new connection to 127.0.0.1:N, without parsing them. Put in front of an instance, it
measures the floor of any hop on the machine the benchmark runs on: one more process to wake
and two more loopback writes each way, and nothing else (`bench --instances 2`).

Prints one JSON line `{"port": N}` once it listens, then forwards until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import cast

from bench._loop import announce, run, stop_event
from bench.mock_backend import BACKLOG


class Pipe(asyncio.Protocol):
    """One end of a forwarded connection: what it reads, its peer's transport writes.

    The accepted end stops reading until its upstream end is connected, and keeps what it read
    meanwhile (uvloop may deliver bytes from before the pause took effect). When a transport's
    write buffer passes its high-water mark, the other end stops reading until it drains.
    """

    def __init__(self, forwarder: Forwarder, peer: Pipe | None = None) -> None:
        self.forwarder = forwarder
        self.peer = peer
        """The other end; None on an accepted end until its upstream end is connected."""
        self.transport: asyncio.Transport | None = None
        self.eof = False
        """This end has read the end of its stream (and passed it on as `write_eof`)."""
        self.early = bytearray()
        """What the accepted end read before its upstream end was connected."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.forwarder.pipes.add(self)
        if self.peer is None:
            self.transport.pause_reading()
            self.forwarder.connect(self)
            return
        self.peer.peer = self
        if (client := self._out()) is None:
            self.transport.close()  # the client left while this end was connecting
            return
        if self.peer.early:
            self.transport.write(bytes(self.peer.early))
            self.peer.early.clear()
        if self.peer.eof:
            self.transport.write_eof()
        client.resume_reading()

    def _out(self) -> asyncio.Transport | None:
        """The other end's transport, while it is open."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return None
        return peer.transport

    def data_received(self, data: bytes) -> None:
        if (out := self._out()) is not None:
            out.write(data)
        elif self.peer is None:  # the upstream end is still connecting
            self.early += data

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is None:
            return True  # passed on once the upstream end is connected
        out = self._out()
        if out is None or self.peer is None or self.peer.eof:
            return False  # both ways are done: close this end (its loss closes the other)
        out.write_eof()
        return True  # half-closed: the other way still flows

    def connection_lost(self, exc: Exception | None) -> None:
        self.forwarder.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # after what it still has to write

    def pause_writing(self) -> None:
        if (source := self._out()) is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        if (source := self._out()) is not None:
            source.resume_reading()


class Forwarder:
    """The open ends and the upstream connections being made, closed together on stop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pipes: set[Pipe] = set()
        self._connecting: set[asyncio.Task[None]] = set()

    def accept(self) -> Pipe:
        """The protocol of an accepted connection."""
        return Pipe(self)

    def connect(self, client: Pipe) -> None:
        """Open the upstream end of `client` in the background."""
        task = asyncio.create_task(self._connect(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, client: Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: Pipe(self, peer=client), "127.0.0.1", self.target_port
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()

    def close(self) -> None:
        """Stop connecting and drop every open end (at shutdown nothing waits to be flushed)."""
        for task in self._connecting:
            task.cancel()
        for pipe in list(self.pipes):
            if pipe.transport is not None:
                pipe.transport.abort()


async def serve(target_port: int, port: int) -> None:
    """Forward 127.0.0.1:`port` (0 picks a free port) to 127.0.0.1:`target_port` until stopped."""
    stop = stop_event()
    forwarder = Forwarder(target_port)
    sock = socket.create_server(("127.0.0.1", port), backlog=BACKLOG)
    server = await asyncio.get_running_loop().create_server(forwarder.accept, sock=sock)
    try:
        announce(json.dumps({"port": sock.getsockname()[1]}))
        await stop.wait()
    finally:
        server.close()
        forwarder.close()
        await server.wait_closed()


def main() -> None:
    """Parse the flags and forward."""
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder", description=__doc__)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(serve(args.target_port, args.port))


if __name__ == "__main__":
    main()
