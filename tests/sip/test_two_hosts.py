"""Two complete softswitches on one PostgreSQL store, one killed under load: nothing lost but its live calls.

Host a binds 127.0.0.11, host b 127.0.0.12 (front, workers, HTTP); both share the
tests' PostgreSQL server and one recordings directory. SIPp callers leave
recorded messages on both; every process host a started (control, front, worker)
is killed with SIGKILL while some of its callers are in their message. Host b
must notice within seconds, close a's open CDRs as host_lost and file the cut
messages; b's callers all finish, and a new call to b is answered at once.
Then a starts again under its name: it closes nothing again and keeps the cut
messages' tapes from its disk with their cases. Apart from that, with one
queue for both: an agent registered and logged in at b answers a caller who
came in at a.

Ports 22000-22999 and 42000-42899, and each host's SIPp media port in its window above the ephemeral
range (tests/sip/conftest.py): host a SIP 22060, HTTP 22111, worker 22070, RTP 42000-42063, SIPp
22200; host b SIP 22560, HTTP 22611, worker 22570, RTP 42500-42563, SIPp 22700-22799; softphones
22300-22309 (RTP 42700-42899).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from media.wavfile import read_pcm
from tests.sip.conftest import (NATIONAL_ID, RESERVED_MEDIA_SLOT, RunningSoftswitch, caller_media_port, espeak_wav,
                               running_softswitch)
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Softphone
from tests.sip.test_live import (AGENT_TONE_HZ, CALLER_TONE_HZ, LIVE, PASSWORD, caller_through_ivr, dominant_hz,
                                 supervisor_snapshot, tone_share, tone_wav)
from tests.sip.test_recorded_message import keyed_id_then_message
from tests.support.postgres import PostgresServer, StoreDatabase
from tests.support.sipp import SippRun, caller_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(170)]

HEARTBEAT_S, HOST_TIMEOUT_S = 0.5, 2.0
CALLS, CONCURRENT = 8, 4


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    address: str
    sip_port: int
    sipp_port: int
    sipp_media_port: int

    @property
    def ports(self) -> dict[str, Any]:
        return dict(sip_port=self.sip_port, http_port=self.sip_port + 51, workers=1,
                    worker_base_port=self.sip_port + 10, rtp_base_port=42000 + self.sip_port - 22060, host=self.address)


A = Host("host-a", "127.0.0.11", 22060, 22200, caller_media_port(22060, RESERVED_MEDIA_SLOT))
B = Host("host-b", "127.0.0.12", 22560, 22700, caller_media_port(22560, RESERVED_MEDIA_SLOT))


def _overrides(host: Host, database_url: str, shared: Path) -> dict[str, Any]:
    return {"database_url": database_url,
            "cluster": {"name": host.name, "heartbeat_s": HEARTBEAT_S, "host_timeout_s": HOST_TIMEOUT_S},
            "recordings_store": {"shared_dir": str(shared), "retry_initial_s": 0.2, "retry_max_s": 0.5},
            "workers": {"max_calls": 8, "rtp_ports_per_worker": 64}}


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[StoreDatabase]:
    name = asyncio.run(postgres_server.create_database())
    try:
        yield StoreDatabase("postgresql", postgres_server.url(name), postgres_server, name)
    finally:
        asyncio.run(postgres_server.drop_database(name))


def sql(database: StoreDatabase, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return asyncio.run(database.raw(query, *params))


def load(switch: RunningSoftswitch, host: Host, pcap: Path, calls: int = CALLS) -> tuple[SippRun, Path]:
    """SIPp callers into one host, a few at a time, each leaving a message; their own Call-IDs."""
    directory = switch.work / "load"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scenario.xml").write_text(caller_scenario(pcap))
    run = SippRun(target=switch.sip_target, scenario=directory / "scenario.xml", calls=calls, rate=4.0,
                  limit=CONCURRENT, local_port=host.sipp_port, media_port=host.sipp_media_port,
                  call_id=f"{host.name}-%u@load", timeout_s=90, stats_file=directory / "stats.csv")
    return run, directory


def bound_udp(port: int) -> set[str]:
    """The IPv4 addresses UDP sockets on this port are bound to (/proc/net/udp: little-endian hex)."""
    found = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        address, port_hex = line.split()[1].split(":")
        if int(port_hex, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def kill_everything_of(switch: RunningSoftswitch) -> list[int]:
    """SIGKILL every process this softswitch started, by PID: its control process, and the front and the
    workers it recorded in var/run/*.pid (each leads a process group of its own: Kamailio's forks too)."""
    children = [int(pid_file.read_text().split()[0]) for pid_file in (switch.data_dir / "run").glob("*.pid")]
    assert len(children) == 2, children  # the front and the one worker
    switch.process.kill()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    switch.process.wait(timeout=10)
    return children


def message_calls(directory: Path) -> set[int]:
    """CDR ids of every call whose message tape was started (call<CDR id>-<n>-message.wav), wherever it is."""
    return {int(m.group(1)) for p in directory.rglob("*-message.wav")
            if (m := re.fullmatch(r"call(\d+)-\d+-message", p.stem))}


def test_a_host_killed_under_load_loses_only_its_live_calls(
        tmp_path: Path, database: StoreDatabase) -> None:
    short = espeak_wav(tmp_path, "request", "خیابان ما آسفالت ندارد. لطفا رسیدگی کنید.")
    pcap = tmp_path / "caller.pcap"
    keyed_id_then_message(short, pcap)
    shared = tmp_path / "shared"
    shared.mkdir()
    url = str(database.target)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_softswitch(tmp_path / "a", **A.ports,
                                                   config_overrides=_overrides(A, url, shared)))
        b = stack.enter_context(running_softswitch(tmp_path / "b", **B.ports,
                                                   config_overrides=_overrides(B, url, shared)))
        # Each front and worker listens on its own host's address only.
        assert bound_udp(A.sip_port) == {A.address} and bound_udp(A.sip_port + 10) == {A.address}
        assert bound_udp(B.sip_port) == {B.address} and bound_udp(B.sip_port + 10) == {B.address}
        _, health = b.get("/api/health")
        assert {h["name"]: h["alive"] for h in health["cluster"]["hosts"]} == {A.name: True, B.name: True}

        load_a, dir_a = load(a, A, pcap)
        load_b, dir_b = load(b, B, pcap)
        callers_a, callers_b = load_a.start(dir_a), load_b.start(dir_b)
        try:
            def a_mid_message() -> bool:
                # Taping: its message started, its tape not closed (no row yet).
                [(done, messaging)] = sql(database, "SELECT count(ended_at), count(*) FILTER (WHERE ended_at IS NULL"
                                          " AND message_started_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
                                          " recordings r WHERE r.call_id = calls.id AND r.kind = 'message'))"
                                          " FROM calls WHERE host = ?", A.name)
                return done >= 2 and messaging >= 1
            a.wait_for(a_mid_message, 60, "host a with calls finished and a caller in their message")
            killed_at = time.monotonic()
            kill_everything_of(a)

            # The survivor notices within seconds and takes host a over.
            def taken_over() -> bool:
                _, body = b.get("/api/health")
                return any(h["name"] == A.name and h["taken_over_by"] == B.name for h in body["cluster"]["hosts"])
            b.wait_for(taken_over, 15, "host b to take host a over")
            noticed_s = time.monotonic() - killed_at
            assert noticed_s < HOST_TIMEOUT_S + 4, noticed_s

            # New calls go to the survivor and are answered within seconds.
            started = time.monotonic()
            fresh, fresh_id = b.call("fresh", None, hangup_after_ms=500, timeout_s=20)
            assert fresh.returncode == 0 and time.monotonic() - started < 5, fresh.stderr + fresh.stdout[-2000:]

            finished_b = load_b.finish(callers_b)
        finally:
            if callers_a.poll() is None:
                callers_a.kill()  # a's callers in progress were lost with it: no BYE comes
                callers_a.wait()
        # The survivor's own calls all completed.
        assert finished_b.returncode == 0 and (finished_b.successful, finished_b.failed) == (CALLS, 0), \
            finished_b.stderr + finished_b.stdout[-2000:]
        b.call_record(fresh_id)
        b.wait_for(lambda: not sql(database, "SELECT id FROM calls WHERE ended_at IS NULL"), 20, "every CDR closed")

        [(last_seen,)] = sql(database, "SELECT last_seen FROM hosts WHERE name = ?", A.name)
        cdrs = {row[0]: row[1:] for row in sql(
            database, "SELECT id, host, disposition, ended_at, message_started_at, arrived_at, sip_call_id"
            " FROM calls")}
        lost = {cdr for cdr, (host, disposition, *_) in cdrs.items() if disposition == "host_lost"}
        assert lost and {cdrs[cdr][0] for cdr in lost} == {A.name}
        # Ended at a's last heartbeat (a call that arrived after it, at its arrival).
        assert all(cdrs[cdr][2] == pytest.approx(max(last_seen, cdrs[cdr][4]), abs=0.01) for cdr in lost), \
            ([cdrs[cdr] for cdr in lost], last_seen)
        assert {d for h, d, *_ in cdrs.values() if h == A.name} <= {"completed", "host_lost"}
        assert {d for h, d, *_, call_id in cdrs.values() if h == B.name and call_id.endswith("@load")} \
            == {"completed"}
        assert sum(1 for h, *_, call_id in cdrs.values() if h == B.name and call_id.endswith("@load")) == CALLS

        # Cases lost: 0. Every completed call has its case, and so has every call whose message tape started
        # (by the tapes on any disk), a cut one as received_incomplete.
        cases = {row[0]: row[1] for row in sql(database, "SELECT call_id, status FROM cases")}
        completed = {cdr for cdr, (_, disposition, *_, call_id) in cdrs.items()
                     if disposition == "completed" and call_id.endswith("@load")}
        assert len(completed) >= CALLS + 2  # b's, and a's finished before the kill
        taped = message_calls(tmp_path / "a" / "var") | message_calls(tmp_path / "b" / "var") | message_calls(shared)
        assert completed | taped <= set(cases), (completed | taped) - set(cases)
        # (A call lost during its tracking code's read-back had its case already, received.)
        cut = {cdr for cdr in lost if cdrs[cdr][3] is not None and cases[cdr] == "received_incomplete"}
        assert cut and {cases[cdr] for cdr in lost if cdrs[cdr][3] is not None} <= {"received", "received_incomplete"}
        assert cut <= taped

        # Recordings lost: 0. Every row's file is there with its sha256.
        rows = sql(database, "SELECT id, path, sha256 FROM recordings")
        assert rows
        for recording_id, path, sha256 in rows:
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256, (recording_id, path)

        # Host a comes back under its name: it closes none of those CDRs again, and the cut messages'
        # tapes, on its disk all along, join their cases.
        with running_softswitch(tmp_path / "a", **A.ports, config_overrides=_overrides(A, url, shared)):
            again = {row[0]: row[1] for row in sql(database, "SELECT id, disposition FROM calls WHERE host = ?",
                                                      A.name)}
            assert {cdr for cdr, disposition in again.items() if disposition == "host_lost"} == lost
            kept = {row[0] for row in sql(database, "SELECT r.call_id FROM recordings r JOIN cases c"
                                          " ON c.id = r.case_id WHERE r.kind = 'message'")}
            assert cut <= kept, cut - kept
            _, health = b.get("/api/health")
            assert {h["name"]: h["alive"] for h in health["cluster"]["hosts"]} == {A.name: True, B.name: True}
        # Stopped cleanly this time (drained, SIGTERM): it left, and is not taken over.
        time.sleep(HOST_TIMEOUT_S + 2 * HEARTBEAT_S)
        _, health = b.get("/api/health")
        [left] = [h for h in health["cluster"]["hosts"] if h["name"] == A.name]
        assert (left["alive"], left["left"], left["taken_over_by"]) == (False, True, None), left
        assert b.log_path.read_text(errors="replace").count("took it over") == 1


def _phone(n: int, address: str, log_dir: Path, user: str) -> Softphone:
    return Softphone(f"{n}-{user}", log_dir, user=user, host=address, sip_port=22300 + n,
                     rtp_port=42700 + 40 * n)


def test_a_caller_at_one_host_is_answered_by_an_agent_of_the_other(
        tmp_path: Path, database: StoreDatabase) -> None:
    """One queue: the agent's phone registered at b's front, their console at b; the caller came in at a,
    whose worker rings them through a's front and bridges them; both hosts show the same queue."""
    shared = tmp_path / "shared"
    shared.mkdir()
    url = str(database.target)
    live: dict[str, Any] = {**LIVE, "agents": {**cast(dict[str, Any], LIVE["agents"]), "wrap_up_s": 0.0}}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_softswitch(tmp_path / "a", **A.ports,
                                                   config_overrides={**_overrides(A, url, shared), **live}))
        b = stack.enter_context(running_softswitch(tmp_path / "b", **B.ports,
                                                   config_overrides={**_overrides(B, url, shared), **live}))
        agent = stack.enter_context(_phone(0, B.address, tmp_path / "phones", "1001"))
        registered = agent.register(f"sip:{B.address}:{B.sip_port}", "1001", PASSWORD)
        assert (registered["event"], registered["code"]) == ("registered", 200), registered
        agent.answer_policy(0.5)
        console = ConsoleClient(b.http, "1001", PASSWORD).login()
        stream = stack.enter_context(contextlib.closing(console.events()))

        def agent_at(switch: RunningSoftswitch) -> dict[str, Any]:
            [seen] = [x for x in supervisor_snapshot(switch)["agents"] if x["id"] == "1001"]
            return seen

        def ready_at(switch: RunningSoftswitch) -> Callable[[], bool]:
            return lambda: agent_at(switch)["state"] == "ready"
        a.wait_for(ready_at(a), 10, "host a to see the agent who logged in at b ready")

        # The trunk's address, as the default allow-list has it.
        caller = stack.enter_context(_phone(1, "127.0.0.1", tmp_path / "phones", "caller"))
        call = caller_through_ivr(caller, front_port=A.sip_port, front_host=A.address)
        caller.play(call, tone_wav(tmp_path / "caller.wav", CALLER_TONE_HZ))
        incoming = agent.wait_for("incoming", timeout_s=15)
        assert incoming["source"] == f"{A.address}:{A.sip_port}"  # rung through a's front
        leg = incoming["call"]
        # The call's desk is a's; the agent's console at b shows its screen-pop, relayed from a.
        offer = stream.wait_for(lambda e: e["type"] == "offer", 10)["offer"]
        assert offer["national_id"] == NATIONAL_ID and offer["id_status"] == "verified", offer
        agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        reloaded = console.current_offer()
        assert reloaded is not None and reloaded["call_key"] == offer["call_key"], reloaded
        status, filed = console.post("/console/api/cases", {
            "call_key": offer["call_key"], "agency_id": "energy", "category": "شکایت",
            "summary": "برق کوچه قطع است."})
        assert status == 200 and filed["duplicate"] is False, (status, filed)
        stream.wait_for(lambda e: e["type"] == "case_filed" and e["tracking_code"] == filed["tracking_code"], 5)
        agent.play(leg, tone_wav(tmp_path / "agent.wav", AGENT_TONE_HZ))
        agent.record(leg, tmp_path / "agent-heard.wav")
        # b's supervisor view shows the agent on a's call, as a's does.
        for switch in (b, a):
            switch.wait_for(lambda: agent_at(switch)["state"] == "on_call", 5, "the agent on the call")
        time.sleep(3.0)
        agent.hangup(leg)
        assert caller.wait_for("ended", call=call, timeout_s=10)["connected_s"] > 3
        agent_heard = read_pcm(Path(agent.wait_for("recorded", call=leg, timeout_s=5)["wav"]))
        assert abs(dominant_hz(agent_heard[-16000 * 2:]) - CALLER_TONE_HZ) < 15

        stream.wait_for(lambda e: e["type"] == "call_ended" and e.get("tracking_code") == filed["tracking_code"], 10)
        body = a.call_record(call)
        assert body["call"]["agent_id"] == "1001" and "queue:handled" in body["call"]["ivr_path"]
        assert body["tracking_code"] == filed["tracking_code"]
        [tape] = [r for r in body["recordings"] if r["kind"] == "conversation"]

        def copied() -> Path | None:  # on to the shared directory, where b reads it too
            [(path,)] = sql(database, "SELECT path FROM recordings WHERE sha256 = ?", tape["sha256"])
            return Path(path) if Path(path).is_relative_to(shared) else None
        conversation = read_pcm(a.wait_for(copied, 10, "the conversation in the shared directory"))
        assert tone_share(conversation, CALLER_TONE_HZ) > 0.2 and tone_share(conversation, AGENT_TONE_HZ) > 0.2
        # Both hosts count the one queue's day alike, and the agent is ready again on both.
        for switch in (a, b):
            switch.wait_for(ready_at(switch), 10, "the agent ready again")
        assert agent_at(a)["answered_today"] == agent_at(b)["answered_today"] == 1
        assert supervisor_snapshot(a)["today"]["answered"] == supervisor_snapshot(b)["today"]["answered"] == 1
        assert console.action("logout")["agent"]["state"] == "logged_out"
        a.wait_for(lambda: agent_at(a)["state"] == "logged_out", 5, "host a to see the agent log out at b")
