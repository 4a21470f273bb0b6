"""Starts the SIP front and the media workers, restarts any that die, stops them on drain (process supervision)."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from softswitch.worker.settings import WorkerSettings

log = logging.getLogger("softswitch.processes")


class Child(Protocol):
    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def worker_command(settings: WorkerSettings) -> list[str]:
    """A media worker is a program of its own: with hundreds of calls each, a
    handful of them share nothing worth a fork server's memory."""
    return [sys.executable, "-m", "softswitch.worker", "--id", str(settings.worker_id),
            "--sip-host", settings.sip_host, "--sip-port", str(settings.sip_port),
            "--rtp-port", str(settings.rtp_port), "--rtp-port-range", str(settings.rtp_port_range),
            "--control-socket", str(settings.control_socket), "--poll-ms", str(settings.poll_ms),
            "--max-calls", str(settings.max_calls), "--recycle-after-calls", str(settings.recycle_after_calls),
            "--rtp-timeout-s", str(settings.rtp_timeout_s), "--session-expires-s", str(settings.session_expires_s),
            "--pjsua-log-level", str(settings.pjsua_log_level)]


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


@dataclass
class Supervised:
    name: str
    start: Callable[[], Awaitable[Child]]
    child: Child | None = None
    restarts: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class ProcessSupervisor:
    def __init__(self, restart_backoff_s: float) -> None:
        self.restart_backoff_s = restart_backoff_s
        self.children: dict[str, Supervised] = {}
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, start: Callable[[], Awaitable[Child]]) -> None:
        supervised = Supervised(name, start)
        self.children[name] = supervised
        self._tasks.append(asyncio.create_task(self._keep_running(supervised)))

    async def _keep_running(self, supervised: Supervised) -> None:
        while not self.stopping:
            supervised.child = await supervised.start()
            code = await supervised.child.wait()
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

    def restarts(self) -> dict[str, int]:
        return {name: s.restarts for name, s in self.children.items() if s.restarts}
