"""Persian digits, the Iranian week and Jalali dates: how the hotline writes numbers and days for people."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jdatetime

# The Iranian week starts on Saturday; index 0 below is Saturday.
WEEKDAYS = ("saturday", "sunday", "monday", "tuesday", "wednesday", "thursday", "friday")
PERSIAN_WEEKDAYS = ("شنبه", "یکشنبه", "دوشنبه", "سه‌شنبه", "چهارشنبه", "پنج‌شنبه", "جمعه")
_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
# Persian (U+06F0..) and Arabic-Indic (U+0660..) digits are what Persian keyboards
# and forms produce; both mean the same digits.
_ASCII_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")


def normalize_digits(text: str) -> str:
    """ASCII digits for any Persian or Arabic-Indic digits; other characters unchanged."""
    return text.translate(_ASCII_DIGITS)


def time_zone(name: str, where: str = "time zone") -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. Asia/Tehran); ValueError if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{where}: unknown time zone {name!r} (an IANA name such as Asia/Tehran)") from None


def iran_weekday(day: date) -> int:
    """Index of the day in the Iranian week, Saturday 0 to Friday 6 (as WEEKDAYS)."""
    return (day.weekday() + 2) % 7


def persian_weekday(day: date) -> str:
    """The Persian name of the day's weekday, e.g. شنبه."""
    return PERSIAN_WEEKDAYS[iran_weekday(day)]


def persian_digits(text: object) -> str:
    """text (or a number) with ASCII digits written as Persian digits (۰..۹)."""
    return str(text).translate(_PERSIAN_DIGITS)


def jalali_date(ts: float, tz: tzinfo | str) -> str:
    """The Jalali date of the Unix time ts in tz, in Persian digits, e.g. ۱۴۰۵/۰۹/۰۷."""
    return _jalali(ts, tz, "%Y/%m/%d")


def jalali_day(day: date) -> str:
    """The Jalali date of a (Gregorian) day, in Persian digits, e.g. ۱۴۰۵/۰۹/۰۷."""
    return persian_digits(jdatetime.date.fromgregorian(date=day).strftime("%Y/%m/%d"))


def jalali_datetime(ts: float, tz: tzinfo | str) -> str:
    """The Jalali date and the time of ts in tz, in Persian digits, e.g. ۱۴۰۵/۰۹/۰۷ ۱۴:۳۰."""
    return _jalali(ts, tz, "%Y/%m/%d %H:%M")


def _jalali(ts: float, tz: tzinfo | str, layout: str) -> str:
    zone = time_zone(tz) if isinstance(tz, str) else tz
    moment = jdatetime.datetime.fromgregorian(datetime=datetime.fromtimestamp(ts, zone))
    return persian_digits(moment.strftime(layout))
