"""The Rasa input and output channel for the WhatsApp Cloud API.

POST /webhooks/whatsapp/webhook: signature checked on the raw body, every message recorded
once (durable, unique on the message id), 200 at once; the Rasa turns run afterwards in a
tracked background task, in order per sender. Unanswered messages are picked up again when
the server starts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Text

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from cardsystem.formatting import mask_phone
from connectors.whatsapp import outbound
from connectors.whatsapp.graph import GraphClient, OutsideServiceWindow
from connectors.whatsapp.inbound import parse_webhook
from connectors.whatsapp.signature import is_signed_by
from connectors.whatsapp.store import ChannelStore, PendingMessage

logger = logging.getLogger(__name__)
UNSUPPORTED_REPLY = ("Sorry, I can't read that kind of message. Please type your question, or send a photo or "
                     "document if I asked for one.")
SETTINGS = {  # credentials.yml key -> environment variable used when the key is empty
    "verify_token": "WHATSAPP_VERIFY_TOKEN", "app_secret": "WHATSAPP_APP_SECRET",
    "access_token": "WHATSAPP_ACCESS_TOKEN", "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "api_base": "WHATSAPP_API_BASE", "api_version": "WHATSAPP_API_VERSION",
}


class WhatsAppOutput(OutputChannel):
    """Rasa's replies as WhatsApp messages (reply buttons, lists, numbered menus, documents)."""

    @classmethod
    def name(cls) -> Text:
        return "whatsapp"

    def __init__(self, client: GraphClient, reply_by: Text = "to") -> None:
        self.client = client
        self.reply_by = reply_by

    async def _send(self, recipient_id: Text, message: Dict[Text, Any]) -> None:
        try:
            await self.client.send(recipient_id, self.reply_by, message)
        except OutsideServiceWindow:
            pass  # recorded and logged by the client; proactive messages must use templates

    async def send_text_message(self, recipient_id: Text, text: Text, **kwargs: Any) -> None:
        for part in outbound.split_text(text):
            await self._send(recipient_id, outbound.text_message(part))

    async def send_text_with_buttons(self, recipient_id: Text, text: Text, buttons: List[Dict[Text, Any]],
                                     **kwargs: Any) -> None:
        messages, _menu = outbound.buttons_message(text, buttons)
        for message in messages:
            await self._send(recipient_id, message)

    async def send_image_url(self, recipient_id: Text, image: Text, **kwargs: Any) -> None:
        await self._send(recipient_id, {"type": "image", "image": {"link": image}})

    async def send_attachment(self, recipient_id: Text, attachment: Any, **kwargs: Any) -> None:
        link = attachment if isinstance(attachment, str) else (attachment or {}).get("link", "")
        filename = link.rstrip("/").rsplit("/", 1)[-1] or "document.pdf"
        await self._send(recipient_id, outbound.document_message(filename, link=link))

    async def send_custom_json(self, recipient_id: Text, json_message: Dict[Text, Any], **kwargs: Any) -> None:
        if isinstance(json_message, dict) and json_message.get("type"):
            await self._send(recipient_id, json_message)  # a raw WhatsApp message, e.g. a template
        else:
            logger.warning("custom json without a WhatsApp 'type' was not sent")


class WhatsAppInput(InputChannel):
    """Receives WhatsApp Cloud API webhooks; configured as `connectors.whatsapp.WhatsAppInput`."""

    @classmethod
    def name(cls) -> Text:
        return "whatsapp"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> "WhatsAppInput":
        credentials = credentials or {}
        values = {key: credentials.get(key) or os.environ.get(env, "") for key, env in SETTINGS.items()}
        if not values["app_secret"] or not values["phone_number_id"]:
            cls.raise_missing_credentials_exception()
        return cls(
            verify_token=values["verify_token"], app_secrets=[s.strip() for s in values["app_secret"].split(",")],
            access_token=values["access_token"], phone_number_id=str(values["phone_number_id"]),
            api_base=values["api_base"] or "https://graph.facebook.com", api_version=values["api_version"] or "v21.0",
            store_url=credentials.get("store_url"),
        )

    def __init__(self, verify_token: Text, app_secrets: List[Text], access_token: Text, phone_number_id: Text,
                 api_base: Text, api_version: Text, store_url: Optional[Text] = None) -> None:
        self.verify_token = verify_token
        self.app_secrets = [s for s in app_secrets if s]
        self.phone_number_id = phone_number_id
        self.store = ChannelStore(store_url)
        self.client = GraphClient(api_base, api_version, phone_number_id, access_token, self.store)
        self._locks: Dict[Text, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Task] = set()

    def get_output_channel(self) -> OutputChannel:
        return WhatsAppOutput(self.client)

    async def _answer(self, pending: PendingMessage, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        kind = pending.metadata.get("whatsapp", {})
        output = WhatsAppOutput(self.client, pending.reply_by)
        await self.client.mark_read(pending.message_id)
        if not kind.get("supported", True):
            await output.send_text_message(pending.sender, UNSUPPORTED_REPLY)
            return
        await on_new_message(UserMessage(pending.text, output, pending.sender, input_channel=self.name(),
                                         message_id=pending.message_id, metadata=pending.metadata))

    async def drain(self, sender: Optional[Text], on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Answer a sender's recorded messages in order (all senders when None)."""
        pending = await asyncio.to_thread(self.store.pending, sender)
        for message in pending:
            lock = self._locks.setdefault(message.sender, asyncio.Lock())
            async with lock:
                still = await asyncio.to_thread(self.store.pending, message.sender)
                if message.message_id not in {p.message_id for p in still}:
                    continue  # another task answered it meanwhile
                try:
                    await self._answer(message, on_new_message)
                    state = "done"
                except Exception:  # one bad turn must not stop the queue; it is marked and logged
                    logger.exception("turn for %s failed", mask_phone(message.sender))
                    state = "failed"
                await asyncio.to_thread(self.store.finish, message.message_id, state)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        whatsapp_webhook = Blueprint(f"whatsapp_webhook_{id(self)}", __name__)

        @whatsapp_webhook.listener("after_server_start")
        async def resume_unanswered(app, loop) -> None:
            self._spawn(self.drain(None, on_new_message))

        @whatsapp_webhook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @whatsapp_webhook.route("/webhook", methods=["GET"])
        async def verify(request: Request) -> HTTPResponse:
            if (request.args.get("hub.mode") == "subscribe" and self.verify_token
                    and request.args.get("hub.verify_token") == self.verify_token):
                return response.text(request.args.get("hub.challenge") or "")
            logger.warning("webhook verification refused: wrong mode or token")
            return response.text("forbidden", status=403)

        @whatsapp_webhook.route("/webhook", methods=["POST"])
        async def webhook(request: Request) -> HTTPResponse:
            body = request.body or b""
            if not is_signed_by(body, request.headers.get("X-Hub-Signature-256"), self.app_secrets):
                logger.warning("webhook refused: missing or wrong X-Hub-Signature-256 (%d bytes)", len(body))
                return response.json({"error": "invalid signature"}, status=403)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                logger.warning("webhook refused: body is not JSON (%d bytes)", len(body))
                return response.json({"error": "body is not JSON"}, status=400)
            parsed = parse_webhook(payload, self.phone_number_id)
            for problem in parsed.problems:
                logger.info("webhook: %s", problem)
            senders = []
            for message in parsed.messages:
                if message.kind in ("reaction",):
                    continue  # a reaction to our message needs no answer
                recorded = await asyncio.to_thread(self._record, message)
                if recorded and message.sender not in senders:
                    senders.append(message.sender)
            for status in parsed.statuses:
                await asyncio.to_thread(self.store.record_status, status)
            for sender in senders:
                self._spawn(self.drain(sender, on_new_message))
            return response.json({"status": "received"})

        return whatsapp_webhook

    def _record(self, message: Any) -> bool:
        return self.store.record_inbound(message)
