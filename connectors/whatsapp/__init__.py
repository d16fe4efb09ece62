"""WhatsApp Cloud API channel for Rasa.

`channel` holds the input and output channel (credentials.yml: connectors.whatsapp.WhatsAppInput),
`webhook` the verify-parse-record step shared with `ingress` (a light process that takes
webhooks while Rasa restarts), `graph` the async Graph API client, `store` the durable channel
state (inbound queue, outbox, dead letters), `inbound` and `outbound` the payload parsing and
reply shapes, `errors` the retry policy by Graph error code, `deadletters` the operators' command.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    """The channel classes on first use only: the ingress and the commands must not load Rasa."""
    if name in ("WhatsAppInput", "WhatsAppOutput"):
        from connectors.whatsapp import channel

        return getattr(channel, name)
    raise AttributeError(name)
