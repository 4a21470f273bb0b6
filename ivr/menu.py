"""IVR layer: a keypad menu with bounded re-prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ivr.channel import ANY_KEY, CallChannel
from softswitch.config import IvrConfig

INTER_DIGIT_TIMEOUT_S = 4.0  # a caller still keying has this long for the next key


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...


class NumberedPrompts(Prompts, Protocol):
    """Prompts that say a key's digit and tell their own texts from a fallback's (media.prompts.PromptLibrary)."""

    def number(self, digits: str) -> list[Path]: ...

    def has_own(self, name: str) -> bool: ...


def numbered_option(prompts: NumberedPrompts, before: Sequence[Path], key: int, end: str) -> list[Path]:
    """One option of a numbered menu: ``before``, the key's digit, then the prompt ``end`` if the language's
    own texts have it (a verb-final language ends the sentence there)."""
    files = [*before, *prompts.number(str(key))]
    if prompts.has_own(end):
        files.append(prompts.path(end))
    return files


async def choose_numbered(channel: CallChannel, prompts: Prompts, menu: Sequence[Path], count: int,
                          cfg: IvrConfig, default: int | None = None) -> int | None:
    """The option (0-based) the caller keys among ``count`` keyed 1..count; ``default`` when none."""
    if not 1 <= count <= 9:
        raise ValueError(f"a keypad menu offers 1 to 9 options, not {count}")
    keys = "".join(str(n) for n in range(1, count + 1))
    choice = await choose(channel, prompts, menu, keys, cfg, default=None if default is None else str(default + 1))
    return int(choice) - 1 if choice else None


async def choose(channel: CallChannel, prompts: Prompts, menu: Sequence[Path], keys: str, cfg: IvrConfig,
                 default: str | None = None) -> str | None:
    """Play ``menu`` until the caller presses one of ``keys``; ``default`` after the last attempt.

    A wrong key hears "invalid choice"; no key re-prompts; both count as attempts.
    """
    for _ in range(cfg.menu_attempts):
        await channel.play(menu, interrupt=ANY_KEY)
        digit = await channel.next_digit(cfg.menu_timeout_s)
        if digit is not None and digit in keys:
            return digit
        if digit is not None:
            await channel.play([prompts.path("invalid_choice")])
    return default


async def collect_keys(channel: CallChannel, max_digits: int, first_timeout_s: float,
                       inter_digit_timeout_s: float) -> str:
    """Digits keyed until ``#``, ``max_digits`` of them, or a timeout; "" when nothing was keyed."""
    keyed = ""
    while len(keyed) < max_digits:
        digit = await channel.next_digit(inter_digit_timeout_s if keyed else first_timeout_s)
        if digit is None or digit == "#":
            break
        if digit.isdigit():
            keyed += digit
    return keyed
