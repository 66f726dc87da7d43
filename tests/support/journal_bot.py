"""The bot crash tests run in ``wxkf puppet`` (``--bot tests.support.journal_bot:bot``).

For every item it is handed (any message, any event) it appends a ``start`` line to the journal
(``CRASH_JOURNAL``: the msgid, the customer, the type and the class it was handed as, the
redelivery flag, its pid), replies ``got: <msgid>`` to the item's customer, works ``CRASH_WORK``
seconds (default 0.02), replies ``done: <msgid>`` and appends an ``end`` line. Items without a
customer (account-level events) are journaled but answered to nobody.

A text ``hang`` is held forever after its first reply, unless it is a redelivery: a test that sends
one knows a handler is running when it kills the process once that ``start`` line is written.

Each line is one ``write`` on an ``O_APPEND`` descriptor: a SIGKILL loses no line that was written
(the kernel has it) and never leaves half of one.
"""

from __future__ import annotations

import asyncio
import json
import os

from puppets import Bot, Event, Incoming, TextMessage

HANG = "hang"

bot = Bot()


def journal(**line: object) -> None:
    data = (json.dumps(line | {"pid": os.getpid()}) + "\n").encode()
    fd = os.open(os.environ["CRASH_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@bot.on(Incoming)
async def journal_and_answer(item: Incoming) -> None:
    kind = item.event_type if isinstance(item, Event) else item.msgtype
    journal(
        at="start",
        msgid=item.msgid,
        customer=item.customer,
        type=kind,
        redelivery=item.redelivery,
        **{"class": type(item).__name__},
    )
    if item.customer:
        await item.reply(f"got: {item.msgid}")
    if isinstance(item, TextMessage) and item.text == HANG and not item.redelivery:
        await asyncio.Event().wait()  # until the process is killed
    await asyncio.sleep(float(os.environ.get("CRASH_WORK", "0.02")))  # the bot's own slow work
    if item.customer:
        await item.reply(f"done: {item.msgid}")
    journal(at="end", msgid=item.msgid)
