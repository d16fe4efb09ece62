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
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from sqlalchemy import Column, DateTime, Integer, String, Text, bindparam, delete, func, or_, select, update
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import declarative_base

from cardsystem.config import PROJECT_ROOT
from cardsystem.db import create_schema, get_engine, session_scope
from connectors.whatsapp.inbound import EVENT_KIND, Inbound, Status

Base = declarative_base()
SERVICE_WINDOW = dt.timedelta(hours=24)
STATUS_ORDER = {"refused": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}  # statuses only move forward
# A worker holds a customer while it answers them, renewing every LEASE_TTL/3; a worker that died
# holding one (killed mid-turn) lets another take the customer over this long after its last renewal.
LEASE_TTL = dt.timedelta(seconds=15)
INBOUND_CHANNEL = "cardcare_inbound"  # PostgreSQL NOTIFY channel: a customer's new message was recorded
OFFER_VALID = dt.timedelta(days=7)  # an old button tapped within a week still works
TEMPLATE_OFFER_VALID = dt.timedelta(days=35)  # a template's quick reply (a reminder read late) for a month


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
    # pending -> answered (replies in the outbox) -> done (replies sent); dead (gave up, see wa_dead_letter)
    state = Column(String(10), nullable=False, default="pending", index=True)
    received_at = Column(DateTime, nullable=False)
    handled_at = Column(DateTime, nullable=True)
    started_at = Column(DateTime, nullable=True)       # a turn began: after a crash, look in the tracker first
    attempts = Column(Integer, nullable=True)          # failed turns so far
    next_attempt_at = Column(DateTime, nullable=True)  # not before (back-off after a failed turn)
    first_failed_at = Column(DateTime, nullable=True)
    last_error = Column(String(200), nullable=True)


class OutboxRecord(Base):
    """A reply to send: written with its turn, sent in order per customer, never sent twice.

    `key` is "<inbound message id>:<reply index>". A row is `sending` only while a request is
    in flight; one left `sending` by a crash is resolved by its status webhook (the key travels
    as biz_opaque_callback_data) before it may be sent again.
    """

    __tablename__ = "wa_outbox"

    id = Column(Integer, primary_key=True)
    key = Column(String(300), nullable=False, unique=True)
    message_id = Column(String(256), nullable=False, index=True)
    recipient = Column(String(160), nullable=False, index=True)
    reply_by = Column(String(10), nullable=False)
    body = Column(Text, nullable=False)
    state = Column(String(10), nullable=False, index=True)  # queued | sending | sent | failed | expired
    attempts = Column(Integer, nullable=False, default=0)
    next_attempt_at = Column(DateTime, nullable=False)
    wamid = Column(String(256), nullable=True)
    error = Column(String(200), nullable=True)
    created_at = Column(DateTime, nullable=False)
    updated_at = Column(DateTime, nullable=False)


class DeadLetter(Base):
    """A message the bot could not answer within the limit: the customer got an apology with
    `reference`; operators list and replay them (python -m connectors.whatsapp.deadletters)."""

    __tablename__ = "wa_dead_letter"

    id = Column(Integer, primary_key=True)
    reference = Column(String(20), nullable=False, unique=True)
    message_id = Column(String(256), nullable=False, unique=True)
    sender = Column(String(160), nullable=False)
    reason = Column(String(200), nullable=False)
    attempts = Column(Integer, nullable=False)
    first_failed_at = Column(DateTime, nullable=False)
    dead_at = Column(DateTime, nullable=False)
    replayed_at = Column(DateTime, nullable=True)


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


class OfferedPayload(Base):
    """A button payload the bot showed a customer: only these become intents when tapped
    (anything else a client sends as a button reply is read as typed text)."""

    __tablename__ = "wa_offered"

    sender = Column(String(160), primary_key=True)
    payload = Column(String(256), primary_key=True)
    offered_at = Column(DateTime, nullable=False)


@dataclass(frozen=True)
class PendingMessage:
    message_id: str
    sender: str
    reply_by: str
    text: str
    metadata: Dict[str, Any]
    started: bool = False                           # a turn for it began before (then failed or crashed)
    attempts: int = 0                               # failed turns so far
    next_attempt_at: Optional[dt.datetime] = None   # not before (back-off)
    first_failed_at: Optional[dt.datetime] = None


@dataclass(frozen=True)
class QueuedReply:
    id: int
    key: str
    message_id: str
    recipient: str
    reply_by: str
    body: Dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class TurnChoice:
    """For the message answered next: the numbered menu it may answer (taken) and whether its
    button payload is one the bot showed the customer."""

    message_id: str
    menu: Dict[str, str]
    offered: bool


@dataclass(frozen=True)
class SenderQueue:
    """What one instance holding a customer's lease has to do: their unanswered messages
    (oldest first), their unsent replies (in order) and whether their 24-hour window is open."""

    pending: List[PendingMessage]
    replies: List[QueuedReply]
    window_open: bool
    # with `claim`: the message due next, marked started, and its menu and offer (None: nothing due)
    choice: Optional[TurnChoice] = None


@dataclass(frozen=True)
class DeadLetterView:
    reference: str
    message_id: str
    sender: str
    text: str
    reason: str
    attempts: int
    first_failed_at: dt.datetime
    dead_at: dt.datetime
    replayed_at: Optional[dt.datetime]


def _pending(r: InboundRecord) -> PendingMessage:
    return PendingMessage(r.message_id, r.sender, r.reply_by, r.text, json.loads(r.meta), r.started_at is not None,
                          r.attempts or 0, r.next_attempt_at, r.first_failed_at)


def _queue(s: Any, key: str, message_id: str, recipient: str, reply_by: str, body: Dict[str, Any],
           now: dt.datetime) -> None:
    """One reply into the outbox, due now."""
    s.execute(_REPLY_NEW, {"key": key, "message_id": message_id, "recipient": recipient, "reply_by": reply_by,
                           "body": json.dumps(body, ensure_ascii=False), "state": "queued", "attempts": 0,
                           "next_attempt_at": now, "created_at": now, "updated_at": now})


def _reply(r: OutboxRecord) -> QueuedReply:
    return QueuedReply(r.id, r.key, r.message_id, r.recipient, r.reply_by, json.loads(r.body), r.state, r.attempts,
                       r.next_attempt_at, r.updated_at)


_INSERT_IF_ABSENT: Dict["tuple[str, str, tuple]", Any] = {}


def _insert_if_absent(s: Any, table: Any, values: Dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING (SQLite and PostgreSQL); True when the row was added.

    Written as text with the columns' types, once per table and set of columns: SQLAlchemy 1.4
    cannot cache its dialects' on_conflict_do_nothing() and compiled it again on every call
    (7-12 % of the recorder's CPU). So `values` must give every column with a default of
    SQLAlchemy's (checked); the database's own defaults apply as usual."""
    dialect = s.get_bind().dialect
    if dialect.name not in ("sqlite", "postgresql"):  # another database: try, and take a conflict as "present"
        try:
            with s.begin_nested():
                s.execute(table.insert().values(**values))
            return True
        except IntegrityError:
            return False
    key = (dialect.name, table.name, tuple(values))
    statement = _INSERT_IF_ABSENT.get(key)
    if statement is None:
        unset = [c.name for c in table.columns if c.default is not None and c.name not in values]
        if unset:
            raise ValueError(f"insert into {table.name} without {unset}: their defaults are SQLAlchemy's")
        quote, columns = dialect.identifier_preparer.quote, [table.c[name] for name in values]
        statement = sql(f"INSERT INTO {quote(table.name)} ({', '.join(quote(c.name) for c in columns)}) "
                         f"VALUES ({', '.join(':' + c.name for c in columns)}) ON CONFLICT DO NOTHING") \
            .bindparams(*(bindparam(c.name, type_=c.type) for c in columns))
        _INSERT_IF_ABSENT[key] = statement
    return bool(s.execute(statement, values).rowcount)


def _inbound_row(message: Inbound, moment: dt.datetime) -> Dict[str, Any]:
    return dict(message_id=message.message_id, sender=message.sender, reply_by=message.reply_by, text=message.text,
                meta=json.dumps(message.metadata(), ensure_ascii=False), sent_at=message.timestamp or None,
                state="pending", received_at=moment)


def _open_window(s: Any, sender: str, moment: dt.datetime) -> None:
    """The customer wrote at `moment`: their 24-hour window runs from then (never backwards)."""
    last = s.execute(_WINDOW_OF, {"sender": sender}).scalar()
    if last is None:
        s.execute(_WINDOW_NEW, {"sender": sender, "last_inbound_at": moment})
    elif last < moment:
        s.execute(_WINDOW_MOVE, {"window_sender": sender, "moment": moment})


def _is_window_open(s: Any, sender: str, now: dt.datetime) -> bool:
    last = s.execute(_WINDOW_OF, {"sender": sender}).scalar()
    return last is not None and now - last < SERVICE_WINDOW


# The hot path's statements, built once: SQLAlchemy then skips building them and computing
# their cache keys on every turn, and Core rows are read without the ORM's identity map.
_INBOUND, _OUTBOX, _LEASE = InboundRecord.__table__, OutboxRecord.__table__, SenderLease.__table__
_PENDING_ORDER = (func.coalesce(_INBOUND.c.sent_at, 0), _INBOUND.c.received_at, _INBOUND.c.id)
_PENDING_ALL = select(_INBOUND).where(_INBOUND.c.state == "pending").order_by(*_PENDING_ORDER)
_PENDING_OF = select(_INBOUND).where(_INBOUND.c.state == "pending", _INBOUND.c.sender == bindparam("sender")) \
    .order_by(*_PENDING_ORDER)
_ANY_PENDING_OF = select(_INBOUND.c.id).where(_INBOUND.c.state == "pending",
                                              _INBOUND.c.sender == bindparam("sender")).limit(1)
_UNSENT_OF = select(_OUTBOX).where(_OUTBOX.c.recipient == bindparam("recipient"),
                                   _OUTBOX.c.state.in_(("queued", "sending"))).order_by(_OUTBOX.c.id)
_WINDOW_OF = select(ServiceWindow.__table__.c.last_inbound_at).where(
    ServiceWindow.__table__.c.sender == bindparam("sender"))
_LEASE_RENEW = update(_LEASE).where(
    _LEASE.c.sender == bindparam("lease_sender"),
    or_(_LEASE.c.owner == bindparam("lease_owner"), _LEASE.c.expires_at < bindparam("now"))) \
    .values(owner=bindparam("new_owner"), expires_at=bindparam("until"))
_WINDOWS = ServiceWindow.__table__
_WINDOW_NEW = _WINDOWS.insert()
_WINDOW_MOVE = update(_WINDOWS).where(_WINDOWS.c.sender == bindparam("window_sender")) \
    .values(last_inbound_at=bindparam("moment"))
_MENUS, _OFFERED = NumberedMenu.__table__, OfferedPayload.__table__
_MENU_OF = select(_MENUS.c.options, _MENUS.c.sent_at).where(_MENUS.c.sender == bindparam("sender"))
_MENU_TAKEN = delete(_MENUS).where(_MENUS.c.sender == bindparam("sender"))
_MENU_NEW = _MENUS.insert()
_OFFERED_FORGET = delete(_OFFERED).where(_OFFERED.c.sender == bindparam("sender"),
                                         _OFFERED.c.payload.in_(bindparam("payloads", expanding=True)))
_OFFERED_NEW = _OFFERED.insert()
_OFFERED_AT = select(_OFFERED.c.offered_at).where(_OFFERED.c.sender == bindparam("sender"),
                                                  _OFFERED.c.payload == bindparam("payload"))
_BEGIN_TURN = update(_INBOUND).where(_INBOUND.c.message_id == bindparam("mid")).values(started_at=bindparam("now"))
_REPLY_KEYS_OF = select(_OUTBOX.c.key).where(_OUTBOX.c.message_id == bindparam("mid"))
_REPLY_NEW = _OUTBOX.insert()
_ANSWERED = update(_INBOUND).where(_INBOUND.c.message_id == bindparam("mid"), _INBOUND.c.state == "pending") \
    .values(state="answered", handled_at=bindparam("now"))
_UNSENT_COUNT_OF = select(func.count()).select_from(_OUTBOX).where(
    _OUTBOX.c.message_id == bindparam("mid"), _OUTBOX.c.state.in_(("queued", "sending")))
_DONE = update(_INBOUND).where(_INBOUND.c.message_id == bindparam("mid"), _INBOUND.c.state == "answered") \
    .values(state="done", handled_at=bindparam("now"))
_REPLY_SENDING = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("reply_id")) \
    .values(state="sending", attempts=_OUTBOX.c.attempts + 1, updated_at=bindparam("now"))
_REPLY_BY_ID = select(_OUTBOX.c.state, _OUTBOX.c.wamid, _OUTBOX.c.message_id).where(_OUTBOX.c.id == bindparam("reply_id"))
_REPLY_BY_KEY = select(_OUTBOX.c.id, _OUTBOX.c.state, _OUTBOX.c.message_id).where(_OUTBOX.c.key == bindparam("key"))
_REPLY_SETTLED = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("reply_id")) \
    .values(state=bindparam("new_state"), wamid=bindparam("new_wamid"), error=bindparam("new_error"),
            updated_at=bindparam("now"))
_SENDS = OutboundRecord.__table__
_SEND_NEW = _SENDS.insert()
_SEND_BY_WAMID = select(_SENDS.c.id, _SENDS.c.status).where(_SENDS.c.wamid == bindparam("wamid")) \
    .order_by(_SENDS.c.id).limit(1)
_SEND_STATUS = update(_SENDS).where(_SENDS.c.id == bindparam("send_id")) \
    .values(status=bindparam("new_status"), updated_at=bindparam("now"))
_SEND_ERROR = update(_SENDS).where(_SENDS.c.id == bindparam("send_id")) \
    .values(error_code=bindparam("code"), error_meaning=bindparam("meaning"))
_LEASE_GIVE_BACK = delete(_LEASE).where(_LEASE.c.sender == bindparam("lease_sender"),
                                        _LEASE.c.owner == bindparam("lease_owner"))


def _pending_of(s: Any, sender: Optional[str] = None) -> List[PendingMessage]:
    """Recorded but unanswered messages (one sender's, or all), oldest first."""
    rows = s.execute(_PENDING_OF, {"sender": sender}) if sender else s.execute(_PENDING_ALL)
    return [_pending(r) for r in rows]


def _unsent_of(s: Any, recipient: str) -> List[QueuedReply]:
    return [_reply(r) for r in s.execute(_UNSENT_OF, {"recipient": recipient})]


def _queue_of(s: Any, sender: str, now: dt.datetime, claim: bool = False) -> SenderQueue:
    """What there is to do for a customer. With `claim` (the lease is ours and the work starts
    now), in the same transaction: the message due next is marked started, its menu taken and its
    button payload checked (begin_turn and turn_choice without transactions of their own). (A
    reply is marked in flight only just before its request: one marked here, with a turn's
    replies, and left so by a crash would wait SENDING_GRACE for a status that never comes.)"""
    pending, replies = _pending_of(s, sender), _unsent_of(s, sender)
    choice = None
    if claim and pending and (pending[0].next_attempt_at is None or pending[0].next_attempt_at <= now):
        if not pending[0].started:
            s.execute(_BEGIN_TURN, {"mid": pending[0].message_id, "now": now})
        choice = _choice_of(s, pending[0], now)
    return SenderQueue(pending, replies, _is_window_open(s, sender, now), choice)


def _choice_of(s: Any, message: PendingMessage, now: dt.datetime) -> TurnChoice:
    """The numbered menu `message` may answer (taken), and whether it is a tap on a button the bot
    showed (a template's quick reply stays valid longer than a reply's button)."""
    kind = message.metadata.get("whatsapp", {})
    if kind.get("type") == EVENT_KIND:  # the channel's own event: no menu or button to answer
        return TurnChoice(message.message_id, {}, False)
    tapped = kind.get("type") in ("interactive", "button")
    valid = TEMPLATE_OFFER_VALID if kind.get("type") == "button" else OFFER_VALID
    return TurnChoice(message.message_id, _take_menu(s, message.sender, now),
                      bool(tapped and message.text) and _was_offered(s, message.sender, message.text, now, valid))


def _take_lease(s: Any, sender: str, owner: str, until: dt.datetime, now: dt.datetime) -> bool:
    """Take the sender's lease, or renew ours, or take over an expired one; False while another holds it."""
    if _insert_if_absent(s, _LEASE, {"sender": sender, "owner": owner, "expires_at": until}):
        return True
    return bool(s.execute(_LEASE_RENEW, {"lease_sender": sender, "lease_owner": owner, "now": now,
                                         "new_owner": owner, "until": until}).rowcount)


def _take_menu(s: Any, sender: str, now: dt.datetime) -> Dict[str, str]:
    menu = s.execute(_MENU_OF, {"sender": sender}).first()
    if menu is None:
        return {}
    s.execute(_MENU_TAKEN, {"sender": sender})
    return json.loads(menu.options) if now - menu.sent_at < SERVICE_WINDOW else {}


def _save_menu(s: Any, sender: str, options: Dict[str, str], now: dt.datetime) -> None:
    """The customer's numbered menu is now `options` (empty: they have none)."""
    s.execute(_MENU_TAKEN, {"sender": sender})
    if options:
        s.execute(_MENU_NEW, {"sender": sender, "options": json.dumps(options), "sent_at": now})


def _was_offered(s: Any, sender: str, payload: str, now: dt.datetime, valid: dt.timedelta) -> bool:
    offered_at = s.execute(_OFFERED_AT, {"sender": sender, "payload": payload[:256]}).scalar()
    return offered_at is not None and now - offered_at < valid


def _announce(s: Any, senders: List[str]) -> None:
    """On PostgreSQL, tell the listening workers whose messages this transaction records: NOTIFY
    is delivered at commit (never for a rollback), one notification per customer and commit."""
    if senders and s.bind.dialect.name == "postgresql":
        s.execute(sql("SELECT pg_notify(:channel, sender) FROM unnest(CAST(:senders AS text[])) AS sender"),
                  {"channel": INBOUND_CHANNEL, "senders": list(dict.fromkeys(senders))})


def _unanswered_since(s: Any, before: dt.datetime) -> List[str]:
    """Customers with a message received before `before` and not answered yet."""
    return list(s.execute(select(InboundRecord.sender).where(InboundRecord.state == "pending",
                                                             InboundRecord.received_at < before).distinct()).scalars())


def _replies_due(s: Any, queued_due_by: dt.datetime, sending_before: dt.datetime) -> List[str]:
    """Customers with a queued reply due by `queued_due_by`, or one left "sending" since before
    `sending_before` (a crash mid-send whose status never came)."""
    return list(s.execute(select(OutboxRecord.recipient).where(or_(
        (OutboxRecord.state == "queued") & (OutboxRecord.next_attempt_at <= queued_due_by),
        (OutboxRecord.state == "sending") & (OutboxRecord.updated_at < sending_before))).distinct()).scalars())


def default_url() -> str:
    return os.environ.get("CARDCARE_CHANNEL_DB_URL") or f"sqlite:///{PROJECT_ROOT / 'var' / 'channel.db'}"


class ChannelStore:
    """The WhatsApp channel's shared, durable state.

    BOOKKEEPING: a worker's own bookkeeping (a lease taken, renewed or given back, a turn
    started or answered, a reply settled, a menu kept) commits without waiting for the disk
    (session_scope's wait_for_disk=False). Nothing a customer saw rests on it alone: a reply is
    marked "sending" by a commit that waits before it leaves, and that puts every earlier
    commit of this database on disk too. What a crash of PostgreSQL or its machine can cost is
    the state of a moment before, which a retry already handles: a lease taken again, a turn
    retried, a sent reply settled by its status webhook. What the ingress's recorder records
    always waits for the disk."""

    def __init__(self, url: Optional[str] = None, schema_now: bool = True) -> None:
        """`schema_now=False` (the ingress): the tables are made by ensure_schema(), later, so
        that a process can start while the database is away."""
        self.engine = get_engine(url or default_url())
        self._schema_ready = False
        if schema_now:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        if not self._schema_ready:
            create_schema(self.engine, Base.metadata)
            self._schema_ready = True

    def record_inbound(self, message: Inbound, received_at: Optional[dt.datetime] = None) -> bool:
        """Record a message once; False when this message id was already recorded (a redelivery).

        Two instances may see a new customer's first messages at once: the loser of the race for
        the service-window row tries again rather than taking its message for a redelivery."""
        for _ in range(3):
            try:
                return self._record_inbound_once(message, received_at or utcnow())
            except IntegrityError:
                with session_scope(self.engine) as s:
                    if s.execute(select(InboundRecord.id).where(InboundRecord.message_id == message.message_id)).first():
                        return False
        return self._record_inbound_once(message, received_at or utcnow())

    def _record_inbound_once(self, message: Inbound, moment: dt.datetime) -> bool:
        with session_scope(self.engine) as s:
            s.add(InboundRecord(**_inbound_row(message, moment)))
            if message.kind != EVENT_KIND:  # the channel's own events do not open the 24-hour window
                _open_window(s, message.sender, moment)
            _announce(s, [message.sender])
        return True

    def record_webhooks(self, messages: List[Inbound], statuses: List[Status],
                        received_at: Optional[dt.datetime] = None) -> List[bool]:
        """Several webhooks' messages and statuses in one transaction (the ingress's batches):
        for each message, whether it is new (False: a redelivery, already recorded)."""
        moment = received_at or utcnow()
        with session_scope(self.engine) as s:
            added = []
            for message in messages:
                added.append(_insert_if_absent(s, InboundRecord.__table__, _inbound_row(message, moment)))
                if added[-1] and message.kind != EVENT_KIND:
                    _open_window(s, message.sender, moment)
            for status in statuses:
                self._record_delivery(s, status)
            _announce(s, [m.sender for m, new in zip(messages, added) if new])
            return added

    def pending(self, sender: Optional[str] = None) -> List[PendingMessage]:
        """Recorded but unanswered messages, oldest first (what a restart must still answer)."""
        with session_scope(self.engine) as s:
            return _pending_of(s, sender)

    def begin_turn(self, message_id: str) -> None:
        """Note that a turn started: if it never finishes (a crash), the retry looks in the
        tracker for what the turn already did instead of running it twice."""
        with session_scope(self.engine, wait_for_disk=False) as s:
            s.execute(_BEGIN_TURN, {"mid": message_id, "now": utcnow()})

    def turn_failed(self, message_id: str, error: str, delay: dt.timedelta) -> None:
        """Count a failed turn and set when to try again."""
        now = utcnow()
        with session_scope(self.engine) as s:
            r = s.execute(select(InboundRecord).where(InboundRecord.message_id == message_id)).scalar_one()
            r.attempts = (r.attempts or 0) + 1
            r.first_failed_at = r.first_failed_at or now
            r.next_attempt_at = now + delay
            r.last_error = error[:200]

    def commit_turn(self, message_id: str, recipient: str, reply_by: str, bodies: List[Dict[str, Any]]) -> None:
        """A turn's replies into the outbox and the message marked answered, in one transaction:
        after a crash either both happened or neither did. Committing twice adds nothing. (A turn
        without replies is done at once.)"""
        with session_scope(self.engine, wait_for_disk=False) as s:
            self._commit_turn(s, message_id, recipient, reply_by, bodies, utcnow())

    def _commit_turn(self, s: Any, message_id: str, recipient: str, reply_by: str, bodies: List[Dict[str, Any]],
                     now: dt.datetime) -> None:
        known = set(s.execute(_REPLY_KEYS_OF, {"mid": message_id}).scalars())
        for index, body in enumerate(bodies):
            if f"{message_id}:{index}" not in known:
                _queue(s, f"{message_id}:{index}", message_id, recipient, reply_by, body, now)
        s.execute(_ANSWERED, {"mid": message_id, "now": now})
        self._finish_if_sent(s, message_id)

    def queued_replies(self, recipient: str) -> List[QueuedReply]:
        """A customer's unsent replies, in the order they must go out."""
        with session_scope(self.engine) as s:
            return _unsent_of(s, recipient)

    def reply_sending(self, reply_id: int) -> None:
        """Mark a reply in flight (committed before the request goes out)."""
        with session_scope(self.engine) as s:
            s.execute(_REPLY_SENDING, {"reply_id": reply_id, "now": utcnow()})

    def reply_done(self, reply_id: int, state: str, wamid: Optional[str] = None, error: Optional[str] = None) -> None:
        """A reply reached its end: sent, failed (permanent error) or expired (window closed)."""
        with session_scope(self.engine) as s:
            self._reply_done(s, reply_id, state, wamid, error)

    def _reply_done(self, s: Any, reply_id: int, state: str, wamid: Optional[str] = None,
                    error: Optional[str] = None) -> None:
        row = s.execute(_REPLY_BY_ID, {"reply_id": reply_id}).first()
        if row is None or row.state in ("sent", "failed", "expired"):
            return
        s.execute(_REPLY_SETTLED, {"reply_id": reply_id, "new_state": state, "new_wamid": wamid or row.wamid,
                                   "new_error": (error or "")[:200] or None, "now": utcnow()})
        self._finish_if_sent(s, row.message_id)

    def reply_later(self, reply_id: int, delay: dt.timedelta, error: str) -> None:
        """A transient failure: back to the queue, not before `delay`."""
        now = utcnow()
        with session_scope(self.engine) as s:
            s.execute(update(OutboxRecord).where(OutboxRecord.id == reply_id, OutboxRecord.state.in_(("queued", "sending")))
                      .values(state="queued", next_attempt_at=now + delay, error=error[:200], updated_at=now))

    def reply_accepted(self, key: str, wamid: str) -> bool:
        """A status webhook echoed this reply's key: WhatsApp has it (resolves a crash mid-send)."""
        with session_scope(self.engine) as s:
            return self._reply_accepted(s, key, wamid)

    def _reply_accepted(self, s: Any, key: str, wamid: str) -> bool:
        row = s.execute(_REPLY_BY_KEY, {"key": key}).first()
        if row is None:
            return False
        if row.state in ("queued", "sending"):
            s.execute(update(_OUTBOX).where(_OUTBOX.c.id == row.id).values(state="sent", wamid=wamid, updated_at=utcnow()))
            self._finish_if_sent(s, row.message_id)
        return True

    @staticmethod
    def _finish_if_sent(s: Any, message_id: str) -> None:
        if not s.execute(_UNSENT_COUNT_OF, {"mid": message_id}).scalar_one():
            s.execute(_DONE, {"mid": message_id, "now": utcnow()})

    def senders_due(self, stale_sending: dt.timedelta, now: Optional[dt.datetime] = None,
                    new_messages: bool = False) -> List[str]:
        """Customers with a reply due for (re)sending, or a failed turn due for its retry (and with
        `new_messages`, any unanswered message: another process recorded it)."""
        now = now or utcnow()
        with session_scope(self.engine) as s:
            replies = _replies_due(s, now, now - stale_sending)
            due = InboundRecord.next_attempt_at <= now
            if new_messages:
                due = or_(due, InboundRecord.next_attempt_at.is_(None))
            retries = s.execute(select(InboundRecord.sender).where(InboundRecord.state == "pending", due)
                                .distinct()).scalars()
            return list(dict.fromkeys(replies + list(retries)))

    # -- one customer's turn, in as few transactions as it takes ------------------------------

    def take(self, sender: str, owner: str, ttl: dt.timedelta = LEASE_TTL) -> Optional[SenderQueue]:
        """Take (or renew) the customer's lease and read what there is to do for them, in one
        transaction; None while another live instance holds them."""
        now = utcnow()
        with session_scope(self.engine, wait_for_disk=False) as s:
            return _queue_of(s, sender, now, claim=True) if _take_lease(s, sender, owner, now + ttl, now) else None

    def queue(self, sender: str, claim: bool = False) -> SenderQueue:
        """What there is to do for a customer whose lease this instance holds (`claim`: see _queue_of)."""
        with session_scope(self.engine, wait_for_disk=False) as s:
            return _queue_of(s, sender, utcnow(), claim)

    def turn_choice(self, message: PendingMessage) -> TurnChoice:
        """take_menu and was_offered in one transaction, for a message no claiming read covered."""
        with session_scope(self.engine, wait_for_disk=False) as s:
            return _choice_of(s, message, utcnow())

    def finish_turn(self, message_id: str, recipient: str, reply_by: str,
                    bodies: List[Dict[str, Any]]) -> SenderQueue:
        """commit_turn, and in the same transaction what is left to do for the customer, claimed
        (the next message started, its menu and button read: see _queue_of)."""
        now = utcnow()
        with session_scope(self.engine, wait_for_disk=False) as s:
            self._commit_turn(s, message_id, recipient, reply_by, bodies, now)
            return _queue_of(s, recipient, now, claim=True)

    def reply_sent(self, reply_id: int, recipient: str, body: Dict[str, Any], wamid: str, attempts: int) -> None:
        """WhatsApp accepted a queued reply: the send recorded (for its statuses) and the reply
        done, in one transaction (record_send + reply_done)."""
        with session_scope(self.engine, wait_for_disk=False) as s:
            self._record_send(s, recipient, body, "sent", wamid, attempts=attempts)
            self._reply_done(s, reply_id, "sent", wamid)

    def release_if_done(self, sender: str, owner: str) -> bool:
        """Give the customer's lease back; True when nothing of theirs waits to be answered."""
        with session_scope(self.engine, wait_for_disk=False) as s:
            s.execute(_LEASE_GIVE_BACK, {"lease_sender": sender, "lease_owner": owner})
            return s.execute(_ANY_PENDING_OF, {"sender": sender}).first() is None

    def _record_delivery(self, s: Any, status: Status) -> bool:
        known = self._record_status(s, status)
        if status.callback_data:  # a reply of ours: settles one left "sending" by a crash
            known = self._reply_accepted(s, status.callback_data, status.message_id) or known
        return known

    # -- button payloads offered -------------------------------------------------------------

    def save_offered(self, sender: str, payloads: List[str]) -> None:
        self.save_choices(sender, None, payloads)

    def save_choices(self, sender: str, menu: Optional[Dict[str, str]], payloads: List[str]) -> None:
        """A message with choices went out: its buttons' payloads offered, and (unless `menu` is
        None) its numbered menu kept in place of the last one (an empty one: none), in one transaction."""
        now = utcnow()
        with session_scope(self.engine, wait_for_disk=False) as s:
            if menu is not None:
                _save_menu(s, sender, menu, now)
            fresh = list(dict.fromkeys(p[:256] for p in payloads if p))
            if fresh:
                s.execute(_OFFERED_FORGET, {"sender": sender, "payloads": fresh})
                s.execute(_OFFERED_NEW, [{"sender": sender, "payload": p, "offered_at": now} for p in fresh])

    def was_offered(self, sender: str, payload: str, now: Optional[dt.datetime] = None,
                    valid: dt.timedelta = OFFER_VALID) -> bool:
        with session_scope(self.engine) as s:
            return _was_offered(s, sender, payload, now or utcnow(), valid)

    # -- dead letters ---------------------------------------------------------------------------

    def dead_letter(self, message_id: str, reason: str, apology: Callable[[str], Dict[str, Any]]) -> str:
        """Give up on a message: it moves to the dead-letter table, and the apology carrying
        its reference (`apology(reference)`) is queued, in one transaction. Returns the reference."""
        now = utcnow()
        with session_scope(self.engine) as s:
            record = s.execute(select(InboundRecord).where(InboundRecord.message_id == message_id)).scalar_one()
            existing = s.execute(select(DeadLetter).where(DeadLetter.message_id == message_id)).scalar_one_or_none()
            reference = existing.reference if existing else f"CB-{secrets.token_hex(3).upper()}"
            if existing is None:
                s.add(DeadLetter(reference=reference, message_id=message_id, sender=record.sender, reason=reason[:200],
                                 attempts=record.attempts or 0, first_failed_at=record.first_failed_at or now,
                                 dead_at=now))
            else:
                existing.reason, existing.attempts, existing.dead_at, existing.replayed_at = \
                    reason[:200], record.attempts or 0, now, None
            record.state, record.handled_at = "dead", now
            key = f"{message_id}:apology{int(now.timestamp())}"
            if s.execute(select(OutboxRecord.id).where(OutboxRecord.key == key)).first() is None:
                _queue(s, key, message_id, record.sender, record.reply_by, apology(reference), now)
            return reference

    def dead_letters(self, include_replayed: bool = False) -> List[DeadLetterView]:
        with session_scope(self.engine) as s:
            query = select(DeadLetter, InboundRecord.text).join(
                InboundRecord, InboundRecord.message_id == DeadLetter.message_id).order_by(DeadLetter.id)
            if not include_replayed:
                query = query.where(DeadLetter.replayed_at.is_(None))
            return [DeadLetterView(d.reference, d.message_id, d.sender, text, d.reason, d.attempts, d.first_failed_at,
                                   d.dead_at, d.replayed_at) for d, text in s.execute(query)]

    def replay(self, reference: str) -> bool:
        """Put a dead letter's message back in its customer's queue (a running server answers it)."""
        with session_scope(self.engine) as s:
            letter = s.execute(select(DeadLetter).where(DeadLetter.reference == reference)).scalar_one_or_none()
            if letter is None or letter.replayed_at is not None:
                return False
            s.execute(update(InboundRecord).where(InboundRecord.message_id == letter.message_id).values(
                state="pending", attempts=0, next_attempt_at=utcnow(), first_failed_at=None, handled_at=None))
            letter.replayed_at = utcnow()
            return True

    def finish(self, message_id: str, state: str = "done") -> None:
        """Set a message's state directly (operators' tools and tests; turns use commit_turn)."""
        with session_scope(self.engine) as s:
            record = s.execute(select(InboundRecord).where(InboundRecord.message_id == message_id)).scalar_one_or_none()
            if record is not None:
                record.state, record.handled_at = state, utcnow()

    def reply_by_of(self, sender: str) -> str:
        """How replies to this sender are addressed: "to" for a phone number's wa_id, "recipient"
        for a business-scoped user id (as their latest message came)."""
        with session_scope(self.engine) as s:
            latest = s.execute(select(InboundRecord.reply_by).where(InboundRecord.sender == sender)
                               .order_by(InboundRecord.id.desc()).limit(1)).scalar_one_or_none()
            return latest or "to"

    def window_open(self, sender: str, now: Optional[dt.datetime] = None) -> bool:
        """Whether a free-form reply is allowed: the customer wrote within the last 24 hours."""
        with session_scope(self.engine) as s:
            return _is_window_open(s, sender, now or utcnow())

    def record_send(self, recipient: str, body: Dict[str, Any], status: str, wamid: Optional[str] = None,
                    error_code: Optional[int] = None, error_meaning: Optional[str] = None, attempts: int = 1) -> int:
        with session_scope(self.engine) as s:
            return self._record_send(s, recipient, body, status, wamid, error_code, error_meaning, attempts)

    @staticmethod
    def _record_send(s: Any, recipient: str, body: Dict[str, Any], status: str, wamid: Optional[str] = None,
                     error_code: Optional[int] = None, error_meaning: Optional[str] = None, attempts: int = 1) -> int:
        now = utcnow()
        added = s.execute(_SEND_NEW, {"wamid": wamid, "recipient": recipient, "body": json.dumps(body, ensure_ascii=False),
                                      "status": status, "error_code": error_code, "error_meaning": error_meaning,
                                      "attempts": attempts, "created_at": now, "updated_at": now})
        return added.inserted_primary_key[0]

    def record_status(self, status: Status) -> bool:
        """Attach a delivery status to the send it is about; False for a message we never sent."""
        with session_scope(self.engine) as s:
            return self._record_status(s, status)

    @staticmethod
    def _record_status(s: Any, status: Status) -> bool:
        record = s.execute(_SEND_BY_WAMID, {"wamid": status.message_id}).first()
        if record is None:
            return False
        if STATUS_ORDER.get(status.status, 0) <= STATUS_ORDER.get(record.status, 0):
            return True  # a late or repeated receipt ("delivered" after "read"): already known
        s.execute(_SEND_STATUS, {"send_id": record.id, "new_status": status.status, "now": utcnow()})
        if status.errors:
            s.execute(_SEND_ERROR, {"send_id": record.id, "code": status.errors[0].get("code"),
                                    "meaning": str(status.errors[0].get("title") or status.errors[0].get("message")
                                                   or "")[:120]})
        return True

    def record_delivery(self, status: Status) -> bool:
        """record_status and, for a status echoing one of our replies' keys, reply_accepted, in
        one transaction; False when the status is about nothing we sent."""
        with session_scope(self.engine) as s:
            return self._record_delivery(s, status)

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
        with session_scope(self.engine, wait_for_disk=False) as s:
            return _take_lease(s, sender, owner, now + ttl, now)

    def release(self, sender: str, owner: str) -> None:
        with session_scope(self.engine, wait_for_disk=False) as s:
            s.execute(delete(SenderLease).where(SenderLease.sender == sender, SenderLease.owner == owner))

    def senders_waiting(self, older_than: dt.timedelta) -> List[str]:
        """Senders with a message unanswered for a while (an instance died holding it, say)."""
        with session_scope(self.engine) as s:
            return _unanswered_since(s, utcnow() - older_than)

    def senders_kept_waiting(self, older_than: dt.timedelta, stale_sending: dt.timedelta,
                             now: Optional[dt.datetime] = None) -> List[str]:
        """Customers kept waiting for `older_than`: a message unanswered, or a reply due and not
        sent (one left "sending" counts after `stale_sending`). Their worker may be down: one that
        died after committing a turn leaves its message answered and its replies queued."""
        now = now or utcnow()
        with session_scope(self.engine) as s:
            return list(dict.fromkeys(_unanswered_since(s, now - older_than) +
                                      _replies_due(s, now - older_than, now - stale_sending)))

    # -- numbered menus -----------------------------------------------------------------------

    def save_menu(self, sender: str, options: Dict[str, str]) -> None:
        with session_scope(self.engine) as s:
            _save_menu(s, sender, options, utcnow())

    def take_menu(self, sender: str) -> Dict[str, str]:
        """The menu the customer may be answering (valid for their next message only)."""
        with session_scope(self.engine) as s:
            return _take_menu(s, sender, utcnow())
