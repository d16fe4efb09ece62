"""Human handoff: the queue of conversations handed to agents (their accounts and sessions are
cardsystem.accounts, reached as `desk.accounts`).

Everything lives in the card system's database, so any Rasa instance routes a customer's
message to the right place and a restart loses nothing. One method, one short transaction;
every agent action is written to the audit log with the agent as actor.

Configuration (environment):
  CARDCARE_AGENT_HOURS           "09:00-21:00"   when agents answer (local time; "00:00-00:00": always)
  CARDCARE_AGENT_DAYS            "Mon-Sat"       on which days ("Mon-Sun": every day)
  CARDCARE_HANDOFF_WAIT_MINUTES  "15"            a queued chat waiting longer becomes a callback
  CARDCARE_HANDLE_MINUTES        "6"             average chat length, for the expected wait
  CARDCARE_HANDOFF_DISPUTE_PAISE "5000000"       disputes above this amount (₹50,000) go to a person
  CARDCARE_HANDOFF_RETURN_WORD   "bot"           what a waiting customer types to go back to the bot
  CARDCARE_AGENT_SESSION_HOURS   "8"             agent console sessions expire after this
  CARDCARE_AGENT_LOCK_AFTER      "5"             consecutive wrong passwords that lock an account
  CARDCARE_AGENT_LOCK_MINUTES    "15"            for how long
  CARDCARE_LOGIN_ADDRESS_LIMIT   "20"            failed sign-ins from one address that refuse it...
  CARDCARE_LOGIN_ADDRESS_MINUTES "15"            ...within this many minutes

Agents have a role: an `agent` sees the waiting chats and their own, a `supervisor` sees every
chat and every note and may move any chat to a colleague.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import secrets
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from sqlalchemy import func, select, update

from cardsystem import audit
from cardsystem.db import create_schema, get_engine, session_scope
from cardsystem.errors import NotAllowed, NotFound
from cardsystem.formatting import format_date, format_datetime, format_inr, mask_phone, redact_card_numbers
from cardsystem.models import Agent, Base, HandoffMessage, HandoffTicket
from cardsystem.accounts import AgentAccounts, AgentView, agent_view
from cardsystem.service import CardSystem

OPEN_STATES = ("queued", "active")
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SUPERVISOR_HISTORY = 50  # finished chats a supervisor's queue lists besides the open ones

class Forbidden(NotAllowed):
    """A chat (or a file sent in one) that is not this agent's to see (the console answers 403)."""


@dataclass(frozen=True)
class HandoffSettings:
    opens: dt.time = dt.time(9, 0)
    closes: dt.time = dt.time(21, 0)
    days: Tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    wait_limit: dt.timedelta = dt.timedelta(minutes=15)
    handle_minutes: int = 6
    dispute_paise: int = 50_000_00
    return_word: str = "bot"
    session_hours: int = 8
    lock_after: int = 5
    lock_for: dt.timedelta = dt.timedelta(minutes=15)
    address_limit: int = 20
    address_window: dt.timedelta = dt.timedelta(minutes=15)

    @classmethod
    def from_env(cls) -> "HandoffSettings":
        env = os.environ
        opens, closes = (env.get("CARDCARE_AGENT_HOURS") or "09:00-21:00").split("-", 1)
        first, _, last = (env.get("CARDCARE_AGENT_DAYS") or "Mon-Sat").lower().partition("-")
        start, end = DAYS.index(first.strip()[:3]), DAYS.index((last or first).strip()[:3])
        return cls(
            opens=dt.time.fromisoformat(opens.strip()), closes=dt.time.fromisoformat(closes.strip()),
            days=tuple(range(start, end + 1)) if start <= end else tuple(range(start, 7)) + tuple(range(0, end + 1)),
            wait_limit=dt.timedelta(minutes=int(env.get("CARDCARE_HANDOFF_WAIT_MINUTES") or 15)),
            handle_minutes=int(env.get("CARDCARE_HANDLE_MINUTES") or 6),
            dispute_paise=int(env.get("CARDCARE_HANDOFF_DISPUTE_PAISE") or 50_000_00),
            return_word=(env.get("CARDCARE_HANDOFF_RETURN_WORD") or "bot").strip().lower(),
            session_hours=int(env.get("CARDCARE_AGENT_SESSION_HOURS") or 8),
            lock_after=int(env.get("CARDCARE_AGENT_LOCK_AFTER") or 5),
            lock_for=dt.timedelta(minutes=int(env.get("CARDCARE_AGENT_LOCK_MINUTES") or 15)),
            address_limit=int(env.get("CARDCARE_LOGIN_ADDRESS_LIMIT") or 20),
            address_window=dt.timedelta(minutes=int(env.get("CARDCARE_LOGIN_ADDRESS_MINUTES") or 15)),
        )


@dataclass(frozen=True)
class TicketView:
    reference: str
    sender: str
    customer_id: Optional[int]
    card_last4: Optional[str]
    reason: str
    status: str
    agent: Optional[AgentView]
    summary: str
    created_at: dt.datetime
    claimed_at: Optional[dt.datetime]
    closed_at: Optional[dt.datetime]
    resolution: Optional[str]
    rating: Optional[int]
    callback_reference: Optional[str]


@dataclass(frozen=True)
class Availability:
    open: bool
    agents_online: int
    why_not: Optional[str] = None  # "closed" | "no_agents"


@dataclass(frozen=True)
class QueuePlace:
    position: int
    wait_minutes: int


class HandoffDesk:
    """The agents' desk: tickets, queue, agents and console sessions."""

    def __init__(self, system: CardSystem, settings: Optional[HandoffSettings] = None,
                 db_url: Optional[str] = None) -> None:
        self.system = system  # the card system's public calls only: now, cards_of, request_callback
        # its own database (agents, sessions, tickets, their audit): CARDCARE_DESK_DB_URL, else the card system's
        self.engine = get_engine(db_url or os.environ.get("CARDCARE_DESK_DB_URL") or system.settings.db_url)
        self.settings = settings or HandoffSettings.from_env()
        create_schema(self.engine, Base.metadata)  # databases made before handoff existed gain its tables
        self.accounts = AgentAccounts(self.engine, self.settings, self.now)

    def now(self) -> dt.datetime:
        return self.system.now()

    # -- agents and sessions ------------------------------------------------------------------

    # -- availability and the queue -----------------------------------------------------------

    def availability(self) -> Availability:
        now = self.now()
        opens, closes = self.settings.opens, self.settings.closes
        in_hours = opens == closes or opens <= now.time() < closes  # "00:00-00:00": round the clock
        if now.weekday() not in self.settings.days or not in_hours:
            return Availability(False, 0, "closed")
        online = sum(1 for a in self.accounts.agents() if a.online)
        return Availability(online > 0, online, None if online else "no_agents")

    def place(self, reference: str) -> QueuePlace:
        """Where a queued chat stands and about how long until an agent joins."""
        with session_scope(self.engine) as s:
            ticket = self._ticket(s, reference)
            ahead = s.execute(select(func.count()).select_from(HandoffTicket).where(
                HandoffTicket.status == "queued", HandoffTicket.id < ticket.id)).scalar_one()
        position = ahead + 1
        online = max(1, self.availability().agents_online)
        return QueuePlace(position, max(1, math.ceil(position * self.settings.handle_minutes / online)))

    def open_ticket(self, sender: str, customer_id: Optional[int], card_last4: Optional[str],
                    reason: str, context: Dict[str, Any], transcript: List[Tuple[str, str]], summary: str) -> TicketView:
        """Queue a conversation for an agent (the same ticket if this customer is already waiting)."""
        with session_scope(self.engine) as s:
            existing = self._open_for(s, sender)
            if existing is not None:
                return self._view(s, existing)
            now = self.now()
            ticket = HandoffTicket(reference=self._reference(now), sender=sender,
                                   customer_id=customer_id, card_last4=card_last4, reason=reason[:40], status="queued",
                                   summary=summary, context=json.dumps(context, ensure_ascii=False, default=str),
                                   created_at=now, last_notice_at=now)
            s.add(ticket)
            s.flush()
            for author, text in transcript:  # a card number typed in the chat never reaches the console
                s.add(HandoffMessage(ticket_id=ticket.id, author=author, text=redact_card_numbers(text), created_at=now))
            audit.record(s, "handoff", customer_id, "handoff", ticket.reference, {"reason": reason})
            return self._view(s, ticket)

    def open_ticket_for(self, sender: str) -> Optional[TicketView]:
        """The queued or active ticket a customer's messages belong to (None: the bot answers)."""
        with session_scope(self.engine) as s:
            ticket = self._open_for(s, sender)
            return self._view(s, ticket) if ticket else None

    def customer_said(self, reference: str, text: str, attachment: Optional[Dict[str, Any]] = None) -> bool:
        """Add the customer's message to the ticket; True when they should hear where they stand
        (a queued ticket whose last notice is older than two minutes)."""
        with session_scope(self.engine) as s:
            ticket = self._ticket(s, reference)
            now = self.now()
            s.add(HandoffMessage(ticket_id=ticket.id, author="customer", text=redact_card_numbers(text or ""),
                                 attachment=json.dumps(attachment) if attachment else None, created_at=now))
            if ticket.status == "queued" and (ticket.last_notice_at is None
                                              or now - ticket.last_notice_at > dt.timedelta(minutes=2)):
                ticket.last_notice_at = now
                return True
            return False

    def bot_said(self, reference: str, text: str) -> None:
        with session_scope(self.engine) as s:
            s.add(HandoffMessage(ticket_id=self._ticket(s, reference).id, author="system", text=text,
                                 created_at=self.now()))

    def return_to_bot(self, reference: str) -> TicketView:
        """The waiting customer chose the bot again (typed the return word)."""
        with session_scope(self.engine) as s:
            ticket = self._ticket(s, reference)
            if ticket.status != "queued":
                raise NotAllowed("refused", "only a chat still waiting in the queue can go back to the bot")
            ticket.status, ticket.closed_at = "returned", self.now()
            audit.record(s, "handoff_returned", ticket.customer_id, "handoff", ticket.reference, {},
                               actor="customer")
            return self._view(s, ticket)

    def queue(self, agent: AgentView) -> List[Dict[str, Any]]:
        """The chats an agent may take or has, oldest first, with how long each has waited; a
        supervisor sees every open chat and, after them, the latest finished ones."""
        with session_scope(self.engine) as s:
            now = self.now()
            rows = s.execute(select(HandoffTicket).where(HandoffTicket.status.in_(OPEN_STATES))
                             .order_by(HandoffTicket.id)).scalars().all()
            result = []
            for position, ticket in enumerate([t for t in rows if t.status == "queued"], 1):
                result.append(self._queue_row(s, ticket, now, position))
            result += [self._queue_row(s, t, now, None) for t in rows
                       if t.status == "active" and (agent.supervisor or t.agent_id == agent.id)]
            if agent.supervisor:
                finished = s.execute(select(HandoffTicket).where(HandoffTicket.status.notin_(OPEN_STATES))
                                     .order_by(HandoffTicket.id.desc()).limit(SUPERVISOR_HISTORY)).scalars()
                result += [self._queue_row(s, t, now, None) for t in finished]
            return result

    def expire_waiting(self) -> List[TicketView]:
        """Chats queued past the wait limit become callbacks (with a promised time)."""
        cutoff = self.now() - self.settings.wait_limit
        with session_scope(self.engine) as s:
            stale = s.execute(select(HandoffTicket.reference).where(HandoffTicket.status == "queued",
                                                                    HandoffTicket.created_at < cutoff)).scalars().all()
        return [view for view in (self.to_callback(reference, "no agent free in time") for reference in stale) if view]

    def to_callback(self, reference: str, why: str) -> Optional[TicketView]:
        """A waiting chat becomes a callback request (None when an agent took it meanwhile)."""
        with session_scope(self.engine) as s:
            ticket = self._ticket(s, reference)
            won = s.execute(update(HandoffTicket).where(HandoffTicket.id == ticket.id, HandoffTicket.status == "queued")
                            .values(status="callback", closed_at=self.now())
                            .execution_options(synchronize_session=False)).rowcount
            if not won:
                return None
            customer_id = ticket.customer_id
        callback = self.system.request_callback(customer_id, why) if customer_id else None
        with session_scope(self.engine) as s:
            ticket = self._ticket(s, reference)
            ticket.callback_reference = callback.reference if callback else None
            audit.record(s, "handoff_to_callback", customer_id, "handoff", ticket.reference,
                               {"callback": ticket.callback_reference, "why": why}, actor="system")
            return self._view(s, ticket)

    # -- what agents do -------------------------------------------------------------------------

    def ticket(self, reference: str, agent: AgentView) -> Dict[str, Any]:
        """Everything an agent sees about one chat: summary, context, transcript, notes, cards."""
        with session_scope(self.engine) as s:
            ticket = self._readable(s, reference, agent)
            audit.record(s, "agent_view", ticket.customer_id, "handoff", ticket.reference, {},
                               actor=f"agent:{agent.username}")
            view = self._view(s, ticket)
            messages = [self._message(s, m) for m in ticket.messages if self._shown(m, agent)]
            context = json.loads(ticket.context)
        cards = []
        if view.customer_id:
            for card in self.system.cards_of(view.customer_id):
                cards.append({"last4": card.last4, "product": card.product, "status": card.status,
                              "outstanding": format_inr(card.outstanding_paise),
                              "minimum_due": format_inr(card.minimum_due_paise),
                              "due_date": format_date(card.due_date) if card.due_date else "-",
                              "available": format_inr(card.available_limit_paise),
                              "limit": format_inr(card.credit_limit_paise)})
        data = dataclasses.asdict(view)
        data.update({"masked_sender": mask_phone(view.sender), "context": context, "messages": messages,
                     "cards": cards, "customer_name": context.get("customer_name")})
        data.pop("sender")
        return data

    def messages_since(self, reference: str, after_id: int, agent: Optional[AgentView] = None) -> List[Dict[str, Any]]:
        """The transcript after one entry: as an agent may see it (their chats, their own notes),
        or whole for the desk's own use (no agent)."""
        with session_scope(self.engine) as s:
            ticket = self._readable(s, reference, agent) if agent else self._ticket(s, reference)
            rows = s.execute(select(HandoffMessage).where(HandoffMessage.ticket_id == ticket.id,
                                                          HandoffMessage.id > after_id)
                             .order_by(HandoffMessage.id)).scalars()
            return [self._message(s, m) for m in rows if not agent or self._shown(m, agent)]

    def attachment(self, key: str, agent: AgentView) -> Dict[str, Any]:
        """What a customer's stored file was sent as (type, name), for an agent who may read a chat
        it was sent in; the file's key alone opens nothing."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(HandoffMessage).where(HandoffMessage.attachment.contains(key, autoescape=True))
                             ).scalars().all()
            sent = [(m, json.loads(m.attachment)) for m in rows]
            sent = [(m, attachment) for m, attachment in sent if attachment.get("stored") == key]
            if not sent:
                raise NotFound("unknown_file", "No such file.")
            for message, attachment in sent:
                ticket = s.get(HandoffTicket, message.ticket_id)
                if self._may_read(ticket, agent):
                    audit.record(s, "agent_file", ticket.customer_id, "handoff", ticket.reference,
                                       {"file": key[:16]}, actor=f"agent:{agent.username}")
                    return attachment
            raise Forbidden("not_yours", "This file belongs to a chat you cannot open.")

    def claim(self, reference: str, agent: AgentView) -> TicketView:
        with session_scope(self.engine) as s:
            ticket = self._readable(s, reference, agent)
            # one conditional update: of two agents claiming at once (on any instance), one wins
            won = s.execute(update(HandoffTicket).where(HandoffTicket.id == ticket.id, HandoffTicket.status == "queued")
                            .values(status="active", agent_id=agent.id, claimed_at=self.now())
                            .execution_options(synchronize_session=False)).rowcount
            s.refresh(ticket)
            if not won:
                raise NotAllowed("refused", "this chat is no longer waiting" if ticket.status != "active"
                                 else f"{self._first_name(s, ticket.agent_id)} has this chat already")
            s.add(HandoffMessage(ticket_id=ticket.id, author="system", text=f"{agent.first_name} joined the chat.",
                                 created_at=self.now()))
            audit.record(s, "agent_claim", ticket.customer_id, "handoff", ticket.reference, {},
                               actor=f"agent:{agent.username}")
            return self._view(s, ticket)

    def agent_said(self, reference: str, agent: AgentView, text: str) -> TicketView:
        text = (text or "").strip()
        if not text:
            raise NotAllowed("refused", "an empty reply was not sent")
        if len(text) > 4096:
            raise NotAllowed("refused", "a reply is at most 4,096 characters")
        with session_scope(self.engine) as s:
            ticket = self._mine(s, reference, agent)
            s.add(HandoffMessage(ticket_id=ticket.id, author="agent", agent_id=agent.id, text=text, created_at=self.now()))
            audit.record(s, "agent_reply", ticket.customer_id, "handoff", ticket.reference,
                               {"characters": len(text)}, actor=f"agent:{agent.username}")
            return self._view(s, ticket)

    def note(self, reference: str, agent: AgentView, text: str) -> None:
        text = (text or "").strip()
        if not text:
            raise NotAllowed("refused", "an empty note was not saved")
        with session_scope(self.engine) as s:
            ticket = self._readable(s, reference, agent)
            s.add(HandoffMessage(ticket_id=ticket.id, author="note", agent_id=agent.id, text=text[:4000],
                                 created_at=self.now()))
            audit.record(s, "agent_note", ticket.customer_id, "handoff", ticket.reference, {},
                               actor=f"agent:{agent.username}")

    def transfer(self, reference: str, agent: AgentView, to_username: str) -> Tuple[TicketView, AgentView]:
        """Hand an active chat to a colleague: an agent their own, a supervisor anyone's."""
        with session_scope(self.engine) as s:
            ticket = self._readable(s, reference, agent) if agent.supervisor else self._mine(s, reference, agent)
            if ticket.status != "active":
                raise NotAllowed("refused", "only a chat someone has can be transferred")
            target = s.execute(select(Agent).where(Agent.username == (to_username or "").strip().lower(),
                                                   Agent.active.is_(True))).scalar_one_or_none()
            if target is None or target.id == ticket.agent_id:
                raise NotAllowed("refused", "choose another active agent")
            ticket.agent_id = target.id
            s.add(HandoffMessage(ticket_id=ticket.id, author="system",
                                 text=f"{agent.first_name} transferred the chat to {target.first_name}.",
                                 created_at=self.now()))
            audit.record(s, "agent_transfer", ticket.customer_id, "handoff", ticket.reference,
                               {"to": target.username}, actor=f"agent:{agent.username}")
            return self._view(s, ticket), agent_view(target)

    def close(self, reference: str, agent: AgentView, resolution: str) -> TicketView:
        resolution = (resolution or "").strip()
        if not resolution:
            raise NotAllowed("refused", "write a resolution note before closing")
        with session_scope(self.engine) as s:
            ticket = self._mine(s, reference, agent)
            ticket.status, ticket.closed_at, ticket.resolution = "closed", self.now(), resolution[:2000]
            s.add(HandoffMessage(ticket_id=ticket.id, author="system", text=f"{agent.first_name} closed the chat.",
                                 created_at=self.now()))
            audit.record(s, "agent_close", ticket.customer_id, "handoff", ticket.reference, {},
                               actor=f"agent:{agent.username}")
            return self._view(s, ticket)

    def rate(self, sender: str, rating: int, comment: Optional[str] = None) -> Optional[TicketView]:
        """Store the customer's rating (1-5) and comment on their latest closed chat."""
        if not 1 <= int(rating) <= 5:
            raise NotAllowed("refused", "a rating is 1 to 5")
        with session_scope(self.engine) as s:
            ticket = s.execute(select(HandoffTicket).where(HandoffTicket.sender == sender,
                                                           HandoffTicket.status == "closed")
                               .order_by(HandoffTicket.id.desc())).scalars().first()
            if ticket is None:
                return None
            ticket.rating = int(rating)
            if comment:
                ticket.rating_comment = comment.strip()[:1000]
            audit.record(s, "handoff_rating", ticket.customer_id, "handoff", ticket.reference,
                               {"rating": int(rating), "comment": bool(comment)}, actor="customer")
            return self._view(s, ticket)

    def latest(self, sender: str) -> Optional[TicketView]:
        with session_scope(self.engine) as s:
            ticket = s.execute(select(HandoffTicket).where(HandoffTicket.sender == sender)
                               .order_by(HandoffTicket.id.desc())).scalars().first()
            return self._view(s, ticket) if ticket else None

    # -- helpers ----------------------------------------------------------------------------------

    def _reference(self, now: dt.datetime) -> str:
        return f"HO{now:%y%m%d}" + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(4))

    @staticmethod
    def _open_for(s, sender: str) -> Optional[HandoffTicket]:
        return s.execute(select(HandoffTicket).where(HandoffTicket.sender == sender,
                                                     HandoffTicket.status.in_(OPEN_STATES))
                         .order_by(HandoffTicket.id.desc())).scalars().first()

    @staticmethod
    def _ticket(s, reference: str) -> HandoffTicket:
        ticket = s.execute(select(HandoffTicket).where(
            HandoffTicket.reference == str(reference or "").strip().upper())).scalar_one_or_none()
        if ticket is None:
            raise NotFound("unknown_ticket", "No such chat.")
        return ticket

    def _readable(self, s, reference: str, agent: AgentView) -> HandoffTicket:
        ticket = self._ticket(s, reference)
        if not self._may_read(ticket, agent):
            raise Forbidden("not_yours", "This chat is not yours to open.")
        return ticket

    @staticmethod
    def _may_read(ticket: HandoffTicket, agent: AgentView) -> bool:
        """A supervisor reads every chat; an agent the waiting ones (to take one) and their own."""
        return agent.supervisor or ticket.status == "queued" or ticket.agent_id == agent.id

    @staticmethod
    def _shown(message: HandoffMessage, agent: AgentView) -> bool:
        """Private notes are for their author (and supervisors); everything else for whoever reads the chat."""
        return message.author != "note" or agent.supervisor or message.agent_id == agent.id

    def _mine(self, s, reference: str, agent: AgentView) -> HandoffTicket:
        ticket = self._readable(s, reference, agent)
        if ticket.status != "active" or ticket.agent_id != agent.id:
            raise NotAllowed("refused", "claim this chat first" if ticket.status == "queued" else "this chat is not yours")
        return ticket

    @staticmethod
    def _first_name(s, agent_id: Optional[int]) -> Optional[str]:
        agent = s.get(Agent, agent_id) if agent_id else None
        return agent.first_name if agent else None

    def _view(self, s, t: HandoffTicket) -> TicketView:
        agent = s.get(Agent, t.agent_id) if t.agent_id else None
        return TicketView(t.reference, t.sender, t.customer_id, t.card_last4, t.reason, t.status,
                          agent_view(agent) if agent else None, t.summary,
                          t.created_at, t.claimed_at, t.closed_at, t.resolution, t.rating, t.callback_reference)

    def _message(self, s, m: HandoffMessage) -> Dict[str, Any]:
        """One transcript entry as the console shows it (the same whole or polled)."""
        return {"id": m.id, "author": m.author, "text": m.text, "at": m.created_at.isoformat(timespec="seconds"),
                "agent": self._first_name(s, m.agent_id),
                "attachment": json.loads(m.attachment) if m.attachment else None}

    def _queue_row(self, s, t: HandoffTicket, now: dt.datetime, position: Optional[int]) -> Dict[str, Any]:
        context = json.loads(t.context)
        return {"reference": t.reference, "status": t.status, "position": position, "reason": t.reason,
                "customer": context.get("customer_name") or "Unregistered", "masked_sender": mask_phone(t.sender),
                "card_last4": t.card_last4, "waiting_seconds": int((now - t.created_at).total_seconds()),
                "agent": self._first_name(s, t.agent_id), "agent_id": t.agent_id,
                "created_at": format_datetime(t.created_at)}
