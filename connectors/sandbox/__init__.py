"""A local stand-in for the WhatsApp Cloud API (Graph API) plus a phone-style chat page.

    python -m connectors.sandbox [--port 5006] [--bot-url http://localhost:5005/webhooks/whatsapp/webhook] [--approve-templates]

The bot's WhatsApp channel sends to it (WHATSAPP_API_BASE=http://localhost:5006) exactly as
to Meta; the chat page posts signed webhooks to the bot exactly as Meta does.
"""
