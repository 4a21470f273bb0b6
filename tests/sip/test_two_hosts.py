"""Two complete softswitches on one PostgreSQL store, one killed under load: nothing lost but its live calls.

Host a binds 127.0.0.11, host b 127.0.0.12 (front, workers, HTTP); both share the
tests' PostgreSQL server and one recordings directory. SIPp callers leave
recorded messages on both; every process host a started (control, front, worker)
is killed with SIGKILL while some of its callers are in their message. Host b
must notice within seconds, close a's open CDRs as host_lost and file the cut
messages; b's callers all finish, and a new call to b is answered at once.
Then a starts again under its name: it closes nothing again and keeps the cut
messages' tapes from its disk with their cases.

Ports 22000-22999 and 42000-43999 only: host a SIP 22060, HTTP 22111, worker 22070,
RTP 42000-42063, SIPp 22200/43000; host b SIP 22560, HTTP 22611, worker 22570,
RTP 42500-42563, SIPp 22700-22799/43500-43999.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sip.conftest import RunningSoftswitch, espeak_wav, running_softswitch
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


A = Host("host-a", "127.0.0.11", 22060, 22200, 43000)
B = Host("host-b", "127.0.0.12", 22560, 22700, 43500)


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
