"""The service desk: the bank's half of a service request.

Executives work requests from a worklist (console, REST API or command, all through this class,
so the same rules, audit and notices apply), move them through the lifecycle in
`cardsystem.requests.rules`, ask customers for documents and take them in, and a delay job finds
requests past their promise, tells the customer the new date and escalates repeat breaches up the
configured ladder. Every change is one transaction with its history line, its audit entry and the
notice that tells the customer, so none happens without the others.

Times are naive, on the bank's wall clock (servicedesk.yml's time zone).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import statistics
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from cardsystem import audit
from cardsystem.config import Settings
from cardsystem.db import get_engine, session_scope
from cardsystem.errors import NotAllowed, NotFound
from cardsystem.formatting import format_datetime, format_inr, mask_phone, redact_card_numbers
from cardsystem.models import (
    Card, Customer, DeskAlert, RequestFeedback, ServiceRequest, StatusChange, Transaction,
)
from cardsystem.requests import feedback as feedback_links
from cardsystem.requests import notices, wording
from cardsystem.requests.mailer import mask_address
from cardsystem.requests.rules import (
    ACTIVE, CLOCK_RUNS, CLOSED, IN_PROGRESS, NEEDS_DOCUMENTS, REJECTED, RESOLVED, STATUSES, DeskRules, check_move,
)

logger = logging.getLogger(__name__)
# which people a rung of the ladder alerts (console roles); "executive" is the assigned agent
ROLE_OF_LEVEL = {"executive": "agent", "supervisor": "supervisor", "grievance_officer": "grievance_officer",
                 "ombudsman": "grievance_officer"}


@dataclass
class SlaReport:
    """One pass of the delay job."""

    now: dt.datetime
    late: List[str] = field(default_factory=list)        # first breach: customer told the new date
    escalated: List[str] = field(default_factory=list)   # a later breach: one level up
    skipped: int = 0                                     # another instance took it first


def _when(moment: Optional[dt.datetime]) -> str:
    return format_datetime(moment) if moment else "-"


def working_days(n: int) -> str:
    return f"{n} working day" + ("" if n == 1 else "s")


class ServiceDesk:
    """The desk's use cases; see the module docstring."""

    def __init__(self, db_url: Optional[str] = None, rules: Optional[DeskRules] = None,
                 now: Optional[Callable[[], dt.datetime]] = None, email: Optional[bool] = None,
                 engine: Optional[Engine] = None, proof_dir: Optional[Path] = None, signer: Any = None) -> None:
        settings = Settings.from_env()
        self.engine = engine or get_engine(db_url or settings.db_url)
        self.rules = rules or DeskRules.load()
        self._now = now or self.rules.calendar.local_now
        self.email = bool(settings.smtp_url) if email is None else email  # e-mail notices only with SMTP set up
        self.proof_dir = Path(proof_dir or settings.proof_dir)
        self.signer = signer  # the bank's signing pair (None: cardsystem.requests.proof.signer_from_env)

    def now(self) -> dt.datetime:
        return self._now()

    # -- reading --------------------------------------------------------------------------------
    def worklist(self, kind: Optional[str] = None, status: Optional[str] = None, overdue: bool = False,
                 assigned_to: Optional[str] = None, include_closed: bool = False, limit: int = 200) -> List[Dict[str, Any]]:
        """Requests sorted by due time (soonest first), with the filters the desk uses."""
        now = self.now()
        with session_scope(self.engine) as s:
            query = select(ServiceRequest, Customer).join(Customer, Customer.id == ServiceRequest.customer_id)
            if kind:
                query = query.where(ServiceRequest.kind == kind)
            if status:
                if status not in STATUSES:
                    raise NotAllowed("bad_status", f"Unknown status {status!r}.")
                query = query.where(ServiceRequest.status == status)
            elif not include_closed:
                query = query.where(ServiceRequest.status.in_(ACTIVE))
            if overdue:
                query = query.where(ServiceRequest.status.in_(CLOCK_RUNS), ServiceRequest.promised_by < now)
            if assigned_to is not None:
                query = query.where(ServiceRequest.assigned_to == assigned_to)
            rows = s.execute(query.order_by(ServiceRequest.promised_by, ServiceRequest.id).limit(max(1, min(limit, 1000))))
            return [self._row(r, c, now) for r, c in rows]

    def request(self, reference: str) -> Dict[str, Any]:
        """One request with its customer (masked), documents, history and notices."""
        now = self.now()
        with session_scope(self.engine) as s:
            r = self._find(s, reference)
            customer = s.get(Customer, r.customer_id)
            data = self._row(r, customer, now)
            card = s.get(Card, r.card_id) if r.card_id else None
            txn = s.get(Transaction, r.transaction_id) if r.transaction_id else None
            details = json.loads(r.details or "{}")
            data.update({
                "customer": {"name": customer.name, "phone": mask_phone(customer.phone),
                             "email": mask_address(customer.email) if customer.email else None},
                "card_last4": card.last4 if card else None,
                "transaction": {"reference": txn.reference, "merchant": txn.merchant, "amount_paise": txn.amount_paise,
                                "posted_on": txn.posted_on.isoformat()} if txn else None,
                "reason": r.reason, "needs": r.needs, "resolution": r.resolution, "delay_reason": r.delay_reason,
                "description": details.get("description") or details.get("summary"),
                "asked": {k: details[k] for k in ("new_address", "new_email") if details.get(k)},
                "first_promised_by": (r.first_promised_by or r.promised_by).isoformat(),
                "documents": [{"number": n, "filename": a.filename, "mime_type": a.mime_type, "caption": a.caption,
                               "stored": bool(a.stored_as)} for n, a in enumerate(r.attachments, 1)],
                "history": [{"status": h.status, "event": h.event or "status", "note": h.note, "actor": h.actor or "bot",
                             "at": h.at.isoformat()} for h in r.history],
            })
        data["notices"] = [self._shown_notice(n) for n in notices.NoticeBox(engine=self.engine).of(data["reference"])]
        return data

    def _shown_notice(self, notice: Dict[str, Any]) -> Dict[str, Any]:
        """A notice as the desk sees it: on the bank's clock, the customer's feedback link hidden
        (it is theirs to use once, not a colleague's)."""
        shown = dict(notice, text=re.sub(r"/webhooks/feedback/\S+", "/webhooks/feedback/<customer's link>",
                                         notice["text"]))
        for key in ("created_at", "sent_at"):
            if shown.get(key):
                shown[key] = self.rules.calendar.localise(shown[key].replace(tzinfo=dt.timezone.utc)).isoformat()
        return shown

    def document(self, reference: str, number: int) -> Dict[str, Any]:
        """Where the channel keeps the request's `number`-th document (1-based)."""
        with session_scope(self.engine) as s:
            r = self._find(s, reference)
            if not 1 <= number <= len(r.attachments):
                raise NotFound("unknown_document", "That request has no such document.")
            a = r.attachments[number - 1]
            if not a.stored_as:
                raise NotFound("not_stored", "The document could not be fetched from WhatsApp when it was sent.")
            return {"stored": a.stored_as, "mime_type": a.mime_type, "filename": a.filename or f"{r.reference}-{number}"}

    def pending_from(self, customer_id: int) -> List[Dict[str, Any]]:
        """The customer's requests waiting for their documents, oldest first."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(ServiceRequest).where(ServiceRequest.customer_id == customer_id,
                                                          ServiceRequest.status == NEEDS_DOCUMENTS)
                             .order_by(ServiceRequest.id)).scalars()
            return [{"reference": r.reference, "kind": r.kind, "label": self.rules.kind(r.kind).label,
                     "needs": r.needs or "a document"} for r in rows]

    def alerts(self, username: str, role: str, unread_only: bool = True, limit: int = 50) -> List[Dict[str, Any]]:
        """Alerts for this agent or their role, newest first."""
        with session_scope(self.engine) as s:
            query = select(DeskAlert).where((DeskAlert.username == username) | (DeskAlert.role == role))
            if unread_only:
                query = query.where(DeskAlert.read_at.is_(None))
            rows = s.execute(query.order_by(DeskAlert.id.desc()).limit(limit)).scalars()
            return [{"id": a.id, "reference": a.reference, "text": a.text, "at": a.created_at.isoformat(),
                     "read": a.read_at is not None} for a in rows]

    def alert_read(self, alert_id: int, username: str, role: str) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(DeskAlert).where(DeskAlert.id == alert_id, DeskAlert.read_at.is_(None),
                                              (DeskAlert.username == username) | (DeskAlert.role == role))
                      .values(read_at=self.now()).execution_options(synchronize_session=False))

    # -- changing -------------------------------------------------------------------------------
    def set_status(self, reference: str, status: str, note: Optional[str], actor: str,
                   agent: Optional[str] = None) -> Dict[str, Any]:
        """Move a request (rules.MOVES), with the note the move needs; the customer is told."""
        now = self.now()
        with session_scope(self.engine) as s:
            r = self._find(s, reference, lock=True)
            text = check_move(r.status, status, note)
            rule = self.rules.kind(r.kind)
            customer = s.get(Customer, r.customer_id)
            values = {"label": rule.label, "reference": r.reference}
            previous = r.status
            if status == NEEDS_DOCUMENTS:
                text = text.rstrip(". ")
                r.needs = text
                days_left = max(1, self.rules.calendar.working_days_between(now, r.promised_by))
                r.paused_days = days_left if rule.documents_clock == "pause" else None
                clock = (wording.CLOCK_PAUSE.format(days=working_days(days_left)) if rule.documents_clock == "pause"
                         else wording.CLOCK_RESTART.format(days=working_days(rule.days_for(r.reason))))
                message = wording.NEEDS_DOCUMENTS.format(needs=text, clock=clock, **values)
            elif status == IN_PROGRESS:
                if previous == NEEDS_DOCUMENTS:
                    self._resume_clock(r, rule, now)
                message = wording.IN_PROGRESS.format(promised=_when(r.promised_by), **values)
            elif status == RESOLVED:
                self._carry_out(s, r, customer, actor)
                r.resolution, r.closed_at = text, now
                message = wording.RESOLVED.format(done=rule.done, resolution=text.rstrip(".") + ".", **values)
            else:  # REJECTED
                r.resolution, r.closed_at = text, now
                message = wording.REJECTED.format(reason=text.rstrip("."), **values)
            if status in CLOSED:
                message += " " + wording.FEEDBACK.format(link=feedback_links.feedback_url(r.reference))
            r.status, r.updated_at = status, now
            if agent and r.assigned_to is None:  # who moves an unassigned request takes it
                r.assigned_to = agent
            change = self._history(s, r, status, text or None, actor, "status", now)
            audit.record(s, "request_status", r.customer_id, "service_request", r.reference,
                         {"from": previous, "to": status, "note": text[:200]}, actor=actor)
            # the proof is signed inside the change: no resolution is recorded without it
            document = self._proof(s, r, customer, rule) if status == RESOLVED else None
            notices.queue(s, customer, f"{r.reference}:h{change.id}", message, r.reference,
                          wording.UPDATE_SUBJECT.format(reference=r.reference), email=self.email, document=document)
            logger.info("request %s %s -> %s by %s", r.reference, previous, status, actor)
        return self.request(reference)

    def assign(self, reference: str, username: Optional[str], actor: str) -> Dict[str, Any]:
        """Give the request to an agent, by username (None: back to the pool). Whether that agent
        exists is the accounts' business (the console checks before it calls)."""
        now = self.now()
        if username is not None and not re.fullmatch(r"[a-z0-9._-]{3,60}", username):
            raise NotAllowed("unknown_agent", "No such agent.")
        with session_scope(self.engine) as s:
            r = self._find(s, reference, lock=True)
            r.assigned_to = username
            self._history(s, r, r.status, f"assigned to {username}" if username else "unassigned", actor, "assigned", now)
            audit.record(s, "request_assign", r.customer_id, "service_request", r.reference, {"to": username}, actor=actor)
        return self.request(reference)

    def set_delay_reason(self, reference: str, reason: str, actor: str) -> Dict[str, Any]:
        """What the customer is told if the request runs late (the desk knows why before the job does)."""
        text = " ".join((reason or "").split())[:300]
        with session_scope(self.engine) as s:
            r = self._find(s, reference, lock=True)
            r.delay_reason = text or None
            audit.record(s, "request_delay_reason", r.customer_id, "service_request", r.reference,
                         {"reason": text[:200]}, actor=actor)
        return self.request(reference)

    def documents_received(self, customer_id: int, reference: Optional[str], attachment: Dict[str, Any],
                           actor: str = "customer") -> Optional[Dict[str, Any]]:
        """A customer's photo or PDF for a request: attached to it (the one named, else the oldest one
        waiting for documents, else their latest active request). A request waiting for documents
        goes back to the desk with its clock rule applied. None when they have no request to take it."""
        if not attachment or not attachment.get("media_id"):
            return None
        now = self.now()
        with session_scope(self.engine) as s:
            query = select(ServiceRequest).where(ServiceRequest.customer_id == customer_id,
                                                 ServiceRequest.status.in_(ACTIVE))
            if reference:
                query = query.where(ServiceRequest.reference == str(reference).strip().upper())
            candidates = s.execute(query.order_by(ServiceRequest.id).with_for_update()).scalars().all()
            waiting = [r for r in candidates if r.status == NEEDS_DOCUMENTS]
            r = waiting[0] if waiting else (candidates[-1] if candidates else None)
            if r is None:
                return None
            from cardsystem.service import _attachment_row  # one shape for a kept attachment
            s.add(_attachment_row(r.id, attachment))
            rule = self.rules.kind(r.kind)
            back_to_desk = r.status == NEEDS_DOCUMENTS
            if back_to_desk:
                self._resume_clock(r, rule, now)
                r.status, r.updated_at = IN_PROGRESS, now
                self._history(s, r, IN_PROGRESS, "documents received from the customer", actor, "documents", now)
                message = wording.DOCUMENTS_RECEIVED.format(reference=r.reference, promised=_when(r.promised_by))
            else:
                self._history(s, r, r.status, "a further document from the customer", actor, "documents", now)
                message = wording.DOCUMENTS_MORE.format(reference=r.reference)
            audit.record(s, "request_documents", customer_id, "service_request", r.reference,
                         {"back_to_desk": back_to_desk, "mime_type": attachment.get("mime_type")}, actor=actor)
            return {"reference": r.reference, "status": r.status, "promised_by": r.promised_by,
                    "back_to_desk": back_to_desk, "message": message, "label": rule.label}

    def _carry_out(self, s: Any, r: ServiceRequest, customer: Customer, actor: str) -> None:
        """What resolving a request changes in the card system itself: the customer's new address
        or e-mail, a closed card (only once nothing is owed on it)."""
        details = json.loads(r.details or "{}")
        changed: Dict[str, Any] = {}
        if r.kind == "email_change" and details.get("new_email"):
            customer.email = changed["email"] = str(details["new_email"])[:200]
        elif r.kind == "address_change" and details.get("new_address"):
            customer.address = changed["address"] = str(details["new_address"])
        elif r.kind == "card_closure" and r.card_id:
            card = s.get(Card, r.card_id)
            if card.outstanding_paise > 0:
                raise NotAllowed("still_owed", f"The card still owes {format_inr(card.outstanding_paise)}: it can be "
                                               "closed once that is paid.")
            card.status, changed["card"] = "closed", f"**{card.last4} closed"
        if changed:
            audit.record(s, "request_carried_out", r.customer_id, "service_request", r.reference,
                         {k: ("***" if k in ("email", "address") else v) for k, v in changed.items()}, actor=actor)

    def _proof(self, s: Any, r: ServiceRequest, customer: Customer, rule: Any) -> Dict[str, Any]:
        """Sign the proof of resolution (cardsystem.requests.proof) and keep it in proof_dir."""
        from cardsystem.requests.proof import make_proof, write_private

        s.flush()
        s.refresh(r)
        card = s.get(Card, r.card_id) if r.card_id else None
        data = {"reference": r.reference, "label": rule.label, "status": r.status,
                "customer": {"name": customer.name, "phone": mask_phone(customer.phone)},
                "card_last4": card.last4 if card else None, "created_at": r.created_at.isoformat(),
                "first_promised_by": (r.first_promised_by or r.promised_by).isoformat(),
                "closed_at": r.closed_at.isoformat() if r.closed_at else None, "resolution": r.resolution,
                "history": [{"status": h.status, "note": h.note, "actor": h.actor or "bot", "at": h.at.isoformat(),
                             "event": h.event or "status"} for h in r.history]}
        try:
            pdf = make_proof(data, signer=self.signer)
        except RuntimeError as exc:  # e.g. no signing key configured in production
            raise NotAllowed("no_signing_key", f"The proof of resolution could not be signed: {exc}") from exc
        self.proof_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{r.reference}.pdf"
        write_private(self.proof_dir / name, pdf)
        return {"proof": name, "filename": f"CardCare-{r.reference}-proof.pdf",
                "caption": wording.PROOF_CAPTION.format(reference=r.reference)}

    def proof(self, reference: str) -> bytes:
        """The signed proof of a resolved request, as sent to the customer."""
        with session_scope(self.engine) as s:
            r = self._find(s, reference)
        path = self.proof_dir / f"{r.reference}.pdf"
        if not path.exists():
            raise NotFound("no_proof", "This request has no signed proof (it is not resolved).")
        return path.read_bytes()

    # -- feedback ---------------------------------------------------------------------------------
    def feedback_page(self, token: str) -> Dict[str, Any]:
        """What the feedback page shows for a link (BadLink when forged, expired or used)."""
        link = feedback_links.read_token(token)
        with session_scope(self.engine) as s:
            if s.execute(select(RequestFeedback.id).where(RequestFeedback.nonce == link.nonce)).first():
                raise feedback_links.BadLink("used", "We already have your feedback from this link. Thank you!")
            r = self._find(s, link.reference)
            return {"reference": r.reference, "label": self.rules.kind(r.kind).label, "status": r.status,
                    "resolution": r.resolution, "closed": r.status in CLOSED}

    def give_feedback(self, token: str, rating: Optional[int], comment: Optional[str],
                      escalate: bool) -> Dict[str, Any]:
        """Record a customer's rating and comment; an escalation re-opens the request one rung up
        the ladder, alerts that rung and tells the customer the new date. Once per link."""
        from sqlalchemy.exc import IntegrityError

        link = feedback_links.read_token(token)
        if rating is not None and rating not in range(1, 6):
            raise NotAllowed("bad_rating", "Choose a rating from 1 to 5.")
        text = redact_card_numbers(" ".join((comment or "").split()))[:1000]
        if rating is None and not text and not escalate:
            raise NotAllowed("empty", "Choose a rating, write a comment or ask to escalate.")
        now = self.now()
        try:
            with session_scope(self.engine) as s:
                r = self._find(s, link.reference, lock=True)
                s.add(RequestFeedback(nonce=link.nonce, reference=r.reference, rating=rating, comment=text or None,
                                      escalated=escalate, at=now))
                s.flush()  # a second use of the link stops here (unique nonce)
                said = (f"rated {rating}/5" if rating else "feedback") + (f": {text}" if text else "")
                self._history(s, r, r.status, said[:300], "customer", "feedback", now)
                audit.record(s, "request_feedback", r.customer_id, "service_request", r.reference,
                             {"rating": rating, "escalate": escalate}, actor="customer")
                if escalate:
                    self._reopen(s, r, text, now)
        except IntegrityError:
            raise feedback_links.BadLink("used", "We already have your feedback from this link. Thank you!")
        return {"reference": link.reference, "escalated": escalate,
                "message": wording.FEEDBACK_THANKS.format(reference=link.reference)}

    def _climb(self, r: ServiceRequest, now: dt.datetime) -> tuple:
        """One rung up the ladder (the top rung is kept), with that rung's new date: (level number,
        Level or None, its name)."""
        target = min((r.escalation_level or 1) + 1, max(self.rules.top, 1))
        level = self.rules.level(target)
        r.escalation_level = target
        r.promised_by = self.rules.calendar.add_working_days(now, level.days if level else self.rules.delay_days)
        return target, level, level.name if level else "senior team"

    @staticmethod
    def _ladder_message(level: Any, name: str, template: str, values: Dict[str, str], r: ServiceRequest) -> str:
        """What the customer is told on a new rung: at the ombudsman's, its contact; else the new date."""
        if level is not None and level.role == "ombudsman":
            return wording.OMBUDSMAN.format(level=name, contact=level.contact or "", **values)
        return template.format(level=name, promised=_when(r.promised_by), **values)

    def _reopen(self, s: Any, r: ServiceRequest, comment: str, now: dt.datetime) -> None:
        rule = self.rules.kind(r.kind)
        r.status, r.closed_at, r.updated_at = IN_PROGRESS, None, now
        target, level, name = self._climb(r, now)
        change = self._history(s, r, IN_PROGRESS, f"{wording.ESCALATION_ASKED}; level {target} ({name})",
                               "customer", "escalation", now)
        audit.record(s, "request_reopened", r.customer_id, "service_request", r.reference, {"level": target},
                     actor="customer")
        alert = wording.ALERT_REOPENED.format(reference=r.reference, label=rule.label, comment=comment or "-")
        self._alert(s, r, f"f{change.id}", level.role if level else "supervisor", alert, now)
        customer = s.get(Customer, r.customer_id)
        message = self._ladder_message(level, name, wording.REOPENED, {"label": rule.label, "reference": r.reference}, r)
        notices.queue(s, customer, f"{r.reference}:h{change.id}", message, r.reference,
                      wording.UPDATE_SUBJECT.format(reference=r.reference), email=self.email)

    def _resume_clock(self, r: ServiceRequest, rule: Any, now: dt.datetime) -> None:
        days = r.paused_days if rule.documents_clock == "pause" and r.paused_days else rule.days_for(r.reason)
        r.promised_by = self.rules.calendar.add_working_days(now, days)
        r.paused_days = None

    # -- the delay job ----------------------------------------------------------------------------
    def late_requests(self, now: Optional[dt.datetime] = None) -> List[Dict[str, Any]]:
        """What the delay job would act on at `now`, changing nothing (run-sla --dry-run)."""
        now = now or self.now()
        with session_scope(self.engine) as s:
            rows = s.execute(select(ServiceRequest).where(ServiceRequest.status.in_(CLOCK_RUNS),
                                                          ServiceRequest.promised_by < now)
                             .order_by(ServiceRequest.promised_by)).scalars()
            return [{"reference": r.reference, "promised_by": r.promised_by.isoformat(),
                     "would": "escalate" if (r.breaches or 0) else "tell the delay",
                     "level": r.escalation_level or 1} for r in rows]

    def run_sla(self, now: Optional[dt.datetime] = None) -> SlaReport:
        """Find requests past their promise and act once per breach: the first tells the customer the
        delay and a new date and alerts the executive and supervisor; each later one escalates a
        level. Safe to run on several instances at once: a breach is claimed with a conditional
        update, and its notices and alerts have keys."""
        now = now or self.now()
        report = SlaReport(now=now)
        with session_scope(self.engine) as s:
            late = s.execute(select(ServiceRequest.id, ServiceRequest.breaches).where(
                ServiceRequest.status.in_(CLOCK_RUNS), ServiceRequest.promised_by < now)
                .order_by(ServiceRequest.promised_by)).all()
        for request_id, breaches in late:
            try:
                outcome = self._breach(request_id, breaches or 0, now)
            except Exception:  # one bad request must not stop the others
                logger.exception("delay job: request id %s", request_id)
                continue
            if outcome is None:
                report.skipped += 1
            elif outcome[1] == "late":
                report.late.append(outcome[0])
            else:
                report.escalated.append(outcome[0])
        if report.late or report.escalated:
            logger.info("delay job: %d late, %d escalated", len(report.late), len(report.escalated))
        return report

    def _breach(self, request_id: int, breaches: int, now: dt.datetime) -> Optional[tuple]:
        with session_scope(self.engine) as s:
            claimed = s.execute(
                update(ServiceRequest)
                .where(ServiceRequest.id == request_id, ServiceRequest.status.in_(CLOCK_RUNS),
                       ServiceRequest.promised_by < now,
                       (ServiceRequest.breaches == breaches) if breaches else
                       ((ServiceRequest.breaches.is_(None)) | (ServiceRequest.breaches == 0)))
                .values(breaches=breaches + 1).execution_options(synchronize_session=False)).rowcount
            if not claimed:
                return None  # another instance handled this breach, or the desk moved it meanwhile
            r = s.get(ServiceRequest, request_id)
            rule = self.rules.kind(r.kind)
            customer = s.get(Customer, r.customer_id)
            old = r.promised_by
            number = breaches + 1
            values = {"label": rule.label, "reference": r.reference}
            if number == 1:
                level = self.rules.level(r.escalation_level or 1)
                r.promised_by = self.rules.calendar.add_working_days(now, self.rules.delay_days)
                reason = r.delay_reason or wording.DELAY_REASON_DEFAULT
                message = wording.DELAY.format(old=_when(old), reason=reason.rstrip(".") + ".",
                                               promised=_when(r.promised_by), **values)
                alert = wording.ALERT_LATE.format(promised=_when(old), new=_when(r.promised_by), **values)
                roles = ["executive", "supervisor"]
                note, event, kind = f"late: promised {_when(old)}, new date {_when(r.promised_by)}", "delay", "late"
            else:
                target, level, name = self._climb(r, now)
                message = self._ladder_message(level, name, wording.ESCALATED, values, r)
                alert = wording.ALERT_ESCALATED.format(level=target, name=name, **values)
                roles = [level.role] if level else ["supervisor"]
                note = (f"level {target}: the customer was given the {name}'s contact; new date {_when(r.promised_by)}"
                        if level is not None and level.role == "ombudsman"
                        else f"escalated to level {target} ({name}); new date {_when(r.promised_by)}")
                event, kind = "escalation", "escalated"
            r.updated_at = now
            self._history(s, r, r.status, note, "sla", event, now)
            audit.record(s, "request_" + kind, r.customer_id, "service_request", r.reference,
                         {"breach": number, "promised_was": old, "promised_now": r.promised_by,
                          "level": r.escalation_level or 1}, actor="sla")
            for role in roles:
                self._alert(s, r, f"b{number}:{role}", role, alert, now)
            notices.queue(s, customer, f"{r.reference}:b{number}", message, r.reference,
                          wording.UPDATE_SUBJECT.format(reference=r.reference), email=self.email)
            return r.reference, kind

    def _alert(self, s: Any, r: ServiceRequest, key: str, ladder_role: str, text: str, now: dt.datetime) -> None:
        key = f"{r.reference}:{key}"
        if s.execute(select(DeskAlert.id).where(DeskAlert.key == key)).first():
            return
        if ladder_role == "executive" and r.assigned_to:
            s.add(DeskAlert(key=key, reference=r.reference, username=r.assigned_to, text=text, created_at=now))
        else:
            s.add(DeskAlert(key=key, reference=r.reference, role=ROLE_OF_LEVEL.get(ladder_role, "supervisor"),
                            text=text, created_at=now))

    # -- figures ------------------------------------------------------------------------------------
    def figures(self, now: Optional[dt.datetime] = None) -> Dict[str, Any]:
        """Per kind: opened, resolved in time (by the first promise), resolved late, rejected,
        overdue now, escalated, and the median working time to resolve (hours)."""
        now = now or self.now()
        per: Dict[str, Dict[str, Any]] = {}
        hours: Dict[str, List[float]] = {}
        with session_scope(self.engine) as s:
            for r in s.execute(select(ServiceRequest).where(ServiceRequest.kind != "redemption")).scalars():
                f = per.setdefault(r.kind, {"kind": r.kind, "label": self.rules.kind(r.kind).label, "opened": 0,
                                            "active": 0, "resolved_in_time": 0, "resolved_late": 0, "rejected": 0,
                                            "overdue": 0, "escalated": 0})
                f["opened"] += 1
                if r.status in ACTIVE:
                    f["active"] += 1
                if r.status in CLOCK_RUNS and r.promised_by < now:
                    f["overdue"] += 1
                if (r.escalation_level or 1) > 1:
                    f["escalated"] += 1
                if r.status == REJECTED:
                    f["rejected"] += 1
                if r.status == RESOLVED and r.closed_at:
                    in_time = r.closed_at <= (r.first_promised_by or r.promised_by)
                    f["resolved_in_time" if in_time else "resolved_late"] += 1
                    hours.setdefault(r.kind, []).append(max(0.0, (r.closed_at - r.created_at).total_seconds() / 3600))
        for kind, f in per.items():
            values = hours.get(kind)
            f["median_hours_to_resolve"] = round(statistics.median(values), 1) if values else None
        return {"now": now.isoformat(), "kinds": sorted(per.values(), key=lambda f: f["kind"])}

    # -- helpers ------------------------------------------------------------------------------------
    def _find(self, s: Any, reference: str, lock: bool = False) -> ServiceRequest:
        query = select(ServiceRequest).where(ServiceRequest.reference == str(reference or "").strip().upper()[:20])
        r = s.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        if r is None:
            raise NotFound("unknown_request", f"No request with reference {str(reference)[:20]!r}.")
        return r

    @staticmethod
    def _history(s: Any, r: ServiceRequest, status: str, note: Optional[str], actor: str, event: str,
                 now: dt.datetime) -> StatusChange:
        change = StatusChange(service_request_id=r.id, status=status, note=(note or None) and note[:300],
                              at=now, actor=actor[:60], event=event)
        s.add(change)
        s.flush()
        return change

    def _row(self, r: ServiceRequest, customer: Customer, now: dt.datetime) -> Dict[str, Any]:
        level = self.rules.level(r.escalation_level or 1)
        return {
            "reference": r.reference, "kind": r.kind, "label": self.rules.kind(r.kind).label, "status": r.status,
            "customer_name": customer.name.split()[0], "customer_phone": mask_phone(customer.phone),
            "promised_by": r.promised_by.isoformat(), "created_at": r.created_at.isoformat(),
            "overdue": r.status in CLOCK_RUNS and r.promised_by < now,
            "waiting_for_customer": r.status == NEEDS_DOCUMENTS,
            "escalation_level": r.escalation_level or 1, "escalation_name": level.name if level else None,
            "assigned_to": r.assigned_to,
            "documents": len(r.attachments), "callback": r.kind == "callback",
            "closed": r.status in CLOSED,
        }
