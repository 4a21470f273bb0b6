"""Office hours of live service: weekly ranges, holidays, time zones, Persian dates, the closed notice."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ivr.announcements import resume_prompts
from media.prompts import cardinal_prompt_names
from softswitch.config import CONFIG_DIR, ConfigError, load_config, load_prompt_texts
from softswitch.domain.office_hours import LOOKAHEAD_DAYS, OfficeHours
from softswitch.domain.persian import iran_weekday, jalali_date, jalali_datetime, persian_digits, persian_weekday

pytestmark = pytest.mark.unit

TEHRAN = ZoneInfo("Asia/Tehran")
UTC = timezone.utc
# A week of the Iranian calendar: Saturday 2026-11-21 (1405/08/30) to Friday 2026-11-27.
SATURDAY = date(2026, 11, 21)
THURSDAY = date(2026, 11, 26)
FRIDAY = date(2026, 11, 27)
NEXT_SATURDAY = date(2026, 11, 28)  # 1405/09/07
NEXT_SUNDAY = date(2026, 11, 29)


def at(day: date, hh_mm: str, tz: Any = TEHRAN) -> datetime:
    hour, minute = (int(part) for part in hh_mm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def hours(weekly: dict[str, tuple[str, ...]] | None = None, holidays: tuple[str, ...] = (),
          tz: str = "Asia/Tehran") -> OfficeHours:
    default = load_config().office_hours.weekly
    return OfficeHours.from_config(SimpleNamespace(
        timezone=tz, weekly=default if weekly is None else weekly, holidays=holidays))


def test_the_iranian_week_starts_on_saturday() -> None:
    assert [iran_weekday(SATURDAY + timedelta(days=i)) for i in range(7)] == list(range(7))
    assert persian_weekday(SATURDAY) == "شنبه"
    assert persian_weekday(THURSDAY) == "پنج‌شنبه"
    assert persian_weekday(FRIDAY) == "جمعه"


def test_default_schedule_from_config() -> None:
    office = OfficeHours.from_config(load_config().office_hours)
    assert office.tz == TEHRAN
    assert not office.is_open(at(SATURDAY, "07:59"))
    assert office.is_open(at(SATURDAY, "08:00"))
    assert office.is_open(at(SATURDAY, "15:59"))
    assert not office.is_open(at(SATURDAY, "16:00"))  # a range's end is exclusive
    assert office.is_open(at(THURSDAY, "11:59"))
    assert not office.is_open(at(THURSDAY, "12:00"))
    assert not any(office.is_open(at(FRIDAY, f"{h:02d}:30")) for h in range(24))


def test_time_zone_of_the_schedule_is_used_for_any_aware_datetime() -> None:
    office = hours()
    # Tehran is UTC+03:30 (no daylight saving since 2022).
    assert not office.is_open(at(SATURDAY, "04:29", UTC))
    assert office.is_open(at(SATURDAY, "04:30", UTC))
    assert office.is_open(at(SATURDAY, "07:30", ZoneInfo("Europe/Berlin")))  # 10:00 in Tehran
    utc_office = hours(tz="UTC")
    assert not utc_office.is_open(at(SATURDAY, "08:00"))  # 04:30 UTC
    assert utc_office.is_open(at(SATURDAY, "11:30"))
    with pytest.raises(ValueError, match="time zone"):
        office.is_open(datetime(2026, 11, 21, 10, 0))


def test_split_and_touching_ranges() -> None:
    office = hours({"saturday": ("13:00-16:00", "08:00-12:00"), "sunday": ("08:00-12:00", "12:00-16:00")})
    assert office.is_open(at(SATURDAY, "11:00")) and not office.is_open(at(SATURDAY, "12:30"))
    assert office.next_opening(at(SATURDAY, "12:30")) == at(SATURDAY, "13:00")
    assert office.closes_at(at(SATURDAY, "09:00")) == at(SATURDAY, "12:00")
    assert office.closes_at(at(SATURDAY, "12:30")) is None
    # Touching ranges are one period: 12:00 is not an opening.
    assert office.closes_at(at(SATURDAY + timedelta(days=1), "09:00")) == at(SATURDAY + timedelta(days=1), "16:00")
    assert office.next_opening(at(SATURDAY + timedelta(days=1), "09:00")) == at(NEXT_SATURDAY, "08:00")


def test_a_period_running_over_midnight() -> None:
    office = hours({"friday": ("20:00-24:00",), "saturday": ("00:00-02:00", "08:00-10:00")})
    assert office.next_opening(at(FRIDAY, "19:00")) == at(FRIDAY, "20:00")
    assert office.is_open(at(FRIDAY, "23:59"))
    assert office.is_open(at(NEXT_SATURDAY, "01:00"))
    assert office.closes_at(at(FRIDAY, "21:00")) == at(NEXT_SATURDAY, "02:00")
    # Midnight continues the Friday evening; the next opening is 08:00.
    assert office.next_opening(at(FRIDAY, "21:00")) == at(NEXT_SATURDAY, "08:00")


def test_next_opening_across_the_weekend() -> None:
    office = hours()
    opening = office.next_opening(at(THURSDAY, "09:30", UTC))  # 13:00 in Tehran, after closing
    assert opening == at(NEXT_SATURDAY, "08:00")
    assert opening is not None and opening.tzinfo == TEHRAN
    assert office.next_opening(at(FRIDAY, "23:00")) == at(NEXT_SATURDAY, "08:00")
    # While open, the next opening is the one after this period.
    assert office.next_opening(at(NEXT_SATURDAY, "09:00")) == at(NEXT_SUNDAY, "08:00")
    assert office.next_opening(at(NEXT_SATURDAY, "08:00")) == at(NEXT_SUNDAY, "08:00")
    assert office.next_opening(at(NEXT_SATURDAY, "07:59")) == at(NEXT_SATURDAY, "08:00")


@pytest.mark.parametrize("holiday", ["1405-09-07", "1405-9-7", "2026-11-28"])
def test_holidays_in_jalali_or_gregorian(holiday: str) -> None:
    office = hours(holidays=(holiday,))
    assert not office.is_open(at(NEXT_SATURDAY, "10:00"))
    assert office.is_open(at(SATURDAY, "10:00"))
    assert office.next_opening(at(THURSDAY, "13:00")) == at(NEXT_SUNDAY, "08:00")
    assert office.holidays == frozenset({NEXT_SATURDAY})


def test_nowruz_holidays() -> None:
    nowruz = tuple(f"1405-01-{d:02d}" for d in range(1, 5))  # 2026-03-21 (Saturday) to 03-24
    office = hours(holidays=nowruz)
    assert office.next_opening(at(date(2026, 3, 19), "13:00")) == at(date(2026, 3, 25), "08:00")


def test_closed_or_open_around_the_clock() -> None:
    closed = hours({})
    assert not closed.is_open(at(SATURDAY, "10:00"))
    assert closed.next_opening(at(SATURDAY, "10:00")) is None
    assert closed.closes_at(at(SATURDAY, "10:00")) is None
    always = hours({day: ("00:00-24:00",) for day in ("saturday", "sunday", "monday", "tuesday", "wednesday",
                                                      "thursday", "friday")})
    assert always.is_open(at(FRIDAY, "23:59"))
    assert always.next_opening(at(FRIDAY, "23:59")) is None
    assert always.closes_at(at(FRIDAY, "23:59")) is None
    # Holidays longer than the look-ahead: no opening found.
    long_break = tuple((SATURDAY + timedelta(days=i)).isoformat() for i in range(LOOKAHEAD_DAYS + 2))
    assert hours(holidays=long_break).next_opening(at(SATURDAY, "00:00")) is None


@pytest.mark.parametrize("weekly, holidays, tz, message", [
    ({"sundy": ("08:00-16:00",)}, (), "Asia/Tehran", "weekly: unknown weekday 'sundy'; use saturday, sunday"),
    ({"Saturday": ("08:00-16:00",)}, (), "Asia/Tehran", "unknown weekday 'Saturday'"),
    ({"monday": ("8-16",)}, (), "Asia/Tehran", "weekly.monday: '8-16' is not a range 'HH:MM-HH:MM'"),
    ({"monday": "08:00-16:00"}, (), "Asia/Tehran", "weekly.monday: must be a list of ranges"),
    ({"monday": ("08:00-24:30",)}, (), "Asia/Tehran", "'08:00-24:30' is not a time of day"),
    ({"monday": ("24:00-24:00",)}, (), "Asia/Tehran", "is not a time of day"),
    ({"monday": ("08:60-12:00",)}, (), "Asia/Tehran", "is not a time of day"),
    ({"monday": ("16:00-08:00",)}, (), "Asia/Tehran", "weekly.monday: '16:00-08:00' is empty.*24:00"),
    ({"monday": ("08:00-08:00",)}, (), "Asia/Tehran", "'08:00-08:00' is empty"),
    ({"monday": ("13:00-16:00", "08:00-13:30")}, (), "Asia/Tehran",
     "weekly.monday: ranges '08:00-13:30' and '13:00-16:00' overlap"),
    ({}, ("1405-13-01",), "Asia/Tehran", "holidays: '1405-13-01' is not a valid Jalali date"),
    ({}, ("1404-12-30",), "Asia/Tehran", "not a valid Jalali date"),  # 1404 is not a leap year
    ({}, ("2026-02-30",), "Asia/Tehran", "holidays: '2026-02-30' is not a valid Gregorian date"),
    ({}, ("21/03/2026",), "Asia/Tehran", "holidays: '21/03/2026' is not a date YYYY-MM-DD"),
    ({}, (), "Mars/Olympus", "timezone: unknown time zone 'Mars/Olympus'"),
    ({}, (), "", "unknown time zone ''"),
])
def test_bad_config_is_named(weekly: dict[str, Any], holidays: tuple[str, ...], tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OfficeHours.from_config(SimpleNamespace(timezone=tz, weekly=weekly, holidays=holidays))


@pytest.mark.parametrize("key, value, message", [
    ("office_hours.weekly", {"sundy": ["08:00-16:00"]}, r"office_hours: .*unknown weekday 'sundy'"),
    ("office_hours.weekly", {"monday": ["09:00-12:00", "11:00-13:00"]}, "overlap"),
    ("office_hours.holidays", ["1405-13-01"], "not a valid Jalali date"),
    ("office_hours.timezone", "Tehran", "unknown time zone 'Tehran'"),
])
def test_load_config_refuses_bad_office_hours(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={key: value})


def test_load_config_takes_office_hours() -> None:
    config = load_config(overrides={"office_hours.weekly": {"friday": ["10:00-12:00"]},
                                    "office_hours.holidays": ["1405-01-01"]})
    office = OfficeHours.from_config(config.office_hours)
    assert office.is_open(at(FRIDAY, "11:00"))
    assert not office.is_open(at(SATURDAY, "11:00"))
    assert office.holidays == frozenset({date(2026, 3, 21)})


def test_jalali_dates_in_persian_digits() -> None:
    ts = at(NEXT_SATURDAY, "14:30").timestamp()
    assert jalali_date(ts, "Asia/Tehran") == "۱۴۰۵/۰۹/۰۷"
    assert jalali_datetime(ts, TEHRAN) == "۱۴۰۵/۰۹/۰۷ ۱۴:۳۰"
    assert jalali_datetime(ts, UTC) == "۱۴۰۵/۰۹/۰۷ ۱۱:۰۰"
    after_midnight = at(NEXT_SATURDAY, "00:30").timestamp()  # Friday 21:00 UTC
    assert jalali_date(after_midnight, "Asia/Tehran") == "۱۴۰۵/۰۹/۰۷"
    assert jalali_date(after_midnight, "UTC") == "۱۴۰۵/۰۹/۰۶"
    assert jalali_date(at(date(2026, 3, 21), "12:00").timestamp(), TEHRAN) == "۱۴۰۵/۰۱/۰۱"
    assert persian_digits("code 0123456789") == "code ۰۱۲۳۴۵۶۷۸۹"
    with pytest.raises(ValueError, match="unknown time zone"):
        jalali_date(ts, "Asia/Nowhere")


SHIPPED_PROMPTS = load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")


class NamedPrompts:
    """Prompt files named after their prompt, to read a list of files as a list of names."""

    def path(self, name: str) -> Path:
        assert name in SHIPPED_PROMPTS, f"prompt {name!r} is not in configs/prompts.fa.yaml"
        return Path(name)

    def cardinal(self, n: int) -> list[Path]:
        return [self.path(name) for name in cardinal_prompt_names(n)]


def closed_notice(now: datetime, opening: datetime | None) -> list[str]:
    return [str(p) for p in resume_prompts(NamedPrompts(), now, opening)]


def test_closed_notice_says_today_tomorrow_or_the_weekday() -> None:
    office = hours({**load_config().office_hours.weekly, "sunday": ("08:30-16:00",),
                    "monday": ("13:45-16:00",)})
    now = at(SATURDAY, "07:00")
    assert closed_notice(now, office.next_opening(now)) == [
        "live_closed", "live_resumes", "day_today", "at_hour", "digit_8", "live_resumes_end"]
    now = at(SATURDAY, "17:00")
    assert closed_notice(now, office.next_opening(now)) == [
        "live_closed", "live_resumes", "day_tomorrow", "at_hour", "digit_8", "and", "number_30", "minutes",
        "live_resumes_end"]
    now = at(SATURDAY + timedelta(days=1), "17:00")
    assert closed_notice(now, office.next_opening(now)) == [
        "live_closed", "live_resumes", "day_tomorrow", "at_hour", "number_13", "and", "number_40", "and",
        "digit_5", "minutes", "live_resumes_end"]
    now = at(THURSDAY, "13:00")
    assert closed_notice(now, office.next_opening(now)) == [
        "live_closed", "live_resumes", "weekday_saturday", "at_hour", "digit_8", "live_resumes_end"]


def test_closed_notice_counts_days_in_the_schedules_time_zone() -> None:
    office = hours()
    now = at(FRIDAY, "21:00", UTC)  # Saturday 00:30 in Tehran: the opening is today, not tomorrow
    assert closed_notice(now, office.next_opening(now))[2] == "day_today"


def test_closed_notice_without_a_usable_opening() -> None:
    now = at(THURSDAY, "13:00")
    assert closed_notice(now, None) == ["live_closed"]
    assert closed_notice(now, at(THURSDAY + timedelta(days=7), "08:00")) == ["live_closed"]
    assert closed_notice(now, at(THURSDAY + timedelta(days=6), "08:00"))[2] == "weekday_wednesday"


def test_closed_notice_names_every_weekday() -> None:
    now = at(THURSDAY, "13:00")
    said = [closed_notice(now, at(THURSDAY + timedelta(days=d), "08:00"))[2] for d in range(7)]
    assert said == ["day_today", "day_tomorrow", "weekday_saturday", "weekday_sunday", "weekday_monday",
                    "weekday_tuesday", "weekday_wednesday"]
    friday = closed_notice(at(FRIDAY, "07:00") - timedelta(days=2), at(FRIDAY, "08:00"))
    assert friday[2] == "weekday_friday"
