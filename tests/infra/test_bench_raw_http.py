"""The benchmarks' bare HTTP stand-ins: they must speak HTTP/1.1 correctly, or their numbers are wrong."""

from __future__ import annotations

import time

import httpx

from bench.raw_http import Client, Handler, request_bytes, serve


def recording_handler(seen: list[tuple[str, bytes, bytes]]) -> Handler:
    def handle(at_ns: int, method: str, url: bytes, body: bytes) -> tuple[int, str, bytes]:
        assert at_ns > 0
        seen.append((method, url, body))
        return (404, "text/plain", b"nope") if url == b"/missing" else (200, "text/plain", b"success")

    return handle


async def test_a_standard_client_gets_answers_and_the_server_sees_each_request_whole() -> None:
    seen: list[tuple[str, bytes, bytes]] = []
    server = await serve(recording_handler(seen), "127.0.0.1", 0, time.monotonic_ns)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            first = await http.post("/callback?nonce=1", content=b"x" * 100_000)
            second = await http.get("/missing")
        assert (first.status_code, first.text, second.status_code) == (200, "success", 404)
        assert seen == [("POST", b"/callback?nonce=1", b"x" * 100_000), ("GET", b"/missing", b"")]
    finally:
        server.close()


async def test_the_client_reuses_connections_and_survives_one_the_server_closed() -> None:
    seen: list[tuple[str, bytes, bytes]] = []
    server = await serve(recording_handler(seen), "127.0.0.1", 0, time.monotonic_ns)
    port = server.sockets[0].getsockname()[1]
    client = Client("127.0.0.1", port)
    request = request_bytes("POST", "/callback?nonce=7", f"127.0.0.1:{port}", b"<xml/>", "text/xml")
    try:
        assert [await client.send(request) for _ in range(3)] == [200, 200, 200]
        assert len(client._idle) == 1  # one kept-alive connection carried all three
        client._idle[0].close()  # as a server's keep-alive timeout would
        assert await client.send(request) == 200
        assert [body for _, _, body in seen] == [b"<xml/>"] * 4
    finally:
        client.close()
        server.close()
