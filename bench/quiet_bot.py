"""A bot whose text handler does nothing: the benchmarks measure the path up to the handler."""

from puppets import Bot, TextMessage

bot = Bot()


@bot.on_text
async def handle(message: TextMessage) -> None:
    del message
