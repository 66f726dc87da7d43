"""Admin API of the gateway (bearer ``WXKF_ADMIN_TOKEN``): corp apps and event subscriptions.

Listings never include tokens, AES keys or secrets; a subscription's signing secret is returned once,
in the response that creates it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.registry import RegistryError
from gateway.service import Gateway
from gateway.subscriptions import ANY, SubscriptionError
from wxkf.http import Refusal, admin_only, parse_json
from wxkf.paging import page_params

EventStore = tuple[str, Callable[[str], Awaitable[dict[str, Any] | None]]]
DEAD_LETTER_KEY = re.compile(r"^[0-9]{20}-[0-9A-Za-z_-]{1,64}$")


class AppIn(BaseModel):
    corp_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=64)
    token: str = Field(min_length=1, max_length=128)
    encoding_aes_key: str = Field(min_length=43, max_length=43)
    secret: str | None = Field(default=None, max_length=256)
    default: bool | None = None


class SubscriptionIn(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    corp_id: str = ANY
    app: str = ANY
    event_types: list[str] = Field(default_factory=lambda: [ANY], max_length=50)


class ReplayDeadIn(BaseModel):
    target: str | None = Field(default=None, min_length=1, max_length=80)  # "manager" or "sub:<id>"
    limit: int = Field(default=100, ge=1, le=1000)


def admin_routes(
    gateway: Gateway, admin_token: str | None, event_stores: Sequence[EventStore] = ()
) -> list[BaseRoute]:
    """``event_stores``: where else ``GET /admin/events/{id}`` looks after the inbox, as (name, lookup)
    (under ``wxkf up``, kf events are only in the manager's log)."""
    registry = gateway.registry
    subscriptions = gateway.subscriptions

    async def list_apps(request: Request) -> Response:
        await registry.reload()
        return JSONResponse(
            {"apps": [app.public() for app in registry.apps(request.query_params.get("corp_id"))]}
        )

    async def add_app(request: Request) -> Response:
        body = await parse_json(request, AppIn)
        try:
            app = await registry.add(
                body.corp_id, body.name, body.token, body.encoding_aes_key, body.secret, default=body.default
            )
        except RegistryError as exc:
            raise Refusal(400, "bad_app", str(exc)) from None
        return JSONResponse(app.public(), status_code=201)

    async def remove_app(request: Request) -> Response:
        corp_id = request.path_params["corp_id"]
        if not await registry.remove(corp_id, request.path_params["name"]):
            raise Refusal(404, "not_found", "no such app")
        result: dict[str, object] = {"removed": True}
        if registry.lookup(corp_id, None) is None and registry.apps(corp_id):
            result["warning"] = f"corp {corp_id} has no default app now: /callback/{corp_id} answers 404"
        return JSONResponse(result)

    async def list_subscriptions(request: Request) -> Response:
        await subscriptions.reload()
        return JSONResponse({"subscriptions": [s.public() for s in subscriptions.all()]})

    async def add_subscription(request: Request) -> Response:
        body = await parse_json(request, SubscriptionIn)
        try:
            created = await subscriptions.add(
                body.url,
                corp_id=body.corp_id,
                app=body.app,
                event_types=body.event_types,
                allowed_networks=gateway.config.allowed_networks,
            )
        except (SubscriptionError, ValueError) as exc:  # ValueError: EndpointError, or a parse error
            raise Refusal(400, "bad_subscription", str(exc)) from None
        return JSONResponse({**created.public(), "secret": created.secret}, status_code=201)

    async def remove_subscription(request: Request) -> Response:
        removed = await subscriptions.remove(request.path_params["id"])
        if not removed:
            raise Refusal(404, "not_found", "no such subscription")
        return JSONResponse({"removed": True})

    async def show_event(request: Request) -> Response:
        event_id = request.path_params["id"]
        for store, lookup in (("inbox", gateway.inbox.get), *event_stores):
            doc = await lookup(event_id)
            if doc is not None:
                for hidden in ("token", "body", "query", "expire_at"):
                    doc.pop(hidden, None)
                return JSONResponse({**doc, "store": store})
        raise Refusal(404, "not_found", "no such event")

    async def dead_letters(request: Request) -> Response:
        after, limit = page_params(request, DEAD_LETTER_KEY)
        docs = await gateway.inbox.dead_letters(after, limit)
        return JSONResponse(
            {
                "dead_letters": [{"id": d["_id"], "at": d["at"], "targets": d["targets"]} for d in docs],
                "next": docs[-1]["key"] if len(docs) == limit else None,
            }
        )

    async def replay_event(request: Request) -> Response:
        forwarding = await gateway.replay(request.path_params["id"])
        if forwarding is None:
            raise Refusal(404, "not_found", "no dead-lettered event with that id")
        return JSONResponse({"replayed": True, "targets": forwarding})

    async def replay_dead_letters(request: Request) -> Response:
        body = await parse_json(request, ReplayDeadIn, empty={})
        replayed, more = await gateway.replay_dead_letters(body.target, body.limit)
        return JSONResponse({"replayed": replayed, "more": more})

    guard = lambda endpoint: admin_only(admin_token, endpoint)  # noqa: E731
    return [
        Route("/admin/apps", guard(list_apps), methods=["GET"]),
        Route("/admin/apps", guard(add_app), methods=["POST"]),
        Route("/admin/apps/{corp_id}/{name}", guard(remove_app), methods=["DELETE"]),
        Route("/admin/subscriptions", guard(list_subscriptions), methods=["GET"]),
        Route("/admin/subscriptions", guard(add_subscription), methods=["POST"]),
        Route("/admin/subscriptions/{id}", guard(remove_subscription), methods=["DELETE"]),
        Route("/admin/events/{id}", guard(show_event), methods=["GET"]),
        Route("/admin/events/{id}/replay", guard(replay_event), methods=["POST"]),
        Route("/admin/dead-letters", guard(dead_letters), methods=["GET"]),
        Route("/admin/dead-letters/replay", guard(replay_dead_letters), methods=["POST"]),
    ]
