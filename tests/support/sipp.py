"""SIPp driver shared by the SIP tests and the benchmark: scenario XML, pcap audio, one bounded run."""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

SDP = """v=0
o=caller 53655765 2353687637 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [auto_media_port] RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
"""

INVITE = """INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]t[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

""" + SDP

ACK = """ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

"""

BYE = """BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]t[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

"""

OK_TO_BYE = """SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:caller@[local_ip]:[local_port]>
Content-Length: 0

"""


def _send(message: str, retrans: bool = False) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}><![CDATA[\n{message}]]></send>\n"


def caller_scenario(pcap: Path | None, hangup_after_ms: int | None = None, wait_bye_ms: int = 60000) -> str:
    """A caller that plays `pcap` as its RTP, then waits for our BYE or hangs up itself."""
    steps = [_send(INVITE, retrans=True),
             '  <recv response="100" optional="true"/>\n',
             '  <recv response="180" optional="true"/>\n',
             '  <recv response="183" optional="true"/>\n',
             '  <recv response="200" rtd="true" rrs="true"/>\n',
             _send(ACK)]
    if pcap is not None:
        steps.append(f'  <nop><action><exec play_pcap_audio="{escape(str(pcap))}"/></action></nop>\n')
    if hangup_after_ms is not None:
        steps.append(f'  <pause milliseconds="{hangup_after_ms}"/>\n')
        steps.append(_send(BYE, retrans=True))
        steps.append('  <recv response="200" crlf="true"/>\n')
    else:
        steps.append(f'  <recv request="BYE" timeout="{wait_bye_ms}"/>\n')
        steps.append(_send(OK_TO_BYE))
    return _wrap("111 caller", steps)


def refused_scenario(status_code: int) -> str:
    """An INVITE that must be refused with `status_code`."""
    steps = [_send(INVITE, retrans=True),
             '  <recv response="100" optional="true"/>\n',
             f'  <recv response="{status_code}"/>\n',
             # The ACK of a non-2xx reuses the INVITE branch (RFC 3261 17.1.1.3): 3 messages back.
             _send(ACK.replace("ACK [next_url]", "ACK sip:[service]@[remote_ip]:[remote_port]")
                   .replace("[routes]\n", "").replace("branch=[branch]", "branch=[branch-3]"))]
    return _wrap(f"refused with {status_code}", steps)


def _wrap(name: str, steps: list[str]) -> str:
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
            f'<scenario name="{escape(name)}">\n' + "".join(steps) +
            '  <ResponseTimeRepartition value="5, 10, 20, 50, 100, 200, 500, 1000"/>\n'
            '</scenario>\n')


@dataclass(frozen=True)
class SippResult:
    returncode: int
    successful: int
    failed: int
    stdout: str
    stderr: str
    stats: list[dict[str, str]]


@dataclass(frozen=True)
class SippRun:
    """One bounded SIPp invocation: it stops by itself after `calls` calls or `timeout_s`."""

    target: str
    scenario: Path
    calls: int = 1
    rate: float = 1.0
    limit: int = 1
    local_ip: str = "127.0.0.1"
    local_port: int = 0
    media_port: int = 0
    service: str = "111"
    call_id: str = "%u-%p@%s"
    timeout_s: float = 120.0
    stats_file: Path | None = None
    message_file: Path | None = None  # SIP trace of every message sent and received

    def argv(self) -> list[str]:
        argv = ["sipp", self.target, "-sf", str(self.scenario), "-m", str(self.calls), "-r", str(self.rate),
                "-l", str(self.limit), "-i", self.local_ip, "-mi", self.local_ip, "-s", self.service,
                "-cid_str", self.call_id, "-timeout", f"{int(self.timeout_s)}s", "-timeout_error",
                "-nostdin", "-max_recv_loops", "10000", "-max_sched_loops", "10000"]
        if self.local_port:
            argv += ["-p", str(self.local_port)]
        if self.media_port:
            argv += ["-mp", str(self.media_port)]
        if self.message_file is not None:
            argv += ["-trace_msg", "-message_file", str(self.message_file)]
        if self.stats_file is not None:
            argv += ["-trace_stat", "-stf", str(self.stats_file), "-fd", "1"]
        return argv

    def start(self, log_dir: Path) -> subprocess.Popen[str]:
        log_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(self.argv(), cwd=str(log_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)

    def run(self, log_dir: Path) -> SippResult:
        process = self.start(log_dir)
        return self.finish(process)

    def finish(self, process: subprocess.Popen[str]) -> SippResult:
        try:
            out, err = process.communicate(timeout=self.timeout_s + 15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        stats = read_stats(self.stats_file) if self.stats_file is not None else []
        last = stats[-1] if stats else {}
        return SippResult(process.returncode, int(last.get("SuccessfulCall(C)", 0) or 0),
                          int(last.get("FailedCall(C)", 0) or 0), out, err, stats)


def read_stats(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def main() -> None:
    """Print a caller scenario for SIPp that follows Record-Route (SIPp's built-in uac does not)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--pcap", type=Path, help="RTP to play as the caller (see tests/support/rtp_pcap.py)")
    parser.add_argument("--hangup-after-s", type=float, help="hang up after this many seconds")
    args = parser.parse_args()
    hangup_ms = int(args.hangup_after_s * 1000) if args.hangup_after_s is not None else None
    print(caller_scenario(args.pcap, hangup_after_ms=hangup_ms, wait_bye_ms=300_000), end="")


if __name__ == "__main__":
    main()
