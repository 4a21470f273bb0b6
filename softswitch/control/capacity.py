"""Control process: how many media workers, of what size, for this machine and engine."""

from __future__ import annotations

import os
from dataclasses import dataclass

from softswitch.config import ConfigError, WorkersConfig, port_conflict
from softswitch.worker.engine import EngineInfo

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
