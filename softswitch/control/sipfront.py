"""SIP front: renders and runs the Kamailio configuration (calls spread over media workers, agents registered)."""

from __future__ import annotations

import asyncio
import getpass
import itertools
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jinja2

from softswitch.config import Config, ConfigError
from softswitch.control.capacity import WorkerPlan

# A worker enters the dispatcher set inactive and probed: it takes calls only
# once it has answered Kamailio's OPTIONS, so a starting softswitch answers
# 503 with Retry-After rather than offering calls to workers not yet up.
_INACTIVE_AND_PROBED = 1 | 8
# Seconds a trunk is asked to wait when no worker can take a call.
RETRY_AFTER_S = 5


def worker_sip_ports(config: Config, plan: WorkerPlan) -> list[int]:
    return [config.workers.base_port + i for i in range(plan.count)]


def worker_uri(config: Config, worker_id: int) -> str:
    """The worker's address as the front's dispatcher set names it."""
    return f"sip:{config.workers.host}:{config.workers.base_port + worker_id}"


# What libpq takes from a postgresql:// URL's query and the front passes on in its environment:
# Kamailio's own database URL has no query. host= names a Unix socket's directory.
_LIBPQ_ENVIRONMENT = {"host": "PGHOST", "port": "PGPORT", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
                      "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL",
                      "connect_timeout": "PGCONNECT_TIMEOUT"}
# Kamailio's URL parser knows no escapes: user, host and database must be plain names.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RegistrarDatabase:
    """Where the front keeps the agents' registrations when the hosts share PostgreSQL.

    ``url`` is Kamailio's db_postgres URL, never with a password: that goes
    to a libpq password file of the front's own (mode 0600), named with the
    TLS settings in ``environment``, the front's process environment.
    """

    url: str
    environment: dict[str, str]
    password: str | None


def registrar_database(config: Config, run_dir: Path) -> RegistrarDatabase | None:
    """The shared registrations' database, from database_url; None with SQLite (registrations in memory)."""
    if config.database_url is None:
        return None
    parts = urlsplit(config.database_url.get_secret_value())
    # The messages never quote the URL: it may hold a password.
    # No user: libpq's default, the name this process runs as.
    user, database = unquote(parts.username or getpass.getuser()), unquote(parts.path.strip("/"))
    for what, value in (("user", user), ("database", database)):
        if not _PLAIN_NAME.match(value):
            raise ConfigError(f"database_url: the SIP front keeps registrations there and needs its {what} "
                              "in the URL as a plain name (letters, digits, _ . -)")
    environment: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _LIBPQ_ENVIRONMENT:
            raise ConfigError(f"database_url: the SIP front cannot pass {name!r} on to PostgreSQL; "
                              f"it takes {', '.join(sorted(_LIBPQ_ENVIRONMENT))}")
        environment[_LIBPQ_ENVIRONMENT[name]] = value
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None:
        environment["PGPASSFILE"] = str(run_dir / "pgpass")
    host = parts.hostname
    if not host:
        # No host in the URL: libpq takes PGHOST (a socket directory) and PGPORT from the environment.
        return RegistrarDatabase(f"postgres://{user}@/{database}", environment, password)
    if not _PLAIN_NAME.match(host):
        raise ConfigError("database_url: the SIP front keeps registrations there and needs its server host "
                          "as a name or IPv4 address")
    return RegistrarDatabase(f"postgres://{user}@{host}:{parts.port or 5432}/{database}", environment, password)


def render(config: Config, plan: WorkerPlan, run_dir: Path, debug: int = 1) -> Path:
    """Write the dispatcher list and kamailio.cfg under run_dir; return the cfg path.

    Each worker is one destination with its own call-load id and the number of
    calls the front may send it (``plan.dispatch_limit``): Kamailio sends a new
    call to the least loaded worker and refuses it itself when all are full.
    The cfg holds the agents' HA1s (which authenticate as well as the password
    does) and the key that signs its Record-Routes, so it is readable by its owner only.
    With a PostgreSQL database_url the registrations live in its ``location``
    table (usrloc DB-only), which every host's front reads and writes.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    registrar_db = registrar_database(config, run_dir)
    if registrar_db is not None and registrar_db.password is not None:
        # libpq's password file: any server, port, database and user (this front reaches one).
        escaped = registrar_db.password.replace("\\", "\\\\").replace(":", "\\:")
        _write_private(Path(registrar_db.environment["PGPASSFILE"]), f"*:*:*:*:{escaped}\n")
    dispatcher_list = run_dir / "dispatcher.list"
    dispatcher_list.write_text("".join(
        f"1 {worker_uri(config, i)} {_INACTIVE_AND_PROBED} 0 duid=w{i};maxload={plan.dispatch_limit}\n"
        for i in range(plan.count)))
    template = jinja2.Template(config.kamailio.template.read_text(encoding="utf-8"),
                               undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    agents = config.agents
    text = template.render(rpc_socket=rpc_socket(run_dir),
        debug=debug, children=config.kamailio.children, listen=config.sip.listen, port=config.sip.port,
        failover_timeout_ms=config.kamailio.failover_timeout_ms, dispatcher_list=dispatcher_list,
        realm=agents.realm, agents=agents.accounts, registration_expires_s=agents.registration_expires_s,
        min_expires_s=min(60, agents.registration_expires_s), retry_after_s=RETRY_AFTER_S,
        keepalive_interval_s=agents.keepalive_interval_s, keepalive_timeout_s=agents.keepalive_timeout_s,
        limits=config.kamailio, trunks=",".join(config.sip.trunk_allow), rr_secret=route_key(run_dir),
        # Unknown users are checked against this: no password has it, and it changes with every start.
        unknown_ha1=secrets.token_hex(16),
        # Call-load slots: a few calls per slot for the most the workers can hold.
        load_hash_bits=max(4, (plan.count * plan.dispatch_limit // 8).bit_length()),
        registrar_db=registrar_db.url if registrar_db is not None else None, server_id=config.kamailio.server_id,
        # Where callbacks go out (queue.callback): the front relays a worker's INVITE to a number there.
        outbound_trunk=config.sip.outbound_trunk)
    cfg = run_dir / "kamailio.cfg"
    _write_private(cfg, text)
    return cfg


def route_key(run_dir: Path) -> str:
    """The key that signs the front's Record-Routes, kept in run_dir: a restarted front still relays its dialogs."""
    path = run_dir / "route.key"
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = ""
    if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
        key = secrets.token_hex(16)
        _write_private(path, key + "\n")
    return key


def _write_private(path: Path, text: str) -> None:
    """Write a file that only its owner may read, never readable by others even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been created with wider permissions
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def command(config: Config, cfg: Path, run_dir: Path) -> list[str]:
    """Kamailio in the foreground (-DD), logging to stderr (-E), with its own runtime dir.

    With shared registrations it starts through env(1) with libpq's settings
    in its environment; env execs Kamailio, so the PID started is Kamailio's.
    """
    k = config.kamailio
    argv = [k.binary, "-DD", "-E", "-f", str(cfg), "-Y", str(run_dir), "-P", str(run_dir / "kamailio.pid"),
            "-m", str(k.shared_memory_mb), "-M", str(k.private_memory_mb)]
    registrar_db = registrar_database(config, run_dir)
    if registrar_db is None:
        return argv
    return ["env", *(f"{name}={value}" for name, value in sorted(registrar_db.environment.items())), *argv]


def rpc_socket(run_dir: Path) -> Path:
    return run_dir / "rpc.sock"


class FrontRpcError(RuntimeError):
    """Kamailio did not answer an RPC, or answered with an error."""


class FrontRpc:
    """Kamailio's JSON-RPC over its Unix datagram socket (the jsonrpcs module), from the control process."""

    def __init__(self, run_dir: Path, timeout_s: float = 1.0) -> None:
        self.server = rpc_socket(run_dir)
        # Kamailio answers to the sender's address: an abstract one needs no file.
        self.client = f"\0softswitch-111-rpc-{os.getpid()}-{id(self)}"
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def call(self, method: str, *params: Any) -> Any:
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(self._ids)}
        async with self._lock:  # one request in flight: replies carry no address of their own
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self._exchange, json.dumps(request).encode())

    def _exchange(self, request: bytes) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(self.client)
                sock.settimeout(self.timeout_s)
                sock.sendto(request, str(self.server))
                reply = json.loads(sock.recv(1 << 20))
            except (OSError, ValueError) as exc:
                raise FrontRpcError(f"no answer from the SIP front: {exc}") from None
        if "error" in reply:
            raise FrontRpcError(f"SIP front refused: {reply['error']}")
        return reply.get("result")

    async def dispatcher_entries(self) -> list[tuple[str, str]]:
        """(URI, flags) of every dispatcher destination: flags "AP" active and probed, "IP" inactive, ..."""
        result = await self.call("dispatcher.list")
        return [(str(target.get("DEST", {}).get("URI")), str(target.get("DEST", {}).get("FLAGS", "")))
                for record in (result or {}).get("RECORDS", [])
                for target in record.get("SET", {}).get("TARGETS", [])]

    async def active_workers(self) -> set[str]:
        """URIs of the dispatcher destinations the front would send a call to now."""
        return {uri for uri, flags in await self.dispatcher_entries() if flags.startswith("A")}

    async def registered_users(self) -> set[str]:
        """SIP users (agents) with at least one live registration at the front."""
        users: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                aor, contacts = node.get("AoR"), node.get("Contacts")
                if isinstance(aor, str) and contacts:
                    users.add(aor.split("@", 1)[0])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
        walk(await self.call("ul.dump"))
        return users

    async def take_out(self, uri: str) -> None:
        """Send no more calls to this worker until it answers a probe again (it was lost)."""
        await self.call("dispatcher.set_state", "ip", 1, uri)
