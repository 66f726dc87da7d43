"""The bot: handlers by message class, and sending to customers.

    bot = Bot()

    @bot.on_text
    async def echo(message: TextMessage) -> None:
        await message.reply(f"echo: {message.text}")

Each incoming item goes to one handler: the one registered for its class or, failing that, for the
nearest base class (``on(Message)`` catches every message, ``on(Incoming)`` everything). Messages a
servicer typed in WeCom's own client (origin 5) go only to :meth:`Bot.on_servicer_message` handlers:
a bot that answers customers must not answer its own staff. Items no handler wants are still recorded
(and visible in :meth:`Bot.conversation`).

One bot serves every account of the process; a handler learns which from ``message.open_kfid``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from puppets.messages import (
    EnterSession,
    Event,
    Incoming,
    MenuClick,
    Message,
    MsgSendFail,
    SessionStatusChange,
    TextMessage,
)
from puppets.outgoing import Content
from puppets.sending import Sent

if TYPE_CHECKING:
    from puppets.account import Account
    from wecom.client import KfCustomer

__all__ = ["Bot"]

In = TypeVar("In", bound=Incoming)
Handler = Callable[[In], Awaitable[Any]]


class Bot:
    def __init__(self) -> None:
        self._handlers: dict[type[Incoming], Handler[Any]] = {}
        self._servicer_handler: Handler[Message] | None = None
        self._accounts: dict[str, Account] = {}

    # -- registering handlers ---------------------------------------------------------------
    def on(self, kind: type[In]) -> Callable[[Handler[In]], Handler[In]]:
        """``@bot.on(ImageMessage)``: handle items of ``kind`` and its subclasses (one handler each)."""
        if not (isinstance(kind, type) and issubclass(kind, Incoming)):
            raise TypeError(f"bot.on() takes a message or event class from puppets, not {kind!r}")

        def register(handler: Handler[In]) -> Handler[In]:
            if kind in self._handlers:
                raise ValueError(f"a handler for {kind.__name__} is already registered")
            self._handlers[kind] = handler
            return handler

        return register

    def on_message(self, handler: Handler[Message]) -> Handler[Message]:
        """Every message a customer sends, of any type (unless a more specific handler takes it)."""
        return self.on(Message)(handler)

    def on_text(self, handler: Handler[TextMessage]) -> Handler[TextMessage]:
        return self.on(TextMessage)(handler)

    def on_menu_click(self, handler: Handler[MenuClick]) -> Handler[MenuClick]:
        """The customer chose an option of a msgmenu (``message.menu_id``)."""
        return self.on(MenuClick)(handler)

    def on_event(self, handler: Handler[Event]) -> Handler[Event]:
        """Every kf event (unless a more specific handler takes it)."""
        return self.on(Event)(handler)

    def on_enter_session(self, handler: Handler[EnterSession]) -> Handler[EnterSession]:
        """The customer opened the conversation; ``await event.reply(...)`` sends the welcome message."""
        return self.on(EnterSession)(handler)

    def on_session_status_change(self, handler: Handler[SessionStatusChange]) -> Handler[SessionStatusChange]:
        return self.on(SessionStatusChange)(handler)

    def on_msg_send_fail(self, handler: Handler[MsgSendFail]) -> Handler[MsgSendFail]:
        return self.on(MsgSendFail)(handler)

    def on_servicer_message(self, handler: Handler[Message]) -> Handler[Message]:
        """Messages servicers typed in WeCom's own client (origin 5), of any type."""
        if self._servicer_handler is not None:
            raise ValueError("a servicer message handler is already registered")
        self._servicer_handler = handler
        return handler

    def handler_for(self, message: Incoming) -> Handler[Any] | None:
        if isinstance(message, Message) and message.from_servicer:
            return self._servicer_handler
        for cls in type(message).__mro__:
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler
        return None

    async def dispatch(self, message: Incoming) -> None:
        """Run the handler for ``message`` (the runtime calls this; tests may too)."""
        handler = self.handler_for(message)
        if handler is not None:
            await handler(message)

    # -- talking to customers ---------------------------------------------------------------
    def attach(self, account: Account) -> None:
        """Called by the runtime for each account it serves."""
        self._accounts[account.key] = account

    def detach(self, account: Account) -> None:
        self._accounts.pop(account.key, None)

    def account(self, open_kfid: str | None = None, corp_id: str | None = None) -> Account:
        """The served account with that open_kfid (and corp); with one account, it needs no name."""
        found = [
            account
            for account in self._accounts.values()
            if (open_kfid is None or account.open_kfid == open_kfid)
            and (corp_id is None or account.corp_id == corp_id)
        ]
        if len(found) == 1:
            return found[0]
        which = f"open_kfid={open_kfid!r}" + (f", corp_id={corp_id!r}" if corp_id else "")
        if not found:
            raise LookupError(f"this bot serves no account with {which}")
        raise LookupError(f"{len(found)} served accounts match {which}: name the account")

    async def send(
        self, customer: str, content: Content, *, open_kfid: str | None = None, corp_id: str | None = None
    ) -> Sent:
        """Send ``content`` to ``customer`` (an external_userid) from an account this bot serves.

        Inside a handler the send gets a derived msgid like :meth:`Incoming.reply`'s.
        """
        return await self.account(open_kfid, corp_id).send(customer, content)

    async def profile(self, customer: str, *, open_kfid: str | None = None) -> KfCustomer | None:
        """The customer's nickname, avatar... (``kf/customer/batchget``, cached for 10 minutes)."""
        return await self.account(open_kfid).profile(customer)

    async def conversation(
        self, customer: str, *, open_kfid: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The customer's recent messages and our sends, oldest first (see ``PuppetStore.conversation``)."""
        account = self.account(open_kfid)
        return await account.store.conversation(account.key, customer, limit)
