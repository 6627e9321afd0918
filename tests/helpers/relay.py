"""A TCP relay as its own process, counting the chunks a client sends through it.

`python -m tests.helpers.relay HOST PORT` listens on a free loopback port, prints it,
then relays every connection to HOST:PORT and prints the size of each chunk read from
the client, one per line. Being another process, it reads while the client is still
writing, as the real server would: separate sends show up as separate chunks.
"""

from __future__ import annotations

import asyncio
import sys


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, report: bool) -> None:
    while data := await source.read(1 << 20):
        if report:
            print(len(data), flush=True)
        sink.write(data)
        await sink.drain()
    sink.close()


async def _main(host: str, port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(
            _pump(reader, upstream_writer, True), _pump(upstream_reader, writer, False)
        )

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
