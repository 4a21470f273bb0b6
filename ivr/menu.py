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
