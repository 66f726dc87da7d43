"""The errors a bot may catch when it sends, re-exported from :mod:`wecom.errors` under one import.

    from puppets import SendWindowExpired, SendCountLimit

    try:
        await message.reply("...")
    except SendCountLimit:      # 95001: five messages since the customer last wrote
        ...
    except SendWindowExpired:   # 95002: more than 48 h since the customer last wrote
        ...

Every WeCom refusal is a :class:`WeComError` (``errcode``, ``errmsg``); the codes a bot reacts to
have their own class. A repeated msgid is not an error: the send returns ``Sent(already_sent=True)``.
"""

from wecom.errors import (
    ApiRateLimited,
    InvalidOpenKfId,
    NoPermission,
    SendCountLimit,
    SendWindowExpired,
    SessionEnded,
    StateForbidsSending,
    StateTransitionNotAllowed,
    SystemBusy,
    WeComError,
    WeComTransportError,
)

__all__ = [
    "ApiRateLimited",
    "InvalidOpenKfId",
    "NoPermission",
    "SendCountLimit",
    "SendWindowExpired",
    "SessionEnded",
    "StateForbidsSending",
    "StateTransitionNotAllowed",
    "SystemBusy",
    "WeComError",
    "WeComTransportError",
]
