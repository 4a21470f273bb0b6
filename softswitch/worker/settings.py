"""Media worker: the settings one worker process is started with (no PJSUA2 import, so the control process stays free of it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: int
    sip_host: str
    sip_port: int
    rtp_port: int
    rtp_port_range: int
    control_socket: Path
    max_calls: int  # call slots asked of the library (it clamps them to its compiled cap)
    poll_ms: int = 200
    recycle_after_calls: int = 0  # 0: never
    rtp_timeout_s: float = 60.0  # 0: never
    session_expires_s: int = 1800  # RFC 4028; 0: no session timers
    pjsua_log_level: int = 2
    # The SIP front's address (host:port as its packets come from): INVITEs from anywhere else are
    # refused, whatever their X-111-Source says. Empty: not checked.
    front: str = ""
    # Who an agent's phone may REFER its call to (agents' ids, agencies' lines), at the front; others: 403.
    transfer_targets: tuple[str, ...] = ()
    # Played to every answered call when the control link is lost (the control process died), before the
    # worker hangs up: no caller is cut off in silence. Empty: hang up at once.
    apology: str = ""
    log_format: str = "text"  # text | json, as the control process logs (softswitch.logs)
    log_level: str = "INFO"
