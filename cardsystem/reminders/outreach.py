"""The bank writes first: which messages are due (the scheduler), how each goes out (the plan the
WhatsApp channel follows for a notice), and what became of it (outcomes, for the cost report).

Every message the bank sends first is a customer notice (cardsystem.requests.notices), keyed by
its event, so it is queued once however often and on however many instances the scheduler runs:

  payment_due        reminder:<card>:<due date>:<days before>   (the scheduler, each offset once)
  statement_ready    statement:<statement id>                    (the scheduler)
  payment_received   payment:<transaction reference>             (recorded with the payment)
  card_blocked       blocked:<card>:<time>                       (recorded with the block, by the bank)
  request_update     <reference>:<event>                         (the service desk, issue 10)

The channel takes a notice and asks `plan` what to do with it now. Inside the customer's 24-hour
window it is a plain message (with the template's quick replies as buttons); outside it, only an
approved template, only to a customer who opted in, never to a number WhatsApp refused lately
(131026, 131049: paused), never a reminder in quiet hours (it waits for the morning) or past the
weekly cap, never a reminder whose minimum due is paid by now. The plan writes the send's ledger
row (`MessageSend`, one per notice) in the same transaction as those checks, so two instances
cannot both pass the cap. The channel reports what WhatsApp said (`outcome`), by the outbox key
that travels as biz_opaque_callback_data: sent, delivered, read, failed with its code.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from cardsystem import audit
from cardsystem.formatting import format_date, format_datetime, format_inr, format_month, mask_phone
from cardsystem.models import (Card, Customer, CustomerNotice, MessageSend, MessageTemplate, MessagingConsent,
                               ServiceRequest, Statement)
from cardsystem.paylinks import issue_payment_link
from cardsystem.reminders.policy import Policy
from cardsystem.reminders.templates import Registry, Template, TemplateError

logger = logging.getLogger(__name__)
WEEK = dt.timedelta(days=7)
# news the bank offers unasked: only with consent, even inside the window. The rest is about what the
# customer did or asked (a payment, a request) or their safety (a block): inside the window it is a
# plain message whatever their consent; outside it a template still needs consent.
PROACTIVE = {"payment_due", "statement_ready"}
NEVER_ASKED = "never asked"  # a consent row made only to pause a number WhatsApp refused
TEMPLATE_GONE = {132001, 132015, 132016}  # template missing, paused, disabled at the account
STATE_ORDER = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4, "withdrawn": 4}
NEWS = {  # a request's status, as the template's {{3}} says it
    "open": "we have it and are working on it", "in_progress": "we are working on it",
    "needs_documents": "we need a document from you", "resolved": "it is resolved",
    "rejected": "we could not do it this time",
}


@dataclass(frozen=True)
class Delivery:
    """What the channel does with a notice now."""

    action: str                                   # text | template | hold | skip
    text: str = ""
    buttons: Tuple[Tuple[str, str], ...] = ()     # (title, payload) under the text
    document: Optional[Dict[str, Any]] = None
    message: Optional[Dict[str, Any]] = None      # the template message (action template)
    key: str = ""                                 # the outbox key: the ledger's and the status webhooks'
    why: str = ""
    until: Optional[dt.datetime] = None           # hold: not before (UTC)
    then_hold: bool = False                       # after a template: keep the details for the customer's next message


def _facts(row: CustomerNotice) -> Dict[str, Any]:
    return json.loads(row.facts) if row.facts else {}


class Outreach:
    def __init__(self, engine: Engine, settings: Any, policy: Optional[Policy] = None,
                 registry: Optional[Registry] = None, desk_rules: Any = None) -> None:
        from cardsystem.requests.rules import DeskRules

        self.engine = engine
        self.settings = settings
        self.desk_rules = desk_rules or DeskRules.load()
        self.policy = policy or Policy.load(timezone=self.desk_rules.calendar.timezone)
        self.registry = registry or Registry.load(payment_base_url=settings.payment_base_url)

    # -- the scheduler ------------------------------------------------------------------------
    def schedule(self, s: Any, now: dt.datetime) -> Dict[str, int]:
        """Queue the reminders and statement news due at `now` (UTC) in session `s`; returns counts."""
        return {"reminders": self._queue_reminders(s, now), "statements": self._queue_statements(s, now)}

    def _queue_reminders(self, s: Any, now: dt.datetime) -> int:
        policy = self.policy
        today = policy.local(now).date()
        horizon = today + dt.timedelta(days=max(policy.offsets_days))
        rows = s.execute(
            select(Card.id, Card.customer_id, Card.due_date, Card.last4, Card.outstanding_paise, Card.minimum_due_paise,
                   Customer.phone)
            .join(Customer, Customer.id == Card.customer_id)
            .join(MessagingConsent, MessagingConsent.phone == Customer.phone)
            .where(MessagingConsent.opted_in.is_(True), Card.status != "closed", Card.due_date.is_not(None),
                   Card.due_date >= today, Card.due_date <= horizon, Card.minimum_due_paise > 0,
                   Card.outstanding_paise > 0)
            .order_by(Card.id)).all()
        quiet_until = policy.quiet_ends(now) if policy.quiet(now) else None
        notices = []
        for card_id, customer_id, due, last4, outstanding, minimum, phone in rows:
            days_left = (due - today).days
            offset = min(o for o in policy.offsets_days if o >= days_left)  # the latest one due, not a burst
            facts = {"card_last4": last4, "due_date": due.isoformat(), "offset": offset,
                     "total_due": outstanding, "minimum_due": minimum}
            notices.append(self._row(
                f"reminder:{card_id}:{due.isoformat()}:{offset}", "payment_due", customer_id, phone, card_id, facts,
                f"Payment reminder: card ending {last4}, total due {format_inr(outstanding)}, "
                f"minimum due {format_inr(minimum)}, due on {format_date(due)}.", now, due, quiet_until))
        added = _insert_new(s, notices)
        newest = sorted({(n["card_id"], n["key"]) for n in notices if n["key"] in added})
        for start in range(0, len(newest), 500):  # an older reminder of the same card still waiting is replaced
            chunk = newest[start:start + 500]
            s.execute(update(CustomerNotice).where(
                CustomerNotice.kind == "payment_due", CustomerNotice.card_id.in_([c for c, _ in chunk]),
                CustomerNotice.key.not_in([k for _, k in chunk]), CustomerNotice.state.in_(("pending", "held")))
                .values(state="superseded", error="a newer reminder replaced it")
                .execution_options(synchronize_session=False))
        return len(added)

    def _queue_statements(self, s: Any, now: dt.datetime) -> int:
        today = self.policy.local(now).date()
        since = today - dt.timedelta(days=self.policy.statement_within_days + 1)
        rows = s.execute(
            select(Statement, Card.last4, Card.customer_id, Customer.phone)
            .join(Card, Card.id == Statement.card_id).join(Customer, Customer.id == Card.customer_id)
            .where(Statement.period_end >= since, Statement.period_end < today, Card.status != "closed")
            .order_by(Statement.id)).all()
        notices = []
        for statement, last4, customer_id, phone in rows:
            if statement.period_end + dt.timedelta(days=1) > today:
                continue
            facts = {"card_last4": last4, "month": format_month(statement.period), "period": statement.period,
                     "total_due": format_inr(statement.closing_balance_paise),
                     "minimum_due": format_inr(statement.minimum_due_paise), "due_date": format_date(statement.due_date)}
            notices.append(self._row(
                f"statement:{statement.id}", "statement_ready", customer_id, phone, statement.card_id, facts,
                f"Your statement for {facts['month']} (card ending {last4}) is ready: total due "
                f"{facts['total_due']}, minimum due {facts['minimum_due']}, due on {facts['due_date']}. "
                "Ask me for it here and I'll send it as a password-protected PDF.", now, statement.due_date))
        return len(_insert_new(s, notices))

    def _row(self, key: str, kind: str, customer_id: int, phone: str, card_id: int, facts: Dict[str, Any], text: str,
             now: dt.datetime, due: dt.date, not_before: Optional[dt.datetime] = None) -> Dict[str, Any]:
        """A WhatsApp notice of the scheduler's, as a row to insert; stale once its due date is over."""
        return dict(key=f"{key}:whatsapp", medium="whatsapp", customer_id=customer_id, address=phone, reference=None,
                    subject=None, text=text, document=None, state="pending", attempts=0, created_at=now, kind=kind,
                    card_id=card_id, facts=json.dumps(facts), not_before=not_before,
                    expires_at=self.policy.utc(dt.datetime.combine(due + dt.timedelta(days=1), dt.time(0, 0))))

    # -- one notice, now -----------------------------------------------------------------------
    def plan(self, s: Any, row: CustomerNotice, window_open: bool, now: dt.datetime) -> Delivery:
        kind = row.kind or ("request_update" if row.reference else "notice")
        key = outbox_key(row)
        if row.expires_at is not None and now >= row.expires_at:
            return Delivery("skip", why="stale: the news is out of date")
        consent = s.get(MessagingConsent, row.address)
        opted_in = bool(consent and consent.opted_in)
        if said_stop(consent):  # STOP means nothing the bank sends first, inside the window or out of it
            return Delivery("skip", why="opted out: the customer said STOP")
        paused = consent is not None and consent.paused_until is not None and consent.paused_until > now
        if kind == "payment_due":
            return self._plan_reminder(s, row, window_open, now, key, opted_in, paused, consent)
        if kind in PROACTIVE and not opted_in:
            return Delivery("skip", why="no consent: the customer has not opted in (or said STOP)")
        if window_open:
            if send_of(s, key) is None:
                self._ledger(s, row, key, kind, "text", None, "service", now)
            return Delivery("text", text=row.text, key=key, buttons=self._buttons(kind, row))
        template_key = f"{key}.t"
        if _sent(s, template_key):  # the template went; the details wait for the customer's next message
            return Delivery("hold", why="template sent; the details go when the customer writes")
        name = self.policy.update_templates.get(kind)
        if not name:
            return Delivery("hold", why="outside the 24-hour window")
        if not opted_in:
            return Delivery("hold", why="outside the 24-hour window; no consent to write first")
        if paused:
            return Delivery("hold", why=f"number paused after {consent.pause_error}", until=consent.paused_until)
        template, why = self._approved(s, name, _language(s, row))
        if template is None:
            return Delivery("hold", why=why)
        try:
            values = self._values(s, kind, row)
            message = template.message(values)
        except (TemplateError, LookupError) as exc:
            return Delivery("hold", why=f"cannot fill {name}: {exc}"[:200])
        self._ledger(s, row, template_key, kind, "template", template, template.category, now)
        return Delivery("template", message=message, key=template_key, then_hold=kind == "request_update",
                        text=template.render(values))

    def _plan_reminder(self, s: Any, row: CustomerNotice, window_open: bool, now: dt.datetime, key: str,
                       opted_in: bool, paused: bool, consent: Optional[MessagingConsent]) -> Delivery:
        facts = _facts(row)
        card = s.get(Card, row.card_id)
        if card is None or card.status == "closed" or card.due_date is None or \
                card.due_date.isoformat() != facts.get("due_date"):
            return Delivery("skip", why="stale: the bill changed")
        if card.minimum_due_paise <= 0 or card.outstanding_paise <= 0:
            return Delivery("skip", why="paid: the minimum due is paid")
        if not opted_in:
            return Delivery("skip", why="no consent: the customer has not opted in (or said STOP)")
        if paused:
            return Delivery("skip", why=f"paused: WhatsApp refused the number ({consent.pause_error})")
        if self.policy.quiet(now):
            return Delivery("hold", why="quiet hours", until=self.policy.quiet_ends(now))
        if send_of(s, key) is None and send_of(s, f"{key}.t") is None:
            # the customer's row is locked while counting (PostgreSQL): two instances cannot both pass the cap
            s.execute(select(MessagingConsent.phone).where(MessagingConsent.phone == row.address).with_for_update())
            recent = s.execute(select(func.count()).select_from(MessageSend).where(
                MessageSend.customer_id == row.customer_id, MessageSend.kind == "payment_due",
                MessageSend.queued_at > now - WEEK)).scalar_one()
            if recent >= self.policy.weekly_cap:
                return Delivery("skip", why=f"weekly cap: {recent} reminders in 7 days")
        values = self._reminder_values(card, now)
        if window_open:  # a plain message: no approval needed, the template's words and quick replies
            try:
                shape = self._shape(self.policy.reminder_template, _language(s, row))
            except TemplateError as exc:
                return Delivery("hold", why=str(exc)[:200])
            self._ledger(s, row, key, "payment_due", "text", None, "service", now)
            body = shape.render(values).replace("Pay securely with the button below.", "Pay securely with the link below.")
            text = (f"{body}\n\n{values['payment_link']}\n"
                    f"(The link works once and expires at {values['link_expires']}.)")
            buttons = tuple((b.text, shape.payload(b, values)) for b in shape.buttons if b.type == "quick_reply")
            return Delivery("text", text=text, buttons=buttons, key=key)
        template, why = self._approved(s, self.policy.reminder_template, _language(s, row))
        if template is None:
            return Delivery("hold", why=why)
        try:
            message = template.message(values)
        except TemplateError as exc:
            return Delivery("hold", why=str(exc)[:200])
        self._ledger(s, row, f"{key}.t", "payment_due", "template", template, template.category, now)
        return Delivery("template", message=message, key=f"{key}.t", text=template.render(values))

    def _reminder_values(self, card: Card, now: dt.datetime) -> Dict[str, Any]:
        link = issue_payment_link(self.settings, card.id, card.outstanding_paise, "total", now,
                                  self.policy.link_ttl_hours * 60)
        return {"card_last4": card.last4, "total_due": format_inr(card.outstanding_paise),
                "minimum_due": format_inr(card.minimum_due_paise), "due_date": format_date(card.due_date),
                "payment_link": link.url, "payment_link_query": link.url.split("?", 1)[1],
                "link_expires": format_datetime(self.policy.local(link.expires_at))}

    def _values(self, s: Any, kind: str, row: CustomerNotice) -> Dict[str, Any]:
        values = dict(_facts(row))
        values.setdefault("support_phone", self.settings.support_phone)
        if kind == "request_update":
            request = s.execute(select(ServiceRequest).where(ServiceRequest.reference == row.reference)).scalar_one()
            news = NEWS.get(request.status, "there is news")
            if request.status in ("open", "in_progress") and (request.breaches or 0) > 0:
                news = f"it is taking longer; new date {format_date(request.promised_by.date())}"
            values.update(reference=request.reference, request_label=self.desk_rules.kind(request.kind).label,
                          request_news=news)
        return values

    def _buttons(self, kind: str, row: CustomerNotice) -> Tuple[Tuple[str, str], ...]:
        """Inside the window the news carries its template's quick replies as reply buttons."""
        name = self.policy.update_templates.get(kind)
        if not name or kind == "request_update":
            return ()
        try:
            template = self.registry.get(name)
            values = {**_facts(row), "reference": row.reference or ""}
            return tuple((b.text, template.payload(b, values)) for b in template.buttons if b.type == "quick_reply")
        except TemplateError:
            return ()

    def _shape(self, name: str, language: Optional[str]) -> Template:
        """The template `name` in the customer's language when the registry has it, else in English."""
        try:
            return self.registry.get(name, language or "en")
        except TemplateError:
            return self.registry.get(name, "en")

    def _approved(self, s: Any, name: str, language: Optional[str] = None) -> Tuple[Optional[Template], str]:
        try:
            template = self._shape(name, language)
        except TemplateError as exc:
            return None, str(exc)
        state = s.get(MessageTemplate, (template.name, template.language))
        if state is None or state.status != "APPROVED":
            return None, f"template {name} is not approved ({state.status if state else 'never submitted'})"
        if state.content_hash != template.content_hash:
            return None, f"template {name} changed since it was approved: give it a new name and submit it"
        return template, ""

    def _ledger(self, s: Any, row: CustomerNotice, key: str, kind: str, via: str, template: Optional[Template],
                category: str, now: dt.datetime) -> None:
        if send_of(s, key) is not None:
            return
        country, rate, sms = self.policy.rate(category, row.address)
        s.add(MessageSend(notice_key=key, customer_id=row.customer_id, card_id=row.card_id, kind=kind, via=via,
                          template=template.name if template and via == "template" else None, category=category,
                          country=country, rate_e4=rate, sms_rate_e4=sms, state="queued", queued_at=now))
        s.flush()
        audit.record(s, "message_sent_first", row.customer_id, "message", key,
                     {"kind": kind, "via": via, "template": template.name if template else None,
                      "to": mask_phone(row.address)})

    def still_wanted(self, s: Any, key: str) -> bool:
        """Just before a queued message goes (it may have waited out an outage): not to a customer who
        said STOP since, and no reminder whose minimum due has been paid since."""
        send = send_of(s, _message_key(key))
        if send is None:
            return True
        customer = s.get(Customer, send.customer_id)
        card = s.get(Card, send.card_id) if send.kind == "payment_due" and send.card_id else None
        if customer is not None and said_stop(s.get(MessagingConsent, customer.phone)):
            why = "withdrawn: the customer said STOP before it went"
        elif send.kind == "payment_due" and send.card_id and (card is None or card.minimum_due_paise <= 0):
            why = "withdrawn: paid before it went"
        else:
            return True
        if send.state == "queued":
            send.state, send.error = "withdrawn", why
            notice = s.get(CustomerNotice, notice_id_of(send.notice_key))
            if notice is not None:  # the notice says so too (it had been handed to the channel)
                notice.state, notice.error = "skipped", why
        return False

    # -- what WhatsApp said ----------------------------------------------------------------------
    def outcome(self, s: Any, key: str, state: str, wamid: Optional[str], code: Optional[int],
                error: Optional[str], at: dt.datetime) -> bool:
        """A send's news (sent, delivered, read, failed) by its outbox key; statuses only move forward
        (read implies delivered, a status with a message id implies sent: they come in any order), and
        a number WhatsApp refuses is paused. Written with a conditional update, so two webhooks at once
        (or the channel's own word racing a webhook) never undo each other. False for a key not the bank's."""
        base = _message_key(key)
        if key != base and not key.endswith(":0"):
            return False  # only the first message of a notice counts (a long text is split)
        for _ in range(5):
            send = send_of(s, base)
            if send is None:
                return False
            values: Dict[str, Any] = {}
            if (wamid or state in ("sent", "delivered", "read")) and send.sent_at is None:
                values["sent_at"] = at  # WhatsApp had it: sent, whatever came after
            if wamid and not send.wamid:
                values["wamid"] = wamid
            ended = send.state in ("failed", "withdrawn")  # a late "delivered" after "failed" is noise
            if state in ("delivered", "read") and send.delivered_at is None and not ended:
                values["delivered_at"] = at
            if state == "read" and send.read_at is None and not ended:
                values["read_at"] = at
            moves = _forward(send.state, state)
            if moves:
                values["state"] = state
                if state == "failed":
                    values.update(failed_at=at, error_code=code, error=(error or "")[:200] or None)
            if not values:
                return True
            done = s.execute(update(MessageSend).where(MessageSend.id == send.id, MessageSend.state == send.state)
                             .values(**values).execution_options(synchronize_session=False)).rowcount
            if done:
                if moves and state == "failed":
                    self._failed(s, send, base, code, error, at)
                return True
            s.expire_all()  # someone else moved it meanwhile: read it again
        logger.warning("status %s of %s not recorded: the ledger row kept changing", state, base)
        return True

    def _failed(self, s: Any, send: MessageSend, base: str, code: Optional[int], error: Optional[str],
                at: dt.datetime) -> None:
        self._pause(s, send, code, error, at)
        notice = s.get(CustomerNotice, notice_id_of(base)) if notice_id_of(base) else None
        if notice is not None:  # the notice says what became of it
            notice.state, notice.error = "failed", f"{code}: {error or ''}"[:200]
        if code in TEMPLATE_GONE and send.template:  # not approved (any more) at the account: hold the rest
            for row in s.execute(select(MessageTemplate).where(MessageTemplate.name == send.template)).scalars():
                row.status, row.reason, row.updated_at = "UNAVAILABLE", f"{code}: {error or ''}"[:200], at

    def _pause(self, s: Any, send: MessageSend, code: Optional[int], error: Optional[str], at: dt.datetime) -> None:
        pause = self.policy.pause_for(code)
        if pause is None:
            return
        customer = s.get(Customer, send.customer_id)
        if customer is None:
            return
        consent = s.get(MessagingConsent, customer.phone)
        if consent is None:
            consent = MessagingConsent(phone=customer.phone, opted_in=False, source=NEVER_ASKED, changed_at=at)
            s.add(consent)
        consent.paused_until = max(consent.paused_until or at, at + pause)
        consent.pause_error = f"{code}: {error or ''}"[:120]
        audit.record(s, "number_paused", customer.id, "consent", customer.phone[-4:],
                     {"code": code, "until": consent.paused_until.isoformat(timespec="minutes")})


def _forward(current: str, new: str) -> bool:
    """Whether a send's state may move from `current` to `new`: sent < delivered < read; failed only
    before delivery; nothing after failed or withdrawn."""
    if current in ("failed", "withdrawn") or new not in STATE_ORDER:
        return False
    if new == "failed":
        return current in ("queued", "sent")
    return STATE_ORDER[new] > STATE_ORDER[current]


def _message_key(key: str) -> str:
    """A notice's key without the outbox's ":<index>" of the message in it."""
    return key.rsplit(":", 1)[0]


def outbox_key(row: CustomerNotice) -> str:
    """The key a notice travels under in the channel's outbox (and back in its status webhooks): its id
    and when it was made, so a card database made again (make reseed) never meets an old outbox's keys."""
    return f"notice.{row.id}-{int(row.created_at.replace(tzinfo=dt.timezone.utc).timestamp())}"


def notice_id_of(key: str) -> Optional[int]:
    head = key.split(".", 2)[1] if key.count(".") >= 1 else ""
    number = head.split("-", 1)[0].split(":", 1)[0]
    return int(number) if number.isdigit() else None


def _language(s: Any, row: CustomerNotice) -> str:
    customer = s.get(Customer, row.customer_id)
    return (customer.language if customer is not None else None) or "en"


def said_stop(consent: Optional[MessagingConsent]) -> bool:
    return consent is not None and not consent.opted_in and consent.source != NEVER_ASKED


def send_of(s: Any, key: str) -> Optional[MessageSend]:
    return s.execute(select(MessageSend).where(MessageSend.notice_key == key)).scalar_one_or_none()


def _sent(s: Any, key: str) -> bool:
    send = send_of(s, key)
    return send is not None and send.state not in ("queued", "failed")


def _insert_new(s: Any, rows: List[Dict[str, Any]]) -> set:
    """Insert the notices whose keys are new (several instances may run this at once: the key is
    unique and a row another one added first is skipped, not an error). Returns the keys added."""
    if not rows:
        return set()
    keys = [r["key"] for r in rows]
    known = set()
    for start in range(0, len(keys), 500):
        known |= set(s.execute(select(CustomerNotice.key).where(CustomerNotice.key.in_(keys[start:start + 500]))).scalars())
    fresh = [r for r in rows if r["key"] not in known]
    if not fresh:
        return set()
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    for start in range(0, len(fresh), 500):
        s.execute(insert(CustomerNotice).values(fresh[start:start + 500]).on_conflict_do_nothing(index_elements=["key"]))
    return {r["key"] for r in fresh}
