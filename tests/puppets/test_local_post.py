"""A socket delivery's POST through the puppet's own routes, in-process (:mod:`puppets.local_post`):
the route sees the request the HTTP delivery would make, and its status and body come back."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from puppets import local_post


async def echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    seen = (
        f"{request.url.path}|{request.query_params.get('n')}|{request.headers['webhook-id']}"
        f"|{request.headers['content-length']}|{body.decode()}"
    )
    return PlainTextResponse(seen, status_code=202)


async def test_the_route_sees_the_delivery_and_answers_with_its_status() -> None:
    app = Starlette(routes=[Route("/callback/decrypted", echo, methods=["POST"])])
    headers = {"Content-Type": "application/json", "webhook-id": "msg_1", "content-length": "999"}
    status, text = await local_post.post(app, "/callback/decrypted", "n=7", headers, b'{"a":"\xc3\xa9"}')
    assert (status, text) == (202, '/callback/decrypted|7|msg_1|10|{"a":"é"}')


async def test_an_unknown_path_answers_404() -> None:
    app = Starlette(routes=[Route("/callback/decrypted", echo, methods=["POST"])])
    status, _ = await local_post.post(app, "/elsewhere", "", {}, b"")
    assert status == 404
