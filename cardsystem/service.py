"""The card system's use cases behind one small interface.

Each public method is one unit of work in its own short session and transaction, so a
failure leaves nothing half-written. A bank would swap this class for its own API client
with the same methods.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import secrets
from typing import Any, Callable, Dict, List, Optional

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cardsystem import audit
from cardsystem.config import Settings
from cardsystem.db import create_schema, get_engine, session_scope
from cardsystem.errors import NotAllowed, NotFound
from cardsystem.formatting import format_date, format_datetime, format_inr
from cardsystem.paylinks import InvalidPaymentLink, verify_payment_link
from cardsystem.requests import notices, wording
from cardsystem.requests.rules import DeskRules
from cardsystem.models import (
    Attachment,
    Base,
    Card,
    Customer,
    MessagingConsent,
    PaymentLinkUse,
    Redemption,
    RewardItem,
    RewardLot,
    ServiceRequest,
    Statement,
    StatusChange,
    Transaction,
    utcnow,
)
from cardsystem.views import (
    CardView,
    CustomerView,
    ExpiringPoints,
    RedemptionView,
    RewardItemView,
    RewardSummary,
    ServiceRequestView,
    StatementView,
    TransactionView,
)

logger = logging.getLogger(__name__)

DISPUTE_REASONS = {
    "not_recognised": "I don't recognise this transaction",
    "charged_twice": "I was charged twice",
    "refund_not_received": "Refund not received",
    "wrong_amount": "Wrong amount charged",
    "not_delivered": "Goods or service not received",
}
BLOCK_REASONS = ("lost", "stolen", "damaged", "suspicious")
BLOCK_WORDS = {"lost": "reported lost", "stolen": "reported stolen", "damaged": "reported damaged",
               "suspicious": "suspicious activity", "bank": "blocked by the bank's fraud checks"}
REFERENCE_PREFIX = {
    "dispute": "DSP",
    "block_card": "BLK",
    "limit_increase": "LMT",
    "callback": "CBK",
    "redemption": "RDM",
    "address_change": "ADR",
    "email_change": "EML",
    "card_replacement": "RPL",
    "card_closure": "CLS",
}
REFERENCE_RE = re.compile(r"\b(?:DSP|BLK|LMT|CBK|RDM|ADR|EML|RPL|CLS)\d{6}[A-Z2-9]{4}\b", re.I)
# what a customer must send with a request of these kinds (asked for when it is raised)
DOCUMENTS_NEEDED = {
    "address_change": "proof of your new address (Aadhaar, passport, or a utility bill from the last 3 months)",
    "email_change": "a photo of your PAN card or Aadhaar, to confirm the change is yours",
}
_REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
DISPUTE_WINDOW_DAYS = 120
MAX_LIMIT_MULTIPLE = 3
OPEN_STATUSES = ("open", "in_progress", "needs_documents")  # the bank still owes the customer something
WORKDAY_START, WORKDAY_END = dt.time(9, 0), dt.time(18, 0)  # callbacks, Monday to Saturday


def normalise_phone(sender_id: Optional[str]) -> Optional[str]:
    """The customer's number as stored (digits only) from a channel's sender id, or None."""
    if not sender_id:
        return None
    text = str(sender_id).strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:"):]
    digits = re.sub(r"[\s\-()+]", "", text)
    return digits if re.fullmatch(r"\d{8,15}", digits) else None


def _readable_tail(length: int) -> str:
    """Random characters a person can read out (no 0/O, 1/I)."""
    return "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(length))


def new_reference(kind: str, today: dt.date) -> str:
    """A reference customers can read out: DSP261123K7Q2 (kind, date, 4 random chars)."""
    return f"{REFERENCE_PREFIX[kind]}{today:%y%m%d}{_readable_tail(4)}"


def _customer_view(c: Customer) -> CustomerView:
    return CustomerView(
        id=c.id, phone=c.phone, name=c.name, first_name=c.name.split()[0],
        date_of_birth=c.date_of_birth, email=c.email, language=c.language,
        whatsapp_opt_in=bool(c.whatsapp_opt_in),
    )


def _card_view(c: Card) -> CardView:
    return CardView(
        id=c.id, customer_id=c.customer_id, last4=c.last4, product=c.product,
        network=c.network, status=c.status, credit_limit_paise=c.credit_limit_paise,
        available_limit_paise=c.available_limit_paise, outstanding_paise=c.outstanding_paise,
        minimum_due_paise=c.minimum_due_paise, due_date=c.due_date,
        statement_day=c.statement_day, expiry_month=c.expiry_month, expiry_year=c.expiry_year,
    )


def _txn_view(t: Transaction) -> TransactionView:
    return TransactionView(
        id=t.id, reference=t.reference, card_id=t.card_id, posted_on=t.posted_on,
        merchant=t.merchant, amount_paise=t.amount_paise, category=t.category, status=t.status,
    )


def _statement_view(s: Statement) -> StatementView:
    return StatementView(
        id=s.id, card_id=s.card_id, period=s.period, period_start=s.period_start,
        period_end=s.period_end, opening_balance_paise=s.opening_balance_paise,
        closing_balance_paise=s.closing_balance_paise, minimum_due_paise=s.minimum_due_paise,
        due_date=s.due_date,
    )


def _item_view(i: RewardItem) -> RewardItemView:
    return RewardItemView(code=i.code, name=i.name, description=i.description, points_cost=i.points_cost)


def _attachment_row(request_id: int, attachment: dict) -> Attachment:
    """A customer's photo or document as kept with a service request (lengths cut to the columns)."""
    return Attachment(
        service_request_id=request_id, media_id=str(attachment["media_id"])[:128],
        mime_type=(attachment.get("mime_type") or None), filename=(attachment.get("filename") or None),
        caption=(attachment.get("caption") or "")[:500] or None,
        stored_as=(str(attachment.get("stored") or "")[:100] or None),
        sha256=(str(attachment.get("sha256") or "")[:64] or None),
    )


class CardSystem:
    """Facade over the card system's tables; see the module docstring."""

    def __init__(
        self,
        settings: Optional[Settings] = None,
        today: Optional[Callable[[], dt.date]] = None,
        now: Optional[Callable[[], dt.datetime]] = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.engine = get_engine(self.settings.db_url)
        self.desk_rules = DeskRules.load()
        # the bank's wall clock (servicedesk.yml's time zone): promises and request times are on it
        self._now = now or self.desk_rules.calendar.local_now
        self._today = today or (lambda: self._now().date())

    # -- set-up -------------------------------------------------------------------------
    def create_schema(self) -> None:
        create_schema(self.engine, Base.metadata)

    def drop_schema(self) -> None:
        Base.metadata.drop_all(self.engine)

    def today(self) -> dt.date:
        return self._today()

    def now(self) -> dt.datetime:
        return self._now()

    # -- customers and cards ----------------------------------------------------------------
    def find_customer(self, sender_id: Optional[str]) -> Optional[CustomerView]:
        phone = normalise_phone(sender_id)
        if phone is None:
            return None
        with session_scope(self.engine) as s:
            customer = s.execute(select(Customer).where(Customer.phone == phone)).scalar_one_or_none()
            return _customer_view(customer) if customer else None

    def cards_of(self, customer_id: int) -> List[CardView]:
        with session_scope(self.engine) as s:
            rows = s.execute(
                select(Card).where(Card.customer_id == customer_id, Card.status != "closed").order_by(Card.id)
            ).scalars()
            return [_card_view(c) for c in rows]

    def card_by_id(self, card_id: int) -> Optional[CardView]:
        with session_scope(self.engine) as s:
            card = s.get(Card, int(card_id))
            return _card_view(card) if card else None

    def card_of(self, customer_id: int, last4: Optional[str]) -> Optional[CardView]:
        """The customer's card ending in `last4`, or None when it is not theirs."""
        if not last4 or not re.fullmatch(r"\d{4}", str(last4)):
            return None
        with session_scope(self.engine) as s:
            card = s.execute(
                select(Card).where(Card.customer_id == customer_id, Card.last4 == str(last4))
            ).scalar_one_or_none()
            return _card_view(card) if card else None

    # -- transactions ------------------------------------------------------------------------
    def recent_transactions(self, card_id: int, limit: int = 5, debits_only: bool = False) -> List[TransactionView]:
        with session_scope(self.engine) as s:
            query = select(Transaction).where(Transaction.card_id == card_id)
            if debits_only:
                query = query.where(Transaction.amount_paise > 0, Transaction.status != "reversed")
            rows = s.execute(query.order_by(Transaction.posted_on.desc(), Transaction.id.desc()).limit(limit)).scalars()
            return [_txn_view(t) for t in rows]

    def transaction_of(self, customer_id: int, reference: Optional[str]) -> Optional[TransactionView]:
        if not reference:
            return None
        with session_scope(self.engine) as s:
            txn = s.execute(
                select(Transaction)
                .join(Card, Card.id == Transaction.card_id)
                .where(Card.customer_id == customer_id, Transaction.reference == str(reference).upper())
            ).scalar_one_or_none()
            return _txn_view(txn) if txn else None

    def find_transactions(
        self,
        card_id: int,
        merchant: Optional[str] = None,
        amount_paise: Optional[int] = None,
        on: Optional[dt.date] = None,
        limit: int = 5,
        approximate: bool = False,
        days_either_side: int = 1,
    ) -> List[TransactionView]:
        """Debits matching what the customer described, newest first.

        Amounts match within one rupee, or within 10% when the customer said "around 4.5k"
        (`approximate`); dates within `days_either_side` days ("last week" is wider).
        """
        with session_scope(self.engine) as s:
            query = select(Transaction).where(Transaction.card_id == card_id, Transaction.amount_paise > 0)
            if merchant:
                query = query.where(func.lower(Transaction.merchant).contains(merchant.lower().strip()))
            if amount_paise:
                slack = max(100, amount_paise // 10) if approximate else 100
                query = query.where(Transaction.amount_paise.between(amount_paise - slack, amount_paise + slack))
            if on:
                window = dt.timedelta(days=days_either_side)
                query = query.where(Transaction.posted_on.between(on - window, on + window))
            rows = s.execute(query.order_by(Transaction.posted_on.desc()).limit(limit)).scalars()
            return [_txn_view(t) for t in rows]

    # -- statements --------------------------------------------------------------------------
    def statements_of(self, card_id: int) -> List[StatementView]:
        """Statements of a card, newest first."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(Statement).where(Statement.card_id == card_id).order_by(Statement.period.desc())).scalars()
            return [_statement_view(st) for st in rows]

    def statement_transactions(self, statement: StatementView) -> List[TransactionView]:
        with session_scope(self.engine) as s:
            rows = s.execute(
                select(Transaction)
                .where(
                    Transaction.card_id == statement.card_id,
                    Transaction.posted_on.between(statement.period_start, statement.period_end),
                )
                .order_by(Transaction.posted_on, Transaction.id)
            ).scalars()
            return [_txn_view(t) for t in rows]

    # -- rewards -----------------------------------------------------------------------------
    def reward_summary(self, customer_id: int) -> RewardSummary:
        today = self.today()
        with session_scope(self.engine) as s:
            lots = s.execute(
                select(RewardLot)
                .where(RewardLot.customer_id == customer_id, RewardLot.remaining > 0, RewardLot.expires_on >= today)
                .order_by(RewardLot.expires_on)
            ).scalars().all()
            redeemed = s.execute(
                select(func.coalesce(func.sum(Redemption.points), 0)).where(Redemption.customer_id == customer_id)
            ).scalar_one()
        by_date: Dict[dt.date, int] = {}
        for lot in lots:
            by_date[lot.expires_on] = by_date.get(lot.expires_on, 0) + lot.remaining
        expiring = tuple(ExpiringPoints(day, pts) for day, pts in sorted(by_date.items()))
        return RewardSummary(balance=sum(l.remaining for l in lots), expiring=expiring, redeemed_total=int(redeemed))

    def catalogue(self) -> List[RewardItemView]:
        with session_scope(self.engine) as s:
            rows = s.execute(select(RewardItem).where(RewardItem.active.is_(True)).order_by(RewardItem.points_cost)).scalars()
            return [_item_view(i) for i in rows]

    def redeem(self, customer_id: int, item_code: str) -> RedemptionView:
        """Deduct the item's points from the soonest-expiring lots and record the redemption."""
        today = self.today()
        with session_scope(self.engine) as s:
            item = s.execute(
                select(RewardItem).where(RewardItem.code == str(item_code), RewardItem.active.is_(True))
            ).scalar_one_or_none()
            if item is None:
                raise NotFound("unknown_item", "That reward is not in the catalogue.")
            lots = s.execute(
                select(RewardLot)
                .where(RewardLot.customer_id == customer_id, RewardLot.remaining > 0, RewardLot.expires_on >= today)
                .order_by(RewardLot.expires_on, RewardLot.id)
                .with_for_update()
            ).scalars().all()
            balance = sum(l.remaining for l in lots)
            if balance < item.points_cost:
                raise NotAllowed("insufficient_points", f"{item.name} needs {item.points_cost} points; you have {balance}.")
            still_owed = item.points_cost
            for lot in lots:
                used = min(lot.remaining, still_owed)
                lot.remaining -= used
                still_owed -= used
                if still_owed == 0:
                    break
            redemption = Redemption(
                reference=new_reference("redemption", today), customer_id=customer_id,
                item_id=item.id, points=item.points_cost,
            )
            s.add(redemption)
            s.flush()
            audit.record(s, "redeem_rewards", customer_id, "redemption", redemption.reference,
                        {"item": item.code, "points": item.points_cost})
            return RedemptionView(
                reference=redemption.reference, item=_item_view(item), points=item.points_cost,
                balance_after=balance - item.points_cost,
            )

    # -- service requests --------------------------------------------------------------------
    def _promise(self, kind: str, reason: Optional[str] = None) -> dt.datetime:
        """By when a new request of `kind` will be done: its turnaround in the bank's working days."""
        days = self.desk_rules.kind(kind).days_for(reason)
        return self.desk_rules.calendar.add_working_days(self.now(), days)

    def _open_request(self, s, customer_id: int, kind: str, **filters) -> Optional[ServiceRequest]:
        query = select(ServiceRequest).where(
            ServiceRequest.customer_id == customer_id,
            ServiceRequest.kind == kind,
            ServiceRequest.status.in_(OPEN_STATUSES),
        )
        for column, value in filters.items():
            query = query.where(getattr(ServiceRequest, column) == value)
        return s.execute(query.order_by(ServiceRequest.id.desc())).scalars().first()

    def _new_request(
        self, s, customer_id: int, kind: str, promised_by: dt.datetime, card_id: Optional[int] = None,
        reason: Optional[str] = None, transaction_id: Optional[int] = None,
        amount_paise: Optional[int] = None, details: Optional[dict] = None,
    ) -> ServiceRequest:
        now = self.now()
        for _attempt in range(5):
            reference = new_reference(kind, self.today())
            exists = s.execute(select(ServiceRequest.id).where(ServiceRequest.reference == reference)).first()
            if not exists:
                break
        request = ServiceRequest(
            reference=reference, customer_id=customer_id, card_id=card_id, kind=kind, status="open",
            reason=reason, transaction_id=transaction_id, amount_paise=amount_paise,
            details=json.dumps(details or {}, ensure_ascii=False), promised_by=promised_by,
            first_promised_by=promised_by, created_at=now, updated_at=now,
        )
        s.add(request)
        s.flush()
        s.add(StatusChange(service_request_id=request.id, status="open", note="Raised via WhatsApp assistant", at=now,
                           actor="customer", event="status"))
        if self.settings.smtp_url:  # the chat has the reference already; e-mail it too where we can
            label = self.desk_rules.kind(kind).label
            notices.queue(s, s.get(Customer, customer_id), f"{reference}:raised",
                          wording.RAISED.format(label=label, reference=reference,
                                                promised=format_datetime(promised_by)),
                          reference, wording.RAISED_SUBJECT.format(label=label, reference=reference),
                          email=True, whatsapp=False)
        return request

    def file_dispute(
        self,
        customer_id: int,
        transaction_reference: str,
        reason: str,
        attachment: Optional[dict] = None,
        description: Optional[str] = None,
    ) -> ServiceRequestView:
        """Open a dispute on one of the customer's debits; an open dispute on it is returned as is."""
        if reason not in DISPUTE_REASONS:
            raise NotAllowed("bad_reason", "Please choose one of the listed reasons.")
        with session_scope(self.engine) as s:
            txn = s.execute(
                select(Transaction)
                .join(Card, Card.id == Transaction.card_id)
                .where(Card.customer_id == customer_id, Transaction.reference == str(transaction_reference).upper())
            ).scalar_one_or_none()
            if txn is None:
                raise NotFound("unknown_transaction", "I couldn't find that transaction on your cards.")
            if txn.amount_paise <= 0 or txn.status == "reversed":
                raise NotAllowed("not_disputable", "That entry is a payment, refund or reversal, so there is nothing to dispute.")
            if (self.today() - txn.posted_on).days > DISPUTE_WINDOW_DAYS:
                raise NotAllowed("too_old", f"Transactions older than {DISPUTE_WINDOW_DAYS} days can't be disputed here.")
            existing = self._open_request(s, customer_id, "dispute", transaction_id=txn.id)
            if existing is not None:
                return self._request_view(s, existing)
            request = self._new_request(
                s, customer_id, "dispute", self._promise("dispute", reason), card_id=txn.card_id,
                reason=reason, transaction_id=txn.id, amount_paise=txn.amount_paise,
                details={"description": (description or "")[:500]},
            )
            if attachment and attachment.get("media_id"):
                s.add(_attachment_row(request.id, attachment))
            audit.record(s, "file_dispute", customer_id, "service_request", request.reference,
                        {"transaction": txn.reference, "reason": reason, "attachment": bool(attachment)})
            s.flush()
            return self._new_view(s, request)

    def block_card(self, customer_id: int, last4: str, reason: str, by: str = "customer") -> ServiceRequestView:
        """Block the card at once and open a replacement request. There is no unblock. A block the
        bank makes (`by` another than the customer in the chat, e.g. "bank:fraud-desk") is told to
        the customer (card_blocked: a plain message, or its template outside the window)."""
        if reason not in BLOCK_REASONS + ("bank",):
            reason = "lost"
        with session_scope(self.engine) as s:
            card = s.execute(
                select(Card).where(Card.customer_id == customer_id, Card.last4 == str(last4)).with_for_update()
            ).scalar_one_or_none()
            if card is None:
                raise NotFound("unknown_card", "That card isn't one of yours.")
            if card.status != "active":
                raise NotAllowed("already_blocked", f"Your card ending {card.last4} is already blocked.")
            card.status = "blocked"
            card.blocked_at = utcnow()
            card.block_reason = reason
            request = self._new_request(s, customer_id, "block_card", self._promise("block_card"), card_id=card.id,
                                        reason=reason, details={"replacement": True})
            audit.record(s, "block_card", customer_id, "card", f"**{card.last4}",
                         {"reason": reason, "request": request.reference, "by": by[:40]})
            if by != "customer":
                customer = s.get(Customer, customer_id)
                when = format_datetime(self.now())
                facts = {"card_last4": card.last4, "blocked_at": when,
                         "block_reason": BLOCK_WORDS.get(reason, reason), "support_phone": self.settings.support_phone}
                notices.queue(s, customer, f"blocked:{card.id}:{card.blocked_at:%Y%m%d%H%M%S}",
                              wording.CARD_BLOCKED.format(**facts), kind="card_blocked", card_id=card.id, facts=facts)
            return self._new_view(s, request)

    def request_limit_increase(self, customer_id: int, last4: str, new_limit_paise: int) -> ServiceRequestView:
        with session_scope(self.engine) as s:
            card = s.execute(select(Card).where(Card.customer_id == customer_id, Card.last4 == str(last4))).scalar_one_or_none()
            if card is None:
                raise NotFound("unknown_card", "That card isn't one of yours.")
            if card.status != "active":
                raise NotAllowed("card_inactive", "A blocked card's limit can't be changed.")
            if new_limit_paise <= card.credit_limit_paise:
                raise NotAllowed("not_higher", "The new limit must be higher than your current limit.")
            if new_limit_paise > card.credit_limit_paise * MAX_LIMIT_MULTIPLE:
                raise NotAllowed("too_high", f"I can request at most {MAX_LIMIT_MULTIPLE} times your current limit.")
            existing = self._open_request(s, customer_id, "limit_increase", card_id=card.id)
            if existing is not None:
                return self._request_view(s, existing)
            request = self._new_request(s, customer_id, "limit_increase", self._promise("limit_increase"),
                                        card_id=card.id, amount_paise=new_limit_paise)
            audit.record(s, "request_limit_increase", customer_id, "service_request", request.reference,
                        {"card": f"**{card.last4}", "new_limit_paise": new_limit_paise})
            return self._new_view(s, request)

    def raise_request(self, customer_id: int, kind: str, card_last4: Optional[str] = None,
                      details: Optional[dict] = None, attachment: Optional[dict] = None) -> ServiceRequestView:
        """Open a change of address or e-mail, a card replacement or a closure (an open one of the
        same kind and card is returned as is). A kind that needs documents (DOCUMENTS_NEEDED) starts
        waiting for them, unless `attachment` brings them already."""
        if kind not in ("address_change", "email_change", "card_replacement", "card_closure"):
            raise NotAllowed("bad_kind", "That is not a request I can raise here.")
        with session_scope(self.engine) as s:
            card = None
            if kind in ("card_replacement", "card_closure"):
                card = s.execute(select(Card).where(Card.customer_id == customer_id, Card.last4 == str(card_last4))
                                 ).scalar_one_or_none()
                if card is None:
                    raise NotFound("unknown_card", "That card isn't one of yours.")
                if card.status != "active":
                    raise NotAllowed("card_inactive", f"Your card ending {card.last4} is not active.")
            existing = self._open_request(s, customer_id, kind, **({"card_id": card.id} if card else {}))
            if existing is not None:
                return self._request_view(s, existing)
            request = self._new_request(s, customer_id, kind, self._promise(kind), card_id=card.id if card else None,
                                        details=details or {})
            needs = DOCUMENTS_NEEDED.get(kind)
            if needs and attachment and attachment.get("media_id"):
                s.add(_attachment_row(request.id, attachment))
            elif needs:
                request.status, request.needs = "needs_documents", needs
                s.add(StatusChange(service_request_id=request.id, status="needs_documents", note=needs[:300],
                                   at=request.created_at, actor="bot", event="status"))
            audit.record(s, f"request_{kind}", customer_id, "service_request", request.reference,
                         {"card": f"**{card.last4}" if card else None, "attachment": bool(attachment)})
            return self._new_view(s, request)

    def request_callback(self, customer_id: int, reason: str = "customer asked for an agent",
                         card_last4: Optional[str] = None, context: Optional[dict] = None) -> ServiceRequestView:
        """Book a call from a colleague. `context` (summary, transcript, intents) is kept with the
        request so whoever calls knows the whole story, as an agent taking a live chat would."""
        with session_scope(self.engine) as s:
            existing = self._open_request(s, customer_id, "callback")
            if existing is not None:
                return self._request_view(s, existing)
            card = s.execute(select(Card).where(Card.customer_id == customer_id, Card.last4 == str(card_last4))
                             ).scalar_one_or_none() if card_last4 else None
            promised = self._callback_time()
            request = self._new_request(s, customer_id, "callback", promised, reason=reason[:40],
                                        card_id=card.id if card else None, details=context or {})
            audit.record(s, "request_callback", customer_id, "service_request", request.reference, {"reason": reason[:80]})
            return self._new_view(s, request)

    def attach_to_request(self, customer_id: int, reference: str, attachment: dict) -> bool:
        """Add a photo or document to one of the customer's open disputes (sent after it was raised)."""
        if not attachment or not attachment.get("media_id"):
            return False
        with session_scope(self.engine) as s:
            request = s.execute(select(ServiceRequest).where(
                ServiceRequest.customer_id == customer_id, ServiceRequest.reference == str(reference).upper(),
                ServiceRequest.kind == "dispute", ServiceRequest.status.in_(OPEN_STATUSES))).scalar_one_or_none()
            if request is None:
                return False
            s.add(_attachment_row(request.id, attachment))
            audit.record(s, "attach_to_request", customer_id, "service_request", request.reference, {"attachment": True})
            return True

    def request_details(self, customer_id: int, reference: str) -> dict:
        """The context kept with a request (e.g. a callback's summary and transcript)."""
        with session_scope(self.engine) as s:
            request = s.execute(select(ServiceRequest).where(
                ServiceRequest.customer_id == customer_id, ServiceRequest.reference == str(reference).upper())
            ).scalar_one_or_none()
            return json.loads(request.details or "{}") if request else {}

    # -- payments -------------------------------------------------------------------------------
    def pay_with_link(self, url: str, via: str = "payment page") -> TransactionView:
        """Take the payment a signed link asks for: the link is used once (its nonce is recorded in
        the same transaction as the payment; a second use raises InvalidPaymentLink("used"))."""
        fields = verify_payment_link(url, self.settings.payment_link_secret)
        try:
            with session_scope(self.engine) as s:
                card = self._payable(s, fields, lock=True)
                amount = int(fields["a"])
                s.add(PaymentLinkUse(nonce=str(fields["n"])[:40], card_id=card.id, amount_paise=amount, used_at=utcnow()))
                s.flush()  # the nonce is the primary key: a second use stops here
                return self._post_payment(s, card, amount, via)
        except IntegrityError:
            raise InvalidPaymentLink("used") from None

    def check_payment_link(self, url: str) -> dict:
        """What a link would pay, or why it cannot be used now (the same refusals as pay_with_link)."""
        fields = verify_payment_link(url, self.settings.payment_link_secret)
        with session_scope(self.engine) as s:
            card = self._payable(s, fields)
            return {"amount_paise": int(fields["a"]), "kind": fields.get("k"), "card_last4": card.last4,
                    "outstanding_paise": card.outstanding_paise}

    def _payable(self, s: Any, fields: dict, lock: bool = False) -> Card:
        if s.get(PaymentLinkUse, str(fields["n"])[:40]) is not None:
            raise InvalidPaymentLink("used")
        query = select(Card).where(Card.id == int(fields["c"]))
        card = s.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        if card is None or card.status == "closed":
            raise NotFound("unknown_card", "This card can no longer be paid through this link.")
        amount = int(fields["a"])
        if card.outstanding_paise <= 0:
            raise NotAllowed("nothing_due", "There is nothing to pay on this card now.")
        if amount > card.outstanding_paise:
            raise NotAllowed("amount_changed", f"This link is for {format_inr(amount)} but "
                             f"{format_inr(card.outstanding_paise)} is due now. Ask for a new link on WhatsApp.")
        return card

    def record_payment(self, card_id: int, amount_paise: int, via: str = "core banking") -> TransactionView:
        """A payment the bank received for a card (NEFT, UPI, a branch): posted, dues lowered, told."""
        if int(amount_paise) <= 0:
            raise NotAllowed("bad_amount", "A payment is a positive amount.")
        with session_scope(self.engine) as s:
            card = s.execute(select(Card).where(Card.id == int(card_id)).with_for_update()).scalar_one_or_none()
            if card is None:
                raise NotFound("unknown_card", "No such card.")
            most = max(card.outstanding_paise, 0) + card.credit_limit_paise  # beyond this it is a mistake, not a payment
            if int(amount_paise) > most:
                raise NotAllowed("amount_too_large", f"A payment of more than {format_inr(most)} on this card is refused: "
                                 "check the amount.")
            return self._post_payment(s, card, int(amount_paise), via)

    def _post_payment(self, s: Any, card: Card, amount: int, via: str) -> TransactionView:
        txn = Transaction(reference=f"P{self.today():%y%m%d}{_readable_tail(7)}", card_id=card.id,  # 32**7 a day
                          posted_on=self.today(), posted_at=utcnow(), merchant="Payment received - thank you",
                          amount_paise=-amount, category="payment", status="posted")
        s.add(txn)
        card.outstanding_paise -= amount
        card.minimum_due_paise = max(0, card.minimum_due_paise - amount)
        card.available_limit_paise = min(card.credit_limit_paise, card.available_limit_paise + amount)
        s.flush()
        facts = {"amount": format_inr(amount), "card_last4": card.last4, "paid_on": format_date(self.today()),
                 "total_due": format_inr(max(0, card.outstanding_paise))}
        notices.queue(s, s.get(Customer, card.customer_id), f"payment:{txn.reference}",
                      wording.PAYMENT_RECEIVED.format(**facts), kind="payment_received", card_id=card.id, facts=facts)
        audit.record(s, "payment_received", card.customer_id, "transaction", txn.reference,
                     {"card": f"**{card.last4}", "amount_paise": amount, "via": via[:40]})
        return _txn_view(txn)

    def payments_since(self, card_id: int, since: dt.date) -> List[TransactionView]:
        """Payments posted on a card since `since` (inclusive), newest first."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(Transaction).where(
                Transaction.card_id == card_id, Transaction.category == "payment", Transaction.amount_paise < 0,
                Transaction.status != "reversed", Transaction.posted_on >= since)
                .order_by(Transaction.posted_on.desc(), Transaction.id.desc())).scalars()
            return [_txn_view(t) for t in rows]

    # -- consent to messages the bank sends first ---------------------------------------------
    def set_consent(self, phone: str, opted_in: bool, source: str) -> None:
        """Record a number's opt-in or opt-out (STOP / START), with when and how."""
        phone = re.sub(r"\D", "", str(phone))[:20]
        with session_scope(self.engine) as s:
            row = s.get(MessagingConsent, phone)
            if row is None:
                s.add(MessagingConsent(phone=phone, opted_in=opted_in, source=source[:40], changed_at=utcnow()))
            else:
                row.opted_in, row.source, row.changed_at = opted_in, source[:40], utcnow()
            customer = s.execute(select(Customer).where(Customer.phone == phone)).scalar_one_or_none()
            if customer is not None:
                customer.whatsapp_opt_in = opted_in
            audit.record(s, "opt_in" if opted_in else "opt_out", customer.id if customer else None, "consent",
                        phone[-4:], {"source": source[:40]})

    def consent_of(self, phone: str) -> Optional[bool]:
        """True (opted in), False (opted out) or None (never said)."""
        with session_scope(self.engine) as s:
            row = s.get(MessagingConsent, re.sub(r"\D", "", str(phone))[:20])
            return None if row is None else bool(row.opted_in)

    def _callback_time(self) -> dt.datetime:
        """N working hours from now (Mon-Sat, 9:00-18:00), rounded up to the half hour."""
        moment = self.now().replace(second=0, microsecond=0)
        remaining = dt.timedelta(hours=self.settings.callback_within_hours)
        while remaining > dt.timedelta(0):
            if moment.weekday() == 6 or moment.time() >= WORKDAY_END:
                moment = dt.datetime.combine(moment.date() + dt.timedelta(days=1), WORKDAY_START)
                continue
            moment = max(moment, dt.datetime.combine(moment.date(), WORKDAY_START))
            step = min(remaining, dt.datetime.combine(moment.date(), WORKDAY_END) - moment)
            moment += step
            remaining -= step
        extra = (30 - moment.minute % 30) % 30
        return moment + dt.timedelta(minutes=extra)

    def service_request(self, customer_id: int, reference: Optional[str]) -> Optional[ServiceRequestView]:
        if not reference:
            return None
        with session_scope(self.engine) as s:
            request = s.execute(
                select(ServiceRequest).where(
                    ServiceRequest.customer_id == customer_id,
                    ServiceRequest.reference == str(reference).strip().upper(),
                )
            ).scalar_one_or_none()
            return self._request_view(s, request) if request else None

    def service_requests(self, customer_id: int, kind: Optional[str] = None, open_only: bool = False,
                         limit: int = 5) -> List[ServiceRequestView]:
        """The customer's requests, newest first."""
        with session_scope(self.engine) as s:
            query = select(ServiceRequest).where(ServiceRequest.customer_id == customer_id)
            if kind:
                query = query.where(ServiceRequest.kind == kind)
            if open_only:
                query = query.where(ServiceRequest.status.in_(OPEN_STATUSES))
            rows = s.execute(query.order_by(ServiceRequest.created_at.desc(), ServiceRequest.id.desc()).limit(limit)).scalars()
            return [self._request_view(s, r) for r in rows]

    def _new_view(self, s, r: ServiceRequest) -> ServiceRequestView:
        s.flush()
        s.refresh(r)
        return dataclasses.replace(self._request_view(s, r), created_now=True)

    def _request_view(self, s, r: ServiceRequest) -> ServiceRequestView:
        card = s.get(Card, r.card_id) if r.card_id else None
        txn = s.get(Transaction, r.transaction_id) if r.transaction_id else None
        return ServiceRequestView(
            reference=r.reference, kind=r.kind, status=r.status, reason=r.reason,
            card_last4=card.last4 if card else None,
            transaction_reference=txn.reference if txn else None,
            transaction_merchant=txn.merchant if txn else None,
            amount_paise=r.amount_paise, promised_by=r.promised_by, created_at=r.created_at,
            attachments=len(r.attachments),
            history=tuple((h.status, h.at, h.note) for h in r.history),
            needs=r.needs, resolution=r.resolution,
        )

    # -- audit -------------------------------------------------------------------------------
    def audit_entries(self, customer_id: Optional[int] = None) -> List[dict]:
        return audit.entries(self.engine, customer_id)
