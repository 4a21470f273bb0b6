"""The post-call survey through the real control process: the rating stored, counted and shown for today.

Calls go through routing, the flow, the queue and the agents' desk on a real
SQLite store, over a scripted media worker (``tests/fakes/control.py``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from softswitch.config import load_config
from tests.fakes.control import calls_done, control_switch, place_call, scripted_worker, write_config
from tests.fakes.scripted_worker import AgentPhone, Script

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NATIONAL_ID = "0499370899"
# The agent answers 0.2 s after the ring and hangs up 1 s later; the question comes a moment after.
AGENT = AgentPhone(answer_after_s=0.2, talk_s=1.0)
RATED_AT_S = 3.0


async def test_a_rating_after_an_agent_call_is_stored_counted_and_shown_for_today(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, agents=["1001"]), overrides={"survey.wait_s": 6.0})
    async with control_switch(config) as switch:
        # ID, 1 (confirm), 1 (an agent), 1 (about me); after the agent has left, 4.
        script = Script().key(0.05, NATIONAL_ID + "111", gap_s=0.01).key(RATED_AT_S, "4")
        place_call(switch, scripted_worker(script, {"1001": AGENT}), "rated-1@trunk")
        await calls_done(switch)
        cdr = await switch.store.get_call_by_sip_id("rated-1@trunk")
        case = await switch.store.case_for_call(cdr.id)
        rating = await switch.store.rating_for_call(cdr.id)
        today = await switch.desk.ratings_today()
        metrics = (await switch.metrics_text()).decode()
    assert cdr.ivr_path[-2:] == ("queue:handled", "survey:rated") and cdr.disposition == "completed"
    assert case is not None and rating is not None
    assert (rating.score, rating.kind, rating.agent_id, rating.case_id) == (4, "agent", "1001", case.id)
    assert rating.day == datetime.now(ZoneInfo("Asia/Tehran")).date().isoformat()
    assert [(s.key, s.count, s.average) for s in today] == [("1001", 1, 4.0)]
    assert 'softswitch_survey_ratings_total{score="4"} 1.0' in metrics
    assert "1001" not in "".join(line for line in metrics.splitlines() if "survey" in line)


async def test_a_caller_who_says_nothing_leaves_no_rating(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, agents=["1001"]))
    async with control_switch(config) as switch:
        script = Script().key(0.05, NATIONAL_ID + "111", gap_s=0.01)
        place_call(switch, scripted_worker(script, {"1001": AGENT}), "silent-1@trunk")
        await calls_done(switch)
        cdr = await switch.store.get_call_by_sip_id("silent-1@trunk")
        assert await switch.store.rating_for_call(cdr.id) is None
        assert await switch.desk.ratings_today() == []
        metrics = (await switch.metrics_text()).decode()
    assert cdr.ivr_path[-3:] == ("queue:handled", "survey:no_key", "goodbye") and cdr.disposition == "completed"
    assert "softswitch_survey_ratings_total{" not in metrics
