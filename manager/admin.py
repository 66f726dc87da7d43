"""Admin API of the manager (bearer ``WXKF_ADMIN_TOKEN``): accounts, their queues, and replay."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from manager.mailbox import Mailbox, account_key
from manager.service import Manager
from wxkf.http import Refusal, admin_only, parse_json
from wxkf.paging import page_params


class ReplayIn(BaseModel):
    event_id: str | None = Field(default=None, max_length=64)
    corp_id: str | None = Field(default=None, max_length=64)
    open_kfid: str | None = Field(default=None, max_length=128)
    since: datetime | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ReplayIn:
        if self.event_id is None and not (self.corp_id and self.open_kfid and self.since):
            raise ValueError("give event_id, or corp_id + open_kfid + since")
        return self


def mailbox_view(mailbox: Mailbox, registered: bool, online: bool) -> dict[str, object]:
    return {
        "account": mailbox.key,
        "corp_id": mailbox.corp_id,
        "open_kfid": mailbox.open_kfid,
        "registered": registered,
        "online": online,
        "pending": mailbox.has_work,
        "attempts": mailbox.attempts,
        "backoff_until": mailbox.backoff_until or None,
        "last_error": mailbox.last_error,
        "latest_event": mailbox.latest.event_id if mailbox.latest else None,
    }


async def replay(manager: Manager, body: ReplayIn) -> dict[str, object]:
    """Re-deliver one event, or everything for an account since a time (coalesced into one delivery)."""
    if body.event_id:
        newest = await manager.mailboxes.event(body.event_id)
        if newest is None:
            raise Refusal(404, "not_found", "no such event")
        count = 1
    else:
        assert body.corp_id and body.open_kfid and body.since
        since = f"{int(body.since.timestamp() * 1e9):020d}"
        count, newest = await manager.mailboxes.newest_since(account_key(body.corp_id, body.open_kfid), since)
        if newest is None:
            raise Refusal(404, "not_found", "no events for that account since then")
    latest = await manager.mailboxes.requeue(newest["account"], newest)
    manager.dispatcher.notify(newest["account"], latest)
    return {"replayed": count, "account": newest["account"], "delivering": latest.event_id}


def admin_routes(manager: Manager, admin_token: str | None) -> list[BaseRoute]:
    async def accounts(request: Request) -> Response:
        views = []
        for mailbox in await manager.mailboxes.accounts():
            puppet = await manager.puppets.get(mailbox.key)
            views.append(
                mailbox_view(mailbox, bool(puppet and puppet.registered), bool(puppet and puppet.online))
            )
        if request.query_params.get("unroutable"):
            views = [view for view in views if not view["registered"]]
        return JSONResponse({"accounts": views})

    async def puppets(request: Request) -> Response:
        return JSONResponse({"puppets": [p.public(show_endpoint=True) for p in await manager.puppets.all()]})

    async def events(request: Request) -> Response:
        key = account_key(request.path_params["corp_id"], request.path_params["open_kfid"])
        mailbox = await manager.mailboxes.get(key)
        if mailbox is None:
            raise Refusal(404, "not_found", "no such account")
        after, limit = page_params(request)
        docs = await manager.mailboxes.events(key, after, limit)
        delivered = max(mailbox.delivered, manager.dispatcher.delivered_through(key))
        view = [
            {
                "id": doc["_id"],
                "received_at": doc.get("received_at"),
                "mode": doc.get("mode"),
                "state": "dead"
                if doc.get("dead")
                else "delivered"
                if doc["arrival"] <= delivered
                else "queued",
            }
            for doc in docs
        ]
        next_page = docs[-1]["arrival"] if len(docs) == limit else None
        return JSONResponse({"account": key, "events": view, "next": next_page})

    async def replay_route(request: Request) -> Response:
        body = await parse_json(request, ReplayIn)
        return JSONResponse(await replay(manager, body))

    guard = lambda endpoint: admin_only(admin_token, endpoint)  # noqa: E731
    return [
        Route("/admin/accounts", guard(accounts), methods=["GET"]),
        Route("/admin/puppets", guard(puppets), methods=["GET"]),
        Route("/admin/accounts/{corp_id}/{open_kfid}/events", guard(events), methods=["GET"]),
        Route("/admin/replay", guard(replay_route), methods=["POST"]),
    ]
