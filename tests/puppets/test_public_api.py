"""The names a bot author imports: one ``from puppets import ...`` for the SDK and its typed errors."""

from __future__ import annotations

import puppets
from puppets import errors
from wecom import errors as wecom_errors

BOT_AUTHOR_NAMES = {
    *("Bot", "Sent", "Incoming", "Message", "Event", "MediaMessage", "RawMessage", "UnknownEvent"),
    *("TextMessage", "MenuClick", "ImageMessage", "VoiceMessage", "VideoMessage", "FileMessage"),
    *("LocationMessage", "LinkMessage", "BusinessCardMessage", "MiniprogramMessage", "MenuMessage"),
    *("ChannelsShopProductMessage", "ChannelsShopOrderMessage", "ChannelsMessage", "MergedMessage"),
    *("MeetingMessage", "ScheduleMessage", "NoteMessage"),
    *("EnterSession", "MsgSendFail", "ServicerStatusChange", "SessionStatusChange", "UserRecallMsg"),
    *("ServicerRecallMsg", "RejectCustomerMsgSwitchChange"),
    *("Text", "Image", "Voice", "Video", "File", "Link", "Miniprogram", "Location"),
    *("Menu", "Click", "View", "MiniprogramItem", "MenuText"),
    *("WeComError", "WeComTransportError", "SendCountLimit", "SendWindowExpired", "StateForbidsSending"),
    *("SessionEnded", "StateTransitionNotAllowed", "ApiRateLimited", "NoPermission", "InvalidOpenKfId"),
    "SystemBusy",
}


def test_every_name_a_bot_author_types_comes_from_one_import_and_nothing_else_does() -> None:
    assert set(puppets.__all__) == BOT_AUTHOR_NAMES
    assert len(puppets.__all__) == len(set(puppets.__all__))
    namespace: dict[str, object] = {}
    exec("from puppets import *", namespace)
    assert set(namespace) - {"__builtins__"} == BOT_AUTHOR_NAMES


def test_the_errors_are_wecoms_own_classes_listed_once() -> None:
    assert set(errors.__all__) <= set(puppets.__all__)
    for name in errors.__all__:
        assert getattr(puppets, name) is getattr(wecom_errors, name)
