"""A media worker process: ``python -m softswitch.worker --id N ...`` (started by the control process)."""

from __future__ import annotations

import argparse
import faulthandler
from pathlib import Path

from softswitch import logs
from softswitch.worker.process import Worker
from softswitch.worker.settings import WorkerSettings


def run_worker(settings: WorkerSettings) -> None:
    """Run one worker until it is told to stop."""
    logs.configure("json" if settings.log_format == "json" else "text", settings.log_level,
                   f"worker{settings.worker_id}")
    # A crash inside the library leaves the Python stacks of every thread in the log.
    faulthandler.enable(all_threads=True)
    Worker(settings).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="softswitch media worker (one PJSUA2 endpoint)")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--sip-host", default="127.0.0.1")
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--rtp-port-range", type=int, default=2016)
    parser.add_argument("--control-socket", type=Path, required=True)
    parser.add_argument("--poll-ms", type=int, default=200)
    parser.add_argument("--max-calls", type=int, default=1000)
    parser.add_argument("--recycle-after-calls", type=int, default=0)
    parser.add_argument("--pjsua-log-level", type=int, default=2)
    parser.add_argument("--rtp-timeout-s", type=float, default=60.0)
    parser.add_argument("--session-expires-s", type=int, default=1800)
    parser.add_argument("--front", default="", help="host:port of the SIP front; INVITEs only from there")
    parser.add_argument("--transfer-targets", default="", help="comma-separated users a phone may REFER a call to")
    parser.add_argument("--apology", default="", help="WAV played to answered calls if the control process is lost")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    args = parser.parse_args(argv)
    run_worker(WorkerSettings(
        worker_id=args.id, sip_host=args.sip_host, sip_port=args.sip_port, rtp_port=args.rtp_port,
        rtp_port_range=args.rtp_port_range, control_socket=args.control_socket, poll_ms=args.poll_ms,
        max_calls=args.max_calls, recycle_after_calls=args.recycle_after_calls,
        pjsua_log_level=args.pjsua_log_level,
        rtp_timeout_s=args.rtp_timeout_s, session_expires_s=args.session_expires_s, front=args.front,
        transfer_targets=tuple(t for t in args.transfer_targets.split(",") if t), apology=args.apology,
        log_format=args.log_format, log_level=args.log_level,
    ))


if __name__ == "__main__":
    main()
