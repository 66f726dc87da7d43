"""The errcodes the simulator answers with, and :class:`ApiError` that carries one.

Deliberately not imported from :mod:`wecom.errors`: the simulator is the oracle the protocol library
is tested against, and sharing constants would let a wrong number pass both sides unnoticed. Values
come from the protocol reference and WeCom's global errcode list. Where WeCom's choice for a case is
not documented, the closest documented code is used and the line says so ("chosen").
"""

from __future__ import annotations

SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001  # wrong corpsecret
INVALID_MEDIA_TYPE = 40005  # media/upload ?type=
INVALID_FILE_SIZE = 40006
INVALID_MEDIA_ID = 40007
INVALID_MSGTYPE = 40008
INVALID_IMAGE_SIZE = 40009
INVALID_VIDEO_SIZE = 40011
INVALID_CORPID = 40013
INVALID_ACCESS_TOKEN = 40014  # unknown, or invalidated early
INVALID_PARAMETER = 40058  # chosen for: bad msgid, repeated msgid, bad cursor, used/expired event code
INVALID_EXTERNAL_USERID = 40096
MISSING_ACCESS_TOKEN = 41001
MISSING_CORPID = 41002
MISSING_SECRET = 41004
MISSING_MEDIA_ID = 41006
ACCESS_TOKEN_EXPIRED = 42001
EMPTY_MEDIA = 44001
EMPTY_CONTENT = 44004
CONTENT_TOO_LONG = 45002
NEWS_ARTICLE_COUNT = 45008
RATE_LIMITED = 45009
BAD_JSON = 47001
NO_PERMISSION = 48002
ROBOT_REMOVED = 93000  # unknown or removed webhook key
INVALID_OPEN_KFID = 95000  # empty, or an account the calling app does not manage (chosen)
SEND_COUNT_LIMIT = 95001
SEND_WINDOW_EXPIRED = 95002
OPEN_KFID_NOT_FOUND = 95004  # not in this corp, or deleted
INVALID_ACCOUNT_NAME = 95006
INVALID_MSG_TOKEN = 95007
MENU_TOO_MANY_ITEMS = 95008
INVALID_MENU_ITEM = 95009
SESSION_ENDED = 95013
NOT_A_SERVICER = 95014
TRANSITION_NOT_ALLOWED = 95016
STATE_FORBIDS_SENDING = 95018
MEDIA_MD5_MISMATCH = 301019  # group robot image


class ApiError(Exception):
    """A rule refused the call; the HTTP layer answers ``{"errcode", "errmsg"}`` with status 200."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg

    def __str__(self) -> str:
        return f"errcode {self.errcode}: {self.errmsg}"

    def payload(self) -> dict[str, int | str]:
        return {"errcode": self.errcode, "errmsg": self.errmsg}
