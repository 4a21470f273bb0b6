"""Office hours of live service: a weekly schedule in local time, and holidays (Gregorian or Jalali)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import jdatetime

from softswitch.domain.persian import WEEKDAYS, iran_weekday, time_zone

# How far next_opening() and closes_at() look; longer than any run of holidays (Nowruz).
LOOKAHEAD_DAYS = 60
# A year below this is a Jalali year (the Jalali year is ~621 behind the Gregorian).
_JALALI_BEFORE_YEAR = 1700
_DAY_MINUTES = 24 * 60
_RANGE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_DATE = re.compile(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*")


@dataclass(frozen=True, order=True)
class _Range:
    """Open from start to end (exclusive), in minutes after local midnight; end may be 24:00."""

    start: int
    end: int


@dataclass(frozen=True)
class OfficeHours:
    """When live service is open: ranges per weekday in local time, closed all day on holidays.

    Times are the wall clock of ``tz``. Ranges that touch, also across midnight
    (a day ending at 24:00 and the next starting at 00:00), form one open period.
    """

    tz: ZoneInfo
    weekly: tuple[tuple[_Range, ...], ...]  # indexed like WEEKDAYS, Saturday first
    holidays: frozenset[date]  # Gregorian

    @classmethod
    def from_config(cls, cfg: Any) -> OfficeHours:
        """Parse an object with ``timezone``, ``weekly`` and ``holidays`` (softswitch.config.OfficeHoursConfig).

        Raises ValueError naming the bad entry.
        """
        weekly = _parse_weekly(cfg.weekly)
        holidays = frozenset(_parse_holiday(entry) for entry in cfg.holidays)
        return cls(tz=time_zone(cfg.timezone, "timezone"), weekly=weekly, holidays=holidays)

    def is_open(self, at: datetime) -> bool:
        """Whether live service is open at the moment ``at`` (aware, any time zone)."""
        return self._period_at(self._local(at)) is not None

    def next_opening(self, at: datetime) -> datetime | None:
        """The next moment after ``at`` at which live service opens, in ``tz``.

        When open at ``at``, that is the opening after the current period. None if
        nothing opens within LOOKAHEAD_DAYS (a schedule with no open time at all).
        """
        local = self._local(at)
        for start, _ in self._periods_around(local):
            if start > local:
                return start.replace(tzinfo=self.tz)
        return None

    def closes_at(self, at: datetime) -> datetime | None:
        """When the open period holding ``at`` ends, in ``tz``; None if closed at ``at``.

        Also None when it does not end within LOOKAHEAD_DAYS (open around the clock).
        """
        local = self._local(at)
        period = self._period_at(local)
        horizon = datetime.combine(local.date() + timedelta(days=LOOKAHEAD_DAYS), time())
        if period is None or period[1] >= horizon:
            return None
        return period[1].replace(tzinfo=self.tz)

    def _local(self, at: datetime) -> datetime:
        _require_aware(at, "at")
        return at.astimezone(self.tz).replace(tzinfo=None)

    def _period_at(self, local: datetime) -> tuple[datetime, datetime] | None:
        for start, end in self._periods_around(local):
            if start > local:
                return None
            if local < end:
                return start, end
        return None

    def _periods_around(self, local: datetime) -> Iterator[tuple[datetime, datetime]]:
        # From the day before: a period running over midnight into local's day is whole.
        return self._periods(local.date() - timedelta(days=1), LOOKAHEAD_DAYS + 1)

    def _periods(self, first_day: date, days: int) -> Iterator[tuple[datetime, datetime]]:
        """Open periods in local wall time (naive) from first_day on, in order, touching ones merged.

        A period still open at the end of the last day is cut there.
        """
        pending: tuple[datetime, datetime] | None = None
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            if day in self.holidays:
                continue
            midnight = datetime.combine(day, time())
            for hours in self.weekly[iran_weekday(day)]:
                start = midnight + timedelta(minutes=hours.start)
                end = midnight + timedelta(minutes=hours.end)
                if pending is not None and pending[1] == start:
                    pending = (pending[0], end)
                    continue
                if pending is not None:
                    yield pending
                pending = (start, end)
        if pending is not None:
            yield pending


def _parse_weekly(weekly: Mapping[str, Any]) -> tuple[tuple[_Range, ...], ...]:
    unknown = [name for name in weekly if name not in WEEKDAYS]
    if unknown:
        raise ValueError(f"weekly: unknown weekday {unknown[0]!r}; use {', '.join(WEEKDAYS)}")
    return tuple(_parse_day(name, weekly.get(name, ())) for name in WEEKDAYS)


def _parse_day(weekday: str, entries: Any) -> tuple[_Range, ...]:
    where = f"weekly.{weekday}"
    if isinstance(entries, str):
        raise ValueError(f"{where}: must be a list of ranges 'HH:MM-HH:MM', got the string {entries!r}")
    ranges = sorted((_parse_range(where, entry), entry) for entry in entries)
    for (before, before_text), (after, after_text) in zip(ranges, ranges[1:]):
        if after.start < before.end:
            raise ValueError(f"{where}: ranges {before_text!r} and {after_text!r} overlap")
    return tuple(hours for hours, _ in ranges)


def _parse_range(where: str, entry: Any) -> _Range:
    match = _RANGE.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        raise ValueError(f"{where}: {entry!r} is not a range 'HH:MM-HH:MM'")
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start_h > 23 or start_m > 59 or end_m > 59 or end > _DAY_MINUTES:
        raise ValueError(f"{where}: {entry!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    if end <= start:
        raise ValueError(
            f"{where}: {entry!r} is empty: it must end after it starts "
            "(a range cannot run past midnight: end it at 24:00 and go on at 00:00 the next day)"
        )
    return _Range(start, end)


def _parse_holiday(entry: Any) -> date:
    text = str(entry)
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"holidays: {entry!r} is not a date YYYY-MM-DD (Jalali like 1405-01-01 or Gregorian like 2026-03-21)"
        )
    year, month, day = (int(part) for part in match.groups())
    try:
        if year < _JALALI_BEFORE_YEAR:
            gregorian: date = jdatetime.date(year, month, day).togregorian()
            return gregorian
        return date(year, month, day)
    except ValueError as error:
        calendar = "Jalali" if year < _JALALI_BEFORE_YEAR else "Gregorian"
        raise ValueError(f"holidays: {entry!r} is not a valid {calendar} date: {error}") from None


def _require_aware(moment: datetime, what: str) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{what} must be a datetime with a time zone, got {moment!r}")
