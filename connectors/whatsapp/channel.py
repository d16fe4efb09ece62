"""The Rasa input and output channel for the WhatsApp Cloud API.

POST /webhooks/whatsapp/webhook: signature checked on the raw body, every message recorded
once (durable, unique on the message id), 200 at once; the Rasa turns run afterwards in a
tracked background task, in order per sender. Unanswered messages are picked up again when
the server starts.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Text

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from cardsystem.formatting import mask_phone
from connectors.whatsapp import outbound
from connectors.whatsapp.graph import GraphClient, MediaError, OutsideServiceWindow
from connectors.handoff import wording
from connectors.whatsapp.inbound import EVENT_KIND, Inbound, parse_webhook
from connectors.whatsapp.media import MediaStore
from connectors.whatsapp.signature import is_signed_by
from connectors.whatsapp.store import LEASE_TTL, ChannelStore, PendingMessage

logger = logging.getLogger(__name__)
UNSUPPORTED_REPLY = ("Sorry, I can't read that kind of message. Please type your question, or send a photo or "
                     "document if I asked for one.")
POLITE_REPLIES = {  # what the bot says to messages it cannot use (never silence, never a crash)
    "reaction": "Thanks for the {text}! If there's anything else, just type it here, or type \"menu\" to see what I can do.",
    "location": "Thanks for sharing your location, but I can't use locations here. Please type your question instead.",
    "contacts": "Thanks, but I can't use shared contacts here. Please type your question instead.",
    "sticker": "Nice sticker! Please type your question, or \"menu\" to see what I can do.",
    "audio": "Sorry, I can't listen to voice messages. Please type your question, or \"agent\" to reach a person.",
}
SECRETS_WARNING = ("For your safety I've hidden the {what} you typed, and it isn't stored. Please never share your "
                   "full card number, CVV, OTP, PIN or date of birth in a chat, not even with us: we never ask for them.")
SANDBOX_DEFAULTS = {
    "verify_token": "sandbox-verify-token", "app_secret": "sandbox-app-secret", "access_token": "sandbox-token",
    "phone_number_id": "100000000000001", "api_base": "http://localhost:5006", "api_version": "v21.0",
}
STORED_MEDIA = ("image", "document", "video", "audio")  # stickers are not evidence
SWEEP_SECONDS = 30.0
MAX_CONCURRENT_TURNS = 4  # turns are CPU-bound: more at once only slows the webhook's acknowledgements
SETTINGS = {  # credentials.yml key -> environment variable used when the key is empty
    "verify_token": "WHATSAPP_VERIFY_TOKEN", "app_secret": "WHATSAPP_APP_SECRET",
    "access_token": "WHATSAPP_ACCESS_TOKEN", "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "api_base": "WHATSAPP_API_BASE", "api_version": "WHATSAPP_API_VERSION",
}


class WhatsAppOutput(OutputChannel):
    """Rasa's replies as WhatsApp messages (reply buttons, lists, numbered menus, documents).

    A free-form reply to a customer outside the 24-hour window is refused (recorded, logged
    with the reason) and `refused` counts it, so a caller can tell that a template is needed.
    """

    @classmethod
    def name(cls) -> Text:
        return "whatsapp"

    def __init__(self, client: GraphClient, reply_by: Text = "to", upload_documents: bool = True) -> None:
        self.client = client
        self.reply_by = reply_by
        self.upload_documents = upload_documents
        self.refused = 0

    async def _send(self, recipient_id: Text, message: Dict[Text, Any]) -> Optional[Text]:
        try:
            return await self.client.send(recipient_id, self.reply_by, message)
        except OutsideServiceWindow:
            self.refused += 1  # recorded and logged by the client; proactive messages must use templates
            return None

    async def send_text_message(self, recipient_id: Text, text: Text, **kwargs: Any) -> None:
        for part in outbound.split_text(text):
            await self._send(recipient_id, outbound.text_message(part))

    async def send_text_with_buttons(self, recipient_id: Text, text: Text, buttons: List[Dict[Text, Any]],
                                     **kwargs: Any) -> None:
        messages, menu = outbound.buttons_message(text, buttons)
        # a numbered menu (more than 10 choices) is remembered so that a typed "7" means its payload
        await asyncio.to_thread(self.client.store.save_menu, recipient_id, menu)
        for message in messages:
            await self._send(recipient_id, message)

    async def send_image_url(self, recipient_id: Text, image: Text, **kwargs: Any) -> None:
        await self._send(recipient_id, {"type": "image", "image": {"link": image}})

    async def send_attachment(self, recipient_id: Text, attachment: Any, **kwargs: Any) -> None:
        """A document: uploaded to the media endpoint (so no public URL is needed), else sent by link."""
        if isinstance(attachment, dict):
            link, caption = attachment.get("link") or attachment.get("url") or "", attachment.get("caption")
            filename = attachment.get("filename")
        else:
            link, caption, filename = str(attachment or ""), None, None
        if not link:
            logger.warning("attachment without a link was not sent")
            return
        filename = filename or link.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "document.pdf"
        media_id = None
        if self.upload_documents:
            try:
                content, mime_type = await self.client.fetch_link(link)
                if mime_type in ("application/octet-stream", "binary/octet-stream") and filename.endswith(".pdf"):
                    mime_type = "application/pdf"
                media_id = await self.client.upload_media(content, mime_type, filename)
            except MediaError as exc:
                logger.warning("document upload failed (%s); sending it by link", exc)
        await self._send(recipient_id, outbound.document_message(filename, link=None if media_id else link,
                                                                  media_id=media_id, caption=caption))

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
        if os.environ.get("CARDCARE_ENV", "development") != "production":
            # Development: talk to the local sandbox (python -m connectors.sandbox) out of the box.
            values = {key: value or SANDBOX_DEFAULTS[key] for key, value in values.items()}
        if not values["app_secret"] or not values["phone_number_id"] or not values["access_token"]:
            cls.raise_missing_credentials_exception()
        return cls(
            verify_token=values["verify_token"], app_secrets=[s.strip() for s in values["app_secret"].split(",")],
            access_token=values["access_token"], phone_number_id=str(values["phone_number_id"]),
            api_base=values["api_base"] or "https://graph.facebook.com", api_version=values["api_version"] or "v21.0",
            store_url=credentials.get("store_url"), media_dir=credentials.get("media_dir"),
            upload_documents=str(credentials.get("upload_documents", True)).lower() not in ("false", "0", "no"),
            max_concurrent_turns=int(credentials.get("max_concurrent_turns")
                                     or os.environ.get("WHATSAPP_MAX_CONCURRENT_TURNS") or MAX_CONCURRENT_TURNS),
            desk=cls._handoff_desk() if str(credentials.get("handoff", True)).lower() not in ("false", "0", "no")
            else None,
        )

    @staticmethod
    def _handoff_desk() -> Any:
        from cardsystem.handoff import HandoffDesk
        from cardsystem.service import CardSystem

        return HandoffDesk(CardSystem())

    def __init__(self, verify_token: Text, app_secrets: List[Text], access_token: Text, phone_number_id: Text,
                 api_base: Text, api_version: Text, store_url: Optional[Text] = None, media_dir: Optional[Text] = None,
                 upload_documents: bool = True, sweep_seconds: float = SWEEP_SECONDS,
                 max_concurrent_turns: int = MAX_CONCURRENT_TURNS, desk: Any = None) -> None:
        self.verify_token = verify_token
        self.app_secrets = [s for s in app_secrets if s]
        self.phone_number_id = phone_number_id
        self.store = ChannelStore(store_url)
        self.media = MediaStore(media_dir)
        self.client = GraphClient(api_base, api_version, phone_number_id, access_token, self.store)
        self.upload_documents = upload_documents
        self.sweep_seconds = sweep_seconds
        self.desk = desk  # cardsystem.handoff.HandoffDesk: live agents (None: the bot answers everything)
        self.instance_id = uuid.uuid4().hex  # lease owner: one instance at a time answers a customer
        self._locks: Dict[Text, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Task] = set()   # turns being answered
        self._sweeper: Optional[asyncio.Task] = None
        self.max_concurrent_turns = max(1, max_concurrent_turns)
        self._turn_slots: Optional[asyncio.Semaphore] = None  # made on the serving loop

    def get_output_channel(self) -> OutputChannel:
        return WhatsAppOutput(self.client, upload_documents=self.upload_documents)

    async def _keep_media(self, attachment: Any) -> None:
        """Fetch a customer's photo or document now (ids expire) and note where it is kept."""
        if not (isinstance(attachment, dict) and attachment.get("media_id") and attachment.get("kind") in STORED_MEDIA):
            return
        try:
            media = await self.client.download_media(attachment["media_id"], attachment.get("sha256"))
            attachment["stored"] = await asyncio.to_thread(self.media.save, media.content, media.mime_type,
                                                           media.sha256)
            attachment["sha256"] = media.sha256
        except MediaError as exc:
            logger.warning("could not fetch media of a %s message: %s", attachment.get("kind"), exc)

    async def _answer(self, pending: PendingMessage, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        kind = pending.metadata.get("whatsapp", {})
        output = WhatsAppOutput(self.client, pending.reply_by, self.upload_documents)
        text, metadata = pending.text, pending.metadata
        if kind.get("type") == EVENT_KIND:  # the channel's own event for the bot (e.g. an agent closed the chat)
            await on_new_message(UserMessage(text, output, pending.sender, input_channel=self.name(),
                                             message_id=pending.message_id, metadata=metadata))
            return
        await self.client.mark_read(pending.message_id)
        hidden = kind.get("hidden") or []
        if hidden:
            await output.send_text_message(pending.sender, SECRETS_WARNING.format(what=" and ".join(hidden)))
        if self.desk is not None:
            ticket = await asyncio.to_thread(self.desk.open_ticket_for, pending.sender)
            if ticket is not None:
                if await self._to_agents(ticket, pending, output):
                    return
                text = "/handoff_returned"  # the waiting customer typed the return word
        menu = await asyncio.to_thread(self.store.take_menu, pending.sender)
        if not kind.get("supported", True):  # (a customer back from the queue wrote text: supported)
            reply = POLITE_REPLIES.get(kind.get("type"), UNSUPPORTED_REPLY)
            await output.send_text_message(pending.sender, reply.format(text=text))
            return
        choice = outbound.menu_choice(text, menu) if kind.get("type") == "text" and menu else None
        if choice:
            metadata["whatsapp"]["menu_choice"], text = text.strip(), choice
        await self._keep_media(metadata.get("attachment"))
        await on_new_message(UserMessage(text, output, pending.sender, input_channel=self.name(),
                                         message_id=pending.message_id, metadata=metadata))

    async def _to_agents(self, ticket: Any, pending: PendingMessage, output: WhatsAppOutput) -> bool:
        """A customer a person has (or will have): their message goes to the agents, not to Rasa.
        False when a waiting customer chose the bot again."""
        kind = pending.metadata.get("whatsapp", {}).get("type")
        text = pending.text.strip()
        if ticket.status == "queued" and kind == "text" and text.lower() == self.desk.settings.return_word:
            await asyncio.to_thread(self.desk.return_to_bot, ticket.reference)
            return False
        attachment = pending.metadata.get("attachment")
        await self._keep_media(attachment)
        if isinstance(attachment, dict) and attachment.get("kind") == "location":
            text = f"[location {attachment.get('latitude')}, {attachment.get('longitude')}] {attachment.get('name') or ''}"
        elif not text or kind not in ("text", "interactive", "button"):
            text = f"[{kind}] {text}".strip()
        notify = await asyncio.to_thread(self.desk.customer_said, ticket.reference, text[:4096], attachment)
        if notify:
            place = await asyncio.to_thread(self.desk.place, ticket.reference)
            await output.send_text_message(pending.sender, wording.QUEUE_NOTICE.format(
                position=place.position, wait=place.wait_minutes, return_word=self.desk.settings.return_word))
        return True

    async def inject(self, sender: Text, reply_by: Text, text: Text,
                     on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Queue an event for the bot in this customer's order (e.g. "/handoff_closed"): durable,
        answered by whichever instance holds the customer, after anything they already wrote."""
        event = Inbound(message_id=f"cardcare.{uuid.uuid4().hex}", sender=sender, reply_by=reply_by, kind=EVENT_KIND,
                        text=text, timestamp=int(time.time()))
        await asyncio.to_thread(self.store.record_inbound, event)
        self._spawn(self.drain(sender, on_new_message))

    async def _renew_lease(self, sender: Text) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL.total_seconds() / 3)
            await asyncio.to_thread(self.store.acquire, sender, self.instance_id)

    async def drain(self, sender: Optional[Text], on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Answer recorded messages in order: one sender's, or every waiting sender's (when None)."""
        if sender is None:
            senders = list(dict.fromkeys(p.sender for p in await asyncio.to_thread(self.store.pending, None)))
            await asyncio.gather(*(self.drain(s, on_new_message) for s in senders), return_exceptions=True)
            return
        async with self._locks.setdefault(sender, asyncio.Lock()):  # one task per sender in this process
            while await asyncio.to_thread(self.store.acquire, sender, self.instance_id):  # one instance in all
                renewal = asyncio.ensure_future(self._renew_lease(sender))
                try:
                    while True:
                        pending = await asyncio.to_thread(self.store.pending, sender)
                        if not pending:
                            break
                        await self._answer_one(pending[0], on_new_message)
                finally:
                    renewal.cancel()
                    await asyncio.to_thread(self.store.release, sender, self.instance_id)
                # a message recorded while another instance saw our lease is ours to answer now
                if not await asyncio.to_thread(self.store.pending, sender):
                    break

    async def _answer_one(self, message: PendingMessage,
                          on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        if self._turn_slots is None:
            self._turn_slots = asyncio.Semaphore(self.max_concurrent_turns)
        try:
            async with self._turn_slots:
                await self._answer(message, on_new_message)
            state = "done"
        except asyncio.CancelledError:
            raise  # shutting down: the message stays pending and is answered after the restart
        except Exception:  # one bad turn must not stop the queue; it is marked and logged
            logger.exception("turn for %s failed", mask_phone(message.sender))
            state = "failed"
        await asyncio.to_thread(self.store.finish, message.message_id, state)

    async def sweep(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Now and then, answer messages left waiting (e.g. an instance died holding a customer)."""
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                waiting = await asyncio.to_thread(self.store.senders_waiting,
                                                  dt.timedelta(seconds=self.sweep_seconds))
            except Exception:  # the database may be briefly unavailable; try again next round
                logger.exception("sweep for unanswered messages failed")
                continue
            for sender in waiting:
                self._spawn(self.drain(sender, on_new_message))
            if self.desk is not None:
                try:  # chats nobody took in time become callbacks; the bot tells the customer
                    for ticket in await asyncio.to_thread(self.desk.expire_waiting):
                        await self.inject(ticket.sender, ticket.reply_by, "/handoff_expired", on_new_message)
                except Exception:
                    logger.exception("expiring waiting handoffs failed")

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Stop background work; unanswered messages stay recorded for the next start."""
        tasks = list(self._tasks) + ([self._sweeper] if self._sweeper else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
        await self.client.close()

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        whatsapp_webhook = Blueprint(f"whatsapp_webhook_{id(self)}", __name__)

        @whatsapp_webhook.listener("after_server_start")
        async def resume_unanswered(app, loop) -> None:
            self._spawn(self.drain(None, on_new_message))
            if self.sweep_seconds > 0:
                self._sweeper = asyncio.ensure_future(self.sweep(on_new_message))

        @whatsapp_webhook.listener("before_server_stop")
        async def stop_background_work(app, loop) -> None:
            await self.stop()

        if self.desk is not None:
            from connectors.handoff.console import add_console_routes

            add_console_routes(whatsapp_webhook, self, on_new_message)

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
                if message.kind == "reaction" and not message.text:
                    continue  # a reaction taken back: nothing to answer
                # recorded before the 200, in the handler itself: one short insert, no queueing
                # behind the turns' database work in the thread pool
                recorded = self._record(message)
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
