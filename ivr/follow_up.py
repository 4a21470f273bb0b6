"""IVR layer: follow-up by tracking code (menu option 3).

The caller keys the tracking code (check digit validated, bounded retries);
the case's status is told only to its subject or the person who raised it,
recognised by the national ID confirmed at the start of the call (asked again
here if it was not confirmed then). An unknown code and a code of someone
else's case get the same answer, so nothing is disclosed; repeated wrong tries
are throttled per calling number, per trunk source and per tracking code tried,
counted in the store so that every host sees them.
The answer is played as the agency left it: a recorded answer as is, a written
one as synthesised speech.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivr.channel import ANY_KEY, CallChannel
from ivr.menu import INTER_DIGIT_TIMEOUT_S, collect_keys
from softswitch.config import FollowUpConfig, IvrConfig
from softswitch.domain.tracking_code import TRACKING_CODE_LENGTH, is_tracking_code
from storage.errors import StoreError
from storage.models import CallRecord

log = logging.getLogger("ivr.follow_up")


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...

    def number(self, digits: str) -> list[Path]: ...


@dataclass(frozen=True)
class CaseStatus:
    """What a caller may hear of their case."""

    status: str  # received | received_incomplete | referred | answered | closed
    agency_id: str | None
    answer_audio: Path | None


class FollowUpCases(Protocol):
    async def status_for(self, tracking_code: str, national_id: str) -> CaseStatus | None:
        """The case's status when it exists and the ID is its subject's or its submitter's; else None."""
        ...


# A trunk carries many callers, so its source may fail this many times more than one number
# (or one case) before its follow-ups are refused.
SOURCE_FAILURE_FACTOR = 10
# A case's code is refused after this many times as many misses as one number may make: a stranger
# who has the code (and is throttled after max_failures) must not lock its owner out, while
# guessing the owner's ID for one code from many numbers is still cut short.
CASE_FAILURE_FACTOR = 3


class FailureCounts(Protocol):
    """Failures counted by key in sliding windows, shared by every host (storage.counters.WindowCounters)."""

    async def counts(self, keys: Sequence[str], now: float) -> dict[str, int]: ...

    async def attempt(self, keys: Sequence[str], *, now: float, window_s: float,
                      refuse: Callable[[Mapping[str, int]], bool]) -> tuple[int, ...] | None: ...

    async def forget(self, ids: Sequence[int]) -> None: ...


class FailureThrottle:
    """Wrong codes or IDs in a sliding window, counted in the store: shared by all calls of every host, and
    kept across restarts.

    Counted per calling number, per trunk source and per tracking code tried. The From user
    is the caller's to choose (or to leave empty), so alone it bounds nothing: the source
    the call came from (its CDR's, as the control process saw it; ``cdr_of``) is counted
    too, an empty From user by its source only, and a case's code is counted whoever tries
    it, so one case cannot be guessed at from many numbers and trunks. A try is counted as a
    failure before its lookup and forgotten when it succeeds (``attempt``, ``succeeded``), so
    calls at once, on any host, get no more tries than the limits allow.
    """

    def __init__(self, counts: FailureCounts, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.time, *,
                 cdr_of: Callable[[CallChannel], Awaitable[CallRecord]] | None = None,
                 source_max_failures: int | None = None) -> None:
        self.counts = counts
        self.max_failures = max_failures
        self.source_max_failures = (max_failures * SOURCE_FAILURE_FACTOR if source_max_failures is None
                                    else source_max_failures)
        self.window_s = window_s
        self.clock = clock
        self.cdr_of = cdr_of

    async def source(self, channel: CallChannel) -> str:
        """Where the call came from, or "" when that is not known."""
        if self.cdr_of is None:
            return ""
        try:
            return (await self.cdr_of(channel)).source
        except StoreError as exc:
            log.warning("follow-up: the call's source is not known, counted without it: %s", exc)
            return ""

    def _limits(self, number: str, source: str, code: str | None) -> dict[str, int]:
        limits = {f"follow_up number {number}": self.max_failures} if number else {}
        if source:
            limits[f"follow_up source {source}"] = self.source_max_failures
        if code:
            limits[f"follow_up case {code}"] = self.max_failures * CASE_FAILURE_FACTOR
        return limits

    async def blocked(self, number: str, source: str = "") -> bool:
        """Whether the number or the source has failed too often in the window."""
        limits = self._limits(number, source, None)
        return _over(limits, await self.counts.counts(list(limits), self.clock()))

    async def attempt(self, number: str, source: str, code: str) -> tuple[int, ...] | None:
        """A try of ``code``, counted as a failure of the number, the source and the code until it
        ``succeeded``; None (nothing counted) when one of them has failed too often already."""
        limits = self._limits(number, source, code)
        return await self.counts.attempt(list(limits), now=self.clock(), window_s=self.window_s,
                                         refuse=lambda counts: _over(limits, counts))

    async def succeeded(self, counted: tuple[int, ...]) -> None:
        await self.counts.forget(counted)


def _over(limits: Mapping[str, int], counts: Mapping[str, int]) -> bool:
    return any(counts.get(key, 0) >= limit for key, limit in limits.items())


@dataclass(frozen=True)
class FollowUpResult:
    outcome: str  # for the CDR path: no_id | throttled | not_found | told:<status>
    answered_code: str | None = None  # the case whose agency's answer the caller heard (the survey may follow)


def status_prompts(prompts: Prompts, case: CaseStatus) -> list[Path]:
    files: list[Path]
    match case.status:
        case "referred" if case.agency_id:
            files = [prompts.path("follow_up_status_referred"), prompts.path(agency_prompt(case.agency_id))]
        case "answered" | "closed" if case.answer_audio is not None:
            files = [prompts.path("follow_up_status_answered"), case.answer_audio]
        case "closed":
            files = [prompts.path("follow_up_status_closed")]
        case _:
            files = [prompts.path("follow_up_status_received")]
    return files


def agency_prompt(agency_id: str) -> str:
    """The prompt that names an agency (its configured name, synthesised)."""
    return f"agency_{agency_id}"


async def follow_up(channel: CallChannel, prompts: Prompts, cases: FollowUpCases, cfg: FollowUpConfig,
                    ivr: IvrConfig, throttle: FailureThrottle, caller_number: str,
                    national_id: str | None) -> FollowUpResult:
    """Tell the caller the status of a case; the outcome for the CDR path (never the code)."""
    if national_id is None:
        await channel.play([prompts.path("follow_up_need_id")])
        return FollowUpResult("no_id")
    source = await throttle.source(channel)
    if await throttle.blocked(caller_number, source):
        await channel.play([prompts.path("follow_up_blocked")])
        return FollowUpResult("throttled")
    for _ in range(cfg.code_attempts):
        channel.clear_digits()
        await channel.play([prompts.path("follow_up_ask_code")], interrupt=ANY_KEY)
        code = await collect_keys(channel, TRACKING_CODE_LENGTH, ivr.menu_timeout_s, INTER_DIGIT_TIMEOUT_S)
        if not code:
            continue
        if not is_tracking_code(code):
            await channel.play([prompts.path("follow_up_code_invalid")])
            continue
        counted = await throttle.attempt(caller_number, source, code)
        if counted is None:
            # This code has been tried too often (from anywhere): not even looked up, so a
            # case's ID cannot be guessed at call by call. Any code counts, known or not,
            # so being refused here says nothing of whether the case exists.
            await channel.play([prompts.path("follow_up_blocked")])
            return FollowUpResult("throttled")
        case = await cases.status_for(code, national_id)
        if case is None:
            # Unknown code or someone else's case: the same words either way; the try stays counted.
            await channel.play([prompts.path("follow_up_not_found")])
            if await throttle.blocked(caller_number, source):
                await channel.play([prompts.path("follow_up_blocked")])
                return FollowUpResult("throttled")
            continue
        await throttle.succeeded(counted)
        told = status_prompts(prompts, case)
        await channel.play(told)
        heard_answer = case.answer_audio is not None and case.answer_audio in told
        return FollowUpResult(f"told:{case.status}", code if heard_answer else None)
    return FollowUpResult("not_found")
