"""WeCom ``kf/sync_msg`` items for tests that record pages in a puppet store without a simulator."""

from __future__ import annotations

from typing import Any


def text_item(msgid: str, customer: str = "wmA", *, content: str | None = None) -> dict[str, Any]:
    """A customer's text message to the account ``wkone``; its content is its msgid unless given."""
    return {
        "msgid": msgid,
        "open_kfid": "wkone",
        "external_userid": customer,
        "send_time": 1,
        "origin": 3,
        "msgtype": "text",
        "text": {"content": msgid if content is None else content},
    }
