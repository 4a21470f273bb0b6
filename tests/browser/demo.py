"""Realistic Persian data for console tests and screenshots: a caller's screen-pop and a busy morning in the ACD."""

from __future__ import annotations

import asyncio
import random
import time
import wave
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from softswitch.domain.acd import AgentState
from softswitch.domain.tracking_code import verhoeff_check_digit
from tests.fakes.desk import FakeDesk, fake_account

TEHRAN = ZoneInfo("Asia/Tehran")
NATIONAL_ID = "0499370899"  # valid check digit
SUBJECT_ID = "0790419904"
CALLER_NUMBER = "09121234567"
CALL_KEY = "call-7f3a91"
DAY = 86400.0


def tracking_code(body: str) -> str:
    return body + verhoeff_check_digit(body)


HISTORY_CODES = (tracking_code("41729380"), tracking_code("38801457"), tracking_code("52290316"))


def write_wav(path: Path, seconds: float = 1.0) -> Path:
    """A short 8 kHz tone standing in for a spoken-ID recording."""
    rate = 8000
    samples = bytearray()
    for n in range(int(rate * seconds)):
        value = 6000 if (n // 10) % 2 else -6000  # 400 Hz square wave
        samples += value.to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(samples))
    return path


def screen_pop(now: float | None = None, call_key: str = CALL_KEY) -> dict[str, Any]:
    """A caller who speaks for their father: the caller's ID confirmed, the father's spoken twice, not recognised."""
    now = time.time() if now is None else now
    return {
        "call_key": call_key, "state": "ringing", "caller_number": CALLER_NUMBER,
        "national_id": NATIONAL_ID, "id_status": "verified", "id_audio": [],
        "subject_id": SUBJECT_ID, "subject_id_status": "unverified", "subject_id_audio": [41, 42],
        "history": [
            {"tracking_code": HISTORY_CODES[0], "created_at": now - 12 * DAY - 3600, "status": "received",
             "agency": "شهرداری", "category": "شکایت",
             "summary": "قطعی مکرر آب در کوچه شهید رضایی، خیابان ولیعصر؛ سه روز است آب نداریم."},
            {"tracking_code": HISTORY_CODES[1], "created_at": now - 41 * DAY, "status": "received",
             "agency": "وزارت نیرو", "category": "درخواست",
             "summary": "درخواست نصب کنتور برق برای واحد مسکونی تازه‌ساز."},
        ],
        "subject_history": [
            {"tracking_code": HISTORY_CODES[2], "created_at": now - 5 * DAY - 7200, "status": "received_incomplete",
             "agency": None, "category": "درخواست",
             "summary": "پیام ضبط‌شده: پیگیری پرونده مستمری بازنشستگی؛ پیام نیمه‌کاره قطع شد."},
        ],
        "queued_s": 47, "case": None,
    }


def add_history_cases(desk: FakeDesk, pop: dict[str, Any]) -> None:
    """Make the history's cases attachable."""
    for case in [*pop["history"], *pop["subject_history"]]:
        desk.cases[case["tracking_code"]] = dict(case)


# -- a busy morning for the supervisor view -----------------------------------------------------

DEMO_AGENTS = (
    ("maryam", "مریم احمدی"), ("ali", "علی رضایی"), ("zahra", "زهرا کریمی"), ("hossein", "حسین محمدی"),
    ("fatemeh", "فاطمه حسینی"), ("reza", "رضا جعفری"), ("sara", "سارا نوری"),
)
SUPERVISOR = ("narges", "نرگس موسوی", "supervisor-pass")
ARRIVALS_PER_HOUR = {8: 14, 9: 26, 10: 37, 11: 33, 12: 21, 13: 24, 14: 7}
NOW_AT = (14, 20)  # the board is shown at 14:20 Tehran time


class DemoClock:
    """The ACD's clocks, started at 08:00 today (Tehran), moved by hand and running on in real time."""

    def __init__(self, start_wall: float) -> None:
        self._start_wall = start_wall
        self._real = time.monotonic()
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return self._start_wall + (time.monotonic() - self._real) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def local_today(hour: int, minute: int = 0) -> float:
    today = datetime.now(TEHRAN).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(hours=hour, minutes=minute)).timestamp()


def demo_desk() -> tuple[FakeDesk, DemoClock]:
    clock = DemoClock(local_today(8))
    accounts = [(fake_account(agent_id, name), "agent-pass") for agent_id, name in DEMO_AGENTS]
    accounts.append((fake_account(SUPERVISOR[0], SUPERVISOR[1], supervisor=True), SUPERVISOR[2]))
    desk = FakeDesk(accounts, wrap_up_s=3600.0, clock=clock.monotonic, wall=clock.wall)
    return desk, clock


def _caller(rng: random.Random) -> str:
    return "09" + "".join(rng.choice("0123456789") for _ in range(9))


async def populate_morning(desk: FakeDesk, clock: DemoClock, seed: int = 111) -> None:
    """From 08:00 to 14:20: callers join, wait, are answered, hang up or take the recorded message; then the
    board is left as it is at 14:20 (calls in progress, a pause, a ringing agent, three callers waiting)."""
    acd, rng, step_s = desk.acd, random.Random(seed), 5.0
    agent_ids = [agent_id for agent_id, _ in DEMO_AGENTS]
    for agent_id in agent_ids[:6]:
        acd.login(agent_id)
    arrivals = sorted(local_today(hour) + rng.uniform(0, 3600 if hour < NOW_AT[0] else NOW_AT[1] * 60 - 300)
                      for hour, count in ARRIVALS_PER_HOUR.items() for _ in range(count))
    waiting: list[tuple[Any, float]] = []  # (entry, answer not before), first come first served
    ends: dict[str, float] = {}  # agent -> end of call
    wrap_ends: dict[str, float] = {}
    end_wall = local_today(*NOW_AT)
    serial = 0
    while clock.wall() < end_wall:
        now = clock.wall()
        while arrivals and arrivals[0] <= now:
            arrivals.pop(0)
            serial += 1
            entry = acd.join(f"demo-{serial}", _caller(rng))
            luck = rng.random()
            if luck < 0.07:
                acd.leave(entry, "abandoned")
            elif luck < 0.12:
                acd.leave(entry, "to_message")
                acd.count_recorded()
            else:
                waiting.append((entry, now + rng.choice((3, 4, 6, 8, 9, 11, 12, 14, 16, 18, 24, 35))))
        for agent_id, end in list(ends.items()):
            if end <= now:
                del ends[agent_id]
                acd.call_ended(agent_id)
                wrap_ends[agent_id] = now + rng.uniform(10, 40)
        for agent_id, end in list(wrap_ends.items()):
            if end <= now:
                del wrap_ends[agent_id]
                acd.set_ready(agent_id)
        while waiting and waiting[0][1] <= now and any(a.state is AgentState.READY for a in acd.agents()):
            entry, _ = waiting.pop(0)
            agent = await asyncio.wait_for(acd.next_agent(entry), 1.0)
            acd.connected(entry, agent.id)
            ends[agent.id] = now + rng.uniform(80, 320)
        clock.advance(step_s)
    for _ in range(23):  # recorded messages of callers who chose them at the menu
        acd.count_recorded()
    # The moment on the board. Whatever the morning left going is finished, then: three
    # conversations, one wrap-up, one prayer break, one agent ringing for the head of the
    # queue, and three callers waiting.
    for entry, _ in waiting:
        acd.connected(entry, (await asyncio.wait_for(acd.next_agent(entry), 1.0)).id)
    for agent in acd.agents():
        if agent.state is AgentState.ON_CALL:
            acd.call_ended(agent.id)
        if agent.state in (AgentState.ON_CALL, AgentState.WRAP_UP):
            acd.set_ready(agent.id)
    for n, talk_s in enumerate((260, 75, 140, 95)):
        entry = acd.join(f"demo-now-{n}", _caller(rng))
        acd.connected(entry, (await asyncio.wait_for(acd.next_agent(entry), 1.0)).id)
        clock.advance(talk_s)
    acd.call_ended(acd.agents()[[a.state for a in acd.agents()].index(AgentState.ON_CALL)].id)  # now in wrap-up
    clock.advance(45)
    ready = [a.id for a in acd.agents() if a.state is AgentState.READY]
    acd.pause(ready[0], "prayer")
    head = acd.join("demo-head", _caller(rng))
    clock.advance(38)
    await asyncio.wait_for(acd.next_agent(head), 1.0)  # the last READY agent rings for it
    acd.join("demo-second", _caller(rng))
    clock.advance(21)
    acd.join("demo-third", _caller(rng))
    clock.advance(9)


def rate_morning(desk: FakeDesk, seed: int = 111) -> None:
    """Survey ratings for the morning: a few per agent on duty, mostly good, and some after follow-ups."""
    rng = random.Random(seed)
    for agent_id, _ in DEMO_AGENTS[:6]:
        desk.ratings += [(agent_id, rng.choices((1, 2, 3, 4, 5), (1, 1, 2, 5, 8))[0]) for _ in range(rng.randint(3, 9))]
    desk.ratings += [(None, rng.choice((3, 4, 5))) for _ in range(4)]
