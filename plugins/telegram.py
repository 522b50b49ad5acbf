"""Telegram: messages from your bot to a chat (Bot API ``sendMessage``).

``stratavore notify add telegram --chat-id 123456 --token 123:ABC`` (the token from @BotFather).
"""

from __future__ import annotations

from stratavore.hookspecs import hookimpl
from stratavore.notify import Channel, Message, Option, http_post


class Telegram(Channel):
    kind = "telegram"
    description = "messages from a Telegram bot to a chat"
    options = (
        Option("chat_id", "the chat (user, group or channel) to write to", required=True),
        Option("token", "the bot's token, from @BotFather", secret=True, required=True),
        Option("api_url", "the Bot API server", default="https://api.telegram.org"),
    )

    def target(self) -> str:
        return f"telegram chat {self.config['chat_id']}"

    def send(self, message: Message) -> None:
        url = f"{self.config['api_url'].rstrip('/')}/bot{self.config['token']}/sendMessage"
        body = {
            "chat_id": self.config["chat_id"],
            "text": message.text[:4096],
            "disable_web_page_preview": True,
            "disable_notification": message.priority != "high",
        }
        http_post(url, json_body=body)


@hookimpl
def notification_channels() -> list[type[Channel]]:
    return [Telegram]
