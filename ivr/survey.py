"""IVR layer: the post-call survey, a rating of 1 to 5 on the keypad after an agent's call or an agency's answer.

The question waits ``wait_s`` for a key; a key that is no rating hears why and
the question once more. Silence, a second wrong key or a hang-up leave no
rating: the caller owes the survey nothing, so none of these is an error. A
rating is kept before the thanks are played, so a caller who hangs up as soon
as they have keyed it is still counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivr.channel import ANY_KEY, CallChannel, CallEnded
from softswitch.config import SurveyConfig
from storage.errors import StoreError

log = logging.getLogger("ivr.survey")

SCORE_KEYS = "12345"
ATTEMPTS = 2  # the question, and once more after a key that is no rating


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...


@dataclass(frozen=True)
class SurveyTopic:
    """What the caller is asked to rate: an agent's call, or an agency's answer heard in a follow-up."""

    kind: str  # agent | follow_up
    tracking_code: str | None  # the case it was about, when known
    agent_id: str | None = None


class Ratings(Protocol):
    async def keep_rating(self, topic: SurveyTopic, score: int) -> None:
        """Store the call's rating (once: a second one for the same call changes nothing)."""
        ...


@dataclass
class Survey:
    """The survey as one call sees it: its rules, and where its rating goes."""

    cfg: SurveyConfig
    ratings: Ratings

    def offered_after(self, kind: str) -> bool:
        return self.cfg.enabled and kind in self.cfg.offer_after


@dataclass(frozen=True)
class SurveyResult:
    outcome: str  # rated | no_key | invalid | hangup
    score: int | None = None


async def ask_rating(channel: CallChannel, prompts: Prompts, survey: Survey, topic: SurveyTopic) -> SurveyResult:
    """Ask for a rating of 1 to 5 and keep it; the outcome for the CDR's IVR path."""
    try:
        for attempt in range(ATTEMPTS):
            channel.clear_digits()  # keys pressed during the conversation are no answer to this
            await channel.play([prompts.path("survey_ask")], interrupt=ANY_KEY)
            key = await channel.next_digit(survey.cfg.wait_s)
            if key is None:
                return SurveyResult("no_key")
            if key in SCORE_KEYS:
                score = int(key)
                await _keep(survey.ratings, topic, score)
                await channel.play([prompts.path("survey_thanks")])
                return SurveyResult("rated", score)
            if attempt + 1 < ATTEMPTS:
                await channel.play([prompts.path("survey_invalid")])
        return SurveyResult("invalid")
    except CallEnded:
        return SurveyResult("hangup")


async def _keep(ratings: Ratings, topic: SurveyTopic, score: int) -> None:
    try:
        await ratings.keep_rating(topic, score)
    except StoreError as exc:
        # The caller did their part: they are thanked all the same, and the loss is logged.
        log.error("survey: the rating could not be stored: %s", exc, extra={"event": "survey_rating_lost"})
