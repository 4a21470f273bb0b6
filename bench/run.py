"""Benchmark: the same SIPp callers against the softswitch and against Asterisk, in turns; prints tables.

Each step is bounded in calls and time and stops by itself, and runs on one
side while the other idles, then on the other (``--repeat`` times), so that
a slow minute of a shared machine falls on both alike; the next step waits
until the side just measured is quiet again (``settle``). Each side is started
here with a bench configuration (its own ports and work directory), measured
as a whole process tree (softswitch: control, Kamailio, media workers;
Asterisk: its one process), and stopped by PID. The peer is the Asterisk
that bench/asterisk/build.sh builds from Debian's source package, running the
same IVR steps (bench/asterisk/extensions.conf).

    .venv/bin/python -m bench.run --concurrency 400,800 --rates 100,260 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from softswitch.config import PROJECT_ROOT
from tests.support.rtp_pcap import CallerTimeline
from tests.support.postgres import PostgresServer
from tests.support.sipp import SippRun, caller_scenario, read_stats

SIP_PORT = 25060
HTTP_PORT = 28111
PEER_SIP_PORT = 35060
PEER_RTP_PORTS = (36000, 45999)
SIPP_SIP_PORT = 26000
SIPP_MEDIA_PORT = 50000
ID_DIGITS = "0499370899"
# A step counts as held when fewer than this share of its calls failed.
HELD_FAILURE_LIMIT = 0.001
# Larger steps of a side are skipped once one fails this badly: it would only fail worse.
GIVE_UP_FAILURE = 0.05
# After a step the side measured must be quiet again before the next step runs on either side: an
# overloaded side goes on tearing down its calls (and SIPp's retransmissions) for a while, and a step run
# meanwhile measures the machine's leftovers, not the side it runs on.
SETTLED_CPU_PERCENT, SETTLE_WINDOW_S, SETTLE_LIMIT_S = 5.0, 2.0, 180.0


class Side(Protocol):
    """One system under test: started, measured as a process tree, stopped."""

    name: str
    target: str  # SIP address for SIPp

    def start(self) -> int: ...

    def stop(self) -> None: ...

    def tree(self, root: int) -> list[int]:
        """The processes whose CPU and memory count for this side."""

    def part(self, pid: int, root: int, command: bytes) -> str: ...


@dataclass(frozen=True)
class StepResult:
    side: str
    kind: str
    target: str
    planned: int  # calls SIPp was to make
    attempted: int
    successful: int
    failed: int
    peak_concurrent: int
    calls_per_s: float
    cpu_percent: float
    cpu_parts: dict[str, float]
    sipp_cpu_percent: float
    rss_mib: float
    pss_mib: float
    pss_parts: dict[str, float]
    setup_p50_ms: float
    setup_p99_ms: float

    @property
    def failed_share(self) -> float:
        # A call SIPp never got through within the step's time counts as failed.
        return (self.planned - self.successful) / self.planned if self.planned else 1.0

    def row(self) -> str:
        return (f"| {self.side} | {self.kind} | {self.target} | {self.planned} | {self.successful} | "
                f"{self.planned - self.successful} ({100 * self.failed_share:.2f}%) | {self.peak_concurrent} | "
                f"{self.calls_per_s:.1f} | "
                f"{self.cpu_percent:.0f}% | {' / '.join(f'{k} {v:.0f}' for k, v in self.cpu_parts.items())} | "
                f"{self.sipp_cpu_percent:.0f}% | {self.rss_mib:.0f} | {self.pss_mib:.0f} | "
                f"{' / '.join(f'{k} {v:.0f}' for k, v in self.pss_parts.items())} | "
                f"{self.setup_p50_ms:.1f} | {self.setup_p99_ms:.1f} |")


HEADER = ("| side | step | target | calls | completed | failed or unfinished | peak concurrent | calls/s | "
          "CPU at plateau (100% = 1 core) | of which | SIPp CPU | RSS MiB | PSS MiB | of which | "
          "INVITE→200 p50 ms | p99 ms |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def cpu_by_part(side: Side, pids: list[int], root: int) -> dict[str, int]:
    """utime+stime ticks of a side's processes, by the part each process plays."""
    parts: dict[str, int] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        part = side.part(pid, root, command)
        parts[part] = parts.get(part, 0) + ticks
    return parts


def process_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError):
        return 0


def memory_kib(side: Side, pids: list[int], root: int) -> tuple[int, dict[str, int]]:
    """RSS of the whole tree, and PSS by part (shared pages split between the processes sharing them)."""
    rss, pss = 0, dict[str, int]()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    part = side.part(pid, root, command)
                    pss[part] = pss.get(part, 0) + int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def setup_times_ms(directory: Path) -> list[float]:
    """INVITE→200 per call from SIPp's response-time trace (-trace_rtt)."""
    values: list[float] = []
    for path in directory.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")  # Date_ms;response_time_ms;rtd_no
            if len(parts) >= 2:
                try:
                    values.append(float(parts[1]))
                except ValueError:
                    continue
    return values


def _get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # 503 while starting still carries the body
        return dict(json.loads(exc.read() or b"{}"))


@dataclass(frozen=True)
class SoftswitchPorts:
    sip: int
    http: int
    workers: int
    rtp: int


SQLITE_PORTS = SoftswitchPorts(SIP_PORT, HTTP_PORT, 25100, 30000)
# The softswitch on PostgreSQL, up beside the one on SQLite (and Asterisk's 35060, RTP 36000-45999).
POSTGRES_PORTS = SoftswitchPorts(27060, 28112, 27100, 20000)


class SoftswitchSide:
    """The softswitch with its case store on SQLite (the embedded default) or on a PostgreSQL server the
    bench starts (durable, on this machine: its CPU and memory count for this side)."""

    def __init__(self, work: Path, workers: int | None, poll_ms: int, postgres: bool = False) -> None:
        self.work = work
        self.workers = workers
        self.poll_ms = poll_ms
        self.ports = POSTGRES_PORTS if postgres else SQLITE_PORTS
        self.name = "softswitch on PostgreSQL" if postgres else "softswitch"
        self.target = f"127.0.0.1:{self.ports.sip}"
        self.postgres = postgres
        self.server: PostgresServer | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the softswitch and wait until every worker is in service at the front; returns its PID."""
        ports = self.ports
        workers: dict[str, object] = {"base_port": ports.workers, "rtp_base_port": ports.rtp, "poll_ms": self.poll_ms}
        if self.workers:
            workers["count"] = self.workers
        config: dict[str, object] = {
            "data_dir": str(self.work / "var"),
            "drain_timeout_s": 10,
            "sip": {"port": ports.sip},
            "http": {"port": ports.http},
            "workers": workers,
            "kamailio": {"children": 4},
            "ivr": {"message_silence_s": 3.0, "message_max_s": 30, "id_no_input_s": 5},
        }
        if self.postgres:
            self.server = PostgresServer.start(durable=True)
            config["database_url"] = self.server.url()
        try:
            _get_json(f"http://127.0.0.1:{ports.http}/api/health")
        except OSError:
            pass  # nothing answers: the port is ours
        else:
            raise SystemExit(f"something already answers on 127.0.0.1:{ports.http}: a softswitch still stopping?")
        config_path = self.work / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.work / "softswitch.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "softswitch.cli", "--config", str(config_path), "run"],
            cwd=str(PROJECT_ROOT), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"softswitch exited; see {self.work / 'softswitch.log'}")
            try:
                if _get_json(f"http://127.0.0.1:{ports.http}/api/health").get("status") == "ok":
                    return self.process.pid
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("softswitch did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.server is not None:
            self.server.stop()

    def tree(self, root: int) -> list[int]:
        server = self.server.process if self.server is not None else None
        return process_tree(root) + (process_tree(server.pid) if server is not None else [])

    def part(self, pid: int, root: int, command: bytes) -> str:
        if pid == root:
            return "control"
        return "kamailio" if b"kamailio" in command else "postgres" if b"postgres" in command else "workers"


class AsteriskSide:
    name = "asterisk"
    target = f"127.0.0.1:{PEER_SIP_PORT}"

    def __init__(self, work: Path) -> None:
        from bench.asterisk import AsteriskPeer

        self.peer = AsteriskPeer(work, sip_port=PEER_SIP_PORT, rtp_ports=PEER_RTP_PORTS)

    def available(self) -> bool:
        return self.peer.available()

    def start(self) -> int:
        return self.peer.start()

    def stop(self) -> None:
        self.peer.stop()

    def tree(self, root: int) -> list[int]:
        return process_tree(root)

    def part(self, pid: int, root: int, command: bytes) -> str:
        return "asterisk"


def run_step(side: Side, root: int, work: Path, step: Step) -> StepResult:
    """One bounded SIPp run against one side, measured while it holds 90% of the step's load."""
    kind, target, load = step.kind, step.target, step.load
    directory = work / f"{side.name}-{kind.replace(' ', '-').replace('/', '')}-{target}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scenario.xml").write_text(step.scenario)
    run = SippRun(target=side.target, scenario=directory / "scenario.xml", calls=step.calls, rate=step.rate,
                  limit=step.limit, local_port=SIPP_SIP_PORT, media_port=SIPP_MEDIA_PORT, timeout_s=step.timeout_s,
                  stats_file=directory / "stats.csv")
    argv = run.argv() + ["-trace_rtt", "-rtt_freq", "1"]
    started = time.monotonic()
    peak_rss = peak_pss = 0
    peak_parts: dict[str, int] = {}
    plateau: dict[str, float] = {}
    sipp_plateau = 0
    plateau_s = 0.0
    hz = os.sysconf("SC_CLK_TCK")
    sipp = subprocess.Popen(argv, cwd=str(directory), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    before, sipp_before, tick_at = cpu_by_part(side, side.tree(root), root), process_ticks(sipp.pid), started
    while sipp.poll() is None:
        time.sleep(1)
        pids = side.tree(root)
        now_parts, sipp_now, now = cpu_by_part(side, pids, root), process_ticks(sipp.pid), time.monotonic()
        # CPU is counted only while the step holds >= 90% of its target load.
        if _current_calls(directory / "stats.csv") >= 0.9 * load:
            for part, ticks in now_parts.items():
                plateau[part] = plateau.get(part, 0) + max(0, ticks - before.get(part, 0))
            sipp_plateau += max(0, sipp_now - sipp_before)
            plateau_s += now - tick_at
        before, sipp_before, tick_at = now_parts, sipp_now, now
        rss, pss = memory_kib(side, pids, root)
        peak_rss = max(peak_rss, rss)
        if sum(pss.values()) > peak_pss:
            peak_pss, peak_parts = sum(pss.values()), pss
        if now - started > step.timeout_s + 30:
            sipp.kill()
    elapsed = time.monotonic() - started
    percent = {part: 100.0 * ticks / hz / plateau_s if plateau_s else float("nan")
               for part, ticks in sorted(plateau.items())}
    stats = read_stats(directory / "stats.csv")
    last = stats[-1] if stats else {}
    successful = int(last.get("SuccessfulCall(C)", 0) or 0)
    failed = int(last.get("FailedCall(C)", 0) or 0)
    peak = max((int(r.get("CurrentCall", 0) or 0) for r in stats), default=0)
    setups = setup_times_ms(directory)
    return StepResult(side.name, kind, target, step.calls, successful + failed, successful, failed, peak,
                      (successful + failed) / elapsed, sum(percent.values()) if percent else float("nan"), percent,
                      100.0 * sipp_plateau / hz / plateau_s if plateau_s else float("nan"),
                      peak_rss / 1024, peak_pss / 1024, {k: v / 1024 for k, v in sorted(peak_parts.items())},
                      percentile(setups, 0.5), percentile(setups, 0.99))


def _current_calls(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    if len(lines) < 2:
        return 0
    row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
    return int(row.get("CurrentCall", 0) or 0)


def caller_audio(work: Path) -> tuple[Path, float]:
    """The bench caller: keys and confirms the ID, speaks ~5 s of Persian, then stays silent until hung up."""
    raw, speech = work / "raw.wav", work / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "fa", "-w", str(raw),
                    "خیابان ما چند هفته است که آسفالت ندارد. لطفا رسیدگی کنید."], check=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(speech)],
                   check=True)
    pcap = work / "caller.pcap"
    # Keys land while prompts play (barge-in): the ID, 1 to confirm its read-back, 2 for a recorded
    # message, 1 for "about me".
    timeline = CallerTimeline().silence(1.0).dtmf(ID_DIGITS).silence(0.6).dtmf("1").silence(0.8).dtmf("2") \
        .silence(0.8).dtmf("1")
    timeline.silence(10.0).speech_wav(speech).silence(5.0)
    timeline.write(pcap)
    return pcap, timeline.total_s


@dataclass(frozen=True)
class Step:
    kind: str
    target: str
    scenario: str
    calls: int
    rate: float
    limit: int
    timeout_s: float
    load: float  # concurrent calls from which the plateau is counted


def plan_steps(concurrency: list[int], rates: list[float], rate_seconds: int, pcap: Path,
               caller_s: float) -> list[Step]:
    full_call = caller_scenario(pcap, wait_bye_ms=int((caller_s + 60) * 1000))
    short_call = caller_scenario(None, hangup_after_ms=2000)
    steps = [Step("held calls", str(n), full_call, calls=n, rate=max(1.0, n / 10), limit=n,
                  timeout_s=caller_s + 60 + 10, load=n) for n in concurrency]
    steps += [Step("calls/s", f"{r:g}", short_call, calls=int(r * rate_seconds), rate=r, limit=int(r * 10) + 10,
                   timeout_s=rate_seconds + 30, load=r * 2) for r in rates]
    return steps


def idle_line(side: Side, root: int) -> tuple[str, float]:
    """A side's idle CPU and PSS, as a line, and its idle PSS in MiB."""
    time.sleep(2)
    _, idle_parts = memory_kib(side, side.tree(root), root)
    idle0 = sum(cpu_by_part(side, side.tree(root), root).values())
    time.sleep(10)
    idle_cpu = 100.0 * (sum(cpu_by_part(side, side.tree(root), root).values()) - idle0) \
        / os.sysconf("SC_CLK_TCK") / 10
    idle_pss = sum(idle_parts.values()) / 1024
    return (f"{side.name} idle: CPU {idle_cpu:.1f}% of a core, PSS {idle_pss:.0f} MiB ("
            f"{', '.join(f'{k} {v / 1024:.0f}' for k, v in sorted(idle_parts.items()))})"), idle_pss


def settle(side: Side, root: int) -> str:
    """Wait (bounded) until the side uses under SETTLED_CPU_PERCENT of a core over SETTLE_WINDOW_S; a line
    saying how long that took, or that it did not."""
    hz = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    percent = float("nan")
    while time.monotonic() - started < SETTLE_LIMIT_S:
        before = sum(cpu_by_part(side, side.tree(root), root).values())
        time.sleep(SETTLE_WINDOW_S)
        percent = 100.0 * max(0, sum(cpu_by_part(side, side.tree(root), root).values()) - before) / hz \
            / SETTLE_WINDOW_S
        if percent < SETTLED_CPU_PERCENT:
            return f"{side.name} settled in {time.monotonic() - started:.0f} s"
    return f"{side.name} did not settle in {SETTLE_LIMIT_S:.0f} s (CPU {percent:.0f}% of a core)"


def measure(sides: list[Side], work: Path, steps: list[Step],
            repeat: int) -> tuple[dict[str, list[StepResult]], list[str], dict[str, float]]:
    """Both sides up at once, idle but for the one measured: each step runs on one side, then the
    other, `repeat` times, so that a slow minute of a shared machine falls on both alike."""
    results: dict[str, list[StepResult]] = {side.name: [] for side in sides}
    running: list[tuple[Side, int]] = []
    idles: list[str] = []
    idle_pss: dict[str, float] = {}
    given_up: set[tuple[str, str]] = set()
    try:
        for side in sides:
            root = side.start()
            running.append((side, root))
            line, idle_pss[side.name] = idle_line(side, root)
            idles.append(line)
            print(line, flush=True)
        for step in steps:
            for rep in range(repeat):
                for side, root in running:
                    if (side.name, step.kind) in given_up:
                        continue
                    result = run_step(side, root, work / f"run{rep}", step)
                    results[side.name].append(result)
                    print(result.row(), flush=True)
                    if result.failed_share > GIVE_UP_FAILURE:
                        given_up.add((side.name, step.kind))
                    time.sleep(5)  # the last calls' BYEs and the front's transaction timers
                    print(settle(side, root), flush=True)
    finally:
        for side, _ in running:
            side.stop()
    return results, idles, idle_pss


def _runs(results: list[StepResult], kind: str, target: str) -> list[StepResult]:
    return [r for r in results if r.kind == kind and r.target == target]


def _best(results: list[StepResult], kind: str) -> StepResult | None:
    """The largest step every repeat of which had fewer than 0.1% of calls failed or unfinished."""
    held = [r for r in results if r.kind == kind
            and all(run.failed_share < HELD_FAILURE_LIMIT for run in _runs(results, kind, r.target))]
    return max(held, key=lambda r: float(r.target), default=None)


def _at(results: list[StepResult], kind: str, target: str) -> StepResult | None:
    """The repeat of a step with the median CPU."""
    runs = sorted(_runs(results, kind, target), key=lambda r: r.cpu_percent)
    return runs[len(runs) // 2] if runs else None


def side_by_side(ours: list[StepResult], peer: list[StepResult], at_held: str, at_rate: str,
                 idle_pss: dict[str, float], names: tuple[str, str] = ("softswitch", "Asterisk")) -> str:
    """The summary: each side's figure and ours ÷ the peer's."""
    rows: list[tuple[str, float | None, float | None, str]] = []

    def figure(results: list[StepResult], pick: str) -> float | None:
        idle = idle_pss.get(results[0].side, 0.0) if results else 0.0
        best_held, best_rate = _best(results, "held calls"), _best(results, "calls/s")
        held, rate = _at(results, "held calls", at_held), _at(results, "calls/s", at_rate)
        values = {
            "held": float(best_held.target) if best_held else None,
            "rate": float(best_rate.target) if best_rate else None,
            "cpu_held": held.cpu_percent if held else None,
            "pss_held": held.pss_mib if held else None,
            "cpu_per_call": held.cpu_percent / float(at_held) if held else None,
            "pss_per_call": held.pss_mib / float(at_held) if held else None,
            "pss_added": (held.pss_mib - idle) / float(at_held) if held else None,
            "cpu_rate": rate.cpu_percent if rate else None,
            "p50": held.setup_p50_ms if held else None,
            "p99": held.setup_p99_ms if held else None,
            "sipp": held.sipp_cpu_percent if held else None,
        }
        return values[pick]
    for label, pick, fmt in (
        ("held full-IVR calls, < 0.1% failed (more is better)", "held", "{:.0f}"),
        ("new calls/s (2 s calls), < 0.1% failed (more is better)", "rate", "{:.0f}"),
        (f"CPU at {at_held} held, % of one core", "cpu_held", "{:.0f}%"),
        (f"CPU per held call at {at_held}, % of one core", "cpu_per_call", "{:.3f}%"),
        (f"PSS at {at_held} held, MiB", "pss_held", "{:.0f}"),
        (f"PSS per held call at {at_held}, MiB", "pss_per_call", "{:.3f}"),
        (f"PSS added per held call at {at_held} (above idle), MiB", "pss_added", "{:.3f}"),
        (f"CPU at {at_rate} calls/s, % of one core", "cpu_rate", "{:.0f}%"),
        (f"INVITE→200 p50 at {at_held} held, ms", "p50", "{:.1f}"),
        (f"INVITE→200 p99 at {at_held} held, ms", "p99", "{:.1f}"),
        (f"SIPp CPU at {at_held} held", "sipp", "{:.0f}%"),
    ):
        rows.append((label, figure(peer, pick), figure(ours, pick), fmt))
    lines = [f"| | {names[1]} | {names[0]} | {names[0]} ÷ {names[1]} |", "|---|---|---|---|"]
    for label, theirs, mine, fmt in rows:
        ratio = f"{mine / theirs:.2f}x" if mine is not None and theirs else "—"
        lines.append(f"| {label} | {fmt.format(theirs) if theirs is not None else '—'} | "
                     f"{fmt.format(mine) if mine is not None else '—'} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, help="media workers (default: sized by the softswitch itself)")
    parser.add_argument("--poll-ms", type=int, default=200)
    parser.add_argument("--concurrency", default="400,800,1200,1500", help="held-call steps (full IVR calls)")
    parser.add_argument("--rates", default="100,175,260", help="calls/s steps (2 s calls)")
    parser.add_argument("--rate-seconds", type=int, default=20)
    parser.add_argument("--at-held", default="400", help="the held step whose CPU and memory are compared")
    parser.add_argument("--at-rate", default="100", help="the calls/s step whose CPU is compared")
    parser.add_argument("--sides", default="asterisk,softswitch",
                        help="which sides to run, in this order: asterisk, softswitch (SQLite store), "
                             "softswitch-pg (store on a PostgreSQL server the bench starts)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each step per side, taken in turns")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    rates = [float(r) for r in args.rates.split(",") if r]
    work = Path(tempfile.mkdtemp(prefix="softswitch-bench-"))
    pcap, caller_s = caller_audio(work)
    sides: list[Side] = []
    for name in args.sides.split(","):
        if name == "asterisk":
            peer = AsteriskSide(work / "asterisk")
            if peer.available():
                sides.append(peer)
            else:
                print("asterisk: not built; run bench/asterisk/build.sh for the side-by-side table", flush=True)
        elif name in ("softswitch", "softswitch-pg"):
            (work / name).mkdir()
            sides.append(SoftswitchSide(work / name, args.workers, args.poll_ms, postgres=name == "softswitch-pg"))
        else:
            raise SystemExit(f"unknown side {name!r}")
    print(HEADER, flush=True)
    results, idles, idle_pss = measure(sides, work, plan_steps(concurrency, rates, args.rate_seconds, pcap, caller_s),
                             args.repeat)
    print(f"\nmachine: {os.cpu_count()} cores; {'; '.join(idles)}")
    print(HEADER)
    for side_results in results.values():
        for result in side_results:
            print(result.row())
    if "asterisk" in results and "softswitch" in results:
        print()
        print(side_by_side(results["softswitch"], results["asterisk"], args.at_held, f"{float(args.at_rate):g}",
                           idle_pss))
    if "softswitch on PostgreSQL" in results and "softswitch" in results:
        print()
        print(side_by_side(results["softswitch on PostgreSQL"], results["softswitch"], args.at_held,
                           f"{float(args.at_rate):g}", idle_pss, names=("on PostgreSQL", "on SQLite")))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"work directory: {work}")


if __name__ == "__main__":
    main()
