"""WhatsApp Cloud API channel for Rasa (in progress, issue 3).

`channel` holds the input and output channel (credentials.yml: connectors.whatsapp.WhatsAppInput),
`graph` the async Graph API client, `store` the durable channel state, `signature`,
`inbound` and `outbound` the webhook checks, parsing and reply shapes, `errors` the
retry policy by Graph error code. The local sandbox comes next.
"""
from connectors.whatsapp.channel import WhatsAppInput, WhatsAppOutput  # noqa: F401  (credentials.yml path)
