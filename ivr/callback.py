"""IVR layer: a waiting caller books a callback: which number they are to be called back on.

The caller's own number (their caller ID) is offered first when it is one the
softswitch may call (``queue.callback.number_pattern``): its last four digits
are read and 1 confirms it, 2 keys in another. A caller whose number is
withheld or not callable keys one in straight away, ending with ``#``. Two
numbers that are not callable, or no answer, and the caller stays in the queue
where they were.
"""

from __future__ import annotations

from ivr.channel import CallChannel
from ivr.menu import INTER_DIGIT_TIMEOUT_S, NumberedPrompts, choose, collect_keys
from softswitch.config import CallbackConfig, IvrConfig

NUMBER_ATTEMPTS = 2
MAX_NUMBER_DIGITS = 15  # E.164's longest


async def callback_number(channel: CallChannel, prompts: NumberedPrompts, cfg: CallbackConfig, ivr: IvrConfig,
                          caller_number: str) -> str | None:
    """The number to call the caller back on, or None (no callable number given)."""
    if cfg.callable_number(caller_number):
        menu = [prompts.path("callback_number_is"), *prompts.number(caller_number[-4:]),
                prompts.path("callback_confirm")]
        choice = await choose(channel, prompts, menu, "12", ivr)
        if choice == "1":
            return caller_number
        if choice is None:
            return None
    for _ in range(NUMBER_ATTEMPTS):
        channel.clear_digits()
        await channel.play([prompts.path("callback_enter_number")], interrupt="0123456789")
        keyed = await collect_keys(channel, MAX_NUMBER_DIGITS, ivr.menu_timeout_s, INTER_DIGIT_TIMEOUT_S)
        if not keyed:
            return None
        if cfg.callable_number(keyed):
            return keyed
        await channel.play([prompts.path("callback_invalid_number")])
    return None
