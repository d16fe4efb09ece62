"""What the bank's own messages did and cost, per day (the bank's clock) and category.

Sent: WhatsApp accepted it; delivered, read: its status webhooks; paid within 48 h: a payment was
posted on the reminded card within 48 hours of the reminder being sent. Cost on WhatsApp: the rate
recorded with each message (its category and country when sent), charged per delivered message as
Meta does; against SMS: the same sent messages at the configured SMS rate.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Dict, List, Optional

from sqlalchemy import func, or_, select

from cardsystem.db import session_scope
from cardsystem.models import CustomerNotice, MessageSend, Transaction, utcnow
from cardsystem.reminders.policy import Policy

PAID_WITHIN = dt.timedelta(hours=48)


@dataclass
class Row:
    day: str
    category: str
    sent: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0
    reminders: int = 0
    paid_48h: int = 0
    whatsapp_e4: int = 0
    sms_e4: int = 0

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        for name in ("whatsapp", "sms"):
            exact = Decimal(out.pop(f"{name}_e4")) / 10000
            out[f"{name}_cost"] = str(exact)                                            # exact, for sums
            out[f"{name}_cost_rounded"] = str(exact.quantize(Decimal("0.01"), ROUND_HALF_UP))  # as shown everywhere
        return out


def report(engine: Any, policy: Policy, days: int = 7, now: Optional[dt.datetime] = None) -> Dict[str, Any]:
    now = now or utcnow()
    last_day = policy.local(now).date()
    first_day = last_day - dt.timedelta(days=max(1, days) - 1)
    start = policy.utc(dt.datetime.combine(first_day, dt.time(0, 0)))
    rows: Dict[tuple, Row] = {}
    with session_scope(engine) as s:
        sends = s.execute(select(MessageSend).where(MessageSend.queued_at >= start, MessageSend.queued_at <= now)
                          .order_by(MessageSend.queued_at)).scalars().all()
        reminded = {m.card_id for m in sends if m.kind == "payment_due" and m.card_id}
        payments: Dict[int, List[dt.datetime]] = defaultdict(list)
        card_ids = sorted(reminded)
        for index in range(0, len(card_ids), 500):
            for card_id, posted_at, posted_on in s.execute(
                    select(Transaction.card_id, Transaction.posted_at, Transaction.posted_on).where(
                        Transaction.card_id.in_(card_ids[index:index + 500]), Transaction.category == "payment",
                        or_(Transaction.posted_at >= start - dt.timedelta(days=1),
                            Transaction.posted_at.is_(None) & (Transaction.posted_on >= first_day - dt.timedelta(days=1))))):
                # a payment posted without a time (a file from core banking) counts from its day's end
                payments[card_id].append(posted_at or policy.utc(dt.datetime.combine(posted_on, dt.time(23, 59))))
        skipped = s.execute(select(CustomerNotice.error, func.count()).where(
            CustomerNotice.state == "skipped", CustomerNotice.created_at >= start)
            .group_by(CustomerNotice.error)).all()
        waiting = s.execute(select(CustomerNotice.state, CustomerNotice.error, func.count()).where(
            CustomerNotice.medium == "whatsapp", CustomerNotice.state.in_(("pending", "held", "sending")),
            CustomerNotice.created_at >= start).group_by(CustomerNotice.state, CustomerNotice.error)).all()
        withdrawn = s.execute(select(func.count()).select_from(MessageSend).where(
            MessageSend.state == "withdrawn", MessageSend.queued_at >= start)).scalar_one()
    for m in sends:
        day = policy.local(m.queued_at).date().isoformat()
        row = rows.setdefault((day, m.category), Row(day, m.category))
        sent = m.sent_at is not None or m.state in ("sent", "delivered", "read")
        row.sent += sent
        row.delivered += m.delivered_at is not None
        row.read += m.read_at is not None
        row.failed += m.state == "failed"
        if m.delivered_at is not None:
            row.whatsapp_e4 += m.rate_e4
        if sent:
            row.sms_e4 += m.sms_rate_e4
        if m.kind == "payment_due" and sent:
            row.reminders += 1
            since = m.sent_at or m.queued_at
            row.paid_48h += any(since <= paid <= since + PAID_WITHIN for paid in payments.get(m.card_id, ()))
    ordered = [rows[k] for k in sorted(rows)]
    total = Row("total", "all")
    for row in ordered:
        for name in ("sent", "delivered", "read", "failed", "reminders", "paid_48h", "whatsapp_e4", "sms_e4"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    reasons: Dict[str, int] = defaultdict(int)
    for error, count in skipped:
        reasons[(error or "other").split(":")[0]] += count
    if withdrawn:
        reasons["withdrawn before sending"] += withdrawn
    waits: Dict[str, int] = defaultdict(int)
    for state, error, count in waiting:  # why each waits: quiet hours, outside the window, not approved ...
        why = (error or "").split(":")[0].split(";")[0].strip()
        waits[f"{state} ({why})" if why else state] += count
    return {"from": first_day.isoformat(), "to": last_day.isoformat(), "timezone": policy.timezone,
            "currency": policy.currency, "rates": policy.rates_source, "rows": [r.as_dict() for r in ordered],
            "total": total.as_dict(),
            "saving_rounded": str((Decimal(total.sms_e4 - total.whatsapp_e4) / 10000).quantize(Decimal("0.01"), ROUND_HALF_UP)),
            "not_sent": dict(sorted(reasons.items())),
            "waiting": dict(sorted(waits.items()))}


def as_text(figures: Dict[str, Any]) -> str:
    lines = [f"Messages the bank sent first, {figures['from']} to {figures['to']} ({figures['timezone']}); "
             f"costs in {figures['currency']}",
             f"rates: {figures['rates'] or 'reminders.yml'}", "",
             f"{'day':<11} {'category':<10} {'sent':>6} {'deliv.':>6} {'read':>6} {'failed':>6} {'remind.':>7} "
             f"{'paid48h':>7} {'WhatsApp':>10} {'SMS':>10}"]
    for row in figures["rows"] + [figures["total"]]:
        lines.append(f"{row['day']:<11} {row['category']:<10} {row['sent']:>6} {row['delivered']:>6} {row['read']:>6} "
                     f"{row['failed']:>6} {row['reminders']:>7} {row['paid_48h']:>7} "
                     f"{row['whatsapp_cost_rounded']:>10} {row['sms_cost_rounded']:>10}")
    total = figures["total"]
    if total["reminders"]:
        lines.append(f"\npaid within 48 h of a reminder: {total['paid_48h']} of {total['reminders']} "
                     f"({100 * total['paid_48h'] / total['reminders']:.1f} %)")
    if Decimal(total["sms_cost"]) > 0:
        lines.append(f"WhatsApp cost {total['whatsapp_cost_rounded']} against SMS {total['sms_cost_rounded']}: "
                     f"{100 * Decimal(total['whatsapp_cost']) / Decimal(total['sms_cost']):.0f} % of SMS")
    if figures["not_sent"]:
        lines.append("not sent: " + ", ".join(f"{why} {count}" for why, count in figures["not_sent"].items()))
    if figures["waiting"]:
        lines.append("waiting: " + ", ".join(f"{state} {count}" for state, count in figures["waiting"].items()))
    return "\n".join(lines)
