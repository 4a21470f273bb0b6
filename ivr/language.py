"""IVR layer: the language menu, the first step of a call when more than one language is offered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ivr.channel import CallChannel
from ivr.menu import choose
from softswitch.config import IvrConfig


class LanguagePrompts(Protocol):
    """One language's prompt library (media.prompts.PromptLibrary)."""

    def path(self, name: str) -> Path: ...

    def number(self, digits: str) -> list[Path]: ...

    def has_own(self, name: str) -> bool: ...


def language_menu(languages: Mapping[str, LanguagePrompts]) -> list[Path]:
    """Each language in its own voice: "for <language>, press <key>", key 1 for the first."""
    files: list[Path] = []
    for key, prompts in enumerate(languages.values(), start=1):
        files += [prompts.path("language_choice"), *prompts.number(str(key))]
        if prompts.has_own("language_choice_end"):
            files.append(prompts.path("language_choice_end"))
    return files


async def choose_language(channel: CallChannel, languages: Mapping[str, LanguagePrompts], cfg: IvrConfig) -> str:
    """The code of the language the caller keys; the first language when they key none (or only wrong ones)."""
    codes = list(languages)
    if len(codes) > 9:
        raise ValueError(f"a keypad menu offers at most 9 languages, not {len(codes)}")
    first = languages[codes[0]]
    keys = "".join(str(n) for n in range(1, len(codes) + 1))
    choice = await choose(channel, first, language_menu(languages), keys, cfg, default="1")
    return codes[int(choice or "1") - 1]
