"""What the IVR says about office hours: that live service is closed, and when it resumes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

from softswitch.domain.persian import WEEKDAYS, iran_weekday


class SpokenPrompts(Protocol):
    """The prompt library as the announcements use it (media.prompts.PromptLibrary)."""

    def path(self, name: str) -> Path: ...

    def cardinal(self, n: int) -> list[Path]: ...



def resume_prompts(prompts: SpokenPrompts, now: datetime, opening: datetime | None) -> list[Path]:
    """What a caller hears while live service is closed: that it is, and when it resumes.

    ``opening`` is OfficeHours.next_opening(now); days are counted in its time
    zone. The day is said as today, tomorrow or the weekday, then the hour and,
    if not on the hour, the minutes: "... tomorrow at eight and thirty minutes
    resumes". An opening a week or more away is not said (a weekday name would
    be ambiguous), nor a missing one.
    """
    files = [prompts.path("live_closed")]
    if opening is None:
        return files
    if now.utcoffset() is None or opening.utcoffset() is None:
        raise ValueError("now and opening must be datetimes with a time zone")
    days = (opening.date() - now.astimezone(opening.tzinfo).date()).days
    if not 0 <= days < 7:
        return files
    if days < 2:
        day = ("day_today", "day_tomorrow")[days]
    else:
        day = f"weekday_{WEEKDAYS[iran_weekday(opening.date())]}"
    files += [prompts.path("live_resumes"), prompts.path(day), prompts.path("at_hour")]
    files += prompts.cardinal(opening.hour)
    if opening.minute:
        files += [prompts.path("and"), *prompts.cardinal(opening.minute), prompts.path("minutes")]
    files.append(prompts.path("live_resumes_end"))
    return files
