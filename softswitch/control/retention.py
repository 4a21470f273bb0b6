"""Control process: the daily retention run at ``retention.run_at`` on the hotline's clock, and its report.

The rules and the deletion are ``storage/retention.py``; this module decides
when they run (never while nothing is configured), logs one line per run and
counts what went. ``softswitch retention`` (cli.py) runs the same once.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
from collections.abc import Callable
from datetime import datetime, time, timedelta, tzinfo

from softswitch.config import Config, RetentionConfig
from softswitch.control.metrics import Metrics
from softswitch.domain.persian import time_zone
from storage.retention import RetentionPlan, RetentionResult, RetentionWindows, apply, plan
from storage.store import Store

log = logging.getLogger("softswitch.retention")

# The longest single sleep while waiting for the run: the wall clock is read again after each, so a
# clock set forward or back, or a suspended machine, moves the run with it.
_NAP_S = 300.0
# Failures named one by one in the log line; the rest are counted.
_NAMED_FAILURES = 10
# A run plans and deletes in rounds of at most this many of each kind (about 200 bytes each in memory),
# so a store holding years past its periods, the first time they are set, is done in bounded steps.
ROUND_ITEMS = 50_000
MAX_ROUNDS = 1_000


def windows(config: RetentionConfig) -> RetentionWindows:
    return RetentionWindows(config.recordings_days, config.calls_days, config.closed_cases_days)


def next_run(after: datetime, run_at: time, tz: tzinfo) -> datetime:
    """The first moment after ``after`` (aware) at which the wall clock of ``tz`` reads ``run_at``."""
    local = after.astimezone(tz)
    today = datetime.combine(local.date(), run_at, tzinfo=tz)
    # Same tzinfo: compared as wall-clock times, which is what "has today's run_at passed" asks.
    return today if today > local else datetime.combine(local.date() + timedelta(days=1), run_at, tzinfo=tz)


def summary(result: RetentionResult) -> str:
    """One line: what was deleted, found already missing, kept, and which files could not be removed."""
    d, m = result.deleted, result.missing
    text = (f"deleted {d['case']} closed cases ({d['case_event']} history rows, {d['sms_message']} SMS messages), "
            f"{d['recording']} recordings, "
            f"{d['answer_audio']} answer audio files, {d['call']} CDRs; "
            f"files already missing {m['recording'] + m['answer_audio']}")
    kept = ", ".join(f"{len(ids)} {kind}" for kind, ids in sorted(result.kept.items()) if ids)
    if kept:
        text += f"; kept (changed since planned or held by a file) {kept}"
    if result.failures:
        named = "; ".join(f"{f.kind} {f.item} {f.path}: {f.reason}" for f in result.failures[:_NAMED_FAILURES])
        more = len(result.failures) - _NAMED_FAILURES
        text += f"; could not remove {len(result.failures)} files, kept with their rows: {named}"
        text += f" and {more} more" if more > 0 else ""
    return text


def _when(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")


def _span(times: list[float], tz: tzinfo) -> str:
    return f"{_when(min(times), tz)[:10]} .. {_when(max(times), tz)[:10]}" if times else "-"


def periods(w: RetentionWindows) -> str:
    def period(days: float | None) -> str:
        return "kept forever" if days is None else f"{days:g} days"
    return (f"recordings {period(w.recordings_days)}, CDRs {period(w.calls_days)}, "
            f"closed cases {period(w.closed_cases_days)}")


def describe(due: RetentionPlan, tz: tzinfo, *, items: bool = False) -> list[str]:
    """What the plan deletes, per kind with the oldest and newest dates; with ``items`` each one by its id
    or tracking code (never a national ID, a caller's number or anything else personal)."""
    lines = [f"retention at {_when(due.now, tz)} ({tz}): {periods(due.windows)}"]
    with_cases = sum(len(case.recordings) for case in due.cases)
    answers = sum(len(case.answer_files) for case in due.cases)
    lines.append(f"closed cases: {len(due.cases)}, last changed {_span([c.last_change for c in due.cases], tz)}"
                 f" (with {with_cases} recordings and {answers} answer audio files)")
    lines.append(f"recordings: {len(due.recordings)} more, made {_span([r.created_at for r in due.recordings], tz)}")
    lines.append(f"CDRs: {len(due.calls)}, arrived {_span([k.arrived_at for k in due.calls], tz)}")
    if not due.complete:
        lines.append(f"and more: this is the first round; a run goes on in rounds of {ROUND_ITEMS} of each kind")
    if items:
        for case in due.cases:
            lines.append(f"  case {case.tracking_code} last changed {_when(case.last_change, tz)}, recordings "
                         f"{' '.join(str(r.id) for r in case.recordings) or '-'}, "
                         f"{len(case.answer_files)} answer audio files")
        for recording in due.all_recordings():
            lines.append(f"  recording {recording.id} {recording.kind} of CDR {recording.call_id}, case "
                         f"{recording.tracking_code or '-'}, made {_when(recording.created_at, tz)}: {recording.path}")
        lines += [f"  CDR {call.id} arrived {_when(call.arrived_at, tz)}" for call in due.calls]
    return lines


async def run_once(store: Store, config: RetentionConfig, now: float,
                   on_plan: Callable[[RetentionPlan], None] | None = None) -> RetentionResult:
    """One run at ``now``, in rounds until nothing more is due (``on_plan`` sees each round's plan before
    it is applied); nothing at all when no retention is configured."""
    total = RetentionResult()
    if not config.configured:
        return total
    for _ in range(MAX_ROUNDS):
        due = await plan(store, windows(config), now, limit=ROUND_ITEMS)
        if on_plan is not None:
            on_plan(due)
        done = await apply(store, due)
        total.add(done)
        if due.complete or not +done.deleted:  # all of it, or a round that could delete nothing
            break
    return total


class RetentionJob:
    """The daily run, a task of the control process beside the health watch."""

    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.config = config.retention
        self.tz = time_zone(config.office_hours.timezone, "office_hours.timezone")
        self.store = store
        self.metrics = metrics

    @classmethod
    def start(cls, config: Config, store: Store, metrics: Metrics) -> asyncio.Task[None] | None:
        """The job's task, or None when the config keeps everything (then nothing ever runs)."""
        if not config.retention.configured:
            return None
        return asyncio.create_task(cls(config, store, metrics).run_daily(), name="retention")

    async def run_daily(self) -> None:
        log.info("retention: daily at %s (%s): %s", self.config.run_at, self.tz, periods(windows(self.config)))
        while True:
            at = next_run(datetime.now(self.tz), self.config.run_time, self.tz)
            while (left := at.timestamp() - clock.time()) > 0:
                await asyncio.sleep(min(left, _NAP_S))
            await self.run_now()

    async def run_now(self) -> RetentionResult | None:
        started = clock.monotonic()
        try:
            result = await run_once(self.store, self.config, clock.time())
        except Exception:
            log.exception("retention: the run failed; the next is tomorrow")
            return None
        self.metrics.retention_ran(result)
        level = logging.WARNING if result.failures else logging.INFO
        log.log(level, "retention: %s (%.1f s)", summary(result), clock.monotonic() - started)
        return result
