"""IVR layer: the topic menu of a caller for an agent, when ``queue.topics`` lists agencies.

"For <agency>, press <key>" for each agency in turn; the choice is the skill
the caller's queue entry asks for (an agent who handles that agency's matters),
and the agency the agent's case form starts with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ivr.channel import CallChannel
from ivr.follow_up import agency_prompt
from ivr.menu import NumberedPrompts, choose_numbered, numbered_option
from softswitch.config import IvrConfig


def topic_menu(prompts: NumberedPrompts, agencies: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for key, agency in enumerate(agencies, start=1):
        before = [prompts.path("topic_for"), prompts.path(agency_prompt(agency)), prompts.path("topic_press")]
        files += numbered_option(prompts, before, key, "topic_press_end")
    return files


async def choose_topic(channel: CallChannel, prompts: NumberedPrompts, agencies: Sequence[str],
                       cfg: IvrConfig) -> str | None:
    """The agency the caller keys; None when they key none (any agent then)."""
    chosen = await choose_numbered(channel, prompts, topic_menu(prompts, agencies), len(agencies), cfg)
    return agencies[chosen] if chosen is not None else None
