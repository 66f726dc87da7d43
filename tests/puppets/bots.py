"""Bots the puppet tests run in child processes (``--bot tests.puppets.bots:slow``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from puppets import Bot, TextMessage

slow = Bot()


def journal(line: str) -> None:
    """One line per handler step, appended at once: it survives the process being SIGKILLed."""
    with Path(os.environ["PUPPET_TEST_JOURNAL"]).open("a") as file:
        file.write(line + "\n")


@slow.on_text
async def acknowledge_then_answer(message: TextMessage) -> None:
    """Two replies with work in between, so that a kill lands between them."""
    journal(f"start {message.msgid} {int(message.redelivery)} {message.customer} {message.text}")
    await message.reply(f"got: {message.text}")
    await asyncio.sleep(float(os.environ.get("PUPPET_TEST_WORK", "0.3")))  # the bot's slow work
    await message.reply(f"done: {message.text}")
    journal(f"end {message.msgid} {message.text}")
