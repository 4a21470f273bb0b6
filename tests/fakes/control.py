"""The real control process's call handling over a scripted media worker, for unit tests.

``Softswitch`` as ``softswitch run`` wires it (routing, the flow, the queue,
the agents' desk, the admin socket's views) on a real SQLite store in a
temporary directory; the media worker and the caller are a
``tests.fakes.scripted_worker.ScriptedWorker`` (a fake named as such), fed
``Incoming`` events as a worker's link would be. The store runs a thread, so
this runs on a real event loop rather than virtual time: prompts and the IVR's
timers are cut short and a whole call takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from softswitch import protocol
from softswitch.config import Config
from softswitch.control.process import Softswitch
from storage.crypto import IdProtector
from storage.store import open_store
from tests.fakes.ivr_parts import FakePrompts
from tests.fakes.scripted_worker import AgentPhone, Script, ScriptedWorker

PROMPT_S = 0.02  # every fake prompt (a digit too)
FAST_IVR = {"id_max_s": 5.0, "id_silence_s": 0.3, "id_no_input_s": 1.0, "confirm_timeout_s": 0.5,
            "menu_timeout_s": 0.5, "message_max_s": 10.0, "message_silence_s": 0.3, "message_no_input_s": 1.0}
SURVEY_WAIT_S = 0.5
ALWAYS_OPEN = {day: ["00:00-24:00"] for day in
               ("saturday", "sunday", "monday", "tuesday", "wednesday", "thursday", "friday")}
CALLER = "02188776655"


def write_config(directory: Path, agents: Sequence[str] = ()) -> Path:
    """A config file for a switch whose data directory is ``directory/var``; `agents` are logged-in agent ids."""
    data: dict[str, Any] = {"data_dir": str(directory / "var"), "ivr": FAST_IVR,
                            "office_hours": {"weekly": ALWAYS_OPEN}, "survey": {"wait_s": SURVEY_WAIT_S}}
    if agents:
        data["agents"] = {"accounts": [{"id": a, "name": f"کارشناس {a}", "sip_ha1": "0" * 32,
                                        "console_password": "scrypt$not-used"} for a in agents], "wrap_up_s": 1.0}
    path = directory / "softswitch.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def control_switch(config: Config) -> AsyncIterator[Softswitch]:
    """The switch's call-handling parts on a fresh store, with every configured agent logged in."""
    switch = Softswitch(config)
    switch.prompts = FakePrompts()  # type: ignore[assignment]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    protector = IdProtector.from_key_file(config.under_data(config.security.id_key_file))
    async with open_store(config.database_path, protector) as store:
        switch.use_store(store)
        for account in config.agents.accounts:
            switch.acd.login(account.id)
        try:
            yield switch
        finally:
            await switch.desk.close()
            switch.acd.close()
            await switch.day_journal.close()


def scripted_worker(script: Script, agents: dict[str, AgentPhone] | None = None) -> ScriptedWorker:
    return ScriptedWorker(script, agents=agents, default_prompt_s=PROMPT_S)


def place_call(switch: Softswitch, worker: ScriptedWorker, sip_call_id: str) -> None:
    """An INVITE for the service number from an allowed trunk, as the worker's link delivers it."""
    if worker not in switch.links:
        switch.links.append(worker)  # type: ignore[arg-type]
    switch._on_event(worker, protocol.Incoming(  # type: ignore[arg-type]
        "caller", sip_call_id, f"sip:{CALLER}@trunk.example", "sip:111@softswitch", "sip:111@127.0.0.1",
        "127.0.0.1:5060"))


async def calls_done(switch: Softswitch, timeout_s: float = 30.0) -> None:
    """Every call's handling over, its CDR closed."""
    if switch.flows:
        _, pending = await asyncio.wait(set(switch.flows), timeout=timeout_s)
        assert not pending, "calls still running"
