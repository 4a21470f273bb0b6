"""Benchmark: SIPp callers at rising concurrency and rate against a running softswitch; prints a table.

Each step is bounded in calls and time and stops by itself. The softswitch is
started here with a bench configuration (its own ports and data dir), measured
as a whole process tree (control, Kamailio, media workers), and stopped by PID.

    .venv/bin/python -m bench.run --concurrency 40,80 --rates 10,20 --workers 24
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.sipp import SippRun, caller_scenario, read_stats
from media.rtp_pcap import CallerTimeline
from softswitch.config import PROJECT_ROOT

SIP_PORT = 25060
HTTP_PORT = 28111
ID_DIGITS = "0499370899"


@dataclass(frozen=True)
class StepResult:
    kind: str
    target: str
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
    setup_p50_ms: float
    setup_p99_ms: float

    def row(self) -> str:
        failed_pct = 100.0 * self.failed / self.attempted if self.attempted else 0.0
        return (f"| {self.kind} | {self.target} | {self.attempted} | {self.failed} ({failed_pct:.2f}%) | "
                f"{self.peak_concurrent} | {self.calls_per_s:.1f} | {self.cpu_percent:.0f}% | "
                f"{' / '.join(f'{v:.0f}' for v in self.cpu_parts.values())} | {self.sipp_cpu_percent:.0f}% | "
                f"{self.rss_mib:.0f} | {self.pss_mib:.0f} | {self.setup_p50_ms:.1f} | {self.setup_p99_ms:.1f} |")


HEADER = ("| step | target | calls | failed | peak concurrent | calls/s | softswitch CPU at plateau "
          "(100% = 1 core) | of which control / kamailio / workers | SIPp CPU | RSS MiB | PSS MiB | "
          "INVITE→200 p50 ms | p99 ms |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


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


def cpu_ticks(pids: list[int]) -> int:
    return sum(cpu_by_part(pids, pids[0] if pids else 0).values())


def cpu_by_part(pids: list[int], control_pid: int) -> dict[str, int]:
    """utime+stime ticks of the softswitch's processes, by part: control, kamailio, workers."""
    parts = {"control": 0, "kamailio": 0, "workers": 0}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        part = "control" if pid == control_pid else "kamailio" if b"kamailio" in command else "workers"
        parts[part] += ticks
    return parts


def memory_kib(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
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


class Bench:
    def __init__(self, workers: int, poll_ms: int, work: Path) -> None:
        self.work = work
        self.workers = workers
        self.poll_ms = poll_ms
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the softswitch and wait until every worker is connected; returns its PID."""
        config = {
            "data_dir": str(self.work / "var"),
            "drain_timeout_s": 10,
            "sip": {"port": SIP_PORT},
            "http": {"port": HTTP_PORT},
            "workers": {"count": self.workers, "base_port": 25100, "rtp_base_port": 30000,
                        "rtp_ports_per_worker": 24, "poll_ms": self.poll_ms},
            "kamailio": {"children": 4},
            "ivr": {"message_silence_s": 3.0, "message_max_s": 30, "id_no_input_s": 5},
        }
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/api/health", timeout=1)
            raise SystemExit(f"something already answers on 127.0.0.1:{HTTP_PORT}: a softswitch still stopping?")
        except OSError:
            pass
        config_path = self.work / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.work / "softswitch.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "softswitch.cli", "--config", str(config_path), "run"],
            cwd=str(PROJECT_ROOT), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60 + self.workers
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"softswitch exited; see {self.work / 'softswitch.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/api/health", timeout=2) as r:
                    if len(json.loads(r.read())["workers"]) == self.workers:
                        time.sleep(3)  # dispatcher probes
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

    def step(self, kind: str, target: str, scenario: str, calls: int, rate: float, limit: int,
             timeout_s: float, load: float) -> StepResult:
        """One SIPp run; `load` is the concurrent-call count at which the step's plateau begins."""
        assert self.process is not None
        directory = self.work / f"{kind}-{target}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scenario.xml").write_text(scenario)
        run = SippRun(target=f"127.0.0.1:{SIP_PORT}", scenario=directory / "scenario.xml", calls=calls,
                      rate=rate, limit=limit, local_port=26000, media_port=40000, timeout_s=timeout_s,
                      stats_file=directory / "stats.csv")
        argv = run.argv() + ["-trace_rtt", "-rtt_freq", "1"]
        started = time.monotonic()
        peak_rss = peak_pss = 0
        plateau = {"control": 0.0, "kamailio": 0.0, "workers": 0.0, "sipp": 0.0}
        plateau_s = 0.0
        hz = os.sysconf("SC_CLK_TCK")
        sipp = subprocess.Popen(argv, cwd=str(directory), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)

        root = self.process.pid

        def sample(pids: list[int]) -> dict[str, int]:
            parts = cpu_by_part(pids, root)
            parts["sipp"] = cpu_by_part([sipp.pid], -1)["workers"]
            return parts
        before, tick_at = sample(process_tree(root)), time.monotonic()
        while sipp.poll() is None:
            time.sleep(1)
            pids = process_tree(root)
            now_parts, now = sample(pids), time.monotonic()
            # CPU is counted only while the step holds >= 90% of its target load.
            if _current_calls(directory / "stats.csv") >= 0.9 * load:
                for part in plateau:
                    plateau[part] += max(0, now_parts[part] - before[part])
                plateau_s += now - tick_at
            before, tick_at = now_parts, now
            rss, pss = memory_kib(pids)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if now - started > timeout_s + 30:
                sipp.kill()
        elapsed = time.monotonic() - started
        percent = {part: 100.0 * ticks / hz / plateau_s if plateau_s else float("nan")
                   for part, ticks in plateau.items()}
        sipp_cpu = percent.pop("sipp")
        cpu = sum(percent.values())
        stats = read_stats(directory / "stats.csv")
        last = stats[-1] if stats else {}
        successful = int(last.get("SuccessfulCall(C)", 0) or 0)
        failed = int(last.get("FailedCall(C)", 0) or 0)
        peak = max((int(r.get("CurrentCall", 0) or 0) for r in stats), default=0)
        setups = setup_times_ms(directory)
        return StepResult(kind, target, successful + failed, successful, failed, peak,
                          (successful + failed) / elapsed, cpu, percent, sipp_cpu, peak_rss / 1024, peak_pss / 1024,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--poll-ms", type=int, default=200)
    parser.add_argument("--concurrency", default="20,40,80", help="held-call steps (full IVR calls)")
    parser.add_argument("--rates", default="10,20,40", help="calls/s steps (2 s calls)")
    parser.add_argument("--rate-seconds", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="softswitch-bench-"))
    bench = Bench(args.workers, args.poll_ms, work)
    results: list[StepResult] = []
    pcap, caller_s = caller_audio(work)
    root = bench.start()
    try:
        _, idle_pss = memory_kib(process_tree(root))
        idle_ticks0 = cpu_ticks(process_tree(root))
        time.sleep(10)
        idle_cpu = 100.0 * (cpu_ticks(process_tree(root)) - idle_ticks0) / os.sysconf("SC_CLK_TCK") / 10
        print(f"idle: {args.workers} workers, poll {args.poll_ms} ms: CPU {idle_cpu:.1f}% of a core, "
              f"PSS {idle_pss / 1024:.0f} MiB", flush=True)
        full_call = caller_scenario(pcap, wait_bye_ms=int((caller_s + 60) * 1000))
        for target in (int(c) for c in args.concurrency.split(",") if c):
            ramp = max(1.0, target / 10)
            result = bench.step("held calls", str(target), full_call, calls=target, rate=ramp, limit=target,
                                timeout_s=caller_s + 60 + target / ramp, load=target)
            results.append(result)
            print(HEADER.splitlines()[0] if len(results) == 1 else "", result.row(), sep="\n", flush=True)
        short_call = caller_scenario(None, hangup_after_ms=2000)
        for rate in (float(r) for r in args.rates.split(",") if r):
            calls = int(rate * args.rate_seconds)
            result = bench.step("calls/s", f"{rate:g}", short_call, calls=calls, rate=rate,
                                limit=int(rate * 10) + 10, timeout_s=args.rate_seconds + 30, load=rate * 2)
            results.append(result)
            print(result.row(), flush=True)
    finally:
        bench.stop()
    print(f"\nmachine: {os.cpu_count()} cores; workers: {args.workers}; poll: {args.poll_ms} ms; "
          f"median setup over all steps: "
          f"{statistics.median([r.setup_p50_ms for r in results]) if results else float('nan'):.1f} ms")
    print(HEADER)
    for result in results:
        print(result.row())
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"work directory: {work}")


if __name__ == "__main__":
    main()
