"""SQLAlchemy models of the card system.

Money is integer paise everywhere (`*_paise` columns); no float touches an amount.
A card is stored by its last four digits only: the full number never enters this system.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    BigInteger,
    String,
    Text,
    UniqueConstraint,
    Index,
)
from sqlalchemy.orm import declarative_base, relationship

Base = declarative_base()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Customer(Base):
    __tablename__ = "customers"

    id = Column(Integer, primary_key=True)
    phone = Column(String(16), nullable=False, unique=True)  # E.164 digits, no "+"
    name = Column(String(120), nullable=False)
    date_of_birth = Column(Date, nullable=False)
    email = Column(String(200), nullable=False)
    language = Column(String(8), nullable=False, default="en")
    address = Column(Text, nullable=True)  # postal address (changed by a resolved address_change request)
    whatsapp_opt_in = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    cards = relationship("Card", back_populates="customer", order_by="Card.id")


class Card(Base):
    __tablename__ = "cards"

    id = Column(Integer, primary_key=True)
    customer_id = Column(Integer, ForeignKey("customers.id"), nullable=False, index=True)
    last4 = Column(String(4), nullable=False)
    product = Column(String(60), nullable=False)
    network = Column(String(20), nullable=False)
    status = Column(String(16), nullable=False, default="active")  # active | blocked | closed
    credit_limit_paise = Column(BigInteger, nullable=False)
    available_limit_paise = Column(BigInteger, nullable=False)
    outstanding_paise = Column(BigInteger, nullable=False, default=0)
    minimum_due_paise = Column(BigInteger, nullable=False, default=0)
    due_date = Column(Date, nullable=True)
    statement_day = Column(Integer, nullable=False)
    expiry_month = Column(Integer, nullable=False)
    expiry_year = Column(Integer, nullable=False)
    blocked_at = Column(DateTime, nullable=True)
    block_reason = Column(String(40), nullable=True)

    customer = relationship("Customer", back_populates="cards")
    __table_args__ = (UniqueConstraint("customer_id", "last4", name="uq_card_customer_last4"),)


class Transaction(Base):
    __tablename__ = "transactions"

    id = Column(Integer, primary_key=True)
    reference = Column(String(16), nullable=False, unique=True)  # public id shown to customers
    card_id = Column(Integer, ForeignKey("cards.id"), nullable=False)
    posted_on = Column(Date, nullable=False)
    merchant = Column(String(80), nullable=False)
    amount_paise = Column(BigInteger, nullable=False)  # > 0 debit, < 0 credit (payment, refund)
    category = Column(String(30), nullable=False)
    status = Column(String(16), nullable=False, default="posted")  # posted | pending | reversed
    posted_at = Column(DateTime, nullable=True)  # when it was recorded (UTC), for payments made since a reminder

    __table_args__ = (Index("ix_txn_card_date", "card_id", "posted_on"),)


class Statement(Base):
    __tablename__ = "statements"

    id = Column(Integer, primary_key=True)
    card_id = Column(Integer, ForeignKey("cards.id"), nullable=False)
    period = Column(String(7), nullable=False)  # "YYYY-MM": the month the statement was generated
    period_start = Column(Date, nullable=False)
    period_end = Column(Date, nullable=False)
    opening_balance_paise = Column(BigInteger, nullable=False)
    closing_balance_paise = Column(BigInteger, nullable=False)
    minimum_due_paise = Column(BigInteger, nullable=False)
    due_date = Column(Date, nullable=False)

    __table_args__ = (UniqueConstraint("card_id", "period", name="uq_statement_card_period"),)


class RewardLot(Base):
    """Points earned in one batch; redemptions consume the soonest-expiring lots first."""

    __tablename__ = "reward_lots"

    id = Column(Integer, primary_key=True)
    customer_id = Column(Integer, ForeignKey("customers.id"), nullable=False, index=True)
    earned_on = Column(Date, nullable=False)
    expires_on = Column(Date, nullable=False)
    points = Column(Integer, nullable=False)
    remaining = Column(Integer, nullable=False)
    description = Column(String(120), nullable=False)


class RewardItem(Base):
    __tablename__ = "reward_catalogue"

    id = Column(Integer, primary_key=True)
    code = Column(String(20), nullable=False, unique=True)
    name = Column(String(60), nullable=False)
    description = Column(String(120), nullable=False)
    points_cost = Column(Integer, nullable=False)
    active = Column(Boolean, nullable=False, default=True)


class Redemption(Base):
    __tablename__ = "redemptions"

    id = Column(Integer, primary_key=True)
    reference = Column(String(20), nullable=False, unique=True)
    customer_id = Column(Integer, ForeignKey("customers.id"), nullable=False, index=True)
    item_id = Column(Integer, ForeignKey("reward_catalogue.id"), nullable=False)
    points = Column(Integer, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)


class ServiceRequest(Base):
    __tablename__ = "service_requests"

    id = Column(Integer, primary_key=True)
    reference = Column(String(20), nullable=False, unique=True)
    customer_id = Column(Integer, ForeignKey("customers.id"), nullable=False, index=True)
    card_id = Column(Integer, ForeignKey("cards.id"), nullable=True)
    kind = Column(String(20), nullable=False)  # dispute | block_card | limit_increase | callback
    status = Column(String(20), nullable=False, default="open")
    reason = Column(String(40), nullable=True)
    details = Column(Text, nullable=True)
    transaction_id = Column(Integer, ForeignKey("transactions.id"), nullable=True)
    amount_paise = Column(BigInteger, nullable=True)
    promised_by = Column(DateTime, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    # added with the service desk (nullable, so create_schema adds them to older databases)
    assigned_to = Column(String(60), nullable=True, index=True)  # an agent's username (accounts may live apart)
    needs = Column(Text, nullable=True)            # documents the desk asked the customer for
    resolution = Column(Text, nullable=True)       # the resolution, or the reason of a rejection
    first_promised_by = Column(DateTime, nullable=True)  # the promise made when raised ("resolved in time")
    paused_days = Column(Integer, nullable=True)   # working days left when the clock stopped for documents
    breaches = Column(Integer, nullable=True)      # times the delay job found it late (0 or NULL: never)
    escalation_level = Column(Integer, nullable=True)  # rung of the escalation ladder (NULL: not escalated)
    closed_at = Column(DateTime, nullable=True)
    delay_reason = Column(String(300), nullable=True)  # what the desk tells the customer if it runs late

    attachments = relationship("Attachment", order_by="Attachment.id")
    history = relationship("StatusChange", order_by="StatusChange.id")


class Attachment(Base):
    __tablename__ = "service_request_attachments"

    id = Column(Integer, primary_key=True)
    service_request_id = Column(Integer, ForeignKey("service_requests.id"), nullable=False)
    media_id = Column(String(128), nullable=False)
    mime_type = Column(String(80), nullable=True)
    filename = Column(String(200), nullable=True)
    caption = Column(String(500), nullable=True)
    stored_as = Column(String(100), nullable=True)  # key of the copy the channel fetched (media ids expire)
    sha256 = Column(String(64), nullable=True)


class StatusChange(Base):
    __tablename__ = "service_request_history"

    id = Column(Integer, primary_key=True)
    service_request_id = Column(Integer, ForeignKey("service_requests.id"), nullable=False)
    status = Column(String(20), nullable=False)
    note = Column(String(300), nullable=True)
    at = Column(DateTime, nullable=False, default=utcnow)
    actor = Column(String(60), nullable=True)   # bot, agent:<username>, api:<client>, sla, customer
    event = Column(String(20), nullable=True)   # status | documents | delay | escalation | feedback | assigned


class CustomerNotice(Base):
    """Something the bank tells a customer first (a request's status changed, it is late, it was
    escalated, here is the proof): written in the same transaction as the change it tells, then
    delivered by the channel (WhatsApp) and the mailer (e-mail), each at most once (`key`)."""

    __tablename__ = "customer_notices"

    id = Column(Integer, primary_key=True)
    key = Column(String(120), nullable=False, unique=True)   # <reference>:<event id>:<medium>
    medium = Column(String(10), nullable=False)              # whatsapp | email
    customer_id = Column(Integer, ForeignKey("customers.id"), nullable=False, index=True)
    address = Column(String(200), nullable=False)            # the WhatsApp number or the e-mail address
    reference = Column(String(20), nullable=True, index=True)
    subject = Column(String(200), nullable=True)
    text = Column(Text, nullable=False)
    document = Column(Text, nullable=True)                   # JSON {"path", "filename", "caption"}
    state = Column(String(10), nullable=False, index=True)   # pending | sending | held | sent | failed | superseded
    attempts = Column(Integer, nullable=False, default=0)
    error = Column(String(200), nullable=True)
    created_at = Column(DateTime, nullable=False)
    claimed_at = Column(DateTime, nullable=True)             # taken by a sender, or last looked at while held
    sent_at = Column(DateTime, nullable=True)
    # added with the bank's own messages (issue 11; nullable, so older databases get them)
    kind = Column(String(20), nullable=True)        # payment_due | payment_received | statement_ready | card_blocked |
                                                    # NULL: a service request's news (request_update)
    card_id = Column(Integer, nullable=True)
    facts = Column(Text, nullable=True)             # JSON: what the template is filled with (amounts, dates)
    not_before = Column(DateTime, nullable=True)    # quiet hours: not taken before this (UTC)
    expires_at = Column(DateTime, nullable=True)    # news that is stale after this (a reminder after its due date)

    __table_args__ = (Index("ix_notice_card_kind", "card_id", "kind"),)


class DeskAlert(Base):
    """A message to the service desk in the console: a request is late, or escalated to a role."""

    __tablename__ = "desk_alerts"

    id = Column(Integer, primary_key=True)
    key = Column(String(120), nullable=False, unique=True)   # one alert per request, breach and recipient
    reference = Column(String(20), nullable=False, index=True)
    username = Column(String(60), nullable=True, index=True)  # one person (an agent's username), or
    role = Column(String(20), nullable=True)                  # everyone with this role
    text = Column(Text, nullable=False)
    created_at = Column(DateTime, nullable=False)
    read_at = Column(DateTime, nullable=True)


class MessageSend(Base):
    """Every message the bank sent first, as handed to WhatsApp: what it was (a template of a
    category, or a free-form message inside the customer's window), what WhatsApp charges for it
    (the rate of its category and country when sent, in 1/10000 of a rupee, and the SMS rate it
    replaces), and what became of it. One per notice (`notice_key`): a retry never counts twice."""

    __tablename__ = "message_sends"

    id = Column(Integer, primary_key=True)
    notice_key = Column(String(120), nullable=False, unique=True)
    customer_id = Column(Integer, nullable=False, index=True)
    card_id = Column(Integer, nullable=True)
    kind = Column(String(20), nullable=False)           # payment_due | payment_received | ... | request_update
    via = Column(String(10), nullable=False)            # template | text (inside the 24-hour window)
    template = Column(String(80), nullable=True)
    category = Column(String(20), nullable=False)       # utility | marketing | authentication | service
    country = Column(String(4), nullable=False)
    rate_e4 = Column(Integer, nullable=False)           # WhatsApp's rate, 1/10000 INR (0.1150 -> 1150)
    sms_rate_e4 = Column(Integer, nullable=False)
    state = Column(String(10), nullable=False, index=True)  # queued | sent | delivered | read | failed
    wamid = Column(String(256), nullable=True, index=True)
    error_code = Column(Integer, nullable=True)
    error = Column(String(200), nullable=True)
    queued_at = Column(DateTime, nullable=False, index=True)
    sent_at = Column(DateTime, nullable=True)
    delivered_at = Column(DateTime, nullable=True)
    read_at = Column(DateTime, nullable=True)
    failed_at = Column(DateTime, nullable=True)


class MessageTemplate(Base):
    """A template's approval as Meta last reported it (submit, sync, or its status webhook)."""

    __tablename__ = "message_templates"

    name = Column(String(512), primary_key=True)
    language = Column(String(8), primary_key=True)
    category = Column(String(20), nullable=False)
    status = Column(String(20), nullable=False)          # PENDING | APPROVED | REJECTED | PAUSED | DISABLED ...
    meta_id = Column(String(40), nullable=True)
    content_hash = Column(String(16), nullable=False)     # the text that was submitted
    reason = Column(String(200), nullable=True)
    submitted_at = Column(DateTime, nullable=True)
    updated_at = Column(DateTime, nullable=False)


class PaymentLinkUse(Base):
    """A payment link that was used: its nonce, once (a second use is refused)."""

    __tablename__ = "payment_link_uses"

    nonce = Column(String(40), primary_key=True)
    card_id = Column(Integer, nullable=False)
    amount_paise = Column(BigInteger, nullable=False)
    used_at = Column(DateTime, nullable=False)


class MessagingConsent(Base):
    """Whether a WhatsApp number agreed to messages the bank sends first (reminders, updates).

    Keyed by the number, not the customer: a number that is not (yet) a customer can say STOP too.
    The history of changes is in the audit log.
    """

    __tablename__ = "messaging_consent"

    phone = Column(String(20), primary_key=True)
    opted_in = Column(Boolean, nullable=False)
    source = Column(String(40), nullable=False)  # e.g. whatsapp:STOP, whatsapp:START, signup
    changed_at = Column(DateTime, nullable=False, default=utcnow)
    # a number WhatsApp could not reach (131026) or held back (131049): not tried again blindly
    paused_until = Column(DateTime, nullable=True)
    pause_error = Column(String(120), nullable=True)


class AuditEntry(Base):
    """Every change the bot (or an agent) makes, with masked details only."""

    __tablename__ = "audit_log"

    id = Column(Integer, primary_key=True)
    at = Column(DateTime, nullable=False, default=utcnow)
    actor = Column(String(60), nullable=False)
    action = Column(String(60), nullable=False)
    # no foreign key: the handoff desk may keep its own database (CARDCARE_DESK_DB_URL), audit included
    customer_id = Column(Integer, nullable=True, index=True)
    entity = Column(String(40), nullable=False)
    entity_id = Column(String(40), nullable=False)
    details = Column(Text, nullable=True)


# -- human handoff: agents, their sessions, tickets and what was said ----------------------------

class Agent(Base):
    """A bank employee who answers handed-off chats in the agent console."""

    __tablename__ = "agents"

    id = Column(Integer, primary_key=True)
    username = Column(String(60), nullable=False, unique=True)
    first_name = Column(String(60), nullable=False)
    password_hash = Column(String(255), nullable=False)  # scrypt, salted (see cardsystem.handoff)
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False)
    last_seen_at = Column(DateTime, nullable=True)  # the console polls: recent means online
    # added later: nullable, so create_schema adds them to older databases (a NULL role is "agent")
    role = Column(String(12), nullable=True)              # agent | supervisor
    failed_logins = Column(Integer, nullable=True)        # consecutive wrong passwords since the last success
    locked_until = Column(DateTime, nullable=True)


class LoginFailure(Base):
    """A failed console sign-in, by client address: counted to refuse an address that keeps guessing.
    Only the recent ones are kept (the audit log has them all)."""

    __tablename__ = "agent_login_failures"

    id = Column(Integer, primary_key=True)
    at = Column(DateTime, nullable=False, index=True)
    address = Column(String(45), nullable=False, index=True)
    username = Column(String(60), nullable=False)


class AgentSession(Base):
    __tablename__ = "agent_sessions"

    id = Column(Integer, primary_key=True)
    token_hash = Column(String(64), nullable=False, unique=True)  # SHA-256 of the cookie; never the token
    agent_id = Column(Integer, ForeignKey("agents.id"), nullable=False, index=True)
    csrf_token = Column(String(64), nullable=False)
    created_at = Column(DateTime, nullable=False)
    expires_at = Column(DateTime, nullable=False)


class HandoffTicket(Base):
    """A conversation handed to people: queued -> active -> closed (or callback / back to the bot)."""

    __tablename__ = "handoff_tickets"

    id = Column(Integer, primary_key=True)
    reference = Column(String(20), nullable=False, unique=True)
    sender = Column(String(160), nullable=False, index=True)   # the WhatsApp id replies go to
    # unused: how to address the sender is the WhatsApp channel's business (its store); kept for older databases
    reply_by = Column(String(10), nullable=False, default="to")
    customer_id = Column(Integer, nullable=True, index=True)  # the card system's (another database, maybe)
    card_last4 = Column(String(4), nullable=True)
    reason = Column(String(40), nullable=False)
    status = Column(String(12), nullable=False, index=True)  # queued | active | closed | callback | returned
    agent_id = Column(Integer, ForeignKey("agents.id"), nullable=True, index=True)
    summary = Column(Text, nullable=False)
    context = Column(Text, nullable=False)  # JSON: intents, slots, open requests
    created_at = Column(DateTime, nullable=False)
    claimed_at = Column(DateTime, nullable=True)
    closed_at = Column(DateTime, nullable=True)
    last_notice_at = Column(DateTime, nullable=True)
    resolution = Column(Text, nullable=True)
    callback_reference = Column(String(20), nullable=True)
    rating = Column(Integer, nullable=True)
    rating_comment = Column(Text, nullable=True)

    messages = relationship("HandoffMessage", order_by="HandoffMessage.id")


class HandoffMessage(Base):
    """The transcript: what the customer, the bot and agents said, and agents' private notes."""

    __tablename__ = "handoff_messages"

    id = Column(Integer, primary_key=True)
    ticket_id = Column(Integer, ForeignKey("handoff_tickets.id"), nullable=False, index=True)
    author = Column(String(10), nullable=False)  # customer | bot | agent | note | system
    agent_id = Column(Integer, ForeignKey("agents.id"), nullable=True)
    text = Column(Text, nullable=False, default="")
    attachment = Column(Text, nullable=True)  # JSON of the channel's attachment metadata
    created_at = Column(DateTime, nullable=False)


class RequestFeedback(Base):
    """What a customer said on the feedback page of a closed request; one per link (its nonce)."""

    __tablename__ = "service_request_feedback"

    id = Column(Integer, primary_key=True)
    nonce = Column(String(32), nullable=False, unique=True)   # the link's: a link is used once
    reference = Column(String(20), nullable=False, index=True)
    rating = Column(Integer, nullable=True)                   # 1 (poor) to 5 (excellent)
    comment = Column(Text, nullable=True)
    escalated = Column(Boolean, nullable=False, default=False)
    at = Column(DateTime, nullable=False)
