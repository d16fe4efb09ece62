"""What the bank tells customers first, kept until delivered.

A change writes its notice in its own transaction (`queue`), so a status change is never made
without its notice, nor told twice (`key`). Deliverers take notices of their medium: the WhatsApp
channel (inside the customer's 24-hour window; outside it a notice is held and looked at again
each minute until the customer writes or a template can carry it) and the mailer (SMTP). A taken
notice not settled within CLAIM_SECONDS (its deliverer died) is taken again; the channel's outbox
sends a notice's key once, so that repeat costs nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine

from cardsystem import files
from cardsystem.db import get_engine, session_scope
from cardsystem.models import Customer, CustomerNotice, utcnow

logger = logging.getLogger(__name__)
WHATSAPP, EMAIL = "whatsapp", "email"
CLAIM_SECONDS = 60
HELD_RECHECK_SECONDS = 60
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Notice:
    id: int
    key: str
    medium: str
    address: str
    reference: Optional[str]
    subject: Optional[str]
    text: str
    document: Optional[Dict[str, Any]]
    attempts: int


def queue(s: Any, customer: Customer, key: str, text: str, reference: Optional[str] = None,
          subject: Optional[str] = None, document: Optional[Dict[str, Any]] = None, email: bool = False,
          whatsapp: bool = True, kind: Optional[str] = None, card_id: Optional[int] = None,
          facts: Optional[Dict[str, Any]] = None) -> None:
    """Add the notice (WhatsApp, and e-mail when asked and the customer has an address) in session
    `s`; a key already queued adds nothing. `kind` and `facts` let a template carry it outside the
    customer's 24-hour window (cardsystem.reminders)."""
    now = utcnow()
    if reference and whatsapp:
        # a customer silent for days gets the request's latest news once, not every step they missed
        s.execute(update(CustomerNotice).where(CustomerNotice.reference == reference, CustomerNotice.medium == WHATSAPP,
                                               CustomerNotice.state.in_(("pending", "held")))
                  .values(state="superseded").execution_options(synchronize_session=False))
    media = ([(WHATSAPP, customer.phone)] if whatsapp else []) + \
        ([(EMAIL, customer.email)] if email and customer.email and "@" in customer.email else [])
    for medium, address in media:
        full_key = f"{key}:{medium}"[:120]
        if s.execute(select(CustomerNotice.id).where(CustomerNotice.key == full_key)).first():
            continue
        s.add(CustomerNotice(key=full_key, medium=medium, customer_id=customer.id, address=address,
                             reference=reference, subject=(subject or "")[:200] or None, text=text,
                             document=json.dumps(document) if document else None, state="pending",
                             attempts=0, created_at=now, kind=kind, card_id=card_id,
                             facts=json.dumps(facts) if facts else None))


class NoticeBox:
    """The deliverers' side: take due notices of a medium, settle them."""

    def __init__(self, db_url: Optional[str] = None, engine: Optional[Engine] = None,
                 held_recheck_seconds: float = HELD_RECHECK_SECONDS, proof_dir: Optional[Path] = None,
                 files_dir: Optional[Path] = None, outreach: Any = None,
                 clock: Optional[Callable[[], dt.datetime]] = None) -> None:
        from cardsystem.config import Settings

        settings = Settings.from_env()
        self.engine = engine or get_engine(db_url or settings.db_url)
        self.held_recheck = dt.timedelta(seconds=held_recheck_seconds)
        self.proof_dir = Path(proof_dir or settings.proof_dir)
        self.files_dir = Path(files_dir or settings.statement_dir)
        self._outreach: Any = outreach  # cardsystem.reminders.outreach.Outreach (made on first use)
        self.clock = clock or utcnow     # UTC (tests and replays give their own)

    def take(self, medium: str, limit: int = 50, now: Optional[dt.datetime] = None) -> List[Notice]:
        """Due notices of `medium`, each taken by this caller alone (a conditional update)."""
        now = now or self.clock()
        stale = now - dt.timedelta(seconds=CLAIM_SECONDS)
        recheck = now - self.held_recheck
        taken: List[Notice] = []
        with session_scope(self.engine) as s:
            rows = s.execute(
                select(CustomerNotice).where(
                    CustomerNotice.medium == medium,
                    or_(CustomerNotice.not_before.is_(None), CustomerNotice.not_before <= now),
                    or_(CustomerNotice.state == "pending",
                        (CustomerNotice.state == "sending") & (CustomerNotice.claimed_at < stale),
                        (CustomerNotice.state == "held") & (CustomerNotice.claimed_at < recheck)))
                .order_by(CustomerNotice.id).limit(limit)).scalars().all()
            for row in rows:
                won = s.execute(update(CustomerNotice)
                                .where(CustomerNotice.id == row.id, CustomerNotice.state == row.state,
                                       or_(CustomerNotice.claimed_at.is_(None), CustomerNotice.claimed_at == row.claimed_at))
                                .values(state="sending", claimed_at=now, attempts=CustomerNotice.attempts + 1)
                                .execution_options(synchronize_session=False)).rowcount
                if won:
                    taken.append(Notice(row.id, row.key, row.medium, row.address, row.reference, row.subject, row.text,
                                        self._document(row.document), (row.attempts or 0) + 1))
        return taken

    def _document(self, stored: Optional[str]) -> Optional[Dict[str, Any]]:
        """A notice's document as a fresh signed link (a kept proof is published for an hour now, so
        a notice held for days still carries a link that works)."""
        if not stored:
            return None
        document = json.loads(stored)
        name = document.get("proof")
        if name and (self.proof_dir / name).is_file():
            link, _ = files.publish(self.files_dir, (self.proof_dir / name).read_bytes(),
                                    document.get("filename") or name)
            document["link"] = link
        return document

    def sent(self, notice_id: int) -> None:
        self._settle(notice_id, state="sent", sent_at=utcnow(), error=None)

    def held(self, notice_id: int, why: str, until: Optional[dt.datetime] = None) -> None:
        """Not deliverable now (e.g. the 24-hour window is closed): looked at again later, or not
        before `until` (UTC; quiet hours, a paused number)."""
        self._settle(notice_id, state="held", claimed_at=utcnow(), error=why[:200], not_before=until)

    def skipped(self, notice_id: int, why: str) -> None:
        """Not to be sent at all (the customer said STOP, the bill is paid, the weekly cap): kept with why."""
        logger.info("notice %s not sent: %s", notice_id, why)
        self._settle(notice_id, state="skipped", error=why[:200])

    # -- the bank writing first (cardsystem.reminders) ----------------------------------------------
    @property
    def outreach(self) -> Any:
        if self._outreach is None:
            from cardsystem.config import Settings
            from cardsystem.reminders.outreach import Outreach

            self._outreach = Outreach(self.engine, Settings.from_env())
        return self._outreach

    def plan(self, notice_id: int, window_open: bool, now: Optional[dt.datetime] = None) -> Any:
        """What to do with a taken notice now (cardsystem.reminders.outreach.Delivery): a plain message
        inside the window, an approved template outside it, or hold / skip, and why."""
        now = now or self.clock()
        with session_scope(self.engine) as s:
            row = s.get(CustomerNotice, notice_id)
            delivery = self.outreach.plan(s, row, window_open, now)
            if delivery.action == "text" and row.document:
                delivery = dataclasses.replace(delivery, document=self._document(row.document))
            return delivery

    def template_status(self, value: Dict[str, Any]) -> bool:
        """Meta's verdict on a template (the webhook field message_template_status_update)."""
        from cardsystem.reminders.book import TemplateBook

        return TemplateBook(self.engine).from_webhook(value)

    def still_wanted(self, key: str) -> bool:
        """Whether a queued message of the bank's may still go now (STOP and payments since count)."""
        if not key.startswith("notice."):
            return True
        with session_scope(self.engine) as s:
            return self.outreach.still_wanted(s, key)

    def outcome(self, key: str, state: str, wamid: Optional[str] = None, code: Optional[int] = None,
                error: Optional[str] = None, at: Optional[dt.datetime] = None) -> bool:
        """What WhatsApp said of a message the bank sent first (its outbox key): for the ledger."""
        if not key.startswith("notice."):
            return False
        with session_scope(self.engine) as s:
            return self.outreach.outcome(s, key, state, wamid, code, error, at or self.clock())

    def failed(self, notice_id: int, error: str, attempts: int) -> None:
        """A try failed: taken again after CLAIM_SECONDS, until MAX_ATTEMPTS, then left failed."""
        if attempts >= MAX_ATTEMPTS:
            logger.warning("notice %s given up after %s attempts: %s", notice_id, attempts, error)
            self._settle(notice_id, state="failed", error=error[:200])
        else:
            self._settle(notice_id, state="sending", claimed_at=utcnow(), error=error[:200])

    def failed_for_good(self, notice_id: int, error: str) -> None:
        """A try failed in a way no retry mends (the address is malformed or refused): left failed."""
        logger.warning("notice %s failed for good: %s", notice_id, error)
        self._settle(notice_id, state="failed", error=error[:200])

    def _settle(self, notice_id: int, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(CustomerNotice).where(CustomerNotice.id == notice_id).values(**values)
                      .execution_options(synchronize_session=False))

    def of(self, reference: str) -> List[Dict[str, Any]]:
        """A request's notices, oldest first (the console's history and the tests)."""
        with session_scope(self.engine) as s:
            rows = s.execute(select(CustomerNotice).where(CustomerNotice.reference == reference)
                             .order_by(CustomerNotice.id)).scalars()
            return [{"key": r.key, "medium": r.medium, "state": r.state, "text": r.text, "subject": r.subject,
                     "document": json.loads(r.document) if r.document else None, "created_at": r.created_at,
                     "sent_at": r.sent_at, "error": r.error} for r in rows]
