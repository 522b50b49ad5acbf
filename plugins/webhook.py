"""Webhooks: Slack and Discord incoming webhooks, or a generic JSON POST to any URL.

``stratavore notify add webhook --url https://hooks.slack.com/services/... --format slack``
The URL is a secret (it is the credential for Slack and Discord): it lives in the keyring.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from stratavore.hookspecs import hookimpl
from stratavore.notify import Channel, Message, Option, http_post


class Webhook(Channel):
    kind = "webhook"
    description = "a POST to a URL: Slack or Discord incoming webhooks, or generic JSON"
    options = (
        Option("url", "the webhook URL", secret=True, required=True),
        Option("format", "the payload shape", default="json", choices=("json", "slack", "discord")),
    )

    @classmethod
    def validate(cls, values):
        config = super().validate(values)
        if urlsplit(config["url"]).scheme not in ("http", "https"):
            from stratavore.errors import InvalidInput

            raise InvalidInput("--url must be an http:// or https:// URL")
        return config

    def target(self) -> str:
        host = urlsplit(self.config.get("url", "")).hostname or "?"
        return f"{self.config['format']} webhook at {host}"

    def send(self, message: Message) -> None:
        fmt = self.config["format"]
        if fmt == "slack":
            body = {"text": f"*{message.title}*\n{message.body}".rstrip()}
        elif fmt == "discord":
            body = {"content": f"**{message.title}**\n{message.body}".rstrip()[:2000]}
        else:
            body = {"source": "stratavore", **message.to_dict()}
        headers = {}
        if message.events and len(message.events) == 1:
            # receivers that deduplicate can key on it; a summary carries every id in its body
            headers["Idempotency-Key"] = message.events[0]["event_id"]
        http_post(self.config["url"], json_body=body, headers=headers)


@hookimpl
def notification_channels() -> list[type[Channel]]:
    return [Webhook]
