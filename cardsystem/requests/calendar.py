"""The bank's working-day clock: promises are made and kept in working days, not calendar days.

A working day is a day that is not a weekly off (Sunday), not an off Saturday (the second and
fourth, as Indian banks) and not on the bank's holiday list. "Within N working days" of a moment
means by the closing time of the N-th working day after that moment's day; a request raised on a
holiday or after closing starts counting from the next working day, as a branch would.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Optional, Tuple

try:  # Python 3.9+
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover
    ZoneInfo = None  # type: ignore

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _time(value: object, default: dt.time) -> dt.time:
    if value is None:
        return default
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int):  # YAML reads 09:30 unquoted as sexagesimal minutes
        return dt.time(value // 60, value % 60)
    hours, minutes = str(value).split(":")
    return dt.time(int(hours), int(minutes))


@dataclass(frozen=True)
class WorkCalendar:
    """Working days and hours of the bank; all times naive, in the bank's own time zone."""

    weekly_off: FrozenSet[int] = frozenset({6})
    saturdays_off: FrozenSet[int] = frozenset({2, 4})
    holidays: Dict[dt.date, str] = field(default_factory=dict)
    opens: dt.time = dt.time(9, 30)
    closes: dt.time = dt.time(17, 30)
    timezone: str = "Asia/Kolkata"

    @classmethod
    def from_config(cls, config: Optional[dict]) -> "WorkCalendar":
        config = config or {}
        off = config.get("weekly_off", ["sunday"]) or []
        weekly_off = frozenset(WEEKDAYS.index(str(day).strip().lower()) for day in off)
        saturdays = frozenset(int(n) for n in (config.get("saturdays_off") or []))
        if any(n not in range(1, 6) for n in saturdays):
            raise ValueError("saturdays_off lists which Saturdays of a month are off: numbers 1 to 5")
        holidays: Dict[dt.date, str] = {}
        for day, name in (config.get("holidays") or {}).items():
            date = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
            holidays[date] = str(name or "holiday")
        opens, closes = _time(config.get("opens"), dt.time(9, 30)), _time(config.get("closes"), dt.time(17, 30))
        if opens >= closes:
            raise ValueError("working_days: opens must be before closes")
        if len(weekly_off) + (1 if len(saturdays) == 5 else 0) >= 7:
            raise ValueError("working_days: every day of the week is off")
        return cls(weekly_off, saturdays, holidays, opens, closes, str(config.get("timezone") or "Asia/Kolkata"))

    # -- days --------------------------------------------------------------------------------
    def is_working_day(self, day: dt.date) -> bool:
        if day.weekday() in self.weekly_off or day in self.holidays:
            return False
        if day.weekday() == 5 and (day.day - 1) // 7 + 1 in self.saturdays_off:
            return False
        return True

    def why_closed(self, day: dt.date) -> Optional[str]:
        """The holiday's name, 'weekly off' or 'bank Saturday' for a day off; None for a working day."""
        if day in self.holidays:
            return self.holidays[day]
        if day.weekday() in self.weekly_off:
            return "weekly off"
        if not self.is_working_day(day):
            return "bank Saturday"
        return None

    def next_working_day(self, day: dt.date) -> dt.date:
        """The first working day strictly after `day`."""
        day += dt.timedelta(days=1)
        for _ in range(400):
            if self.is_working_day(day):
                return day
            day += dt.timedelta(days=1)
        raise ValueError("no working day within a year: check the holiday list")

    def first_counted_day(self, moment: dt.datetime) -> dt.date:
        """The working day a request raised at `moment` starts on (the same day if it is a
        working day and the bank has not closed, else the next working day)."""
        if self.is_working_day(moment.date()) and moment.time() < self.closes:
            return moment.date()
        return self.next_working_day(moment.date())

    def add_working_days(self, moment: dt.datetime, days: int) -> dt.datetime:
        """The promise "within `days` working days" of `moment`: closing time of the days-th
        working day after the day counting starts (0 days: by closing time that day)."""
        day = self.first_counted_day(moment)
        for _ in range(max(0, int(days))):
            day = self.next_working_day(day)
        return dt.datetime.combine(day, self.closes)

    def working_days_between(self, start: dt.datetime, end: dt.datetime) -> int:
        """Whole working days from `start` until `end` (0 when `end` is not later): how much of a
        promise is left when the clock is paused at `start` with the promise at `end`."""
        if end <= start:
            return 0
        day, count = self.first_counted_day(start), 0
        while day < end.date():
            day = self.next_working_day(day)
            if day <= end.date():
                count += 1
        return count

    def holidays_between(self, start: dt.date, end: dt.date) -> Tuple[Tuple[dt.date, str], ...]:
        """Holidays in [start, end], to explain a promise that looks long."""
        return tuple(sorted((d, n) for d, n in self.holidays.items() if start <= d <= end))

    # -- time ---------------------------------------------------------------------------------
    def local_now(self) -> dt.datetime:
        """Now on the bank's wall clock (naive), seconds dropped."""
        if ZoneInfo is not None:
            try:
                return dt.datetime.now(ZoneInfo(self.timezone)).replace(tzinfo=None, microsecond=0)
            except Exception:  # unknown zone name: the machine's local time
                pass
        return dt.datetime.now().replace(microsecond=0)

    def localise(self, moment: dt.datetime) -> dt.datetime:
        """A moment given with a time zone (e.g. --now 2026-12-01T10:00+05:30) on the bank's clock;
        a naive one is taken as the bank's time already."""
        if moment.tzinfo is None or ZoneInfo is None:
            return moment.replace(tzinfo=None)
        return moment.astimezone(ZoneInfo(self.timezone)).replace(tzinfo=None)

