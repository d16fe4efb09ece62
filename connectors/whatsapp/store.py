"""Channel state every Rasa instance must share: inbound dedupe and work queue, outbound sends
and their delivery statuses, and each customer's 24-hour service window.

Kept in a database (never a process's memory): `CARDCARE_CHANNEL_DB_URL`, by default an
SQLite file in var/. A unique key on the inbound message id makes Meta's redeliveries
harmless across restarts and instances.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sqlalchemy import Column, DateTime, Integer, String, Text, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import declarative_base

from cardsystem.config import PROJECT_ROOT
from cardsystem.db import create_schema, get_engine, session_scope
from connectors.whatsapp.inbound import EVENT_KIND, Inbound, Status

Base = declarative_base()
SERVICE_WINDOW = dt.timedelta(hours=24)
STATUS_ORDER = {"refused": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}  # statuses only move forward
LEASE_TTL = dt.timedelta(seconds=60)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class InboundRecord(Base):
    __tablename__ = "wa_inbound"

    id = Column(Integer, primary_key=True)
    message_id = Column(String(256), nullable=False, unique=True)
    sender = Column(String(160), nullable=False, index=True)
    reply_by = Column(String(10), nullable=False)
    text = Column(Text, nullable=False)
    meta = Column(Text, nullable=False)
    sent_at = Column(Integer, nullable=True)  # WhatsApp's timestamp: webhooks may arrive out of order
    state = Column(String(10), nullable=False, default="pending", index=True)  # pending | done | failed
    received_at = Column(DateTime, nullable=False)
    handled_at = Column(DateTime, nullable=True)


class OutboundRecord(Base):
    __tablename__ = "wa_outbound"

    id = Column(Integer, primary_key=True)
    wamid = Column(String(256), nullable=True, index=True)
    recipient = Column(String(160), nullable=False, index=True)
    body = Column(Text, nullable=False)
    status = Column(String(12), nullable=False)  # sent | delivered | read | failed | refused
    error_code = Column(Integer, nullable=True)
    error_meaning = Column(String(120), nullable=True)
    attempts = Column(Integer, nullable=False, default=1)
    created_at = Column(DateTime, nullable=False)
    updated_at = Column(DateTime, nullable=False)


class ServiceWindow(Base):
    __tablename__ = "wa_service_window"

    sender = Column(String(160), primary_key=True)
    last_inbound_at = Column(DateTime, nullable=False)


class SenderLease(Base):
    """Which instance answers a sender's messages right now: keeps turns in order across instances."""

    __tablename__ = "wa_sender_lease"

    sender = Column(String(160), primary_key=True)
    owner = Column(String(64), nullable=False)
    expires_at = Column(DateTime, nullable=False)


class NumberedMenu(Base):
    """The last numbered text menu sent to a customer (more than 10 choices): number -> payload."""

    __tablename__ = "wa_menu"

    sender = Column(String(160), primary_key=True)
    options = Column(Text, nullable=False)
    sent_at = Column(DateTime, nullable=False)


@dataclass(frozen=True)
class PendingMessage:
    message_id: str
    sender: str
    reply_by: str
    text: str
    metadata: Dict[str, Any]


def default_url() -> str:
    return os.environ.get("CARDCARE_CHANNEL_DB_URL") or f"sqlite:///{PROJECT_ROOT / 'var' / 'channel.db'}"


class ChannelStore:
    """The WhatsApp channel's shared, durable state."""

    def __init__(self, url: Optional[str] = None) -> None:
        self.engine = get_engine(url or default_url())
        create_schema(self.engine, Base.metadata)

    def record_inbound(self, message: Inbound, received_at: Optional[dt.datetime] = None) -> bool:
        """Record a message once; False when this message id was already recorded (a redelivery)."""
        moment = received_at or utcnow()
        try:
            with session_scope(self.engine) as s:
                s.add(InboundRecord(message_id=message.message_id, sender=message.sender, reply_by=message.reply_by,
                                    text=message.text, meta=json.dumps(message.metadata(), ensure_ascii=False),
                                    sent_at=message.timestamp or None, state="pending", received_at=moment))
                if message.kind != EVENT_KIND:  # the channel's own events do not open the 24-hour window
                    window = s.get(ServiceWindow, message.sender)
                    if window is None:
                        s.add(ServiceWindow(sender=message.sender, last_inbound_at=moment))
                    elif window.last_inbound_at < moment:
                        window.last_inbound_at = moment
        except IntegrityError:
            return False
        return True

    def pending(self, sender: Optional[str] = None) -> List[PendingMessage]:
        """Recorded but unanswered messages, oldest first (what a restart must still answer)."""
        with session_scope(self.engine) as s:
            query = select(InboundRecord).where(InboundRecord.state == "pending")
            if sender:
                query = query.where(InboundRecord.sender == sender)
            rows = s.execute(query.order_by(func.coalesce(InboundRecord.sent_at, 0), InboundRecord.received_at,
                                            InboundRecord.id)).scalars()
            return [PendingMessage(r.message_id, r.sender, r.reply_by, r.text, json.loads(r.meta)) for r in rows]

    def finish(self, message_id: str, state: str = "done") -> None:
        with session_scope(self.engine) as s:
            record = s.execute(select(InboundRecord).where(InboundRecord.message_id == message_id)).scalar_one_or_none()
            if record is not None:
                record.state, record.handled_at = state, utcnow()

    def window_open(self, sender: str, now: Optional[dt.datetime] = None) -> bool:
        """Whether a free-form reply is allowed: the customer wrote within the last 24 hours."""
        with session_scope(self.engine) as s:
            window = s.get(ServiceWindow, sender)
            return window is not None and (now or utcnow()) - window.last_inbound_at < SERVICE_WINDOW

    def record_send(self, recipient: str, body: Dict[str, Any], status: str, wamid: Optional[str] = None,
                    error_code: Optional[int] = None, error_meaning: Optional[str] = None, attempts: int = 1) -> int:
        now = utcnow()
        with session_scope(self.engine) as s:
            record = OutboundRecord(wamid=wamid, recipient=recipient, body=json.dumps(body, ensure_ascii=False),
                                    status=status, error_code=error_code, error_meaning=error_meaning,
                                    attempts=attempts, created_at=now, updated_at=now)
            s.add(record)
            s.flush()
            return record.id

    def record_status(self, status: Status) -> bool:
        """Attach a delivery status to the send it is about; False for a message we never sent."""
        with session_scope(self.engine) as s:
            record = s.execute(select(OutboundRecord).where(OutboundRecord.wamid == status.message_id)).scalars().first()
            if record is None:
                return False
            if STATUS_ORDER.get(status.status, 0) <= STATUS_ORDER.get(record.status, 0):
                return True  # a late or repeated receipt ("delivered" after "read"): already known
            record.status, record.updated_at = status.status, utcnow()
            if status.errors:
                record.error_code = status.errors[0].get("code")
                record.error_meaning = str(status.errors[0].get("title") or status.errors[0].get("message") or "")[:120]
            return True

    def sends(self, recipient: Optional[str] = None) -> List[Dict[str, Any]]:
        with session_scope(self.engine) as s:
            query = select(OutboundRecord).order_by(OutboundRecord.id)
            if recipient:
                query = query.where(OutboundRecord.recipient == recipient)
            return [{"wamid": r.wamid, "recipient": r.recipient, "body": json.loads(r.body), "status": r.status,
                     "error_code": r.error_code, "attempts": r.attempts} for r in s.execute(query).scalars()]

    # -- per-sender lease: one instance at a time answers a given customer ------------------

    def acquire(self, sender: str, owner: str, ttl: dt.timedelta = LEASE_TTL) -> bool:
        """Take (or renew) the sender's lease; False while another live instance holds it."""
        now = utcnow()
        with session_scope(self.engine) as s:
            taken = s.execute(update(SenderLease)
                              .where(SenderLease.sender == sender,
                                     or_(SenderLease.owner == owner, SenderLease.expires_at < now))
                              .values(owner=owner, expires_at=now + ttl)).rowcount
        if taken:
            return True
        try:
            with session_scope(self.engine) as s:
                s.add(SenderLease(sender=sender, owner=owner, expires_at=now + ttl))
        except IntegrityError:
            return False  # another instance holds a live lease
        return True

    def release(self, sender: str, owner: str) -> None:
        with session_scope(self.engine) as s:
            s.execute(delete(SenderLease).where(SenderLease.sender == sender, SenderLease.owner == owner))

    def senders_waiting(self, older_than: dt.timedelta) -> List[str]:
        """Senders with a message unanswered for a while (an instance died holding it, say)."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(InboundRecord.sender).where(InboundRecord.state == "pending",
                                                                InboundRecord.received_at < utcnow() - older_than)
                             .distinct()).scalars()
            return list(rows)

    # -- numbered menus -----------------------------------------------------------------------

    def save_menu(self, sender: str, options: Dict[str, str]) -> None:
        with session_scope(self.engine) as s:
            menu = s.get(NumberedMenu, sender)
            if not options:
                if menu is not None:
                    s.delete(menu)
                return
            if menu is None:
                s.add(NumberedMenu(sender=sender, options=json.dumps(options), sent_at=utcnow()))
            else:
                menu.options, menu.sent_at = json.dumps(options), utcnow()

    def take_menu(self, sender: str) -> Dict[str, str]:
        """The menu the customer may be answering (valid for their next message only)."""
        with session_scope(self.engine) as s:
            menu = s.get(NumberedMenu, sender)
            if menu is None:
                return {}
            options = json.loads(menu.options) if utcnow() - menu.sent_at < SERVICE_WINDOW else {}
            s.delete(menu)
            return options
