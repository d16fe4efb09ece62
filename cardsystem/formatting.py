"""Money, dates and identifiers as customers read them (and as logs may show them)."""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Optional

RUPEE = "\u20b9"


def _group_indian(digits: str) -> str:
    """Group an integer string the Indian way: 12,34,567."""
    if len(digits) <= 3:
        return digits
    head, tail = digits[:-3], digits[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ",".join(groups) + "," + tail


def format_inr(paise: int) -> str:
    """Format paise as rupees in Indian grouping: 12345678 -> '₹1,23,456.78'."""
    sign = "-" if paise < 0 else ""
    rupees, rest = divmod(abs(int(paise)), 100)
    return f"{sign}{RUPEE}{_group_indian(str(rupees))}.{rest:02d}"


_AMOUNT_RE = re.compile(r"(?:rs\.?|inr|\u20b9)?\s*([0-9][0-9,]*(?:\.[0-9]{1,2})?)\s*(k|lakh|lac|l)?\b", re.I)


def parse_amount_paise(text: str) -> Optional[int]:
    """Read an amount a customer typed ('₹1,500', 'rs 2.5k', '1 lakh', '799.50') as paise."""
    if text is None:
        return None
    match = _AMOUNT_RE.search(str(text).strip())
    if not match:
        return None
    try:
        value = Decimal(match.group(1).replace(",", ""))
    except InvalidOperation:
        return None
    suffix = (match.group(2) or "").lower()
    if suffix == "k":
        value *= 1000
    elif suffix in ("lakh", "lac", "l"):
        value *= 100000
    paise = int((value * 100).to_integral_value())
    return paise if paise > 0 else None


def format_date(day: dt.date) -> str:
    """An unambiguous date: '05 Dec 2026' (never 05/12)."""
    return day.strftime("%d %b %Y")


def format_datetime(moment: dt.datetime) -> str:
    return moment.strftime("%d %b %Y, %I:%M %p").replace(" 0", " ")


def format_month(period: str) -> str:
    """'2026-03' -> 'March 2026'."""
    year, month = period.split("-")
    return dt.date(int(year), int(month), 1).strftime("%B %Y")


def mask_phone(phone: str) -> str:
    """Keep the first 2 and the last 4 digits: '919800000001' -> '91******0001'."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) <= 6:
        return "*" * len(digits)
    return digits[:2] + "*" * (len(digits) - 6) + digits[-4:]


def mask_card(last4: str) -> str:
    return f"\u2022\u2022 {last4}"


_CARD_NUMBER_RE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


def redact_card_numbers(text: str) -> str:
    """Replace anything that looks like a full card number with its last four digits only."""

    def _mask(match: "re.Match[str]") -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "XXXX-XXXX-XXXX-" + digits[-4:]

    return _CARD_NUMBER_RE.sub(_mask, text or "")
