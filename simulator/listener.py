"""A tiny callback receiver that prints what WeCom (or the simulator) sends, decrypted.

    python -m simulator.listener --port 9001 --corpid ww... --token ... --aes-key ...

It answers URL verification (GET with echostr) and message callbacks (POST) on any path, verifying
the signature and decrypting with the app's Token and EncodingAESKey, and prints one block per
request. A callback that fails verification gets HTTP 400, so the sender's retries become visible.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wecom.crypto import CryptoError, MsgCrypt
from wecom.xml import XMLError, parse_xml

Printer = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def create_listener(crypt: MsgCrypt, out: Printer = _print) -> Starlette:
    async def receive(request: Request) -> Response:
        query = request.query_params
        signature, timestamp, nonce = (
            query.get(name, "") for name in ("msg_signature", "timestamp", "nonce")
        )
        try:
            if request.method == "GET":
                plain = crypt.verify_url(signature, timestamp, nonce, query.get("echostr", ""))
                out(f"GET {request.url.path}: URL verification ok, answering {plain.decode()}")
                return PlainTextResponse(plain)
            envelope = parse_xml(await request.body())
            plain = crypt.open(signature, timestamp, nonce, envelope.get("Encrypt", ""))
        except (CryptoError, XMLError, UnicodeDecodeError) as exc:
            out(f"{request.method} {request.url.path}: rejected ({type(exc).__name__}: {exc})")
            return PlainTextResponse("bad callback", status_code=400)
        fields = parse_xml(plain)
        to, agent = envelope.get("ToUserName"), envelope.get("AgentID")
        lines = [f"POST {request.url.path}: callback for {to} (AgentID {agent})"]
        lines += [f"  {key}: {value}" for key, value in fields.items()]
        out("\n".join(lines))
        return PlainTextResponse("success")

    return Starlette(routes=[Route("/{path:path}", receive, methods=["GET", "POST"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.listener", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--corpid", required=True, help="the CorpID (receiveid of the encryption)")
    parser.add_argument("--token", required=True, help="the app's callback Token")
    parser.add_argument("--aes-key", required=True, help="the app's EncodingAESKey (43 characters)")
    args = parser.parse_args(argv)
    try:
        crypt = MsgCrypt(args.token, args.aes_key, args.corpid)
    except CryptoError as exc:
        parser.error(str(exc))
    _print(f"listening on http://{args.host}:{args.port}/ for callbacks to {args.corpid}")
    uvicorn.run(create_listener(crypt), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
