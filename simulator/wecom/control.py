"""``/sim/...`` routes for WeCom: create corps, apps, accounts, robots; play customers; inspect.

Every route that makes WeCom send a callback only enqueues it and returns the delivery records;
``?wait=true`` answers once those deliveries have succeeded or given up.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from simulator.delivery import Delivery
from simulator.http import control, courier, parse, sim, wants_wait
from simulator.wecom import callbacks
from simulator.wecom.directory import Account, App, Corp
from simulator.wecom.schemas import (
    AccountIn,
    AccountPatch,
    AppIn,
    AppPatch,
    CorpIn,
    CustomerIn,
    EventIn,
    InvalidateIn,
    MessageIn,
    RawEventIn,
    RobotIn,
)
from simulator.wecom.world import WeCom


def wecom(request: Request) -> WeCom:
    return sim(request).wecom


def corp_of(request: Request) -> Corp:
    return wecom(request).directory.corp(request.path_params["corpid"])


def app_of(request: Request) -> App:
    return corp_of(request).app(request.path_params["agentid"])


def account_of(request: Request) -> Account:
    corp = corp_of(request)
    account = corp.accounts.get(request.path_params["open_kfid"])
    if account is None:
        raise LookupError(f"corp {corp.corp_id} has no account {request.path_params['open_kfid']}")
    return account


def created(data: dict[str, Any]) -> JSONResponse:
    return JSONResponse(data, status_code=201)


async def finish(request: Request, deliveries: list[Delivery]) -> list[dict[str, Any]]:
    if wants_wait(request):
        await courier(request).wait(deliveries)
    return [delivery.describe() for delivery in deliveries]


async def notify_kf(request: Request, corp: Corp, account: Account) -> list[dict[str, Any]]:
    """Send ``kf_msg_or_event`` to every app that manages ``account`` and has a callback URL."""
    world, now = wecom(request), sim(request).clock()
    deliveries = []
    for app in callbacks.kf_apps(corp, account):
        token = world.kf.issue_msg_token(corp, account)
        plaintext = callbacks.kf_event_xml(corp.corp_id, token, account.open_kfid, now)
        outgoing = callbacks.sealed(app, plaintext, now, "kf_msg_or_event", open_kfid=account.open_kfid)
        deliveries.append(courier(request).submit(outgoing))
    return await finish(request, deliveries)


# -- corps and apps ------------------------------------------------------------------------------


async def create_corp(request: Request) -> Response:
    spec = await parse(request, CorpIn)
    return created(wecom(request).add_corp(spec).describe())


async def list_corps(request: Request) -> Response:
    return JSONResponse({"corps": [corp.describe() for corp in wecom(request).directory.corps.values()]})


async def get_corp(request: Request) -> Response:
    return JSONResponse(corp_of(request).describe())


async def create_app(request: Request) -> Response:
    corp = corp_of(request)
    spec = await parse(request, AppIn)
    return created(wecom(request).directory.add_app(corp, **spec.model_dump()).describe())


async def get_app(request: Request) -> Response:
    return JSONResponse(app_of(request).describe())


async def patch_app(request: Request) -> Response:
    app = app_of(request)
    spec = await parse(request, AppPatch)
    if "callback_url" in spec.model_fields_set:
        app.callback_url = spec.callback_url
    if spec.name is not None:
        app.name = spec.name
    return JSONResponse(app.describe())


async def verify_url(request: Request) -> Response:
    """Run WeCom's URL verification against the app's callback URL and report whether it passed."""
    app = app_of(request)
    if app.callback_url is None:
        raise ValueError(f"app {app.agentid} has no callback_url")
    outgoing, expected = callbacks.verification(app, sim(request).clock())
    attempt = await courier(request).attempt(outgoing)
    return JSONResponse(
        {
            "ok": attempt.status == 200 and attempt.raw == expected.encode(),
            "expected": expected,
            "url": app.callback_url,
            **attempt.describe(),
        }
    )


async def send_raw_event(request: Request) -> Response:
    """Any non-kf callback (contact change, app event...): routers must cope with those too."""
    app = app_of(request)
    if app.callback_url is None:
        raise ValueError(f"app {app.agentid} has no callback_url")
    spec = await parse(request, RawEventIn)
    now = sim(request).clock()
    plaintext = callbacks.event_xml(app.corp_id, spec.fields, now)
    delivery = courier(request).submit(callbacks.sealed(app, plaintext, now, "event"))
    return JSONResponse({"deliveries": await finish(request, [delivery])}, status_code=202)


# -- accounts, customers, conversations ----------------------------------------------------------


async def create_account(request: Request) -> Response:
    corp = corp_of(request)
    spec = await parse(request, AccountIn)
    return created(wecom(request).directory.add_account(corp, **spec.model_dump()).describe())


def describe_account(account: Account) -> dict[str, Any]:
    sessions = {
        uid: {
            "service_state": session.state,
            "servicer_userid": session.servicer_userid,
            "last_customer_msg_at": session.last_customer_msg_at,
            "sends_since_customer": session.sends_since_customer,
        }
        for uid, session in account.sessions.items()
    }
    return {**account.describe(), "messages": len(account.log), "sessions": sessions}


async def get_account(request: Request) -> Response:
    return JSONResponse(describe_account(account_of(request)))


async def patch_account(request: Request) -> Response:
    corp, account = corp_of(request), account_of(request)
    spec = await parse(request, AccountPatch)
    if spec.managed_by is not None:
        unknown = set(spec.managed_by) - set(corp.apps)
        if unknown:
            raise ValueError(f"corp {corp.corp_id} has no app {sorted(unknown)[0]}")
        account.managed_by = set(spec.managed_by)
    if spec.servicers is not None:
        account.servicers = list(spec.servicers)
    if spec.name is not None:
        account.name = spec.name
    return JSONResponse(describe_account(account))


async def account_log(request: Request) -> Response:
    """The whole conversation log, API-sent messages included (``via_api``), oldest first."""
    account = account_of(request)
    items = [{**entry.item(account.open_kfid), "via_api": entry.via_api} for entry in account.log]
    return JSONResponse({"messages": items})


async def customer_message(request: Request) -> Response:
    """A customer (or, with ``servicer_userid``, a servicer) writes; the managing apps are notified."""
    corp, account = corp_of(request), account_of(request)
    spec = await parse(request, MessageIn)
    body = spec.body()
    world = wecom(request)
    customer = world.directory.ensure_customer(corp, spec.external_userid)
    entry = world.kf.customer_writes(
        corp, account, customer, spec.msgtype, body, servicer_userid=spec.servicer_userid
    )
    deliveries = await notify_kf(request, corp, account)
    return created({"msgid": entry.msgid, "message": entry.item(account.open_kfid), "deliveries": deliveries})


async def customer_event(request: Request) -> Response:
    """``enter_session`` (with a welcome_code when due) or any other kf event."""
    corp, account = corp_of(request), account_of(request)
    spec = await parse(request, EventIn)
    world = wecom(request)
    result: dict[str, Any] = {}
    if spec.event_type == "enter_session":
        customer = world.directory.ensure_customer(corp, spec.external_userid)
        entry, code = world.kf.customer_enters(
            corp,
            account,
            customer,
            scene=spec.scene,
            scene_param=spec.scene_param,
            wechat_channels=spec.wechat_channels,
            welcome=spec.welcome,
        )
        result["welcome_code"] = code
    else:
        event: dict[str, Any] = {"event_type": spec.event_type}
        if spec.external_userid:
            event["external_userid"] = spec.external_userid
        entry = world.kf.system_event(corp, account, {**event, **spec.fields()})
    deliveries = await notify_kf(request, corp, account)
    return created(
        {"msgid": entry.msgid, **result, "message": entry.item(account.open_kfid), "deliveries": deliveries}
    )


async def create_customer(request: Request) -> Response:
    corp = corp_of(request)
    spec = await parse(request, CustomerIn)
    return created(wecom(request).directory.add_customer(corp, **spec.model_dump()).describe())


async def customer_received(request: Request) -> Response:
    """What a customer received through send_msg / send_msg_on_event (and from servicers)."""
    corp = corp_of(request)
    external_userid = request.path_params["external_userid"]
    corp.customer(external_userid)
    messages = wecom(request).kf.received(corp, external_userid, request.query_params.get("open_kfid"))
    return JSONResponse({"messages": messages})


# -- tokens and robots ---------------------------------------------------------------------------


async def invalidate_tokens(request: Request) -> Response:
    spec = await parse(request, InvalidateIn)
    if spec.access_token is None and spec.corpid is None:
        raise ValueError("give access_token, or corpid (and optionally agentid)")
    count = wecom(request).tokens.invalidate(spec.access_token, spec.corpid, spec.agentid)
    return JSONResponse({"invalidated": count})


async def token_counts(request: Request) -> Response:
    """Every gettoken call so far by outcome: requests, refused, issued (a new token), reused."""
    return JSONResponse(dict(wecom(request).tokens.counts))


def describe_robot(request: Request, key: str) -> dict[str, Any]:
    robot = wecom(request).robots.robots[key]
    webhook = f"{str(request.base_url).rstrip('/')}/cgi-bin/webhook/send?key={robot.key}"
    return {**robot.describe(), "webhook_url": webhook}


def robot_key(request: Request) -> str:
    key: str = request.path_params["key"]
    if key not in wecom(request).robots.robots:
        raise LookupError(f"no robot {key}")
    return key


async def create_robot(request: Request) -> Response:
    spec = await parse(request, RobotIn)
    robot = wecom(request).robots.add(spec.key, spec.name)
    return created(describe_robot(request, robot.key))


async def list_robots(request: Request) -> Response:
    return JSONResponse({"robots": [describe_robot(request, key) for key in wecom(request).robots.robots]})


async def robot_messages(request: Request) -> Response:
    robot = wecom(request).robots.robots[robot_key(request)]
    return JSONResponse({"messages": robot.messages})


async def remove_robot(request: Request) -> Response:
    robot = wecom(request).robots.robots[robot_key(request)]
    robot.removed = True
    return JSONResponse(describe_robot(request, robot.key))


def routes() -> list[BaseRoute]:
    corp = "/sim/corps/{corpid}"
    app = corp + "/apps/{agentid:int}"
    account = corp + "/accounts/{open_kfid}"
    return [
        Route("/sim/corps", control(create_corp), methods=["POST"]),
        Route("/sim/corps", control(list_corps), methods=["GET"]),
        Route(corp, control(get_corp), methods=["GET"]),
        Route(corp + "/apps", control(create_app), methods=["POST"]),
        Route(app, control(get_app), methods=["GET"]),
        Route(app, control(patch_app), methods=["PATCH"]),
        Route(app + "/verify", control(verify_url), methods=["POST"]),
        Route(app + "/callbacks", control(send_raw_event), methods=["POST"]),
        Route(corp + "/accounts", control(create_account), methods=["POST"]),
        Route(account, control(get_account), methods=["GET"]),
        Route(account, control(patch_account), methods=["PATCH"]),
        Route(account + "/messages", control(account_log), methods=["GET"]),
        Route(account + "/messages", control(customer_message), methods=["POST"]),
        Route(account + "/events", control(customer_event), methods=["POST"]),
        Route(corp + "/customers", control(create_customer), methods=["POST"]),
        Route(corp + "/customers/{external_userid}/received", control(customer_received), methods=["GET"]),
        Route("/sim/tokens/invalidate", control(invalidate_tokens), methods=["POST"]),
        Route("/sim/tokens", control(token_counts), methods=["GET"]),
        Route("/sim/robots", control(create_robot), methods=["POST"]),
        Route("/sim/robots", control(list_robots), methods=["GET"]),
        Route("/sim/robots/{key}/messages", control(robot_messages), methods=["GET"]),
        Route("/sim/robots/{key}", control(remove_robot), methods=["DELETE"]),
    ]
