"""SIP user agent layer: what the installed PJSUA2 engine holds per process, read from the library itself.

Two engines provide the ``pjsua2`` module: the build of scripts/build-pjsua2.sh
(server profile, 1,000 calls per process) and the PyPI wheel (4 calls). Nothing
here assumes either number: the call cap is what ``pjsua_call_get_max_count``
answers after ``libInit``, which clamps the requested ``maxCalls`` to the
compiled ``PJSUA_MAX_CALLS``. The probe runs in a child process so that the
control process never loads PJSIP.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from softswitch.config import ConfigError, WorkersConfig, port_conflict

# Above any compiled cap: libInit clamps it to PJSUA_MAX_CALLS.
_ASK_FOR_ALL = 1 << 20


@dataclass(frozen=True)
class EngineInfo:
    version: str  # pjproject's, e.g. "2.17"
    max_calls: int  # concurrent calls one process can hold, as compiled


# A server build holds hundreds of calls per process: one worker per core keeps
# the bridge clocks on separate cores and a crash costs a core's share of the
# calls. The wheel's 4-call processes are cheap to multiply instead.
SERVER_ENGINE_CALLS = 100
WHEEL_WORKERS_PER_CORE = 2
# Calls after which a wheel worker is replaced: 2.15.1 leaks bridge slots under churn.
WHEEL_RECYCLE_AFTER_CALLS = 2000
# RTP and RTCP of a call take two ports; some spare for ports left busy by others.
RTP_PORTS_PER_CALL = 2
RTP_SPARE_PORTS = 16


@dataclass(frozen=True)
class WorkerPlan:
    """Concrete worker sizes: the configuration's, with what it left null chosen here."""

    count: int
    max_calls: int  # call slots of one worker
    rtp_ports_per_worker: int
    # Calls the SIP front sends to one worker: its slots less those kept for agents' legs,
    # which the worker dials itself when it bridges a caller.
    dispatch_limit: int
    recycle_after_calls: int  # 0: never


def plan_workers(workers: WorkersConfig, engine: EngineInfo, *, sip_port: int, agents: int,
                 cpus: int | None = None) -> WorkerPlan:
    """Size the workers for this machine and engine; ConfigError when the result does not fit the ports."""
    cpus = cpus or os.cpu_count() or 1
    max_calls = min(workers.max_calls or engine.max_calls, engine.max_calls)
    server = engine.max_calls >= SERVER_ENGINE_CALLS
    per_core = 1 if server else WHEEL_WORKERS_PER_CORE
    count = workers.count or max(1, cpus * per_core)
    rtp_ports = workers.rtp_ports_per_worker or RTP_PORTS_PER_CALL * max_calls + RTP_SPARE_PORTS
    problem = port_conflict(sip_port, workers, count, rtp_ports)
    if problem:
        raise ConfigError(f"workers: {problem}")
    reserved = min(agents, max_calls // 2)
    recycle = workers.recycle_after_calls
    if recycle is None:
        recycle = 0 if server else WHEEL_RECYCLE_AFTER_CALLS
    return WorkerPlan(count=count, max_calls=max_calls, rtp_ports_per_worker=rtp_ports,
                      dispatch_limit=max(1, max_calls - reserved), recycle_after_calls=recycle)


class EngineError(RuntimeError):
    """The pjsua2 module is missing or cannot start; the message says what to run."""


def library_call_cap(pj: Any) -> int | None:
    """The running library's call cap, or None when the module does not export the symbol."""
    try:
        get_max = ctypes.CDLL(pj._pjsua2.__file__).pjsua_call_get_max_count
    except (AttributeError, OSError):
        return None
    get_max.restype = ctypes.c_uint
    return int(get_max())


def _probe_here() -> EngineInfo:
    import pjsua2 as pj

    ep = pj.Endpoint()
    ep.libCreate()
    try:
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = _ASK_FOR_ALL
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.logConfig.level = cfg.logConfig.consoleLevel = 0
        ep.libInit(cfg)
        cap = library_call_cap(pj)
        if cap is None:
            raise EngineError("this pjsua2 module does not say how many calls it holds")
        return EngineInfo(version=ep.libVersion().full, max_calls=cap)
    finally:
        ep.libDestroy()


def probe(timeout_s: float = 30.0) -> EngineInfo:
    """Ask a short-lived child process what the installed engine holds."""
    result = subprocess.run([sys.executable, "-m", "softswitch.engine"], capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"the PJSUA2 engine cannot start ({detail}): run scripts/setup.sh")
    return EngineInfo(**json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    try:
        info = _probe_here()
    except ImportError as exc:
        raise SystemExit(f"no pjsua2 module: {exc}") from None
    print(json.dumps({"version": info.version, "max_calls": info.max_calls}))


if __name__ == "__main__":
    main()
