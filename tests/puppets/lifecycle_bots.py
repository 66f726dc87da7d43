"""A bot for the stop-order tests (``--bot tests.puppets.lifecycle_bots:held``): a text starting with
``hold`` is answered only once the test writes to the named pipe ``PUPPET_TEST_RELEASE``, so the test
decides when the handler running at the stop signal finishes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from puppets import Bot, TextMessage
from tests.puppets.bots import journal

held = Bot()


@held.on_text
async def answer_when_released(message: TextMessage) -> None:
    journal(f"start {message.text}")
    if message.text.startswith("hold"):
        # reading a FIFO returns once the test has opened it, written and closed it
        await asyncio.to_thread(Path(os.environ["PUPPET_TEST_RELEASE"]).read_text)
    await message.reply(f"echo: {message.text}")
    journal(f"replied {message.text}")
