"""IVR layer: the language menu, the first step of a call when more than one language is offered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ivr.channel import CallChannel
from ivr.menu import NumberedPrompts, choose_numbered, numbered_option
from softswitch.config import IvrConfig


def language_menu(languages: Mapping[str, NumberedPrompts]) -> list[Path]:
    """Each language in its own voice: "for <language>, press <key>", key 1 for the first."""
    files: list[Path] = []
    for key, prompts in enumerate(languages.values(), start=1):
        files += numbered_option(prompts, [prompts.path("language_choice")], key, "language_choice_end")
    return files


async def choose_language(channel: CallChannel, languages: Mapping[str, NumberedPrompts], cfg: IvrConfig) -> str:
    """The code of the language the caller keys; the first language when they key none (or only wrong ones)."""
    codes = list(languages)
    chosen = await choose_numbered(channel, languages[codes[0]], language_menu(languages), len(codes), cfg,
                                   default=0)
    return codes[chosen or 0]
