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


_AMOUNT_RE = re.compile(r"(?:rs\.?|inr|\u20b9)?\s*([0-9][0-9,]*(?:\.[0-9]{1,2})?)\s*(k|lakhs?|lacs?|l|crores?|cr)?\b", re.I)


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
    elif suffix in ("lakh", "lakhs", "lac", "lacs", "l"):
        value *= 100000
    elif suffix in ("crore", "crores", "cr"):
        value *= 10000000
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


# A run of digits with at most one separator between them ("4111 1111-1111 1111 321", "4111...1111/29"),
# not limited by word boundaries: "card4111111111111111x" is a card number too.
_DIGIT_RUN_RE = re.compile(r"(?<!\d)\d(?:[ ./-]?\d){12,}(?!\d)")
CARD_LENGTHS = (16, 15, 19, 13, 14, 17, 18)  # the common lengths first: "4111...1111 321" is a 16-digit card


def _card_in(digits: str) -> Optional[str]:
    """The card number a run of digits holds, at its start or at its end (a CVV, expiry or stray
    digits typed next to it), or the whole run when it has a card's length; None otherwise."""
    if len(digits) in (15, 16):  # a card's length: a mistyped digit must not let it through
        return digits
    for length in CARD_LENGTHS:
        if length > len(digits):
            continue
        for candidate in (digits[:length], digits[-length:]):
            if candidate[0] in "23456" and _luhn_ok(candidate):
                return candidate
    return None


def _mask_card_numbers(text: str) -> "tuple[str, bool]":
    found = False

    def mask(match: "re.Match[str]") -> str:
        nonlocal found
        digits = re.sub(r"\D", "", match.group(0))
        card = _card_in(digits)
        if card is None:
            return match.group(0)
        found = True
        rest = " [more digits hidden]" if len(digits) > len(card) else ""
        return "XXXX-XXXX-XXXX-" + card[-4:] + rest

    return _DIGIT_RUN_RE.sub(mask, text or ""), found


def redact_card_numbers(text: str) -> str:
    """Replace anything that looks like a full card number with its last four digits only."""
    return _mask_card_numbers(text)[0]


_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def _verhoeff_ok(digits: str) -> bool:
    """Aadhaar numbers carry a Verhoeff check digit: a phone number "919800000001" mostly fails it."""
    check = 0
    for i, char in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(char)]]
    return check == 0


class _AadhaarPattern:
    """12 digits starting 2-9 (grouped 4-4-4 or not) whose Verhoeff check digit holds."""

    _candidate = re.compile(r"\b[2-9]\d{3}[ -]?\d{4}[ -]?\d{4}\b(?![ -]?\d)")

    def _valid(self, match: "re.Match[str]") -> bool:
        return _verhoeff_ok(re.sub(r"\D", "", match.group(0)))

    def search(self, text: str) -> bool:
        return any(self._valid(m) for m in self._candidate.finditer(text))

    def sub(self, replacement: str, text: str) -> str:
        return self._candidate.sub(lambda m: replacement if self._valid(m) else m.group(0), text)


_AADHAAR_RE = _AadhaarPattern()


# -- secrets a customer types by mistake ----------------------------------------------------------
# Found and hidden before a message is stored or understood; the customer is warned. A card
# number keeps its last four digits, so "my card 4111 ... 1111 is lost" still names the card.
_SECRET_PATTERNS = (
    ("cvv", re.compile(r"\b(?:cvv|cvc|cvv2)\b\W{0,3}(?:is\s+|hai\s+)?\d{3,4}\b", re.I)),
    ("otp", re.compile(r"\b(?:otp|one time password)\b\W{0,3}(?:is\s+|hai\s+)?\d{4,8}\b", re.I)),
    # "482913 is my otp" (but not the last four of a card already masked: "XXXX-XXXX-XXXX-0004 otp 482913")
    ("otp", re.compile(r"(?<!X-)\b\d{4,8}\s+(?:is\s+)?(?:the\s+|my\s+)?otp\b", re.I)),
    ("pin", re.compile(r"\b(?:atm\s+)?pin\b\W{0,3}(?:is\s+|hai\s+|number\s+)?\d{4,6}\b", re.I)),
    ("date of birth", re.compile(
        r"\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|born on|janam tithi)\b\W{0,3}(?:is\s+)?"
        r"(?:\d{1,2}[/.\- ]\d{1,2}[/.\- ](?:19|20)?\d\d|\d{1,2}(?:st|nd|rd|th)?\s+[a-z]{3,9},?\s+(?:19|20)\d\d)", re.I)),
    ("date of birth", re.compile(r"\b(?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|1[0-2])[/.-](?:19[3-9]\d|200\d)\b")),
    ("Aadhaar number", _AADHAAR_RE),
    ("PAN", re.compile(r"\b[A-Z]{5}\d{4}[A-Z]\b")),
)


def _luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        d = int(char)
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def hide_secrets(text: str) -> "tuple[str, list]":
    """(text with secrets hidden, the kinds found: 'card number', 'CVV', 'OTP', ...)."""
    found: list = []

    text, card = _mask_card_numbers(text or "")
    if card:
        found.append("card number")
    for kind, pattern in _SECRET_PATTERNS:
        if pattern.search(text):
            found.append(kind)
            text = pattern.sub(f"[{kind} hidden]", text)
    labels = {"cvv": "CVV", "otp": "OTP", "pin": "PIN"}
    return text, list(dict.fromkeys(labels.get(k, k) for k in found))
