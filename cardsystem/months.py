"""Understanding the month a customer means: 'march', 'last month', 'mar 2026', '2026-03'."""
from __future__ import annotations

import datetime as dt
import difflib
import re
from typing import Optional

_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "febuary": 2, "mar": 3, "march": 3,
    "apr": 4, "april": 4, "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7,
    "aug": 8, "august": 8, "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10,
    "nov": 11, "november": 11, "dec": 12, "december": 12,
}
_LAST = ("last month", "previous month", "pichle mahine", "pichla mahina", "pichhle mahine")
_THIS = ("this month", "current month", "is mahine", "is month")
_LATEST = ("latest", "recent", "last statement", "newest", "current statement")


class FutureMonth(ValueError):
    """The customer asked for a month that has not happened yet."""


def _shift(year: int, month: int, delta: int) -> "tuple[int, int]":
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def shift_period(period: str, months: int) -> str:
    """'2026-10' shifted by +1 -> '2026-11'."""
    year, month = _shift(int(period[:4]), int(period[5:7]), months)
    return f"{year:04d}-{month:02d}"


def parse_month(text: Optional[str], today: dt.date) -> Optional[str]:
    """Return 'YYYY-MM' for what the customer typed, 'latest', or None if no month is named.

    A month name without a year means its most recent occurrence (in January, 'december'
    is last December). A named future month raises FutureMonth.
    """
    if not text:
        return None
    lowered = " ".join(str(text).lower().split())
    if any(phrase in lowered for phrase in _LAST):
        year, month = _shift(today.year, today.month, -1)
        return f"{year:04d}-{month:02d}"
    if any(phrase in lowered for phrase in _THIS):
        return f"{today.year:04d}-{today.month:02d}"
    iso = re.search(r"\b(20\d\d)[-/](0?[1-9]|1[0-2])\b", lowered) or None
    if iso:
        year, month = int(iso.group(1)), int(iso.group(2))
    else:
        numeric = re.search(r"\b(0?[1-9]|1[0-2])[-/](20\d\d|\d\d)\b", lowered)
        name = None
        for token in re.findall(r"[a-z]+", lowered):
            if token in _MONTHS:
                name = token
                break
            close = difflib.get_close_matches(token, [m for m in _MONTHS if len(m) > 4], n=1, cutoff=0.8) \
                if len(token) >= 5 else []
            if close:  # "agust", "decmber"
                name = close[0]
                break
        if name is None and numeric is None:
            return "latest" if any(word in lowered for word in _LATEST) else None
        if name is not None:
            month = _MONTHS[name]
            year_match = re.search(r"\b(20\d\d)\b|'(\d\d)\b", lowered)
            if year_match:
                year = int(year_match.group(1) or ("20" + year_match.group(2)))
            else:
                year = today.year if month <= today.month else today.year - 1
        else:
            month = int(numeric.group(1))
            raw_year = numeric.group(2)
            year = int(raw_year) if len(raw_year) == 4 else 2000 + int(raw_year)
    if (year, month) > (today.year, today.month):
        raise FutureMonth(f"{year:04d}-{month:02d}")
    return f"{year:04d}-{month:02d}"


_WEEKDAY_NUMBERS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def parse_day(text: Optional[str], today: dt.date) -> Optional["tuple[dt.date, int]"]:
    """The day a customer means for a past transaction, and how many days either side to look.

    'yesterday', 'kal', 'on 3rd', '3 nov', '12/11' (day first, as in India), 'last tuesday',
    '2 weeks back', 'last week'. Days without a month mean the latest such day not after today.
    """
    if not text:
        return None
    lowered = " ".join(str(text).lower().split())
    if re.search(r"\bday before yesterday\b|\bparso\b", lowered):
        return today - dt.timedelta(days=2), 1
    if re.search(r"\byesterday\b|\bkal\b", lowered):
        return today - dt.timedelta(days=1), 1
    if re.search(r"\btoday\b|\baaj\b", lowered):
        return today, 1
    ago = re.search(r"\b(\d+)\s+(day|days|din|week|weeks|hafte)\s+(?:ago|back|pehle)\b", lowered)
    if ago:
        days = int(ago.group(1)) * (7 if ago.group(2).startswith(("week", "hafte")) else 1)
        return today - dt.timedelta(days=days), 2 if days < 7 else 4
    if re.search(r"\b(?:last|pichle)\s+(?:week|hafte)\b", lowered):
        return today - dt.timedelta(days=7), 4
    weekday = re.search(r"\b(?:last|this|past|pichle)\s+(mon|tue|wed|thu|fri|sat|sun)[a-z]*\b", lowered)
    if weekday:
        back = (today.weekday() - _WEEKDAY_NUMBERS[weekday.group(1)]) % 7 or 7
        return today - dt.timedelta(days=back), 1
    numeric = re.search(r"\b([0-2]?\d|3[01])[/.-](0?[1-9]|1[0-2])(?:[/.-]((?:20)?\d\d))?\b", lowered)
    named = re.search(r"\b([0-2]?\d|3[01])(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]{3,9})\b", lowered) or \
        re.search(r"\b([a-z]{3,9})\s+([0-2]?\d|3[01])(?:st|nd|rd|th)?\b", lowered)
    day = month = year = None
    if numeric:
        day, month = int(numeric.group(1)), int(numeric.group(2))
        if numeric.group(3):
            year = int(numeric.group(3)) + (2000 if len(numeric.group(3)) == 2 else 0)
    elif named:
        first, second = named.group(1), named.group(2)
        day_text, month_text = (first, second) if first.isdigit() else (second, first)
        if month_text in _MONTHS:
            day, month = int(day_text), _MONTHS[month_text]
    if day is None:
        ordinal = re.search(r"\b([0-2]?\d|3[01])(?:st|nd|rd|th)\b", lowered)
        if not ordinal:
            return None
        day, month = int(ordinal.group(1)), today.month
        if day > today.day:
            year_, month = _shift(today.year, today.month, -1)
            year = year_
    if year is None:
        year = today.year if (month, day) <= (today.month, today.day) else today.year - 1
    try:
        return dt.date(year, month, day), 1
    except ValueError:
        return None
