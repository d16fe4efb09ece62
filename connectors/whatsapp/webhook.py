"""Receiving one WhatsApp webhook: verify, parse, record, answer. No Rasa in here.

Shared by the channel's own route (connectors.whatsapp.channel, `make run`) and by the ingress
(connectors.whatsapp.ingress, `make serve`), a small process of its own that keeps taking
webhooks while Rasa restarts, so that a customer's messages are recorded in the order they
came even when Rasa was killed mid-burst.

Answers: 403 for a bad signature; 200 for any validly signed body (a malformed part is
logged and skipped, the rest recorded; a body that is not JSON is acknowledged, since a
redelivery would not read better); 503 only when the channel database cannot be reached,
so that Meta redelivers (the unique message id makes that harmless).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from sqlalchemy.exc import InterfaceError, OperationalError, TimeoutError as PoolTimeout

from cardsystem.config import SANDBOX_DEFAULTS
from connectors.whatsapp.inbound import Inbound, Status, Webhook, parse_webhook
from connectors.whatsapp.signature import is_signed_by
from connectors.whatsapp.store import ChannelStore

logger = logging.getLogger(__name__)
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)
SETTINGS = {  # credentials.yml key -> environment variable used when the key is empty
    "verify_token": "WHATSAPP_VERIFY_TOKEN", "app_secret": "WHATSAPP_APP_SECRET",
    "access_token": "WHATSAPP_ACCESS_TOKEN", "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "api_base": "WHATSAPP_API_BASE", "api_version": "WHATSAPP_API_VERSION",
}


def channel_settings(credentials: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """The WhatsApp settings from credentials.yml, else the environment; outside production,
    what is missing defaults to the local sandbox (python -m connectors.sandbox)."""
    credentials = credentials or {}
    values = {key: str(credentials.get(key) or os.environ.get(env, "")) for key, env in SETTINGS.items()}
    if os.environ.get("CARDCARE_ENV", "development") != "production":
        values = {key: value or SANDBOX_DEFAULTS[key] for key, value in values.items()}
    return values


@dataclass
class Receipt:
    status: int
    answer: Dict[str, Any]
    senders: List[str] = field(default_factory=list)  # customers with a newly recorded message


class WebhookReceiver:
    def __init__(self, store: ChannelStore, app_secrets: List[str], phone_number_id: str, verify_token: str) -> None:
        self.store = store
        self.app_secrets = [s for s in app_secrets if s]
        self.phone_number_id = phone_number_id
        self.verify_token = verify_token
        # told the statuses of the bank's own messages (outbox keys "notice.*"): (key, status, wamid, code, error)
        self.notice_status: Optional[Callable[..., None]] = None
        # told Meta's verdicts on the bank's templates (field message_template_status_update)
        self.template_status: Optional[Callable[[Dict[str, Any]], Any]] = None

    def verify(self, args: Mapping[str, str]) -> "tuple[int, str]":
        """Meta's subscription handshake: echo the challenge when the token is ours."""
        if args.get("hub.mode") == "subscribe" and self.verify_token and args.get("hub.verify_token") == self.verify_token:
            return 200, args.get("hub.challenge") or ""
        logger.warning("webhook verification refused: wrong mode or token")
        return 403, "forbidden"

    def receive(self, body: bytes, signature: Optional[str]) -> Receipt:
        receipt, parsed = self._read(body, signature)
        if parsed is not None:
            try:
                self._store(parsed, receipt)
            except DATABASE_DOWN as exc:  # what was recorded is still answered (receipt.senders)
                self._database_down(receipt, exc)
        return receipt

    def receive_many(self, bodies: List["tuple[bytes, Optional[str]]"]) -> List[Receipt]:
        """receive() for several webhooks, recorded in one transaction (in their order), so a
        busy database is entered once per batch, not once per webhook. If the batch cannot be
        written as a whole for another reason than the database being down, each webhook is
        recorded on its own, as receive() does."""
        read = [self._read(body, signature) for body, signature in bodies]
        try:
            self._record_batch(read)
        except DATABASE_DOWN as exc:
            for receipt, parsed in read:
                if parsed is not None:
                    self._database_down(receipt, exc)
        return [receipt for receipt, _ in read]

    def record_journalled(self, bodies: List[bytes], received_at: Optional[dt.datetime] = None) -> List[Receipt]:
        """(The ingress's recorder.) Webhooks whose signature was checked before they were
        journalled, recorded as receive_many records them, as of `received_at` (when they
        arrived, not when the database took them). A database that is down raises (one of
        DATABASE_DOWN): the journal keeps the batch for the next try."""
        read = [self._parse(body) for body in bodies]
        self._record_batch(read, received_at)
        return [receipt for receipt, _ in read]

    def _record_batch(self, read: List["tuple[Receipt, Optional[Webhook]]"],
                      received_at: Optional[dt.datetime] = None) -> None:
        batch = [(receipt, parsed) for receipt, parsed in read if parsed is not None]
        owners = [(receipt, m) for receipt, parsed in batch for m in self._answerable(parsed)]
        statuses = [st for _, parsed in batch for st in parsed.statuses]
        if not owners and not statuses:
            return
        try:
            added = self.store.record_webhooks([m for _, m in owners], statuses, received_at)
        except DATABASE_DOWN:
            raise
        except Exception as exc:  # one bad item spoils a batch: each on its own, as receive() records them
            logger.warning("a batch of %d webhooks is recorded one by one (%s)", len(batch), type(exc).__name__)
            for receipt, parsed in batch:
                self._store(parsed, receipt, received_at)
            return
        for (receipt, message), new in zip(owners, added):  # (a redelivery in the same batch is not new)
            if new and message.sender not in receipt.senders:
                receipt.senders.append(message.sender)
        for receipt, parsed in batch:
            for status in parsed.statuses:
                self._record(self._tell_notice, status)

    def refusal(self, body: bytes, signature: Optional[str]) -> Optional[Receipt]:
        """The answer to a webhook that is not to be recorded (a missing or wrong signature, a
        signed body that is not a JSON object), else None."""
        return self._check(body, signature)[0]

    def _check(self, body: bytes, signature: Optional[str]) -> "tuple[Optional[Receipt], Any]":
        """(refusal or None, the body's JSON object)."""
        if not is_signed_by(body, signature, self.app_secrets):
            logger.warning("webhook refused: missing or wrong X-Hub-Signature-256 (%d bytes)", len(body))
            return Receipt(403, {"error": "invalid signature"}), None
        payload = self._json_object(body)
        if payload is None:
            logger.warning("webhook ignored: signed body is not a JSON object (%d bytes)", len(body))
            return Receipt(200, {"status": "ignored"}), None
        return None, payload

    def _read(self, body: bytes, signature: Optional[str]) -> "tuple[Receipt, Optional[Webhook]]":
        """Check and parse one webhook: its answer so far, and what it carries (None: nothing to record)."""
        refused, payload = self._check(body, signature)
        return (refused, None) if refused is not None else self._parsed(payload)

    def _parse(self, body: bytes) -> "tuple[Receipt, Optional[Webhook]]":
        """A journalled webhook (its signature and shape were checked before it was journalled)."""
        payload = self._json_object(body)
        if payload is None:  # (cannot be journalled; kept for safety)
            return Receipt(200, {"status": "ignored"}), None
        return self._parsed(payload)

    @staticmethod
    def _json_object(body: bytes) -> Optional[Dict[str, Any]]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (RecursionError: nested too deep)
            return None
        return payload if isinstance(payload, dict) else None

    def _parsed(self, payload: Dict[str, Any]) -> "tuple[Receipt, Optional[Webhook]]":
        parsed = parse_webhook(payload, self.phone_number_id)
        self._template_updates(parsed.template_updates)
        for problem in parsed.problems:
            logger.info("webhook: %s", problem)
        return Receipt(200, {"status": "received"}), parsed

    @staticmethod
    def _answerable(parsed: Webhook) -> List[Inbound]:
        return [m for m in parsed.messages if not (m.kind == "reaction" and not m.text)]  # (a reaction taken back)

    def _store(self, parsed: Webhook, receipt: Receipt, received_at: Optional[dt.datetime] = None) -> None:
        """Record one webhook's messages and statuses, each in a transaction of its own (a
        database that is down raises: the caller answers 503 or keeps the webhook journalled)."""
        for message in self._answerable(parsed):
            if (self._record(lambda m: self.store.record_inbound(m, received_at), message)
                    and message.sender not in receipt.senders):
                receipt.senders.append(message.sender)
        for status in parsed.statuses:
            self._record(self._record_status, status)

    @staticmethod
    def _database_down(receipt: Receipt, exc: Exception) -> None:
        logger.error("webhook answered 503 for a redelivery: channel database unavailable (%s)", type(exc).__name__)
        receipt.status, receipt.answer = 503, {"error": "channel database unavailable"}

    def _template_updates(self, updates: List[Dict[str, Any]]) -> None:
        """Approved, rejected, paused: Meta's word on a template, kept by the bank's side."""
        for value in updates if self.template_status is not None else []:
            try:
                self.template_status(value)
            except Exception as exc:
                logger.error("webhook: template status update not recorded (%s)", type(exc).__name__)

    def _record_status(self, status: Status) -> bool:
        known = self.store.record_delivery(status)  # (a reply of ours: settles one left "sending" by a crash)
        self._tell_notice(status)
        return known

    def _tell_notice(self, status: Status) -> bool:
        """The status of a message the bank sent first goes to its ledger too (NoticeBox)."""
        if self.notice_status is not None and (status.callback_data or "").startswith("notice."):
            error = status.errors[0] if status.errors else {}
            self.notice_status(status.callback_data, status.status, status.message_id, error.get("code"),
                               str(error.get("title") or error.get("message") or "")[:120] or None)
        return True

    @staticmethod
    def _record(record: Callable[[Any], bool], item: Any) -> bool:
        """`record(item)` for one message or status (a transaction of its own), or False when it failed.

        A database that cannot be reached raises, so that the webhook answers 503 and Meta redelivers.
        Anything else that fails is this item's own problem: logged and the item skipped, or it would
        hold back its whole batch on every redelivery.
        """
        try:
            return record(item)
        except DATABASE_DOWN:
            raise
        except Exception as exc:  # only the type: a database error quotes the customer's number and words
            logger.error("webhook: %s %s skipped, it could not be recorded (%s)", type(item).__name__.lower(),
                         item.message_id, type(exc).__name__)
            return False
