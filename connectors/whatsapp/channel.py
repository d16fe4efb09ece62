"""The Rasa input and output channel for the WhatsApp Cloud API.

POST /webhooks/whatsapp/webhook (or the ingress process, connectors.whatsapp.ingress):
signature checked on the raw body, every message recorded once (durable, unique on the
message id), answered at once. The Rasa turns run afterwards, in order per customer: a turn's
replies are collected, written to the outbox with the turn's end in one transaction, and sent
in order, retried durably; a turn whose action call fails is aborted and retried whole, and
past a limit the customer gets an apology and the message becomes a dead letter. Unanswered
messages and unsent replies are picked up again when the server starts.
"""
from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
import os
import re
import socket
import time
import uuid
import zlib
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Text, Tuple

import aiohttp
import ujson  # (Rasa's and Sanic's own dependency)

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.constants import DEFAULT_REQUEST_TIMEOUT
from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from rasa.shared.core.events import BotUttered, UserUttered
from rasa.utils.endpoints import ClientResponseError, EndpointConfig
from cardsystem.formatting import mask_phone
from connectors.whatsapp import outbound
from connectors.whatsapp.bank import AgentDesk, BankNotices, Notice
from connectors.whatsapp.graph import GraphClient, MediaError, OutsideServiceWindow
from connectors.handoff import wording
from connectors.whatsapp.inbound import EVENT_KIND, Inbound
from connectors.whatsapp.media import MediaStore
from connectors.whatsapp.outage import Outage
from connectors.whatsapp.store import (LEASE_TTL, ChannelStore, PendingMessage, QueuedReply, SenderQueue,
                                       TurnChoice, utcnow)
from connectors.whatsapp.webhook import WebhookReceiver, channel_settings
from connectors.whatsapp import rasa_patches

rasa_patches.apply()

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
APOLOGY = ("Sorry, I couldn't answer your message because of a problem on our side. Your reference is "
           "{reference}: our team will look at it and call you back. You can also write again in a few minutes.")
STORED_MEDIA = ("image", "document", "video", "audio")  # stickers are not evidence
SWEEP_SECONDS = 30.0
NOTICE_SECONDS = 2.0  # how often the bank's notices (request updates) are looked for
DUE_SECONDS = 1.0  # how often replies and turns waiting for a retry are looked for
INGRESS_POLL_SECONDS = 0.1
GIVE_UP_AFTER = dt.timedelta(minutes=float(os.environ.get("WHATSAPP_GIVE_UP_MINUTES", "10")))
SENDING_GRACE = dt.timedelta(seconds=30)  # a reply left "sending" by a crash: wait this long for its status
ACTION_TIMEOUT_SECONDS = 30.0
TURN_RETRY_MAX = dt.timedelta(seconds=30)
# With several workers (CARDCARE_WORKER_SLOT "index/count", set by make serve), each answers its
# own share of the customers, by a hash of their number: a worker then keeps answering the same
# customers instead of racing the others for every message. Another worker's customer whose
# message has waited this long (that worker may be down or behind) is answered by whoever sees it.
AFFINITY_GRACE = dt.timedelta(seconds=5)
TAKEOVER_LOG_SECONDS = 30.0  # a worker taking over others' customers says so at most this often
MAX_CONCURRENT_TURNS = 4  # turns are CPU-bound: more at once only slows the webhook's acknowledgements


class TurnAborted(BaseException):
    """A turn that cannot be completed (the action server refused, timed out or answered 5xx;
    no model loaded). A BaseException on purpose: Rasa's processor catches every Exception of
    an action and carries on without its events, which would answer the customer wrongly and
    mark the message answered. Raised through it, the turn stops before its tracker is
    saved, so nothing of it is kept and the whole turn is retried later."""


_guarded = contextvars.ContextVar("cardcare_whatsapp_turn", default=False)


class _KeptSession:
    """`async with` a kept aiohttp session without closing it at the end."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def __aenter__(self) -> aiohttp.ClientSession:
        return self.session

    async def __aexit__(self, *exc: Any) -> bool:
        return False


def action_request_body(value: Any) -> str:
    """`json.dumps` of an action call's body, 2.8x as fast: the body is the whole tracker as read
    (108 KB with 200 events: 1.6 ms of a worker's CPU per action call, 0.57 ms with ujson). The
    same JSON values, in UTF-8 rather than \\u escapes; json.dumps for what ujson refuses (an
    integer past 64 bits, a lone surrogate, a type it does not know), which raises as before where
    json.dumps cannot either."""
    try:
        return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)
    except (TypeError, ValueError, OverflowError):
        return json.dumps(value)


class GuardedActionEndpoint(EndpointConfig):
    """Rasa's action endpoint, except that inside a WhatsApp turn a failed call aborts the turn.
    A 400 is an answer (a form's validation rejected the input), never a failure.

    Calls go over kept-alive connections (one client session per event loop), where Rasa 3.6
    opens a session, a connection and a handshake for every action call. A kept connection
    the action server closed meanwhile is retried once on a new one: the action server answers
    a repeated call of a turn with its first answer (deploy/action_server.py), so nothing
    happens twice."""

    _clients: Dict[int, aiohttp.ClientSession] = {}

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None or client.closed:
            auth = aiohttp.BasicAuth(self.basic_auth["username"], self.basic_auth["password"]) \
                if self.basic_auth else None
            # idle connections are dropped before the action server's own keep-alive (Sanic: 5 s) ends
            connector = aiohttp.TCPConnector(limit=32, keepalive_timeout=3.0)
            client = aiohttp.ClientSession(connector=connector, auth=auth, json_serialize=action_request_body,
                                           timeout=aiohttp.ClientTimeout(total=DEFAULT_REQUEST_TIMEOUT))
            self._clients[id(loop)] = client
        return client

    @classmethod
    async def close_clients(cls) -> None:
        for key, client in list(cls._clients.items()):
            if client._loop is asyncio.get_running_loop():  # (a session belongs to its loop)
                del cls._clients[key]
                await client.close()

    def session(self) -> "_KeptSession":
        """What EndpointConfig.request opens (and closes) per call: here the kept session, left open."""
        return _KeptSession(self._client())

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        if _guarded.get():  # a customer waits: a hanging action fails the turn after 30 s, not Rasa's 5 minutes
            kwargs["timeout"] = aiohttp.ClientTimeout(total=ACTION_TIMEOUT_SECONDS)
        try:
            try:
                return await super().request(*args, **kwargs)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                return await super().request(*args, **kwargs)  # a kept connection closed meanwhile: once more
        except ClientResponseError as exc:
            if exc.status == 400 or not _guarded.get():
                raise
            raise TurnAborted(f"action server answered HTTP {exc.status}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if not _guarded.get():
                raise
            raise TurnAborted(f"action server unreachable ({type(exc).__name__})") from exc

    @classmethod
    def wrapping(cls, endpoint: EndpointConfig) -> "GuardedActionEndpoint":
        return cls(endpoint.url, endpoint.params, endpoint.headers, endpoint.basic_auth, endpoint.token,
                   endpoint.token_name, endpoint.cafile, **endpoint.kwargs)


def worker_slot(value: Optional[Text]) -> Optional[Tuple[int, int]]:
    """CARDCARE_WORKER_SLOT "index/count" (0-based): this worker's share of the customers; None
    (every customer alike) when unset, one worker, or not of that form (which is logged)."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not int(match.group(1)) < int(match.group(2)):
        logger.warning("CARDCARE_WORKER_SLOT=%r is not \"index/count\" with index < count: ignored", value)
        return None
    index, count = int(match.group(1)), int(match.group(2))
    return (index, count) if count > 1 else None


def customer_share(sender: Text, count: int) -> int:
    """Which of `count` workers' shares a customer is in (stable across processes and restarts)."""
    return zlib.crc32(sender.encode()) % count


def typed_text(text: Text) -> Text:
    """What a customer typed is text: a leading "/" must not make it an intent (Rasa reads
    "/block_card" as the intent itself). Only payloads of buttons the bot sent are intents."""
    return re.sub(r"^\s*/+\s*", "", text or "")


def turn_retry_delay(attempts: int) -> dt.timedelta:
    """Back-off between tries of a failed turn: 1, 2, 4 ... seconds, at most 30."""
    return min(dt.timedelta(seconds=2 ** max(0, attempts - 1)), TURN_RETRY_MAX)


class WhatsAppOutput(OutputChannel):
    """Rasa's replies as WhatsApp messages (reply buttons, lists, numbered menus, documents).

    With `buffer` (a list), a turn's replies are collected there instead of sent: the channel
    writes them to its outbox with the turn and sends them in order, retrying durably.
    Otherwise each is sent at once; a free-form reply outside the 24-hour window is then
    refused (recorded, logged) and `refused` counts it, so a caller can tell a template is needed.
    """

    @classmethod
    def name(cls) -> Text:
        return "whatsapp"

    def __init__(self, client: GraphClient, reply_by: Text = "to", upload_documents: bool = True,
                 buffer: Optional[List[Dict[Text, Any]]] = None) -> None:
        self.client = client
        self.reply_by = reply_by
        self.upload_documents = upload_documents
        self.buffer = buffer
        self.refused = 0

    async def _send(self, recipient_id: Text, message: Dict[Text, Any]) -> Optional[Text]:
        if self.buffer is not None:
            self.buffer.append(message)
            return None
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
        await asyncio.to_thread(self.client.store.save_choices, recipient_id, menu,
                                [str(b.get("payload") or "") for b in buttons])
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
        if self.buffer is not None:  # fetched and uploaded when the outbox sends it
            message = outbound.document_message(filename, link=link, caption=caption)
            if self.upload_documents:
                message["_upload"] = True
            await self._send(recipient_id, message)
            return
        media_id = await self.client.upload_link(link, filename) if self.upload_documents else None
        await self._send(recipient_id, outbound.document_message(filename, link=None if media_id else link,
                                                                  media_id=media_id, caption=caption))

    async def send_custom_json(self, recipient_id: Text, json_message: Dict[Text, Any], **kwargs: Any) -> None:
        if isinstance(json_message, dict) and json_message.get("type"):
            if json_message.get("type") == "template":  # its quick replies may come back as intents
                await asyncio.to_thread(self.client.store.save_offered, recipient_id,
                                        outbound.template_payloads(json_message))
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
        values = channel_settings(credentials)
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
            ingress=str(credentials.get("ingress") or os.environ.get("WHATSAPP_INGRESS", "")).lower()
            in ("1", "true", "yes"),
            notices=cls._bank_notices() if str(credentials.get("notices", True)).lower() not in ("false", "0", "no")
            else None,
        )

    @staticmethod
    def _bank_notices() -> BankNotices:
        from cardsystem.requests.notices import NoticeBox
        from cardsystem.service import CardSystem

        CardSystem().create_schema()  # an older card database gets the notices table
        return NoticeBox()

    @staticmethod
    def _handoff_desk() -> AgentDesk:
        from cardsystem.handoff import HandoffDesk
        from cardsystem.service import CardSystem

        return HandoffDesk(CardSystem())

    def __init__(self, verify_token: Text, app_secrets: List[Text], access_token: Text, phone_number_id: Text,
                 api_base: Text, api_version: Text, store_url: Optional[Text] = None, media_dir: Optional[Text] = None,
                 upload_documents: bool = True, sweep_seconds: float = SWEEP_SECONDS,
                 max_concurrent_turns: int = MAX_CONCURRENT_TURNS, desk: Optional[AgentDesk] = None,
                 ingress: bool = False, notices: Optional[BankNotices] = None, service_desk: Any = None,
                 slot: Optional[Text] = None) -> None:
        self.store = ChannelStore(store_url)
        self.slot = worker_slot(slot if slot is not None else os.environ.get("CARDCARE_WORKER_SLOT"))
        self.receiver = WebhookReceiver(self.store, app_secrets, phone_number_id, verify_token)
        self.media = MediaStore(media_dir)
        self.client = GraphClient(api_base, api_version, phone_number_id, access_token, self.store)
        self.upload_documents = upload_documents
        self.sweep_seconds = sweep_seconds
        self.desk = desk  # live agents (None: the bot answers everything)
        self.notices = notices  # what the bank tells customers first (None: nothing)
        if notices is not None:  # delivery statuses of the bank's own messages, for their ledger
            self.receiver.notice_status = self._notice_outcome
            self.receiver.template_status = notices.template_status
        self.service_desk = service_desk  # the console's Requests view works it (None: made on first use)
        self._notifier: Optional[asyncio.Task] = None
        # lease owner: one instance at a time answers a customer (host and pid say which, to operators)
        self.instance_id = f"{socket.gethostname()[:32]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._locks: Dict[Text, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Task] = set()   # turns being answered
        self._sweeper: Optional[asyncio.Task] = None
        self._retrier: Optional[asyncio.Task] = None
        self._app: Any = None  # the Sanic app: its ctx.agent is Rasa's (None in tests without Rasa)
        self.give_up_after = GIVE_UP_AFTER
        self._taken_over: Dict[Text, None] = {}  # other workers' customers taken over since the last log line
        self._takeover_logged: Optional[float] = None
        # With an ingress (connectors.whatsapp.ingress) webhooks are recorded by another process:
        # on PostgreSQL it wakes the workers (connectors.whatsapp.wakeup), on SQLite new messages
        # are found by looking, every INGRESS_POLL_SECONDS.
        self.ingress = ingress
        self._listener: Any = None  # wakeup.InboundListener while listening
        self._woken: Set[Text] = set()  # customers with a drain started by a wake-up, not yet running
        self.max_concurrent_turns = max(1, max_concurrent_turns)
        self._turn_slots: Optional[asyncio.Semaphore] = None  # made on the serving loop
        self._notice_outage = Outage("looking for notices to customers", logger)

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

    async def _answer(self, pending: PendingMessage, on_new_message: Callable[[UserMessage], Awaitable[Any]],
                      output: WhatsAppOutput, choice: Optional[TurnChoice] = None) -> None:
        """`choice`: the message's menu and offer, read with the queue (None: read here)."""
        kind = pending.metadata.get("whatsapp", {})
        text, metadata = pending.text, pending.metadata
        if kind.get("type") == EVENT_KIND:  # the channel's own event for the bot (e.g. an agent closed the chat)
            await self._run_turn(UserMessage(text, output, pending.sender, input_channel=self.name(),
                                             message_id=pending.message_id, metadata=metadata), on_new_message)
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
                await self._run_turn(UserMessage("/handoff_returned", output, pending.sender,  # typed the return word
                                                 input_channel=self.name(), message_id=pending.message_id,
                                                 metadata=metadata), on_new_message)
                return
        tapped = kind.get("type") in ("interactive", "button")
        if choice is None:
            choice = await asyncio.to_thread(self.store.turn_choice, pending)
        menu, offered = choice.menu, choice.offered
        if not kind.get("supported", True):
            reply = POLITE_REPLIES.get(kind.get("type"), UNSUPPORTED_REPLY)
            await output.send_text_message(pending.sender, reply.format(text=text))
            return
        choice = outbound.menu_choice(text, menu) if kind.get("type") == "text" and menu else None
        if choice:
            metadata["whatsapp"]["menu_choice"], text = text.strip(), choice
        elif tapped and offered:
            pass  # a button the bot sent (a template's quick reply: for a month): its payload is the intent
        else:
            text = typed_text(text)
        await self._keep_media(metadata.get("attachment"))
        await self._run_turn(UserMessage(text, output, pending.sender, input_channel=self.name(),
                                         message_id=pending.message_id, metadata=metadata), on_new_message)

    async def _run_turn(self, message: UserMessage, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Rasa's turn, guarded: a failed action call or a missing model aborts it (TurnAborted)."""
        agent = self._agent()
        if agent is not None:
            if not agent.is_ready():
                raise TurnAborted("no model loaded")
            for holder in (agent, agent.processor):
                endpoint = getattr(holder, "action_endpoint", None)
                if endpoint is not None and not isinstance(endpoint, GuardedActionEndpoint):
                    holder.action_endpoint = GuardedActionEndpoint.wrapping(endpoint)
        token = _guarded.set(True)
        try:
            await on_new_message(message)
        finally:
            _guarded.reset(token)

    def _agent(self) -> Any:
        ctx = getattr(self._app, "ctx", None) if self._app is not None else None
        return getattr(ctx, "agent", None)

    async def _replies_in_tracker(self, pending: PendingMessage, output: WhatsAppOutput) -> bool:
        """After a crash mid-turn: if Rasa already saved this turn, rebuild its replies from the
        tracker (into `output`) instead of running it again. False when the turn must run."""
        agent = self._agent()
        store = getattr(agent, "tracker_store", None)
        if store is None:
            return False
        tracker = await store.retrieve(pending.sender)
        if tracker is None:
            return False
        events = list(tracker.applied_events())
        for index, event in enumerate(events):
            if isinstance(event, UserUttered) and event.message_id == pending.message_id:
                for later in events[index + 1:]:
                    if isinstance(later, UserUttered):
                        break
                    if isinstance(later, BotUttered):
                        await output.send_response(pending.sender, {"text": later.text, **(later.data or {})})
                logger.info("turn for %s was already done before a restart: its replies are sent from the tracker",
                            mask_phone(pending.sender))
                return True
        return False

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

    async def inject(self, sender: Text, text: Text, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Queue an event for the bot in this customer's order (e.g. "/handoff_closed"): durable,
        answered by whichever instance holds the customer, after anything they already wrote."""
        reply_by = await asyncio.to_thread(self.store.reply_by_of, sender)
        event = Inbound(message_id=f"cardcare.{uuid.uuid4().hex}", sender=sender, reply_by=reply_by, kind=EVENT_KIND,
                        text=text, timestamp=int(time.time()))
        await asyncio.to_thread(self.store.record_inbound, event)
        self._spawn(self.drain(sender, on_new_message))

    async def tell(self, sender: Text, text: Text, on_new_message: Callable[[UserMessage], Awaitable[Any]],
                   key: Optional[Text] = None, document: Optional[Dict[Text, Any]] = None,
                   buttons: Optional[List[Dict[Text, Any]]] = None) -> bool:
        """A person's (or the bank's) message to a customer, through the outbox like the bot's
        replies: in order, retried durably, never twice (`key`: sent once whoever calls twice).
        How to address the customer is this channel's business (its store). False when the
        customer's 24-hour window is closed."""
        if buttons:
            bodies, menu = outbound.buttons_message(text, buttons)
            await asyncio.to_thread(self.store.save_choices, sender, menu or None,
                                    [str(b.get("payload") or "") for b in buttons])
        else:
            bodies = [outbound.text_message(part) for part in outbound.split_text(text)]
        if document and document.get("link"):
            filename = str(document.get("filename") or "document.pdf")
            bodies.append({**outbound.document_message(filename, link=document["link"], caption=document.get("caption")),
                           **({"_upload": True} if self.upload_documents else {})})
        try:
            await self.client.check_window(sender, bodies[0])
        except OutsideServiceWindow:
            return False
        reply_by = await asyncio.to_thread(self.store.reply_by_of, sender)
        await asyncio.to_thread(self.store.commit_turn, key or f"agent.{uuid.uuid4().hex}", sender, reply_by, bodies)
        self._spawn(self.drain(sender, on_new_message))
        return True

    async def _renew_lease(self, sender: Text) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL.total_seconds() / 3)
            await asyncio.to_thread(self.store.acquire, sender, self.instance_id)

    def _wake(self, sender: Text, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """(On the serving loop.) The ingress recorded a message of this customer: start on them,
        unless a drain started by an earlier wake-up is still waiting for its turn (it will read
        this message too: it reads the queue after the notification)."""
        if not self.mine(sender):
            return  # another worker's customer (retry_due answers them here should they wait AFFINITY_GRACE)
        if sender not in self._woken:
            self._woken.add(sender)
            self._spawn(self.drain(sender, on_new_message, woken=True))

    def mine(self, sender: Text) -> bool:
        """Whether this worker answers `sender` first (always, without a slot)."""
        return self.slot is None or customer_share(sender, self.slot[1]) == self.slot[0]

    async def _ours_or_kept_waiting(self, senders: List[Text]) -> List[Text]:
        """Of these customers, this worker's share, and the others' whose message or reply has
        waited AFFINITY_GRACE (their worker may be down: also after committing a turn, before
        sending its replies)."""
        if all(self.mine(sender) for sender in senders):
            return senders
        waiting = set(await asyncio.to_thread(self.store.senders_kept_waiting, AFFINITY_GRACE, SENDING_GRACE))
        taken = [sender for sender in senders if not self.mine(sender) and sender in waiting]
        if taken:
            self._note_takeover(taken)
        return [sender for sender in senders if self.mine(sender) or sender in waiting]

    def _note_takeover(self, senders: List[Text]) -> None:
        """Tell operators that this worker answers customers of another worker's share (which may
        be down or behind): at once the first time, then at most every TAKEOVER_LOG_SECONDS."""
        self._taken_over.update(dict.fromkeys(senders))
        now = time.monotonic()
        if self._takeover_logged is not None and now - self._takeover_logged < TAKEOVER_LOG_SECONDS:
            return
        self._takeover_logged = now
        shares = sorted({customer_share(sender, self.slot[1]) for sender in self._taken_over})
        logger.warning(
            "worker %d/%d is answering %d customer%s of worker%s %s, whose messages waited %g s or more (is it down "
            "or behind?): %s", self.slot[0] + 1, self.slot[1], len(self._taken_over),
            "s" if len(self._taken_over) > 1 else "", "s" if len(shares) > 1 else "",
            ", ".join(f"{share + 1}/{self.slot[1]}" for share in shares),
            AFFINITY_GRACE.total_seconds(), ", ".join(mask_phone(s) for s in list(self._taken_over)[:5]) +
            (", ..." if len(self._taken_over) > 5 else ""))
        self._taken_over.clear()

    def _start_listening(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        from connectors.whatsapp.wakeup import InboundListener, can_listen

        if not (self.ingress and can_listen(self.store.engine)):
            return
        loop = asyncio.get_running_loop()
        self._listener = InboundListener(
            self.store.engine, lambda sender: loop.call_soon_threadsafe(self._wake, sender, on_new_message))
        self._listener.start()

    def _poll_seconds(self) -> float:
        """How long the due-loop sleeps: behind an ingress that cannot wake us, briefly."""
        if self.ingress and not (self._listener is not None and self._listener.listening):
            return INGRESS_POLL_SECONDS
        return DUE_SECONDS

    async def drain(self, sender: Optional[Text], on_new_message: Callable[[UserMessage], Awaitable[Any]],
                    woken: bool = False) -> None:
        """Answer recorded messages in order and send their replies: one sender's, or every
        waiting sender's (when None)."""
        if sender is None:
            senders = list(dict.fromkeys(p.sender for p in await asyncio.to_thread(self.store.pending, None)))
            senders += await asyncio.to_thread(self.store.senders_due, SENDING_GRACE)
            senders = await self._ours_or_kept_waiting(senders)
            await asyncio.gather(*(self.drain(s, on_new_message) for s in dict.fromkeys(senders)),
                                 return_exceptions=True)
            return
        async with self._locks.setdefault(sender, asyncio.Lock()):  # one task per sender in this process
            if woken:
                self._woken.discard(sender)  # a wake-up from now on needs a drain of its own
            while True:
                # one instance in all holds a customer (the lease), and learns what to do in the same read
                queue = await asyncio.to_thread(self.store.take, sender, self.instance_id)
                if queue is None:
                    break
                renewal = asyncio.ensure_future(self._renew_lease(sender))
                try:
                    waiting = await self._drain_held(sender, on_new_message, queue)
                finally:
                    renewal.cancel()
                    done = await asyncio.to_thread(self.store.release_if_done, sender, self.instance_id)
                # a back-off: the due-loop comes back for this sender; otherwise a message recorded
                # while another instance saw our lease is ours to answer now
                if waiting or done:
                    break

    async def _drain_held(self, sender: Text, on_new_message: Callable[[UserMessage], Awaitable[Any]],
                          queue: SenderQueue) -> bool:
        """With the sender's lease: their replies out, then their messages answered one by one.
        True when something must wait (a reply or a failed turn in back-off)."""
        sent = await self.flush(sender, queue.replies, queue.window_open)
        pending = queue.pending
        while True:
            if not pending:
                return not sent
            head = pending[0]
            if head.next_attempt_at is not None and head.next_attempt_at > utcnow():
                return True
            after = await self._answer_one(head, on_new_message, queue.choice)
            if after is None:
                return True
            sent = await self.flush(sender, after.replies, after.window_open)
            pending, queue = after.pending, after

    async def _answer_one(self, message: PendingMessage, on_new_message: Callable[[UserMessage], Awaitable[Any]],
                          choice: Optional[TurnChoice] = None) -> Optional[SenderQueue]:
        """One turn: run (or recover) it, then its replies and the message's new state in one
        transaction. What is left for the customer then, or None when the turn failed and waits
        for a retry (or, past the limit, became a dead letter: then an empty queue, to move on).
        `choice`: read with the queue, which marked its message started (used for that message only)."""
        if choice is not None and choice.message_id != message.message_id:
            choice = None
        if self._turn_slots is None:
            self._turn_slots = asyncio.Semaphore(self.max_concurrent_turns)
        output = WhatsAppOutput(self.client, message.reply_by, self.upload_documents, buffer=[])
        try:
            async with self._turn_slots:
                if not (message.started and await self._replies_in_tracker(message, output)):
                    if choice is None:
                        await asyncio.to_thread(self.store.begin_turn, message.message_id)
                    await self._answer(message, on_new_message, output, choice)
        except asyncio.CancelledError:
            raise  # shutting down: the message stays pending and is answered after the restart
        except (TurnAborted, Exception) as failure:  # noqa: B902 (TurnAborted is a BaseException on purpose)
            if not await self._turn_failed(message, failure):
                return None
            return await asyncio.to_thread(self.store.queue, message.sender, True)
        return await asyncio.to_thread(self.store.finish_turn, message.message_id, message.sender, message.reply_by,
                                       output.buffer)

    async def _turn_failed(self, message: PendingMessage, failure: BaseException) -> bool:
        """Retry later with back-off; past the limit, apologise with a reference and keep the
        message as a dead letter for the operators. True when the queue may move on."""
        reason = f"{type(failure).__name__}: {failure}"[:200]
        if message.first_failed_at is not None and utcnow() - message.first_failed_at >= self.give_up_after:
            reference = await asyncio.to_thread(self.store.dead_letter, message.message_id, reason,
                                                lambda ref: outbound.text_message(APOLOGY.format(reference=ref)))
            logger.error("gave up on a message from %s after %d tries (%s): dead letter %s",
                         mask_phone(message.sender), message.attempts + 1, reason, reference)
            return True
        delay = turn_retry_delay(message.attempts + 1)
        if isinstance(failure, TurnAborted):
            logger.warning("turn for %s aborted (%s); retrying in %.0f s", mask_phone(message.sender), failure,
                           delay.total_seconds())
        else:
            logger.exception("turn for %s failed; retrying in %.0f s", mask_phone(message.sender),
                             delay.total_seconds(), exc_info=failure)
        await asyncio.to_thread(self.store.turn_failed, message.message_id, reason, delay)
        return False

    async def flush(self, sender: Text, replies: Optional[List[QueuedReply]] = None,
                    window_open: Optional[bool] = None) -> bool:
        """Send a customer's queued replies in order (`replies`, `window_open`: already read
        with the lease). False when one must wait (a transient Graph error in back-off, or a
        reply whose fate after a crash is not known yet)."""
        if replies is None:
            replies = await asyncio.to_thread(self.store.queued_replies, sender)
        for reply in replies:
            now = utcnow()
            if reply.state == "sending" and now - reply.updated_at < SENDING_GRACE:
                return False  # sent just before a crash? its status webhook will tell (reply_accepted)
            if reply.state == "queued" and reply.next_attempt_at > now:
                return False
            if not await self._send_reply(reply, window_open):
                return False
        return True

    async def _send_reply(self, reply: QueuedReply, window_open: Optional[bool] = None) -> bool:
        """One attempt at one queued reply; False when it must be tried again later."""
        body = dict(reply.body)
        if self.notices is not None and reply.key.startswith("notice.") and \
                not await asyncio.to_thread(self._notice_still_wanted, reply.key):
            await asyncio.to_thread(self.store.reply_done, reply.id, "expired", None, "withdrawn by the bank's side")
            return True
        try:
            await self.client.check_window(reply.recipient, body, window_open)
        except OutsideServiceWindow:
            await asyncio.to_thread(self.store.reply_done, reply.id, "expired", None, "outside the 24-hour window")
            await self._note_outcome(reply.key, "failed", None, 131047, "outside the 24-hour window")
            return True
        if body.pop("_upload", False):  # by media id when the upload works, else by link
            document = dict(body["document"])
            media_id = await self.client.upload_link(document["link"], document.get("filename") or "document.pdf")
            if media_id is not None:
                del document["link"]
                document["id"] = media_id
            body["document"] = document
        await asyncio.to_thread(self.store.reply_sending, reply.id)
        outcome = await self.client.attempt(reply.recipient, reply.reply_by, body, reply.attempts + 1,
                                            callback_data=reply.key, max_attempts=None, record_sent=False)
        if outcome.wamid:
            await asyncio.to_thread(self.store.reply_sent, reply.id, reply.recipient, body, outcome.wamid,
                                    reply.attempts + 1)
            await self._note_outcome(reply.key, "sent", outcome.wamid)
            return True
        if outcome.verdict.retry:
            await asyncio.to_thread(self.store.reply_later, reply.id,
                                    dt.timedelta(seconds=outcome.verdict.delay_seconds), outcome.verdict.meaning)
            return False
        await asyncio.to_thread(self.store.reply_done, reply.id, "failed", None,
                                f"{outcome.code}: {outcome.verdict.meaning}")
        await self._note_outcome(reply.key, "failed", None, outcome.code, outcome.verdict.meaning)
        return True

    async def sweep(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Now and then, answer messages left waiting (e.g. an instance died holding a customer)."""
        outage = Outage("the sweep for unanswered messages", logger)
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                waiting = await asyncio.to_thread(self.store.senders_waiting,
                                                  dt.timedelta(seconds=self.sweep_seconds))
            except Exception as exc:  # the database may be briefly unavailable; try again next round
                outage.failed(exc)
                continue
            outage.worked()
            for sender in waiting:
                self._spawn(self.drain(sender, on_new_message))
            if self.desk is not None:
                try:  # chats nobody took in time become callbacks; the bot tells the customer
                    for ticket in await asyncio.to_thread(self.desk.expire_waiting):
                        await self.inject(ticket.sender, "/handoff_expired", on_new_message)
                except Exception:
                    logger.exception("expiring waiting handoffs failed")

    async def retry_due(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Every second: customers with a reply or a failed turn whose back-off is over, and behind
        an ingress customers with a new message (every INGRESS_POLL_SECONDS unless the database
        wakes us: then this only catches what a lost notification would leave)."""
        outage = Outage("looking for new messages, replies and turns to retry", logger)
        while True:  # (while the database is away, once a DUE_SECONDS: not ten times a second)
            await asyncio.sleep(DUE_SECONDS if outage.ongoing else self._poll_seconds())
            try:
                due = await self._ours_or_kept_waiting(
                    await asyncio.to_thread(self.store.senders_due, SENDING_GRACE, None, self.ingress))
            except Exception as exc:
                outage.failed(exc)
                continue
            outage.worked()
            for sender in due:
                lock = self._locks.get(sender)
                if lock is None or not lock.locked():
                    self._spawn(self.drain(sender, on_new_message))

    async def deliver_notices(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """Every NOTICE_SECONDS: the bank's notices to customers into the outbox."""
        while True:
            await asyncio.sleep(NOTICE_SECONDS)
            await self.deliver_notices_once(on_new_message)

    async def deliver_notices_once(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> int:
        """Take due notices and queue each in the outbox (keyed by the notice: once, however often
        this runs on however many instances). Outside the customer's 24-hour window a notice is
        held, and looked at again later: it goes when they next write."""
        try:
            taken = await asyncio.to_thread(self.notices.take, "whatsapp", 50)
        except Exception as exc:  # the card database may be briefly unavailable; next round
            self._notice_outage.failed(exc)
            return 0
        self._notice_outage.worked()
        queued = 0
        for notice in taken:
            try:
                queued += await self._deliver_notice(notice, on_new_message)
            except Exception as exc:
                logger.exception("notice %s to %s not queued", notice.id, mask_phone(notice.address))
                await asyncio.to_thread(self.notices.failed, notice.id, type(exc).__name__, notice.attempts)
        return queued

    async def _deliver_notice(self, notice: Notice, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> int:
        """The bank's side decides (notices.plan): inside the customer's 24-hour window a plain
        message (with buttons), outside it an approved template, or held (quiet hours, no consent
        to write first: it goes when they next write) or skipped (STOP, paid, the weekly cap)."""
        open_window = await asyncio.to_thread(self.store.window_open, notice.address)
        delivery = await asyncio.to_thread(self.notices.plan, notice.id, open_window)
        if delivery.action == "skip":
            await asyncio.to_thread(self.notices.skipped, notice.id, delivery.why)
            return 0
        if delivery.action == "hold":
            await asyncio.to_thread(self.notices.held, notice.id, delivery.why, delivery.until)
            return 0
        if delivery.action == "template":
            await self.send_template(notice.address, delivery.message, delivery.key, on_new_message)
            if delivery.then_hold:  # the details go as a plain message once the customer writes
                await asyncio.to_thread(self.notices.held, notice.id, "template sent; the details wait for a reply")
            else:
                await asyncio.to_thread(self.notices.sent, notice.id)
            logger.info("notice %s queued as a template for %s", notice.id, mask_phone(notice.address))
            return 1
        buttons = [{"title": title, "payload": payload} for title, payload in delivery.buttons]
        if not await self.tell(notice.address, delivery.text, on_new_message, key=delivery.key,
                               document=delivery.document, buttons=buttons):
            await asyncio.to_thread(self.notices.held, notice.id, "outside the 24-hour window")
            return 0
        await asyncio.to_thread(self.notices.sent, notice.id)
        logger.info("notice %s queued for %s", notice.id, mask_phone(notice.address))
        return 1

    async def send_template(self, sender: Text, message: Dict[Text, Any], key: Text,
                            on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> None:
        """An approved template through the outbox (once per `key`); its quick replies come back
        as the intents they carry, without NLU."""
        await asyncio.to_thread(self.store.save_offered, sender, outbound.template_payloads(message))
        reply_by = await asyncio.to_thread(self.store.reply_by_of, sender)
        await asyncio.to_thread(self.store.commit_turn, key, sender, reply_by, [message])
        self._spawn(self.drain(sender, on_new_message))

    def _notice_still_wanted(self, key: Text) -> bool:
        try:
            return self.notices.still_wanted(key)
        except Exception:  # the card database away: send as decided (the decision was right when made)
            logger.exception("could not recheck %s before sending", key)
            return True

    async def _note_outcome(self, key: Text, *outcome: Any) -> None:
        """_notice_outcome off the event loop, for the bank's own messages only (no thread hop for a reply)."""
        if self.notices is not None and key.startswith("notice."):
            await asyncio.to_thread(self._notice_outcome, key, *outcome)

    def _notice_outcome(self, key: Text, state: Text, wamid: Optional[Text] = None, code: Optional[int] = None,
                        error: Optional[Text] = None) -> None:
        """What WhatsApp said of a message the bank sent first, for its ledger (never fails a send)."""
        if self.notices is None or not key.startswith("notice."):
            return
        try:
            self.notices.outcome(key, state, wamid, code, error)
        except Exception:
            logger.exception("outcome of %s not recorded", key)

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Stop background work; unanswered messages stay recorded for the next start."""
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None
        tasks = list(self._tasks) + [t for t in (self._sweeper, self._retrier, self._notifier) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = self._retrier = self._notifier = None
        await self.client.close()
        await GuardedActionEndpoint.close_clients()

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        whatsapp_webhook = Blueprint(f"whatsapp_webhook_{id(self)}", __name__)

        @whatsapp_webhook.listener("after_server_start")
        async def resume_unanswered(app, loop) -> None:
            self._app = app
            self._start_listening(on_new_message)  # (before the first look: nothing recorded after it is missed)
            self._spawn(self.drain(None, on_new_message))
            if self.sweep_seconds > 0:
                self._sweeper = asyncio.ensure_future(self.sweep(on_new_message))
            self._retrier = asyncio.ensure_future(self.retry_due(on_new_message))
            if self.notices is not None:
                self._notifier = asyncio.ensure_future(self.deliver_notices(on_new_message))

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
            status, text = self.receiver.verify({k: request.args.get(k) for k in request.args})
            return response.text(text, status=status)

        @whatsapp_webhook.route("/webhook", methods=["POST"])
        async def webhook(request: Request) -> HTTPResponse:
            # recorded before the answer, in the handler itself: short inserts, no queueing behind
            # the turns' database work in the thread pool
            receipt = self.receiver.receive(request.body or b"", request.headers.get("X-Hub-Signature-256"))
            for sender in receipt.senders:  # what was recorded is answered now, whatever waits for a redelivery
                self._spawn(self.drain(sender, on_new_message))
            return response.json(receipt.answer, status=receipt.status)

        return whatsapp_webhook
