"""ntfy (https://ntfy.sh or a self-hosted server): a push notification per message.

``stratavore notify add ntfy --topic my-agents [--server https://ntfy.example.org] [--token TOKEN]``
"""

from __future__ import annotations

from stratavore.hookspecs import hookimpl
from stratavore.notify import Channel, Message, Option, http_post

PRIORITIES = {"high": "high", "default": "default"}


class Ntfy(Channel):
    kind = "ntfy"
    description = "push notifications through an ntfy server (the phone app, the web app)"
    options = (
        Option("topic", "the topic to publish to (anyone who knows it can read it: pick a hard one)", required=True),
        Option("server", "the ntfy server", default="https://ntfy.sh"),
        Option("token", "an access token, for servers that require one", secret=True),
    )

    def target(self) -> str:
        return f"{self.config['server'].rstrip('/')}/{self.config['topic']}"

    def send(self, message: Message) -> None:
        headers = {
            # HTTP headers are latin-1: anything else goes in the body only
            "Title": message.title.encode("latin-1", "replace").decode("latin-1"),
            "Priority": PRIORITIES.get(message.priority, "default"),
            "Tags": ",".join(message.tags),
        }
        if message.events:
            headers["X-Stratavore-Event-Ids"] = ",".join(e["event_id"] for e in message.events[:20])
        if self.config.get("token"):
            headers["Authorization"] = f"Bearer {self.config['token']}"
        http_post(self.target(), content=(message.body or message.title).encode(), headers=headers)


@hookimpl
def notification_channels() -> list[type[Channel]]:
    return [Ntfy]
