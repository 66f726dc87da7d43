"""The WeCom protocol: callback crypto and XML, event models, typed errors, tokens, the API client."""

from wecom.client import (
    KfAccount,
    KfCustomer,
    MediaUploadResult,
    SyncMsgResult,
    WeComClient,
    fetch_access_token,
    robot_send,
)
from wecom.crypto import CryptoError, MsgCrypt
from wecom.errors import (
    TOKEN_ERRCODES,
    WeComError,
    WeComResponseError,
    WeComTransportError,
    error_for,
    raise_for_payload,
)
from wecom.http import WeComHttp
from wecom.models import CallbackEnvelope, EventError, KfMessage, KfMsgOrEvent, RawEvent, parse_event
from wecom.tokens import AccessToken, AccessTokenProvider, GetTokenProvider, StaticTokenProvider
from wecom.xml import XMLError, build_xml, callback_body, parse_xml, reply_envelope

__all__ = [
    "TOKEN_ERRCODES",
    "AccessToken",
    "AccessTokenProvider",
    "CallbackEnvelope",
    "CryptoError",
    "EventError",
    "GetTokenProvider",
    "KfAccount",
    "KfCustomer",
    "KfMessage",
    "KfMsgOrEvent",
    "MediaUploadResult",
    "MsgCrypt",
    "RawEvent",
    "StaticTokenProvider",
    "SyncMsgResult",
    "WeComClient",
    "WeComError",
    "WeComHttp",
    "WeComResponseError",
    "WeComTransportError",
    "XMLError",
    "build_xml",
    "callback_body",
    "error_for",
    "fetch_access_token",
    "parse_event",
    "parse_xml",
    "raise_for_payload",
    "reply_envelope",
    "robot_send",
]
