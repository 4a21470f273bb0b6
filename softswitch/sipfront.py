"""SIP front: renders and runs the Kamailio configuration (calls spread over media workers, agents registered)."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2

from softswitch.config import Config


def worker_sip_ports(config: Config) -> list[int]:
    return [config.workers.base_port + i for i in range(config.workers.count)]


def render(config: Config, run_dir: Path, debug: int = 1) -> Path:
    """Write the dispatcher list and kamailio.cfg under run_dir; return the cfg path.

    The cfg holds the agents' HA1s (which authenticate as well as the password
    does), so it is readable by its owner only.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    dispatcher_list = run_dir / "dispatcher.list"
    dispatcher_list.write_text("".join(
        f"1 sip:{config.workers.host}:{port} 0 0\n" for port in worker_sip_ports(config)))
    template = jinja2.Template(config.kamailio.template.read_text(encoding="utf-8"),
                               undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    agents = config.agents
    text = template.render(
        debug=debug, children=config.kamailio.children, listen=config.sip.listen, port=config.sip.port,
        failover_timeout_ms=config.kamailio.failover_timeout_ms, dispatcher_list=dispatcher_list,
        realm=agents.realm, agents=agents.accounts, registration_expires_s=agents.registration_expires_s,
        min_expires_s=min(60, agents.registration_expires_s))
    cfg = run_dir / "kamailio.cfg"
    _write_private(cfg, text)
    return cfg


def _write_private(path: Path, text: str) -> None:
    """Write a file that only its owner may read, never readable by others even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been created with wider permissions
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def command(config: Config, cfg: Path, run_dir: Path) -> list[str]:
    """Kamailio in the foreground (-DD), logging to stderr (-E), with its own runtime dir."""
    k = config.kamailio
    return [k.binary, "-DD", "-E", "-f", str(cfg), "-Y", str(run_dir), "-P", str(run_dir / "kamailio.pid"),
            "-m", str(k.shared_memory_mb), "-M", str(k.private_memory_mb)]
