"""Shared registrations: two hosts' SIP fronts on one PostgreSQL database, each reaching every agent.

Two real Kamailio fronts, A on 127.0.0.21:23060 (server_id 1) and B on
127.0.0.22:23060 (server_id 2), keep their registrations in the `location`
table of one database on the tests' PostgreSQL server, created by the store's
migrations; A reaches it over TCP, B through its Unix socket. Their
dispatcher sets name 127.0.0.21:23070, where a softphone stands in for a
media worker. One test runs a whole softswitch as host A
(SIP 127.0.0.21:23560, HTTP :23511, worker :23570, RTP from 44500) beside
host B's front on 127.0.0.22:23560. Ports 23000-23999, RTP 44000-44999 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from softswitch.config import AgentsConfig, Config, load_config
from softswitch.control import admin, sipfront
from storage.crypto import IdProtector
from storage.store import Store, open_store
from tests.sip.conftest import agent_accounts, running_softswitch
from tests.sip.front import front_alone
from tests.sip.softphones import Softphone
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]

HOST_A, HOST_B = "127.0.0.21", "127.0.0.22"
SIP_PORT = 23060
WORKER_PORT = 23070  # on HOST_A: both fronts' dispatcher sets name it
PROBE_PORT = 23290
REALM = AgentsConfig().realm
KEEPALIVE_INTERVAL_S, KEEPALIVE_TIMEOUT_S = 1, 3
AGENTS = (("2101", "Agent One", "first-agent-pw"), ("2102", "Agent Two", "second-agent-pw"))
PASSWORD = {agent_id: password for agent_id, _, password in AGENTS}


@dataclass
class Cluster:
    """Two fronts sharing one database, and a store open on it (what each host's control process reads)."""

    work: Path
    server: PostgresServer
    store: Store
    loop: asyncio.AbstractEventLoop

    def registered(self) -> set[str]:
        return self.loop.run_until_complete(self.store.registered_sip_users(time.time()))

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        return [tuple(row) for row in self.loop.run_until_complete(self.store._fetchall(sql))]

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        self.loop.run_until_complete(self.store._update(sql, params))


def _front_config(base: Path, database_url: str, host: str, server_id: int) -> Config:
    return load_config(overrides={
        "data_dir": str(base), "database_url": database_url, "sip.listen": host, "sip.port": SIP_PORT,
        "workers.count": 1, "workers.host": HOST_A, "workers.base_port": WORKER_PORT, "kamailio.children": 2,
        "kamailio.server_id": server_id, "agents.accounts": agent_accounts(AGENTS, REALM),
        "agents.registration_expires_s": 60, "agents.keepalive_interval_s": KEEPALIVE_INTERVAL_S,
        "agents.keepalive_timeout_s": KEEPALIVE_TIMEOUT_S})


@contextlib.asynccontextmanager
async def _store(url: str, key_dir: Path) -> AsyncIterator[Store]:
    # Opening the store applies the migrations, the `location` table with them, as a control process does.
    async with open_store(url, IdProtector.from_key_file(key_dir / "id.key")) as store:
        yield store


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Cluster]:
    work, server = tmp_path_factory.mktemp("shared-registrations"), postgres_server
    loop = asyncio.new_event_loop()
    try:
        name = loop.run_until_complete(server.create_database())
        url = server.url(name)
        # B reaches the server through its Unix socket (no password anywhere), A over TCP.
        socket_url = f"postgresql://postgres@/{name}?host={server.directory}&port={server.port}"
        opened = _store(url, work)
        store = loop.run_until_complete(opened.__aenter__())
        try:
            with front_alone(_front_config(work / "a", url, HOST_A, 1), len(AGENTS), (HOST_A, PROBE_PORT)), \
                    front_alone(_front_config(work / "b", socket_url, HOST_B, 2), len(AGENTS), (HOST_B, PROBE_PORT)):
                yield Cluster(work, server, store, loop)
        finally:
            loop.run_until_complete(opened.__aexit__(None, None, None))
    finally:
        loop.close()


def _agent_phone(n: int, log_dir: Path, agent_id: str, host: str = HOST_B, sip_trace: bool = False) -> Softphone:
    """Softphone n: SIP port 23200+n on ``host``, RTP ports from 44000+20n."""
    return Softphone(f"{n}-{agent_id}", log_dir, user=agent_id, host=host, sip_port=23200 + n,
                     rtp_port=44000 + 20 * n, sip_trace=sip_trace)


def _worker(log_dir: Path) -> Softphone:
    return Softphone("worker", log_dir, user="111", host=HOST_A, sip_port=WORKER_PORT, rtp_port=44400)


def _registrar(host: str) -> str:
    return f"sip:{host}:{SIP_PORT}"


def _agent_via(host: str, agent_id: str) -> str:
    return f"sip:{agent_id}@{host}:{SIP_PORT}"


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def test_an_agent_registered_at_b_is_rung_through_a(cluster: Cluster, tmp_path: Path) -> None:
    with _agent_phone(0, tmp_path, "2101", sip_trace=True) as agent, _worker(tmp_path) as worker:
        registered = agent.register(_registrar(HOST_B), "2101", PASSWORD["2101"], realm=REALM)
        assert (registered["event"], registered["code"]) == ("registered", 200), registered
        # Both hosts' control processes read the one table; front A's memory holds nothing (DB-only usrloc).
        assert cluster.registered() == {"2101"}
        assert cluster.loop.run_until_complete(sipfront.FrontRpc(cluster.work / "a" / "kamailio")
                                               .registered_users()) == set()
        agent.answer_policy(answer_after_s=0.3)
        call = worker.dial(_agent_via(HOST_A, "2101"), headers={"X-111-Call": "w0-1"})
        incoming = agent.wait_for("incoming")
        assert incoming["source"] == f"{HOST_A}:{SIP_PORT}"  # front A relays, to the contact B stored
        assert incoming["request_uri"] == f"sip:2101@{HOST_B}:{agent.sip_port}"
        assert incoming["headers"] == {"X-111-Call": "w0-1"}
        worker.wait_for("state", call=call, state="CONFIRMED", timeout_s=5)
        agent.hangup()
        assert worker.wait_for("ended", call=call)["code"] == 200
        # Probed by B alone, the front whose NAT binding the phone holds: two rounds at least meanwhile.
        _wait(lambda: len(_probes_from(agent, HOST_B)) >= 2, 5 * KEEPALIVE_INTERVAL_S, "B's probes")
        assert _probes_from(agent, HOST_A) == []
        assert agent.unregister()["event"] == "unregistered"
    assert (agent.returncode, worker.returncode) == (0, 0)


def _probes_from(phone: Softphone, host: str) -> list[str]:
    return re.findall(rf"RX \d+ bytes Request msg OPTIONS/cseq=\d+ \(\w+\) from UDP {re.escape(host)}:{SIP_PORT}:",
                      phone.log_path.read_text())


def test_an_unregistration_at_a_is_seen_at_b(cluster: Cluster, tmp_path: Path) -> None:
    with _agent_phone(1, tmp_path, "2102", host=HOST_A) as agent, _worker(tmp_path) as worker:
        assert agent.register(_registrar(HOST_A), "2102", PASSWORD["2102"], realm=REALM)["code"] == 200
        agent.answer_policy(answer_after_s=0.2)
        call = worker.dial(_agent_via(HOST_B, "2102"))
        assert agent.wait_for("incoming")["source"] == f"{HOST_B}:{SIP_PORT}"
        worker.wait_for("state", call=call, state="CONFIRMED", timeout_s=5)
        worker.hangup(call)
        assert worker.wait_for("ended", call=call)["code"] == 200

        assert agent.unregister()["event"] == "unregistered"
        assert cluster.registered() == set()
        after = worker.dial(_agent_via(HOST_B, "2102"))
        assert worker.wait_for("ended", call=after)["code"] == 480


def test_a_wrong_password_at_a_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    with _agent_phone(2, tmp_path, "2101", host=HOST_A) as phone:
        outcome = phone.register(_registrar(HOST_A), "2101", "not-the-password", realm=REALM)
    assert (outcome["event"], outcome["code"]) == ("reg_failed", 403), outcome
    assert cluster.registered() == set()


def test_a_second_place_is_refused_at_the_other_front(cluster: Cluster, tmp_path: Path) -> None:
    with _agent_phone(3, tmp_path, "2101") as at_b, _agent_phone(4, tmp_path, "2101", host=HOST_A) as elsewhere:
        assert at_b.register(_registrar(HOST_B), "2101", PASSWORD["2101"], realm=REALM)["code"] == 200
        # Another address, at the other front, while the registration made at B is live.
        outcome = elsewhere.register(_registrar(HOST_A), "2101", PASSWORD["2101"], realm=REALM)
        assert (outcome["event"], outcome["code"]) == ("reg_failed", 403), outcome
        assert cluster.rows("SELECT received, server_id FROM location") == [(f"sip:{HOST_B}:{at_b.sip_port}", 2)]
        assert at_b.unregister()["event"] == "unregistered"


def test_the_contact_limit_counts_every_fronts_registrations(cluster: Cluster, tmp_path: Path) -> None:
    # Five phones of the agent's desk registered at a third host's front (server_id 3, which nobody
    # here probes), written as that front writes them.
    now = int(time.time())
    for n in range(5):
        cluster.execute(
            "INSERT INTO location (ruid, username, contact, received, expires, last_modified, callid, server_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 3)",
            (f"uloc-3-test-{n}", "2101", f"sip:2101@{HOST_B}:{23300 + n}", f"sip:{HOST_B}:{23300 + n}", now + 60,
             now, f"desk-{n}@test"))
    try:
        assert cluster.registered() == {"2101"}
        with _agent_phone(6, tmp_path, "2101") as sixth:
            outcome = sixth.register(_registrar(HOST_A), "2101", PASSWORD["2101"], realm=REALM)
        assert (outcome["event"], outcome["code"]) == ("reg_failed", 503), outcome
        assert cluster.rows("SELECT count(*) FROM location") == [(5,)]
    finally:
        cluster.execute("DELETE FROM location WHERE server_id = 3")


def _probe_answer(ruid: str, front: str) -> bytes:
    """A 200 to one of usrloc's probes, as a phone answers it (From tag: ruid-aorhash-sec-usec-counter.branch)."""
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {front}:{SIP_PORT};branch=z9hG4bKx.1.1.0\r\n"
            f"From: <sip:front@{front}>;tag={ruid}-1a2b-6b106800-3c4d-1.1\r\nTo: <sip:2102@{front}>;tag=p\r\n"
            "Call-ID: ksrulka-1.1\r\nCSeq: 80 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_only_an_answer_from_the_phones_address_keeps_its_registration(cluster: Cluster) -> None:
    # Two registrations at B from addresses where nothing answers B's probes; a socket on the
    # first address answers for both, and tries its luck with SQL in a tag.
    now = int(time.time())
    for ruid, port in (("uloc-2-feed-a", 23211), ("uloc-2-feed-b", 23212)):
        cluster.execute(
            "INSERT INTO location (ruid, username, contact, received, expires, last_modified, callid, server_id)"
            " VALUES (?, '2102', ?, ?, ?, ?, ?, 2)",
            (ruid, f"sip:2102@{HOST_B}:{port}", f"sip:{HOST_B}:{port}", now + 60, now, f"{ruid}@test"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as answering:
            answering.bind((HOST_B, 23211))
            deadline = time.monotonic() + KEEPALIVE_TIMEOUT_S + 3 * KEEPALIVE_INTERVAL_S
            while time.monotonic() < deadline:
                # The last would refresh every row if its quotes reached the SQL ("--" comments out the rest).
                for ruid in ("uloc-2-feed-a", "uloc-2-feed-b", "x'OR'1'--"):
                    answering.sendto(_probe_answer(ruid, HOST_B), (HOST_B, SIP_PORT))
                time.sleep(0.5)
        # The first is alive by its answers; the second, answered for from elsewhere, is gone.
        assert cluster.rows("SELECT ruid FROM location") == [("uloc-2-feed-a",)]
    finally:
        cluster.execute("DELETE FROM location WHERE ruid LIKE 'uloc-2-feed-%'")


def test_a_silent_phone_is_dropped_by_its_front_for_every_front(cluster: Cluster, tmp_path: Path) -> None:
    with _agent_phone(5, tmp_path, "2102") as agent, _worker(tmp_path) as worker:
        assert agent.register(_registrar(HOST_B), "2102", PASSWORD["2102"], realm=REALM)["code"] == 200
        # Alive: B's probes are answered, so the row outlives the silence limit.
        time.sleep(KEEPALIVE_TIMEOUT_S + 2 * KEEPALIVE_INTERVAL_S)
        assert cluster.registered() == {"2102"}
        agent.kill()  # no unregistration, no more answers
        killed = time.monotonic()
        _wait(lambda: cluster.registered() == set(), KEEPALIVE_TIMEOUT_S + 4 * KEEPALIVE_INTERVAL_S,
              "the silent phone's row to go")
        assert time.monotonic() - killed >= KEEPALIVE_TIMEOUT_S - KEEPALIVE_INTERVAL_S
        gone = worker.dial(_agent_via(HOST_A, "2102"))
        assert worker.wait_for("ended", call=gone)["code"] == 480


def test_a_hosts_control_process_sees_an_agent_registered_at_another_hosts_front(cluster: Cluster,
                                                                                 tmp_path: Path) -> None:
    """A whole softswitch on host A (its own database on the server, ports 23500-23599) and host B's front."""
    url = cluster.server.url(cluster.loop.run_until_complete(cluster.server.create_database()))
    sip_port = 23560
    overrides = {"database_url": url, "sip": {"listen": HOST_A}, "http": {"host": HOST_A},
                 # A few call slots: its RTP ports stay in 44500-44999.
                 "workers": {"host": HOST_A, "max_calls": 4, "rtp_ports_per_worker": 64},
                 "kamailio": {"server_id": 1, "children": 2},
                 "agents": {"registration_poll_s": 0.3}}
    with running_softswitch(tmp_path / "host-a", sip_port=sip_port, http_port=23511, workers=1,
                            worker_base_port=23570, rtp_base_port=44500, agents=AGENTS,
                            config_overrides=overrides) as host_a:
        b_config = load_config(overrides={
            "data_dir": str(tmp_path / "host-b"), "database_url": url, "sip.listen": HOST_B, "sip.port": sip_port,
            "workers.count": 1, "workers.host": HOST_A, "workers.base_port": 23570, "kamailio.children": 2,
            "kamailio.server_id": 2, "agents.accounts": agent_accounts(AGENTS, REALM)})
        admin_socket = host_a.data_dir / "run" / "admin.sock"

        def registered() -> set[str]:
            return {a["id"] for a in admin.request(admin_socket, "status")["agents"] if a["registered"]}
        with front_alone(b_config, len(AGENTS), (HOST_B, 23590)), \
                Softphone("agent-at-b", tmp_path, user="2101", host=HOST_B, sip_port=23591, rtp_port=44600) as phone, \
                Softphone("agent-at-a", tmp_path, user="2102", host=HOST_A, sip_port=23592, rtp_port=44620) as own:
            assert registered() == set()
            assert phone.register(f"sip:{HOST_B}:{sip_port}", "2101", PASSWORD["2101"], realm=REALM)["code"] == 200
            _wait(lambda: registered() == {"2101"}, 5, "host A's control process to see the registration at B")
            assert own.register(f"sip:{HOST_A}:{sip_port}", "2102", PASSWORD["2102"], realm=REALM)["code"] == 200
            _wait(lambda: registered() == {"2101", "2102"}, 5, "host A's control process to see both")
            # A's gauge counts the phones registered at A's front, from the table (Kamailio's own says 0).
            assert _registered_contacts_gauge(host_a.http) == 1
            assert phone.unregister()["event"] == "unregistered"
            _wait(lambda: registered() == {"2102"}, 5, "host A's control process to see the unregistration")


def _registered_contacts_gauge(http: str) -> float:
    with urllib.request.urlopen(http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return next(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "softswitch_front_registered_contacts")
