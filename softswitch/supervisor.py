"""Control process: starts the SIP front and media workers, restarts any that die, stops them on drain."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.process
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from softswitch.worker_settings import WorkerSettings

log = logging.getLogger("softswitch.supervisor")


class Child(Protocol):
    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ExecChild:
    """A program started with exec (Kamailio)."""

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


def _run_worker(settings: WorkerSettings) -> None:
    # Imported in the forked child, where the fork server has it loaded already:
    # the control process itself never loads PJSUA2.
    from softswitch.worker import run_worker

    run_worker(settings)


class ForkedWorker:
    """A media worker forked from a server that has already imported PJSUA2, numpy and the VAD.

    Forked workers share the pages those imports filled (22 MiB of PSS per idle
    worker, against 25 MiB for a fresh interpreter); the start-up import time is
    paid once instead of once per worker.
    """

    _context = multiprocessing.get_context("forkserver")
    _context.set_forkserver_preload(["softswitch.worker_preload"])

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process

    @classmethod
    async def start(cls, settings: WorkerSettings) -> ForkedWorker:
        process = cls._context.Process(target=_run_worker, args=(settings,), name=f"worker{settings.worker_id}")
        await asyncio.get_running_loop().run_in_executor(None, process.start)
        return cls(process)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def wait(self) -> int | None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        sentinel = self.process.sentinel

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)
        loop.add_reader(sentinel, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(sentinel)
        self.process.join()
        return self.process.exitcode

    def terminate(self) -> None:
        if self.process.exitcode is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()


@dataclass
class Supervised:
    name: str
    start: Callable[[], Awaitable[Child]]
    child: Child | None = None
    restarts: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
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
