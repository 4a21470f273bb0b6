"""A SIP front (Kamailio) alone, as the softswitch renders it, for tests that need no media worker behind it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from softswitch.config import Config
from softswitch.control import sipfront
from softswitch.control.capacity import plan_workers
from softswitch.worker.engine import EngineInfo

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def options_answered(front: tuple[str, int], probe: tuple[str, int]) -> bool:
    """An OPTIONS to the front, sent from ``probe``, gets its 200: the front is up."""
    host, port = front
    request = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {probe[0]}:{probe[1]};branch=z9hG4bK-up\r\n"
               f"From: <sip:probe@{probe[0]}>;tag=up\r\nTo: <sip:{host}:{port}>\r\nCall-ID: up@test\r\n"
               "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(probe)
        sock.settimeout(0.3)
        sock.sendto(request.encode(), front)
        try:
            return sock.recv(4096).startswith(b"SIP/2.0 200")
        except OSError:  # no answer yet, or nothing listening (ICMP port unreachable)
            return False


@contextlib.contextmanager
def front_alone(config: Config, agents: int, probe: tuple[str, int]) -> Iterator[Path]:
    """Only the SIP front of a softswitch with this config, under ``config.data_dir``; yields its log.

    Its dispatcher set names the workers' addresses, so a softphone on one of
    them is, to the front, a media worker. ``probe`` is the address the start-up
    OPTIONS is sent from. The front is stopped by its PID at the end.
    """
    base = config.data_dir
    run_dir = base / "kamailio"
    # Sized as for an engine of 4 calls: the front alone never asks the library.
    plan = plan_workers(config.workers, EngineInfo(version="test", max_calls=4), sip_port=config.sip.port,
                        agents=agents)
    argv = sipfront.command(config, sipfront.render(config, plan, run_dir), run_dir)
    log = base / "kamailio.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not options_answered((config.sip.listen, config.sip.port), probe):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the SIP front did not come up:\n{log.read_text()[-3000:]}")
        yield log
    finally:
        process.terminate()  # Kamailio's main process stops its children
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
