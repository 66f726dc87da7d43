"""A TCP forwarder in a process of its own, to cut one client off from a server that others still reach.

``python -m tests.support.tcp_proxy HOST PORT`` listens on 127.0.0.1 (an ephemeral port, printed as
the first line of its stdout) and forwards every connection to ``HOST:PORT``. SIGSTOP it
(:func:`tests.support.processes.stopped`) and whoever connects through it sees a hung server —
connections accepted by the kernel, nothing answered — while everyone else's connections to the
server go on. :class:`Proxy` runs it from a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _serve(host: str, port: int) -> None:
    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


@dataclass
class Proxy:
    """The forwarder as a child process; :attr:`port` once started."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def to(cls, host: str, port: int) -> Proxy:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tcp_proxy", host, str(port)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        line = process.stdout.readline()  # the listening port: the proxy is serving
        if not line.strip():
            process.kill()
            raise RuntimeError("the TCP proxy did not start")
        return cls(process, int(line))

    def uri_through(self, uri: str) -> str:
        """``uri`` (``mongodb://host:port/...``) with its address replaced by the proxy's."""
        parts = urlsplit(uri)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def close(self) -> None:
        self.process.kill()  # a stopped process dies of SIGKILL too
        self.process.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2])))
