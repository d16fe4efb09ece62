"""Understanding the month a customer means: 'march', 'last month', 'mar 2026', '2026-03'."""
from __future__ import annotations

import datetime as dt
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
