"""The ACD's day after a restart of the control process: the same figures as before it.

Whole calls (a live one, a recorded message) go through the real control process and a real SQLite store over
a scripted media worker (``tests/fakes/control.py``); a second switch on the same store is the restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from softswitch.config import load_config
from tests.fakes.control import calls_done, control_switch, place_call, scripted_worker, write_config
from tests.fakes.scripted_worker import AgentPhone
from tests.unit.test_call_events import live_script, message_script

pytestmark = pytest.mark.unit


async def test_a_restart_shows_the_day_it_had(tmp_path: Path) -> None:
    agents = {"1001": AgentPhone(answer_after_s=0.2, talk_s=1.0)}
    config = load_config(write_config(tmp_path, agents=list(agents)))
    before: dict[str, Any]
    async with control_switch(config) as switch:
        for script, sip_call_id in ((live_script(), "live-1@trunk"), (message_script(), "msg-1@trunk")):
            place_call(switch, scripted_worker(script, agents), sip_call_id)
            await calls_done(switch)
        before = switch.acd.snapshot()
    assert (before["today"]["offered"], before["today"]["answered"], before["today"]["recorded"]) == (1, 1, 1)
    async with control_switch(config) as restarted:
        assert restarted.acd.snapshot()["today"]["offered"] == 0  # a new ACD knows nothing by itself
        assert await restarted.day_journal.restore(restarted.acd) == 4  # offered, answered, handled, recorded
        after = restarted.acd.snapshot()
    assert after["today"] == before["today"]
    assert [a["answered_today"] for a in after["agents"]] == [a["answered_today"] for a in before["agents"]] == [1]
