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
from ivr.language import LanguagePrompts
from ivr.menu import choose
from softswitch.config import IvrConfig


def topic_menu(prompts: LanguagePrompts, agencies: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for key, agency in enumerate(agencies, start=1):
        files += [prompts.path("topic_for"), prompts.path(agency_prompt(agency)), prompts.path("topic_press"),
                  *prompts.number(str(key))]
        if prompts.has_own("topic_press_end"):
            files.append(prompts.path("topic_press_end"))
    return files


async def choose_topic(channel: CallChannel, prompts: LanguagePrompts, agencies: Sequence[str],
                       cfg: IvrConfig) -> str | None:
    """The agency the caller keys; None when they key none (any agent then)."""
    if not 1 <= len(agencies) <= 9:
        raise ValueError(f"a keypad menu offers 1 to 9 topics, not {len(agencies)}")
    keys = "".join(str(n) for n in range(1, len(agencies) + 1))
    choice = await choose(channel, prompts, topic_menu(prompts, agencies), keys, cfg)
    return agencies[int(choice) - 1] if choice else None
