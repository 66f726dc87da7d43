"""Typed views of what ``kf/sync_msg`` returns: one class per receive type and per kf event.

Every item of ``msg_list`` becomes exactly one :class:`Incoming`: a :class:`Message` (something a
customer or a servicer sent) or an :class:`Event` (``msgtype: "event"``, origin 4). A message type or
event type this module does not know arrives as :class:`RawMessage` or :class:`UnknownEvent` with the
item intact in :attr:`Incoming.raw`: nothing WeCom sends is ever dropped.

Parsing is tolerant: a missing or mistyped field becomes its empty default, because a handler that
cannot see a malformed field is better than a message that never reaches the bot.

The class hierarchy is what handlers subscribe to (:meth:`puppets.Bot.on`): a handler registered for
a class receives its subclasses too (``on(TextMessage)`` sees :class:`MenuClick`, ``on(Message)`` sees
every message), and the most specific registered class wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from puppets.account import Account
    from puppets.outgoing import Content
    from puppets.sending import Sent

__all__ = [
    "CUSTOMER",
    "SERVICER",
    "SYSTEM",
    "BusinessCardMessage",
    "ChannelsMessage",
    "ChannelsShopOrderMessage",
    "ChannelsShopProductMessage",
    "EnterSession",
    "Event",
    "FileMessage",
    "ImageMessage",
    "Incoming",
    "LinkMessage",
    "LocationMessage",
    "MediaMessage",
    "MeetingMessage",
    "MenuClick",
    "MenuMessage",
    "MergedMessage",
    "Message",
    "MiniprogramMessage",
    "MsgSendFail",
    "NoteMessage",
    "RawMessage",
    "RejectCustomerMsgSwitchChange",
    "ScheduleMessage",
    "ServicerRecallMsg",
    "ServicerStatusChange",
    "SessionStatusChange",
    "TextMessage",
    "UnknownEvent",
    "UserRecallMsg",
    "VideoMessage",
    "VoiceMessage",
    "parse_item",
]

#: ``origin`` values: the customer wrote, WeCom reports an event, a servicer wrote in WeCom's client.
CUSTOMER, SYSTEM, SERVICER = 3, 4, 5

Item = dict[str, Any]
_I = TypeVar("_I", bound="Incoming")


def _str(body: Item, name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else "" if value is None else str(value)


def _int(body: Item, name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) <= 18:
        return int(value)
    return 0


def _float(body: Item, name: str) -> float:
    value = body.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else 0.0
    except ValueError:
        return 0.0


def _dict(body: Item, name: str) -> Item:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _list(body: Item, name: str) -> list[Any]:
    value = body.get(name)
    return value if isinstance(value, list) else []


@dataclass(eq=False, kw_only=True)
class Incoming:
    """One ``msg_list`` item for kf account ``open_kfid``.

    ``redelivery`` is True when the handler already started on this item in an earlier run that was
    cut off (a crash): sends made again are recognised by their msgid, so a handler can simply run
    again, but side effects elsewhere (a ticket, an e-mail) should check it.
    """

    msgid: str
    open_kfid: str
    #: the customer's external_userid; "" for account-level events (servicer_status_change)
    external_userid: str
    send_time: int
    origin: int
    msgtype: str
    raw: Item = field(repr=False)
    redelivery: bool = False
    _account: Account | None = field(default=None, repr=False)

    @property
    def body(self) -> Item:
        """The type-specific object (``raw[msgtype]``)."""
        return _dict(self.raw, self.msgtype)

    @property
    def customer(self) -> str:
        """The customer's external_userid (what :meth:`puppets.Bot.send` takes)."""
        return self.external_userid

    async def reply(self, content: Content) -> Sent:
        """Send ``content`` (a str is a text message) to this item's customer.

        Inside a handler the send carries a msgid derived from this item and the send's position, so
        a handler run again after a crash never makes the customer receive it twice.
        """
        return await self.account.reply(self, content)

    @property
    def account(self) -> Account:
        """The served account this item came to: ``await message.account.transfer(...)`` and so on."""
        if self._account is None:
            raise RuntimeError("this message is not attached to a running puppet")
        return self._account

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        """The subclass's own fields, from the type-specific body."""
        return {}


@dataclass(eq=False, kw_only=True)
class Message(Incoming):
    """Something a customer (origin 3) or a servicer in WeCom's own client (origin 5) sent."""

    #: set for origin 5: the servicer who typed it. Never send it to the customer again.
    servicer_userid: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ()

    @property
    def from_servicer(self) -> bool:
        return self.origin == SERVICER


@dataclass(eq=False, kw_only=True)
class TextMessage(Message):
    text: str = ""
    #: the id of the msgmenu option the customer clicked, when the text is such a click
    menu_id: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("text",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"text": _str(body, "content"), "menu_id": _str(body, "menu_id")}


@dataclass(eq=False, kw_only=True)
class MenuClick(TextMessage):
    """The customer chose an option of a msgmenu we sent: ``menu_id`` is the option's id."""


@dataclass(eq=False, kw_only=True)
class MediaMessage(Message):
    """Image, voice, video or file: ``media_id`` is valid for 3 days (``await message.download()``)."""

    media_id: str = ""

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"media_id": _str(body, "media_id")}

    async def download(self) -> bytes:
        """The media's bytes (``media/get``)."""
        return await self.account.download(self)


@dataclass(eq=False, kw_only=True)
class ImageMessage(MediaMessage):
    msgtypes: ClassVar[tuple[str, ...]] = ("image",)


@dataclass(eq=False, kw_only=True)
class VoiceMessage(MediaMessage):
    msgtypes: ClassVar[tuple[str, ...]] = ("voice",)


@dataclass(eq=False, kw_only=True)
class VideoMessage(MediaMessage):
    msgtypes: ClassVar[tuple[str, ...]] = ("video",)


@dataclass(eq=False, kw_only=True)
class FileMessage(MediaMessage):
    msgtypes: ClassVar[tuple[str, ...]] = ("file",)


@dataclass(eq=False, kw_only=True)
class LocationMessage(Message):
    latitude: float = 0.0
    longitude: float = 0.0
    name: str = ""
    address: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("location",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "latitude": _float(body, "latitude"),
            "longitude": _float(body, "longitude"),
            "name": _str(body, "name"),
            "address": _str(body, "address"),
        }


@dataclass(eq=False, kw_only=True)
class LinkMessage(Message):
    title: str = ""
    desc: str = ""
    url: str = ""
    pic_url: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("link",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {name: _str(body, name) for name in ("title", "desc", "url", "pic_url")}


@dataclass(eq=False, kw_only=True)
class BusinessCardMessage(Message):
    userid: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("business_card",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"userid": _str(body, "userid")}


@dataclass(eq=False, kw_only=True)
class MiniprogramMessage(Message):
    appid: str = ""
    title: str = ""
    thumb_media_id: str = ""
    pagepath: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("miniprogram",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {name: _str(body, name) for name in ("appid", "title", "thumb_media_id", "pagepath")}


@dataclass(eq=False, kw_only=True)
class MenuMessage(Message):
    """A msgmenu (sent by a servicer): ``items`` as WeCom gives them (click, view, miniprogram, text)."""

    head_content: str = ""
    items: list[Item] = field(default_factory=list)
    tail_content: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("msgmenu",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "head_content": _str(body, "head_content"),
            "items": [item for item in _list(body, "list") if isinstance(item, dict)],
            "tail_content": _str(body, "tail_content"),
        }


# The WeChat Channels, merged-record and office types: WeCom documents their fields only in part,
# so each exposes the fields seen in practice and keeps the rest in ``body``.


@dataclass(eq=False, kw_only=True)
class ChannelsShopProductMessage(Message):
    product_id: str = ""
    title: str = ""
    sales_price: str = ""
    head_image: str = ""
    shop_nickname: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("channels_shop_product",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        names = ("product_id", "title", "sales_price", "head_image", "shop_nickname")
        return {name: _str(body, name) for name in names}


@dataclass(eq=False, kw_only=True)
class ChannelsShopOrderMessage(Message):
    order_id: str = ""
    product_titles: str = ""
    price_wording: str = ""
    state: str = ""
    image_url: str = ""
    shop_nickname: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("channels_shop_order",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        names = ("order_id", "product_titles", "price_wording", "state", "image_url", "shop_nickname")
        return {name: _str(body, name) for name in names}


@dataclass(eq=False, kw_only=True)
class ChannelsMessage(Message):
    sub_type: int = 0
    nickname: str = ""
    title: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("channels",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "sub_type": _int(body, "sub_type"),
            "nickname": _str(body, "nickname"),
            "title": _str(body, "title"),
        }


@dataclass(eq=False, kw_only=True)
class MergedMessage(Message):
    """A forwarded chat record: ``items`` are its entries (``msgtype``, ``msg_content``...)."""

    title: str = ""
    items: list[Item] = field(default_factory=list)
    msgtypes: ClassVar[tuple[str, ...]] = ("merged_msg",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "title": _str(body, "title"),
            "items": [item for item in _list(body, "item") if isinstance(item, dict)],
        }


@dataclass(eq=False, kw_only=True)
class MeetingMessage(Message):
    meetingid: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("meeting",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"meetingid": _str(body, "meetingid")}


@dataclass(eq=False, kw_only=True)
class ScheduleMessage(Message):
    scheduleid: str = ""
    msgtypes: ClassVar[tuple[str, ...]] = ("schedule",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"scheduleid": _str(body, "scheduleid")}


@dataclass(eq=False, kw_only=True)
class NoteMessage(Message):
    msgtypes: ClassVar[tuple[str, ...]] = ("note",)


@dataclass(eq=False, kw_only=True)
class RawMessage(Message):
    """A message type this SDK does not know yet: everything is in ``raw`` and ``body``."""


# -- events ----------------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class Event(Incoming):
    """A kf event (``msgtype: "event"``); ``event_type`` names it."""

    event_type: str = ""
    event_types: ClassVar[tuple[str, ...]] = ()

    @property
    def body(self) -> Item:
        return _dict(self.raw, "event")


@dataclass(eq=False, kw_only=True)
class EnterSession(Event):
    """The customer opened the conversation. ``welcome_code`` (if WeCom gave one, valid 20 s) lets
    :meth:`reply` send one welcome message (text or msgmenu) through ``send_msg_on_event``."""

    scene: str = ""
    scene_param: str = ""
    welcome_code: str = ""
    wechat_channels: Item = field(default_factory=dict)
    event_types: ClassVar[tuple[str, ...]] = ("enter_session",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "scene": _str(body, "scene"),
            "scene_param": _str(body, "scene_param"),
            "welcome_code": _str(body, "welcome_code"),
            "wechat_channels": _dict(body, "wechat_channels"),
        }

    @property
    def event_code(self) -> str:
        return self.welcome_code


@dataclass(eq=False, kw_only=True)
class MsgSendFail(Event):
    """A message we sent (``fail_msgid``) was not delivered; the conversation store marks it so."""

    fail_msgid: str = ""
    fail_type: int = 0
    event_types: ClassVar[tuple[str, ...]] = ("msg_send_fail",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"fail_msgid": _str(body, "fail_msgid"), "fail_type": _int(body, "fail_type")}


@dataclass(eq=False, kw_only=True)
class ServicerStatusChange(Event):
    servicer_userid: str = ""
    status: int = 0
    stop_type: int = 0
    event_types: ClassVar[tuple[str, ...]] = ("servicer_status_change",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "servicer_userid": _str(body, "servicer_userid"),
            "status": _int(body, "status"),
            "stop_type": _int(body, "stop_type"),
        }


@dataclass(eq=False, kw_only=True)
class SessionStatusChange(Event):
    """The session moved (1 taken from the pool, 2 transferred, 3 ended, 4 reopened). ``msg_code``, when
    given, lets :meth:`reply` send one message through ``send_msg_on_event``."""

    change_type: int = 0
    old_servicer_userid: str = ""
    new_servicer_userid: str = ""
    msg_code: str = ""
    event_types: ClassVar[tuple[str, ...]] = ("session_status_change",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "change_type": _int(body, "change_type"),
            "old_servicer_userid": _str(body, "old_servicer_userid"),
            "new_servicer_userid": _str(body, "new_servicer_userid"),
            "msg_code": _str(body, "msg_code"),
        }

    @property
    def event_code(self) -> str:
        return self.msg_code


@dataclass(eq=False, kw_only=True)
class UserRecallMsg(Event):
    recall_msgid: str = ""
    event_types: ClassVar[tuple[str, ...]] = ("user_recall_msg",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"recall_msgid": _str(body, "recall_msgid")}


@dataclass(eq=False, kw_only=True)
class ServicerRecallMsg(Event):
    recall_msgid: str = ""
    servicer_userid: str = ""
    event_types: ClassVar[tuple[str, ...]] = ("servicer_recall_msg",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {"recall_msgid": _str(body, "recall_msgid"), "servicer_userid": _str(body, "servicer_userid")}


@dataclass(eq=False, kw_only=True)
class RejectCustomerMsgSwitchChange(Event):
    servicer_userid: str = ""
    reject_switch: int = 0
    event_types: ClassVar[tuple[str, ...]] = ("reject_customer_msg_switch_change",)

    @classmethod
    def _fields(cls, body: Item) -> dict[str, Any]:
        return {
            "servicer_userid": _str(body, "servicer_userid"),
            "reject_switch": _int(body, "reject_switch"),
        }


@dataclass(eq=False, kw_only=True)
class UnknownEvent(Event):
    """An event type this SDK does not know yet: everything is in ``raw`` and ``body``."""


def _index(classes: list[type[_I]], names: Callable[[type[_I]], tuple[str, ...]]) -> dict[str, type[_I]]:
    return {name: cls for cls in classes for name in names(cls)}


def _leaves(root: type[_I]) -> list[type[_I]]:
    found: list[type[_I]] = []
    for sub in root.__subclasses__():
        found.append(sub)
        found.extend(_leaves(sub))
    return found


# Only a class that declares its own names claims them (MenuClick inherits "text" but does not claim it).
MESSAGE_TYPES: dict[str, type[Message]] = _index(
    _leaves(Message), lambda cls: cls.__dict__.get("msgtypes", ())
)
EVENT_TYPES: dict[str, type[Event]] = _index(_leaves(Event), lambda cls: cls.__dict__.get("event_types", ()))


def parse_item(item: Item, *, redelivery: bool = False) -> Incoming:
    """The typed view of one ``msg_list`` item (never raises for a dict: unknown types stay raw)."""
    msgtype = _str(item, "msgtype")
    common: dict[str, Any] = {
        "msgid": _str(item, "msgid"),
        "send_time": _int(item, "send_time"),
        "origin": _int(item, "origin"),
        "msgtype": msgtype,
        "raw": item,
        "redelivery": redelivery,
    }
    if msgtype == "event":
        body = _dict(item, "event")
        event_type = _str(body, "event_type")
        event_cls: type[Event] = EVENT_TYPES.get(event_type, UnknownEvent)
        return event_cls(
            open_kfid=_str(body, "open_kfid") or _str(item, "open_kfid"),
            external_userid=_str(body, "external_userid") or _str(item, "external_userid"),
            event_type=event_type,
            **common,
            **event_cls._fields(body),
        )
    body = _dict(item, msgtype)
    message_cls: type[Message] = MESSAGE_TYPES.get(msgtype, RawMessage)
    fields = message_cls._fields(body)
    if message_cls is TextMessage and fields["menu_id"]:
        message_cls = MenuClick
    return message_cls(
        open_kfid=_str(item, "open_kfid"),
        external_userid=_str(item, "external_userid"),
        servicer_userid=_str(item, "servicer_userid"),
        **common,
        **fields,
    )
