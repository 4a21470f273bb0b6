"""Starts the SIP front and the media workers, restarts any that die, stops them on drain (process supervision)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from softswitch.worker.settings import WorkerSettings

log = logging.getLogger("softswitch.processes")


class Child(Protocol):
    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def end_stragglers(self) -> None: ...


def worker_command(settings: WorkerSettings) -> list[str]:
    """A media worker is a program of its own: with hundreds of calls each, a
    handful of them share nothing worth a fork server's memory."""
    return [sys.executable, "-m", "softswitch.worker", "--id", str(settings.worker_id),
            "--sip-host", settings.sip_host, "--sip-port", str(settings.sip_port),
            "--rtp-port", str(settings.rtp_port), "--rtp-port-range", str(settings.rtp_port_range),
            "--control-socket", str(settings.control_socket), "--poll-ms", str(settings.poll_ms),
            "--max-calls", str(settings.max_calls), "--recycle-after-calls", str(settings.recycle_after_calls),
            "--rtp-timeout-s", str(settings.rtp_timeout_s), "--session-expires-s", str(settings.session_expires_s),
            "--pjsua-log-level", str(settings.pjsua_log_level), "--front", settings.front,
            "--transfer-targets", ",".join(settings.transfer_targets), "--apology", settings.apology,
            "--log-format", settings.log_format, "--log-level", settings.log_level]


class ExecChild:
    """A program started with exec (Kamailio, a media worker)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, argv: list[str]) -> ExecChild:
        # Its own session: a Ctrl-C in the terminal must not kill the front under running calls.
        return cls(await asyncio.create_subprocess_exec(*argv, start_new_session=True))

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def wait(self) -> int | None:
        return await self.process.wait()

    def terminate(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    def end_stragglers(self) -> None:
        """Once it has exited: SIGKILL what is left of its session (it leads a process group of its own).
        A Kamailio whose main process died, or was killed for not stopping, leaves its children running,
        and they hold the SIP port that the next start, or the next softswitch, needs. While one of them
        lives the group's number cannot be given to another process; with none left this finds no one."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Supervised:
    name: str
    start: Callable[[], Awaitable[Child]]
    marker: str = ""  # a word of its command line that only this run's child has (a path of its own)
    child: Child | None = None
    restarts: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class ProcessSupervisor:
    """Keeps the children running; each child's pid is kept in ``pid_dir/<name>.pid`` while it runs, so that
    after a crash of this process the next start finds and stops them (``stop_leftovers``)."""

    def __init__(self, restart_backoff_s: float, pid_dir: Path | None = None) -> None:
        self.restart_backoff_s = restart_backoff_s
        self.pid_dir = pid_dir
        self.children: dict[str, Supervised] = {}
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, start: Callable[[], Awaitable[Child]], marker: str = "") -> None:
        supervised = Supervised(name, start, marker)
        self.children[name] = supervised
        self._tasks.append(asyncio.create_task(self._keep_running(supervised)))

    async def _keep_running(self, supervised: Supervised) -> None:
        while not self.stopping:
            supervised.child = await supervised.start()
            pid_file = self._pid_file(supervised.name)
            if pid_file is not None and supervised.child.pid is not None:
                pid_file.write_text(f"{supervised.child.pid}\n{supervised.marker}\n")
            code = await supervised.child.wait()
            supervised.child.end_stragglers()
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            if self.stopping:
                break
            supervised.restarts += 1
            # 0 is a worker retiring after its quota of calls; anything else is a crash.
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s (pid %s) exited with %s; restarting",
                    supervised.name, supervised.child.pid, code)
            await asyncio.sleep(self.restart_backoff_s)
        supervised.exited.set()

    def hold(self) -> None:
        """Restart nothing from now on (draining: a worker that finishes its calls may go)."""
        self.stopping = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child, SIGKILL what is left after the timeout."""
        self.stopping = True
        for supervised in self.children.values():
            if supervised.child is not None:
                supervised.child.terminate()
        _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
        for supervised in self.children.values():
            if not supervised.exited.is_set() and supervised.child is not None:
                log.error("%s did not stop in %.0fs; killing it", supervised.name, timeout_s)
                supervised.child.kill()
        if late:
            await asyncio.wait(late)

    def _pid_file(self, name: str) -> Path | None:
        return None if self.pid_dir is None else self.pid_dir / f"{name}.pid"

    def restarts(self) -> dict[str, int]:
        return {name: s.restarts for name, s in self.children.items() if s.restarts}


def stop_leftovers(pid_dir: Path, timeout_s: float = 10.0) -> list[int]:
    """Stop the children a crashed run left behind (they run in sessions of their own and outlive it).

    A pid file holds the pid and a marker (a path of that child's own); its process is stopped
    only if its command line still holds the marker, so a pid reused since by another program is
    left alone. SIGTERM, then SIGKILL after ``timeout_s``. Returns the pids stopped.
    """
    found = []
    for pid_file in sorted(pid_dir.glob("*.pid")):
        with contextlib.suppress(ValueError, IndexError, OSError):
            pid_text, marker = pid_file.read_text().splitlines()[:2]
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker and marker in cmdline:
                log.warning("stopping %s (pid %d) left running by an earlier run", pid_file.stem, pid)
                os.kill(pid, signal.SIGTERM)
                found.append(pid)
        pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout_s
    for pid in found:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            log.error("pid %d did not stop in %.0fs; killing it", pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # It led a session of its own: what is left of its group (a Kamailio's children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of ours that has exited but not been reaped is a zombie: gone for our purpose.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False
