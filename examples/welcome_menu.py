"""Greets each customer who opens the conversation with a menu, and answers each choice.

wxkf puppet --bot examples.welcome_menu:bot
"""

from puppets import Bot, Click, EnterSession, Menu, MenuClick, TextMessage

ANSWERS = {
    "hours": "We are open 9:00-18:00, Monday to Friday.",
    "returns": "Send the parcel back within 30 days; we refund on arrival.",
    "human": "A colleague will be with you shortly.",
}
MENU = Menu(
    "Hello! How can we help?",
    [Click("hours", "Opening hours"), Click("returns", "Returns"), Click("human", "Talk to a person")],
)

bot = Bot()


@bot.on_enter_session
async def welcome(event: EnterSession) -> None:
    if event.welcome_code:  # WeCom gives one only if the customer had no welcome or message for 48 h
        await event.reply(MENU)


@bot.on_menu_click
async def answer(click: MenuClick) -> None:
    await click.reply(ANSWERS.get(click.menu_id, "Sorry, I did not get that."))
    if click.menu_id == "human":
        await click.account.transfer(click.customer, 2)  # to the waiting pool


@bot.on_text
async def anything_else(message: TextMessage) -> None:
    await message.reply(MENU)
