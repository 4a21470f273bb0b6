"""Storage layer: CSV exports of cases, call records and survey results for reporting, with national IDs masked.

Only masked IDs and coded fields go out: no free text (summaries, answers),
since people write their ID or phone number into it, and no caller number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from storage.models import CallRecord, Case

# Spreadsheet programs take a CSV without a byte order mark for the local
# legacy code page and garble Persian; with it they read UTF-8.
BOM = "\ufeff"
# A cell starting with one of these is run as a formula by spreadsheet
# programs (CSV injection); SIP Call-IDs come from the network.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

CASE_HEADER = (
    "tracking_code", "status", "created_at", "channel", "agency", "agency_name", "category",
    "national_id", "id_source", "id_status", "on_behalf_of_other", "caller_national_id",
    "filed_by", "answered_at", "answered_by",
)
CALL_HEADER = (
    "sip_call_id", "arrived_at", "answered_at", "ended_at", "duration_s", "disposition", "source",
    "worker_id", "agent_id", "ivr_path", "tracking_code",
)


def cases_csv(cases: Iterable[Case], *, agency_names: Mapping[str, str], tz: tzinfo) -> str:
    """One row per case; times in ISO 8601 in ``tz``."""
    return _csv(CASE_HEADER, (
        (c.tracking_code, c.status, _time(c.created_at, tz), c.channel, c.agency,
         agency_names.get(c.agency, "") if c.agency else "", c.category, c.national_id_masked, c.id_source,
         c.id_status, not c.subject_is_caller, c.caller_national_id_masked, c.filed_by,
         _time(c.answered_at, tz), c.answered_by)
        for c in cases))


def calls_csv(calls: Iterable[CallRecord], tracking_codes: Mapping[int, str], *, tz: tzinfo) -> str:
    """One row per call detail record, with the tracking code of its case if any."""
    return _csv(CALL_HEADER, (
        (call.sip_call_id, _time(call.arrived_at, tz), _time(call.answered_at, tz), _time(call.ended_at, tz),
         None if call.ended_at is None else round(call.ended_at - call.arrived_at, 3), call.disposition,
         call.source, call.worker_id, call.agent_id, " > ".join(call.ivr_path), tracking_codes.get(call.id))
        for call in calls))


SCORES = (1, 2, 3, 4, 5)


@dataclass(frozen=True, slots=True)
class RatingSummary:
    """The survey ratings of one agent, agency or day: how many of each score, 1 to 5."""

    key: str | None  # None: ratings without one (a follow-up has no agent; a case never filed, no agency)
    distribution: tuple[int, int, int, int, int]

    @property
    def count(self) -> int:
        return sum(self.distribution)

    @property
    def average(self) -> float | None:
        if not self.count:
            return None
        return sum(score * n for score, n in zip(SCORES, self.distribution)) / self.count


def rating_day(at: float, tz: tzinfo) -> str:
    """The day a rating made at ``at`` counts for: the hotline's local date, YYYY-MM-DD."""
    return datetime.fromtimestamp(at, tz).date().isoformat()


def rating_summaries(counts: Iterable[tuple[str | None, int, int]]) -> list[RatingSummary]:
    """(key, score, how many) rows, as ``Store.rating_counts`` gives them, as one summary per key;
    sorted by key, the ratings without one last."""
    by_key: dict[str | None, list[int]] = {}
    for key, score, n in counts:
        by_key.setdefault(key, [0] * len(SCORES))[score - 1] += n
    return [RatingSummary(key, (d[0], d[1], d[2], d[3], d[4]))
            for key, d in sorted(by_key.items(), key=lambda item: (item[0] is None, item[0] or ""))]


def all_ratings(summaries: Iterable[RatingSummary]) -> RatingSummary:
    """The summaries taken together."""
    totals = [0] * len(SCORES)
    for summary in summaries:
        for i, n in enumerate(summary.distribution):
            totals[i] += n
    return RatingSummary(None, (totals[0], totals[1], totals[2], totals[3], totals[4]))


RATING_HEADER = ("name", "count", "average", *(f"score_{score}" for score in SCORES))


def ratings_csv(summaries: Iterable[RatingSummary], by: str, names: Mapping[str, str]) -> str:
    """One row per agent (``agent_id``), agency (``agency``) or day (``day``), with its name where one is
    configured; the average to two decimals."""
    return _csv((by, *RATING_HEADER), (
        (s.key, names.get(s.key, "") if s.key is not None else "", s.count,
         None if s.average is None else round(s.average, 2), *s.distribution)
        for s in summaries))


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    out.write(BOM)
    writer = csv.writer(out)  # RFC 4180: CRLF line ends, quotes where needed
    writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _time(at: float | None, tz: tzinfo) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, tz).isoformat(timespec="seconds")
