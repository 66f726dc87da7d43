"""What WeCom sends to an app's callback URL, built as :class:`~simulator.delivery.Outgoing` requests.

* Message callbacks: ``POST url?msg_signature&timestamp&nonce`` with body
  ``<xml><ToUserName/><Encrypt/><AgentID/></xml>``; the encrypted plaintext is a flat ``<xml>``
  event, for kf always ``kf_msg_or_event`` with a fresh ``Token`` and the ``OpenKfId``.
* URL verification: ``GET url?msg_signature&timestamp&nonce&echostr`` where ``echostr`` is an
  encrypted random number the server must answer in plain text.

Timestamps are the simulated clock's, so a receiver that checks freshness should use the same clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from simulator.delivery import Outgoing
from simulator.wecom import ids
from simulator.wecom.directory import Account, App, Corp
from wecom.xml import build_xml, callback_body

XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}


def sealed(app: App, plaintext: str, now: float, kind: str, **meta: str) -> Outgoing:
    """Encrypt and sign ``plaintext`` for ``app`` into a callback POST."""
    if app.callback_url is None:
        raise ValueError(f"app {app.agentid} has no callback_url")
    timestamp, nonce = str(int(now)), ids.nonce()
    encrypt, signature = app.crypt().seal(plaintext, timestamp, nonce)
    body = callback_body(app.corp_id, encrypt, app.agentid)
    return Outgoing(
        "POST",
        app.callback_url,
        {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce},
        body.encode(),
        dict(XML_HEADERS),
        {"kind": kind, "corpid": app.corp_id, "agentid": str(app.agentid), **meta},
    )


def kf_event_xml(corp_id: str, token: str, open_kfid: str, now: float) -> str:
    return build_xml(
        {
            "ToUserName": corp_id,
            "CreateTime": int(now),
            "MsgType": "event",
            "Event": "kf_msg_or_event",
            "Token": token,
            "OpenKfId": open_kfid,
        }
    )


def kf_apps(corp: Corp, account: Account) -> list[App]:
    """The apps WeCom notifies about ``account``: those managing it that have a callback URL."""
    return [app for app in corp.apps.values() if account.managed(app) and app.callback_url]


def event_xml(corp_id: str, fields: Mapping[str, str | int], now: float) -> str:
    """Any other event: ``fields`` with ToUserName and CreateTime filled in unless given."""
    return build_xml({"ToUserName": corp_id, "CreateTime": int(now), **fields})


def verification(app: App, now: float) -> tuple[Outgoing, str]:
    """The URL-verification GET for ``app`` and the plaintext its answer must be."""
    if app.callback_url is None:
        raise ValueError(f"app {app.agentid} has no callback_url")
    expected = str(secrets.randbelow(10**19))
    timestamp, nonce = str(int(now)), ids.nonce()
    crypt = app.crypt()
    echostr = crypt.encrypt(expected)
    params = {"msg_signature": crypt.sign(timestamp, nonce, echostr), "timestamp": timestamp, "nonce": nonce}
    params["echostr"] = echostr
    meta = {"kind": "verify_url", "corpid": app.corp_id, "agentid": str(app.agentid)}
    return Outgoing("GET", app.callback_url, params, meta=meta), expected
