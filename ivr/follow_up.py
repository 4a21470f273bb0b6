"""IVR layer: follow-up by tracking code (menu option 3).

The caller keys the tracking code (check digit validated, bounded retries);
the case's status is told only to its subject or the person who raised it,
recognised by the national ID confirmed at the start of the call (asked again
here if it was not confirmed then). An unknown code and a code of someone
else's case get the same answer, so nothing is disclosed; repeated wrong tries
from one number are throttled. The answer is played as the agency left it: a
recorded answer as is, a written one as synthesised speech.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivr.channel import ANY_KEY, CallChannel
from ivr.menu import INTER_DIGIT_TIMEOUT_S, collect_keys
from softswitch.config import FollowUpConfig, IvrConfig
from softswitch.domain.tracking_code import TRACKING_CODE_LENGTH, is_tracking_code

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


class FailureThrottle:
    """Wrong codes or IDs per calling number in a sliding window; in memory, shared by all calls."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, number: str) -> collections.deque[float]:
        times = self._failures.setdefault(number, collections.deque())
        while times and self.clock() - times[0] > self.window_s:
            times.popleft()
        if not times:
            del self._failures[number]
        return times

    def blocked(self, number: str) -> bool:
        return len(self._recent(number)) >= self.max_failures

    def failed(self, number: str) -> None:
        self._failures.setdefault(number, collections.deque()).append(self.clock())


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
                    national_id: str | None) -> str:
    """Tell the caller the status of a case; return the outcome for the CDR path (never the code)."""
    if national_id is None:
        await channel.play([prompts.path("follow_up_need_id")])
        return "no_id"
    if caller_number and throttle.blocked(caller_number):
        await channel.play([prompts.path("follow_up_blocked")])
        return "throttled"
    for _ in range(cfg.code_attempts):
        channel.clear_digits()
        await channel.play([prompts.path("follow_up_ask_code")], interrupt=ANY_KEY)
        code = await collect_keys(channel, TRACKING_CODE_LENGTH, ivr.menu_timeout_s, INTER_DIGIT_TIMEOUT_S)
        if not code:
            continue
        if not is_tracking_code(code):
            await channel.play([prompts.path("follow_up_code_invalid")])
            continue
        case = await cases.status_for(code, national_id)
        if case is None:
            # Unknown code or someone else's case: the same words either way.
            throttle.failed(caller_number)
            await channel.play([prompts.path("follow_up_not_found")])
            if caller_number and throttle.blocked(caller_number):
                await channel.play([prompts.path("follow_up_blocked")])
                return "throttled"
            continue
        await channel.play([*status_prompts(prompts, case)])
        return f"told:{case.status}"
    return "not_found"
