"""The puppet SDK and runtime: a bot answers WeChat customers through WeCom's kf API.

    from puppets import Bot, TextMessage

    bot = Bot()

    @bot.on_text
    async def echo(message: TextMessage) -> None:
        await message.reply(f"echo: {message.text}")

``wxkf puppet --bot module:bot`` runs it (docs/puppets.md). Every name a bot author needs is here.
"""

from puppets import errors
from puppets.bot import Bot
from puppets.errors import *  # noqa: F403 - the typed errors, listed once in puppets.errors
from puppets.messages import (
    BusinessCardMessage,
    ChannelsMessage,
    ChannelsShopOrderMessage,
    ChannelsShopProductMessage,
    EnterSession,
    Event,
    FileMessage,
    ImageMessage,
    Incoming,
    LinkMessage,
    LocationMessage,
    MediaMessage,
    MeetingMessage,
    MenuClick,
    MenuMessage,
    MergedMessage,
    Message,
    MiniprogramMessage,
    MsgSendFail,
    NoteMessage,
    RawMessage,
    RejectCustomerMsgSwitchChange,
    ScheduleMessage,
    ServicerRecallMsg,
    ServicerStatusChange,
    SessionStatusChange,
    TextMessage,
    UnknownEvent,
    UserRecallMsg,
    VideoMessage,
    VoiceMessage,
)
from puppets.outgoing import (
    Click,
    File,
    Image,
    Link,
    Location,
    Menu,
    MenuText,
    Miniprogram,
    MiniprogramItem,
    Text,
    Video,
    View,
    Voice,
)
from puppets.sending import Sent

__all__ = [
    "Bot",
    "BusinessCardMessage",
    "ChannelsMessage",
    "ChannelsShopOrderMessage",
    "ChannelsShopProductMessage",
    "Click",
    "EnterSession",
    "Event",
    "File",
    "FileMessage",
    "Image",
    "ImageMessage",
    "Incoming",
    "Link",
    "LinkMessage",
    "Location",
    "LocationMessage",
    "MediaMessage",
    "MeetingMessage",
    "Menu",
    "MenuClick",
    "MenuMessage",
    "MenuText",
    "MergedMessage",
    "Message",
    "Miniprogram",
    "MiniprogramItem",
    "MiniprogramMessage",
    "MsgSendFail",
    "NoteMessage",
    "RawMessage",
    "RejectCustomerMsgSwitchChange",
    "ScheduleMessage",
    "Sent",
    "ServicerRecallMsg",
    "ServicerStatusChange",
    "SessionStatusChange",
    "Text",
    "TextMessage",
    "UnknownEvent",
    "UserRecallMsg",
    "Video",
    "VideoMessage",
    "View",
    "Voice",
    "VoiceMessage",
]
__all__ += errors.__all__
