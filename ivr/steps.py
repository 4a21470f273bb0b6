"""IVR layer: a call's IVR path (the CDR's), each step's outcome logged as it is taken."""

from __future__ import annotations

import logging

log = logging.getLogger("ivr.steps")


def step_outcome(entry: str) -> tuple[str, str]:
    """An IVR path entry such as ``national_id:keypad:verified`` as (step, outcome); ``greeting`` has none."""
    step, _, outcome = entry.partition(":")
    return step, outcome


def took(path: list[str], entry: str) -> None:
    """Add a step's outcome to the path ("national_id:keypad:verified", "menu:message") and log it.

    Entries name what happened, never what was keyed or said, so the log line may say them too.
    """
    path.append(entry)
    step, outcome = step_outcome(entry)
    log.info("ivr step %s%s", step, f": {outcome}" if outcome else "",
             extra={"event": "ivr_step", "step": step, "outcome": outcome})
