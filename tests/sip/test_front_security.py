"""The SIP front under attack, on loopback: forged routes, floods, REGISTER guessing, takeovers.

One softswitch for the module (Kamailio, 1 worker, control) on ports 14060/14111,
worker 14070, RTP from 42000, with short flood windows and bans. Attackers and
callers are raw UDP sockets (or SIPp) on other loopback addresses: 127.0.0.1
and 127.0.0.3 are trunks, the rest are not. A socket on 127.0.0.1:14900 stands
for a host the front must never be made to send to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from softswitch.config import AgentsConfig
from tests.sip.conftest import RESERVED_MEDIA_SLOT, RunningSoftswitch, caller_media_port, running_softswitch
from tests.support.sipp import caller_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 14060, 14111, 14070, 42000
FRONT = ("127.0.0.1", SIP_PORT)
VICTIM = ("127.0.0.1", 14900)  # must receive nothing
SIPP_PORT, SIPP_MEDIA_PORT = 14290, caller_media_port(SIP_PORT, RESERVED_MEDIA_SLOT)
REALM = AgentsConfig().realm
AGENTS = (("1401", "Agent One", "first-agent-pw"), ("1402", "Agent Two", "second-agent-pw"),
          ("1403", "Agent Three", "third-agent-pw"))
PASSWORD = {agent_id: password for agent_id, _, password in AGENTS}
FLOOD_REQUESTS, FLOOD_BLOCK_S, REGISTER_FAILURES, REGISTER_BLOCK_S = 20, 4, 3, 4
PORTS = itertools.count(14300)


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSoftswitch]:
    overrides = {
        "sip": {"trunk_allow": ["127.0.0.1/32", "127.0.0.3/32"]},
        "kamailio": {"flood_window_s": 2, "flood_requests": FLOOD_REQUESTS, "flood_block_s": FLOOD_BLOCK_S,
                     "register_failures": REGISTER_FAILURES, "register_failure_window_s": 60,
                     "register_block_s": REGISTER_BLOCK_S},
    }
    with running_softswitch(tmp_path_factory.mktemp("front-security"), sip_port=SIP_PORT, http_port=HTTP_PORT,
                            workers=1, worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT, agents=AGENTS,
                            config_overrides=overrides) as running:
        yield running


@pytest.fixture
def victim() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(VICTIM)
        sock.settimeout(1.5)
        yield sock


def received_nothing(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65535)
    except OSError:
        return True
    raise AssertionError(f"the front relayed to {VICTIM}:\n{data.decode(errors='replace')}")


class Peer:
    """A UDP socket on one loopback address that sends SIP requests and reads the answers."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.port = next(PORTS)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, self.port))

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, uri: str, *, headers: str = "", to_tag: str | None = None,
                call_id: str | None = None, cseq: int = 1, user: str = "attacker") -> str:
        branch = f"z9hG4bK-{uuid.uuid4().hex}"
        to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
        return (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {self.ip}:{self.port};branch={branch};rport\r\n"
                f"From: <sip:{user}@{self.ip}>;tag=f{self.port}\r\nTo: {to}\r\n"
                f"Call-ID: {call_id or uuid.uuid4().hex + '@test'}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{user}@{self.ip}:{self.port}>\r\nMax-Forwards: 70\r\n{headers}"
                "Content-Length: 0\r\n\r\n")

    def send(self, message: str) -> None:
        self.sock.sendto(message.encode(), FRONT)

    def final(self, message: str, timeout_s: float = 2.0) -> str | None:
        """Send; the first final answer (>= 200), or None when the front says nothing."""
        self.send(message)
        call_id = re.search(r"^Call-ID: (\S+)", message, re.MULTILINE)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                answer = self.sock.recv(65535).decode(errors="replace")
            except OSError:
                return None
            # Answers to earlier requests (a flood's retransmitted 403s) are not this one's.
            if call_id and f"Call-ID: {call_id.group(1)}" not in answer:
                continue
            if not answer.startswith("SIP/2.0 1"):
                return answer
        return None

    def register(self, user: str, password: str, *, expires: int = 60, call_id: str | None = None) -> str | None:
        """A REGISTER answered with a digest challenge, then with credentials: the final answer."""
        call_id = call_id or f"reg-{uuid.uuid4().hex}@test"
        uri = f"sip:{FRONT[0]}:{FRONT[1]}"
        extra = f"Expires: {expires}\r\n"
        first = self.final(self.request("REGISTER", uri, headers=extra, call_id=call_id, user=user)
                           .replace(f"To: <{uri}>", f"To: <sip:{user}@{FRONT[0]}>"))
        if first is None or not first.startswith("SIP/2.0 401"):
            return first
        challenge = re.search(r'nonce="([^"]+)"', first)
        assert challenge, first
        nonce, cnonce, nc = challenge.group(1), uuid.uuid4().hex[:8], "00000001"
        ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        authorization = (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
                         f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n')
        return self.final(self.request("REGISTER", uri, headers=extra + authorization, call_id=call_id, cseq=2,
                                       user=user).replace(f"To: <{uri}>", f"To: <sip:{user}@{FRONT[0]}>"))


@pytest.fixture
def peers() -> Iterator[dict[str, Peer]]:
    made: dict[str, Peer] = {}

    class Lazy(dict[str, Peer]):
        def __missing__(self, ip: str) -> Peer:
            made[ip] = self[ip] = Peer(ip)
            return made[ip]
    yield Lazy()
    for peer in made.values():
        peer.close()


def status(answer: str | None) -> int | None:
    return int(answer.split(" ", 2)[1]) if answer else None


def route_key(switch: RunningSoftswitch) -> str:
    return (switch.data_dir / "run" / "kamailio" / "route.key").read_text().strip()


def front_route(**params: str) -> str:
    return f"<sip:{FRONT[0]}:{FRONT[1]};lr" + "".join(f";{k}={v}" for k, v in params.items()) + ">"


VICTIM_URI = f"sip:agent@{VICTIM[0]}:{VICTIM[1]}"


def test_a_forged_in_dialog_request_is_not_relayed(switch: RunningSoftswitch, peers: dict[str, Peer],
                                                   victim: socket.socket) -> None:
    attacker = peers["127.0.0.2"]
    for route in (front_route(), front_route(ds="1", rs="0" * 32),
                  f"{front_route()}, <sip:{VICTIM[0]}:{VICTIM[1]};lr>"):
        for method in ("BYE", "INVITE", "MESSAGE"):
            answer = attacker.final(attacker.request(method, VICTIM_URI, to_tag="forged",
                                                     headers=f"Route: {route}\r\n"))
            assert status(answer) == 403, answer
    assert received_nothing(victim)


def test_a_signed_route_still_goes_only_toward_a_worker(switch: RunningSoftswitch, peers: dict[str, Peer],
                                                        victim: socket.socket) -> None:
    """A party to a real dialog (it knows the dialog's Route) cannot aim the front at a third host."""
    attacker = peers["127.0.0.2"]
    call_id = f"{uuid.uuid4().hex}@test"
    signature = hashlib.md5((route_key(switch) + call_id).encode()).hexdigest()
    answer = attacker.final(attacker.request("INFO", VICTIM_URI, to_tag="real", call_id=call_id,
                                             headers=f"Route: {front_route(rs=signature)}\r\n"))
    assert status(answer) == 403, answer
    assert "Not Toward The Softswitch" in (answer or "")
    assert received_nothing(victim)


def test_an_initial_request_with_a_preloaded_route_is_refused(switch: RunningSoftswitch, peers: dict[str, Peer],
                                                              victim: socket.socket) -> None:
    trunk = peers["127.0.0.3"]
    for route in (f"<sip:{VICTIM[0]}:{VICTIM[1]};lr>", f"{front_route()}, <sip:{VICTIM[0]}:{VICTIM[1]};lr>"):
        for method, uri in (("INVITE", f"sip:111@{FRONT[0]}:{FRONT[1]}"), ("MESSAGE", VICTIM_URI)):
            answer = trunk.final(trunk.request(method, uri, headers=f"Route: {route}\r\n"))
            assert status(answer) == 403, answer
            assert "Preloaded Route" in (answer or "")
    assert received_nothing(victim)


def _sipp_call(switch: RunningSoftswitch, name: str, local_ip: str) -> None:
    run = dataclasses.replace(
        switch.sipp(name, caller_scenario(None, hangup_after_ms=500), call_id=f"{name}@test", local_ip=local_ip),
        local_port=SIPP_PORT, media_port=SIPP_MEDIA_PORT, timeout_s=20)
    result = run.run(switch.work / name)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]


def test_an_invite_flood_is_blocked_while_other_callers_are_answered(switch: RunningSoftswitch,
                                                                     peers: dict[str, Peer]) -> None:
    flooder, probe = peers["127.0.0.2"], peers["127.0.0.3"]
    assert status(flooder.final(flooder.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"))) == 200
    # 200 INVITEs at once, never ACKed: far more than the source's share of one window.
    for _ in range(200):
        flooder.send(flooder.request("INVITE", f"sip:111@{FRONT[0]}:{FRONT[1]}"))
    time.sleep(0.5)
    assert flooder.final(flooder.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"), timeout_s=1) is None
    switch.wait_for(lambda: re.search(r"flood: more than \d+ requests .* from 127\.0\.0\.2", switch.log_path.read_text()),
                    5, "the flood's log line")
    # Meanwhile a trunk's caller is answered and another source's OPTIONS too.
    _sipp_call(switch, "caller-during-flood", "127.0.0.3")
    assert status(probe.final(probe.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"))) == 200
    # The ban ends.
    time.sleep(FLOOD_BLOCK_S + 2)
    assert status(flooder.final(flooder.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"))) == 200


def test_an_options_flood_is_blocked(switch: RunningSoftswitch, peers: dict[str, Peer]) -> None:
    flooder = peers["127.0.0.12"]
    answered = sum(status(flooder.final(flooder.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"),
                                        timeout_s=0.3)) == 200 for _ in range(FLOOD_REQUESTS + 10))
    assert answered <= FLOOD_REQUESTS
    assert flooder.final(flooder.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"), timeout_s=1) is None


def test_the_trunk_is_not_limited(switch: RunningSoftswitch, peers: dict[str, Peer]) -> None:
    trunk = peers["127.0.0.1"]
    answered = sum(status(trunk.final(trunk.request("OPTIONS", f"sip:{FRONT[0]}:{FRONT[1]}"))) == 200
                   for _ in range(3 * FLOOD_REQUESTS))
    assert answered == 3 * FLOOD_REQUESTS


def test_register_guessing_is_blocked_after_a_few_failures(switch: RunningSoftswitch, peers: dict[str, Peer]) -> None:
    guesser, other = peers["127.0.0.4"], peers["127.0.0.5"]
    for n in range(REGISTER_FAILURES):
        assert status(guesser.register("1401", f"guess-{n}")) == 403
    # Now even the right password goes unanswered from there ...
    assert guesser.register("1401", PASSWORD["1401"]) is None
    assert "REGISTER guessing from 127.0.0.4" in switch.log_path.read_text()
    # ... while other sources register as usual.
    assert status(other.register("1401", PASSWORD["1401"])) == 200
    assert status(other.register("1401", PASSWORD["1401"], expires=0)) == 200
    time.sleep(REGISTER_BLOCK_S + 2)
    assert status(guesser.register("1401", PASSWORD["1401"], expires=0)) == 200


def _comparable(answer: str | None) -> list[str]:
    """An answer without what differs between any two requests (tags, branches, nonces, Call-IDs)."""
    assert answer
    lines = [line for line in answer.split("\r\n") if not re.match(r"(?i)(Via|Call-ID|CSeq|Content-Length):", line)]
    return [re.sub(r"tag=[^;>\s]+", "tag=*", re.sub(r"sip:\w+@", "sip:*@", line)) for line in lines]


def test_unknown_id_and_wrong_password_answer_alike(switch: RunningSoftswitch, peers: dict[str, Peer]) -> None:
    peer = peers["127.0.0.6"]
    unknown, wrong = peer.register("1499", "first-agent-pw"), peer.register("1401", "not-the-password")
    assert status(unknown) == status(wrong) == 403
    assert _comparable(unknown) == _comparable(wrong)


def test_a_second_registration_from_elsewhere_is_refused(switch: RunningSoftswitch, peers: dict[str, Peer]) -> None:
    desk, thief = peers["127.0.0.7"], peers["127.0.0.8"]
    assert status(desk.register("1402", PASSWORD["1402"])) == 200
    try:
        # With the right password, from another address: no takeover, and one log line.
        assert status(thief.register("1402", PASSWORD["1402"])) == 403
        assert "REGISTER of 1402 from 127.0.0.8" in switch.log_path.read_text()
        # A second phone at the same place (another port) is added: both ring.
        second = Peer("127.0.0.7")
        try:
            assert status(second.register("1402", PASSWORD["1402"])) == 200
            assert status(second.register("1402", PASSWORD["1402"], expires=0)) == 200
        finally:
            second.close()
        assert status(desk.register("1402", PASSWORD["1402"])) == 200  # a refresh
    finally:
        assert status(desk.register("1402", PASSWORD["1402"], expires=0)) == 200
    # Once the desk is gone, another place may register.
    assert status(thief.register("1402", PASSWORD["1402"], expires=0)) == 200


def test_a_worker_refuses_an_invite_that_did_not_come_through_the_front(switch: RunningSoftswitch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.9", next(PORTS)))
        ip, port = sock.getsockname()
        invite = (f"INVITE sip:111@127.0.0.1:{WORKER_PORT} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-{uuid.uuid4().hex};rport\r\n"
                  f"From: <sip:caller@{ip}>;tag=direct\r\nTo: <sip:111@127.0.0.1>\r\n"
                  f"Call-ID: direct-{uuid.uuid4().hex}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{ip}:{port}>\r\n"
                  "X-111-Source: 127.0.0.1\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(invite.encode(), ("127.0.0.1", WORKER_PORT))
        deadline, code = time.monotonic() + 5, None
        while code is None or code < 200:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            answer = sock.recv(65535).decode(errors="replace")
            code = int(answer.split(" ", 2)[1])
        if code >= 300:  # a refused INVITE's ACK
            sock.sendto(invite.replace("INVITE sip", "ACK sip").replace("1 INVITE", "1 ACK").encode(),
                        ("127.0.0.1", WORKER_PORT))
        else:
            sock.sendto(invite.replace("INVITE sip", "BYE sip").replace("1 INVITE", "2 BYE").encode(),
                        ("127.0.0.1", WORKER_PORT))
    assert code == 403
