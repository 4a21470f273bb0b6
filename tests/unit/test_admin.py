"""The admin socket (`softswitch status`, `calls`, `hangup`): the real server on a real Unix socket.

The switch behind it is the real control process's call handling over a
scripted media worker (``tests/fakes/control.py``), with a real SQLite store;
the command line talks to it as it would to a running ``softswitch run``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from softswitch import protocol
from softswitch.cli import main
from softswitch.config import Config, load_config
from softswitch.control.admin import MAX_REQUEST_BYTES, AdminError, request, serve_admin
from softswitch.control.process import Softswitch
from tests.fakes.control import control_switch, place_call, scripted_worker, write_config
from tests.fakes.scripted_worker import AgentPhone, Script

pytestmark = pytest.mark.unit


async def until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Bounded wait for the switch's own state (it changes on the same loop, between our turns)."""
    for _ in range(int(timeout_s / 0.02)):
        if value := predicate():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    def __init__(self, switch: Softswitch, config: Config, config_path: Path) -> None:
        self.switch, self.config, self.config_path = switch, config, config_path

    async def ask(self, command: str, **fields: str) -> Any:
        return await asyncio.to_thread(request, self.config.admin_socket, command, fields)

    async def cli(self, *argv: str) -> int:
        return await asyncio.to_thread(main, ["--config", str(self.config_path), *argv])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    async with control_switch(config) as switch:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        server = await serve_admin(switch, config.admin_socket)
        try:
            yield Served(switch, config, config_path)
        finally:
            server.close()
            await server.wait_closed()


async def test_a_call_in_the_ivr_is_listed_shown_and_hung_up_as_a_normal_hang_up(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    switch = served.switch
    assert stat.S_IMODE(served.config.admin_socket.stat().st_mode) == 0o600
    # A caller who keys nothing stays in the ID step for seconds: the spoken ID is being recorded.
    worker = scripted_worker(Script())
    place_call(switch, worker, "stay-1@trunk")
    await until(lambda: any(isinstance(c, protocol.Record) for c in worker.commands), 5, "the ID's recording")

    (listed,) = await served.ask("calls")
    assert (listed["cdr_id"], listed["call_id"], listed["worker"], listed["agent"]) == (1, "stay-1@trunk", 0, None)
    assert listed["state"] == "national_id" and listed["caller"] == "*******6655"
    status = await served.ask("status")
    assert status["calls_active"] == 1 and status["queue"] == {"length": 0, "longest_wait_s": 0.0, "callers": []}
    assert [(w["id"], w["calls"], w["max_calls"]) for w in status["workers"]] == [(0, 1, 4)]
    assert status["front"] == {"up": False, "destinations": []}  # no Kamailio in a unit test

    capsys.readouterr()
    assert await served.cli("calls") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["cdr", "call-id", "worker", "age", "state", "agent", "caller"]
    assert table[1].split()[:3] == ["1", "stay-1@trunk", "0"] and table[-1] == "1 call(s)"

    assert await served.cli("hangup", "stay-1@trunk") == 0
    assert capsys.readouterr().out.strip() == "call 1 (stay-1@trunk): hung up, operator_hangup"
    cdr = await switch.store.get_call(1)
    assert cdr.disposition == "operator_hangup" and cdr.ended_at is not None
    assert cdr.ivr_path[-1] == "ended:national_id"
    # The ID tape being recorded when the operator hung up is closed and kept with the call.
    (tape,) = await switch.store.recordings_for_call(1)
    assert tape.kind == "national_id_utterance" and tape.duration_s > 0
    (done,) = [r.done for r in worker.recordings]
    assert done.reason == "hangup" and tape.sha256 == done.sha256

    assert await served.ask("calls") == []
    with pytest.raises(AdminError, match="no call '1' in progress"):
        await served.ask("hangup", call="1")
    assert await served.cli("hangup", "1") == 1
    assert "softswitch calls" in capsys.readouterr().err


async def test_bad_requests_get_a_clear_error_and_the_connection_serves_on(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.config.admin_socket))
    try:
        answers = []
        for line in (b"not json\n", b'{"command": "reboot"}\n', b'{"command": "hangup"}\n', b'{"command": "calls"}\n'):
            writer.write(line)
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), 5)))
        assert [a["ok"] for a in answers] == [False, False, False, True]
        assert answers[0]["error"] == "a request is one JSON object on one line"
        assert "unknown command 'reboot'" in answers[1]["error"] and "status, calls, hangup" in answers[1]["error"]
        assert "CDR id or a SIP Call-ID" in answers[2]["error"] and answers[3]["result"] == []
        writer.write(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n")
        too_long = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert not too_long["ok"] and str(MAX_REQUEST_BYTES) in too_long["error"]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    finally:
        writer.close()


def test_without_a_running_switch_the_cli_says_how_to_start_one(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    for command in (["status"], ["calls", "--json"], ["hangup", "1"]):
        assert main(["--config", str(config_path), *command]) == 1
        assert capsys.readouterr().err.strip() == (
            f"softswitch: no softswitch is running for data_dir {config.data_dir} (no socket at "
            f"{config.admin_socket}). Start it with `softswitch run`, or pass the --config it was started with.")
    # A socket left by a crashed run: nothing answers there.
    config.run_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(config.admin_socket))
    assert main(["--config", str(config_path), "status"]) == 1
    assert f"nothing answers at {config.admin_socket}" in capsys.readouterr().err


async def test_status_prints_tables_and_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert await served.cli("status") == 0
    text = capsys.readouterr().out
    assert text.startswith("softswitch starting: 0 of ? workers, 0 call(s)") and "front: down" in text
    assert "queue: 0 waiting, longest wait 0 s" in text
    assert await served.cli("status", "--json") == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["calls_active"] == 0 and parsed["front"]["up"] is False


async def test_hanging_up_a_bridged_call_ends_both_legs_and_keeps_the_conversation_and_its_case(
        tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, agents=["1001"]))
    async with control_switch(config) as switch:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        server = await serve_admin(switch, config.admin_socket)
        try:
            # ID, 1 (confirm), 1 (an agent), 1 (about me); the agent answers and never hangs up.
            worker = scripted_worker(Script().key(0.05, "0499370899111", gap_s=0.01),
                                     agents={"1001": AgentPhone(answer_after_s=0.2, talk_s=None)})
            place_call(switch, worker, "bridged-1@trunk")
            await until(lambda: worker.bridged, 5, "the bridge")
            (listed,) = await asyncio.to_thread(request, config.admin_socket, "calls")
            assert listed["state"] == "queue" and listed["agent"] == {"id": "1001", "state": "connected"}
            status = await asyncio.to_thread(request, config.admin_socket, "status")
            assert [(a["id"], a["state"]) for a in status["agents"]] == [("1001", "on_call")]

            answer = await asyncio.to_thread(request, config.admin_socket, "hangup", {"call": "1"})
            assert answer == {"cdr_id": 1, "call_id": "bridged-1@trunk", "ended": True,
                              "disposition": "operator_hangup"}
        finally:
            server.close()
            await server.wait_closed()
        (leg,) = [c.call for c in worker.commands if isinstance(c, protocol.Dial)]
        assert protocol.HangupCall(leg) in worker.commands  # the agent's phone is hung up too
        cdr = await switch.store.get_call(1)
        assert cdr.disposition == "operator_hangup" and cdr.agent_id == "1001"
        case = await switch.store.case_for_call(1)
        assert case is not None
        kinds = sorted(r.kind for r in await switch.store.recordings_for_call(1))
        assert kinds == ["conversation", "national_id_utterance"]
        assert switch.acd.agent("1001").state.value == "wrap_up"
