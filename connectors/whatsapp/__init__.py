"""WhatsApp Cloud API channel for Rasa (in progress, issue 3).

So far the channel's pure parts: webhook signature checks (`signature`), reading webhook
payloads into channel-neutral inbound messages (`inbound`) and shaping Rasa's replies
into Graph API message bodies within WhatsApp's limits (`outbound`). The Sanic input
channel and the Graph API client come next.
"""
