"""The SMS of a tracking code end to end: a SIPp caller from a mobile number presses 1 after the read-back,
and the softswitch posts the code to a real HTTP gateway this test runs on loopback (which fails the first
attempt, so the retry is the real sender's too). Ports 24000-24999, RTP 45500-45563, the caller's media in
the window above the ephemeral range (tests/sip/conftest.py): this module's own."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from softswitch.domain.sms import TRACKING_CODE, sms_text
from tests.sip.conftest import (NATIONAL_ID, RESERVED_MEDIA_SLOT, CallerScript, RunningSoftswitch,
                               caller_media_port, running_softswitch)
from tests.support.sipp import SippRun, caller_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(240)]

SIP_PORT, HTTP_PORT, WORKER_PORT = 24060, 24111, 24070
CALLER_SIP_PORT, CALLER_RTP_PORT = 24200, caller_media_port(SIP_PORT, RESERVED_MEDIA_SLOT)
RTP_BASE, RTP_PORTS = 45500, 64
MOBILE = "09121234567"
TOKEN = "sip-test-gateway-token-31f7"
# After the caller's "#" the code is read back (20 prompts of 0.3 s), then the offer (0.3 s) and a 5 s
# wait: a 1 pressed 8.5 s after the "#" lands in the middle of that window.
OFFER_KEY_AFTER_S = 8.5


@dataclass
class Gateway:
    """An SMS gateway on 127.0.0.1 (the standard library's threading server), recording what it is sent;
    its first answer is a 500."""

    received: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    got: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            gw.received.append((body, self.headers.get("Authorization")))
            self.send_response(500 if len(gw.received) == 1 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if len(gw.received) >= 2:
                gw.got.set()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    gw.url = f"http://127.0.0.1:{server.server_address[1]}/send"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gw
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def softswitch(tmp_path: Path, gateway: Gateway) -> Iterator[RunningSoftswitch]:
    sms = {"url": gateway.url, "token": TOKEN, "retry_initial_s": 1.0, "retry_max_s": 2.0, "timeout_s": 5.0}
    with running_softswitch(tmp_path, sip_port=SIP_PORT, http_port=HTTP_PORT, workers=1,
                            worker_base_port=WORKER_PORT, rtp_base_port=RTP_BASE,
                            config_overrides={"workers": {"max_calls": 4, "rtp_ports_per_worker": RTP_PORTS},
                                              "sms": sms}) as running:
        yield running


def test_a_mobile_caller_who_presses_1_gets_the_code_by_sms(softswitch: RunningSoftswitch, gateway: Gateway,
                                                             speech: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "caller.pcap"
    CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech) \
        .keys("1", pause_s=OFFER_KEY_AFTER_S).write(pcap)
    scenario = tmp_path / "scenario.xml"
    # The caller's From user is a mobile number (SIPp's own is caller<N>).
    scenario.write_text(caller_scenario(pcap).replace("sip:caller[call_number]@", f"sip:{MOBILE}@"))
    call_id = "sms-caller@test"
    result = SippRun(target=softswitch.sip_target, scenario=scenario, local_port=CALLER_SIP_PORT,
                     media_port=CALLER_RTP_PORT, call_id=call_id, timeout_s=90,
                     message_file=tmp_path / "messages.log").run(tmp_path / "sipp")
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]

    body = softswitch.call_record(call_id)
    path = body["call"]["ivr_path"]
    assert path[-3:] == ["tracking_code", "sms:queued", "goodbye"], path
    code = body["tracking_code"]

    assert gateway.got.wait(30), f"the gateway got {gateway.received}"
    (first, auth1), (second, auth2) = gateway.received[:2]
    assert first == second == {"to": "+989121234567", "text": sms_text(TRACKING_CODE, code), "sender": "111",
                               "reference": first["reference"]}
    assert auth1 == auth2 == f"Bearer {TOKEN}" and len(gateway.received) == 2  # the 500 retried once, then sent

    def metrics() -> str:
        with urllib.request.urlopen(f"{softswitch.http}/metrics", timeout=5) as response:
            return str(response.read().decode())
    sent = 'softswitch_sms_total{kind="tracking_code",outcome="sent"} 1.0'
    # The gateway has answered; the sender counts the message once it has read the answer and stored it.
    softswitch.wait_for(lambda: sent in metrics(), 10, "the sent SMS counted")
    assert 'softswitch_sms_total{kind="tracking_code",outcome="retry"} 1.0' in metrics()
    log = softswitch.log_path.read_text(errors="replace")
    assert "ivr step sms: queued" in log and "sent on attempt 2" in log
    assert TOKEN not in log and NATIONAL_ID not in log
    assert MOBILE[1:] not in log and code not in log  # no number and no whole code in any line
