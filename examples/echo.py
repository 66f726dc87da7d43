"""The smallest bot: every text a customer sends comes back as ``echo: <the text>``.

wxkf puppet --bot examples.echo:bot
"""

from puppets import Bot, TextMessage

bot = Bot()


@bot.on_text
async def echo(message: TextMessage) -> None:
    await message.reply(f"echo: {message.text}")
