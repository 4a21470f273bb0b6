"""Control process: this host among others on one PostgreSQL store, its heartbeat and the takeover of a dead host.

Every host writes its heartbeat (the database's clock) every ``heartbeat_s``
and reads the others' as often. A host silent for ``host_timeout_s`` is dead:
its calls died with its workers. The first survivor to claim it (one
conditional UPDATE of its row: exactly one wins) closes its open CDRs as
``host_lost`` and files each cut message as a received_incomplete case, in the
claim's transaction (``Store.take_over``); then it points the dead host's
recording rows at their verified copies in the shared directory, where a copy
was finished before the host could do it. Tapes only on the dead host's own
disk cannot be read from here: they are named in the log, and the host takes
them up again when it comes back with its disk (``Softswitch`` at start).

The database failing must not stall calls: each heartbeat and read is bounded,
and a failure is logged once when it starts and once when it ends. A host takes
nobody over until its own heartbeats have worked for ``host_timeout_s``: after
the store was out of reach, everyone's heartbeat is old until they beat again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from media.wavfile import sha256_file
from softswitch.config import ClusterConfig
from storage.errors import StoreError
from storage.models import HostRecord, TakeOver
from storage.shared_recordings import SharedLayout
from storage.store import Store

log = logging.getLogger("softswitch.cluster")


class ClusterMember:
    """This host's heartbeat and the watch over the others (two small tasks of the control loop)."""

    def __init__(self, store: Store, settings: ClusterConfig, recordings_dir: Path, shared_dir: Path | None,
                 shared_folder: str | None, *, taken_over: Callable[[TakeOver], Awaitable[None]],
                 console_url: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.name = settings.host_name
        self.recordings_dir = recordings_dir
        self.shared_dir = shared_dir
        self.shared_folder = shared_folder if shared_dir is not None else None
        self.taken_over = taken_over  # counts each takeover this host made
        self.console_url = console_url  # where the other hosts' consoles relay to this host's desk
        self.hosts: list[HostRecord] = []  # as last read
        self._tasks: list[asyncio.Task[None]] = []
        # Bounded: a heartbeat that cannot be written in this time would be late anyway.
        self._timeout_s = settings.host_timeout_s / 2
        self._failing: dict[str, str] = {}  # what fails now (heartbeat, watch) and why
        # Since when (monotonic) this host's heartbeats have worked without a break; None while failing.
        self._beating_since: float | None = None

    async def join(self) -> HostRecord | None:
        """Enter (again) as alive; the row as it was before, if this host had one."""
        return await self.store.join_cluster(self.name, str(self.recordings_dir), self.shared_folder,
                                             self.console_url)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._watch())]

    async def close(self, *, leave: bool = False) -> None:
        """Stop beating and watching; ``leave``: this host stopped cleanly with its calls closed, so it is
        not to be taken over (best effort: if the store cannot be told, a survivor finds nothing open)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if leave:
            try:
                await asyncio.wait_for(self.store.leave_cluster(self.name), self._timeout_s)
            except (StoreError, asyncio.TimeoutError) as exc:
                log.warning("could not tell the cluster that host %s left: %s", self.name, exc or "no answer")

    def up(self) -> int:
        """Hosts alive by their last heartbeat, as last read (this one included)."""
        return sum(1 for host in self.hosts if self.alive(host))

    def alive(self, host: HostRecord) -> bool:
        return host.taken_over_by is None and host.left_at is None and host.silent_s <= self.settings.host_timeout_s

    def _state(self, what: str, problem: str | None) -> None:
        """Log a failure when it starts and when it ends, not at every round."""
        before = self._failing.get(what)
        if problem is not None and before is None:
            log.error("cluster %s failing: %s", what, problem)
            self._failing[what] = problem
        elif problem is None and before is not None:
            log.warning("cluster %s works again", what)
            del self._failing[what]

    async def _beat(self) -> None:
        while True:
            try:
                if not await asyncio.wait_for(self.store.heartbeat(self.name), self._timeout_s):
                    # Silent too long (a stalled loop, the database out of reach): another host has closed
                    # this one's calls. Calls still running here go on; their CDRs say host_lost.
                    log.error("host %s was taken over while it ran: joining the cluster again", self.name)
                    await asyncio.wait_for(self.join(), self._timeout_s)
                self._state("heartbeat", None)
                if self._beating_since is None:
                    self._beating_since = time.monotonic()
            except (StoreError, asyncio.TimeoutError) as exc:
                self._state("heartbeat", str(exc) or "no answer in time")
                self._beating_since = None
            await asyncio.sleep(self.settings.heartbeat_s)

    def _steady(self) -> bool:
        """Whether this host may take others over: its own heartbeats have worked for a whole host_timeout_s.
        After the store was out of reach every host's heartbeat is old; the live ones beat again within
        heartbeat_s, and this wait keeps them from being taken for dead (at start too)."""
        since = self._beating_since
        return since is not None and time.monotonic() - since >= self.settings.host_timeout_s

    async def _watch(self) -> None:
        while True:
            try:
                self.hosts = await asyncio.wait_for(self.store.hosts(), self._timeout_s)
                for host in self.hosts:
                    if self._steady() and host.name != self.name and host.taken_over_by is None \
                            and host.left_at is None and host.silent_s > self.settings.host_timeout_s:
                        await self._take_over(host)
                self._state("watch", None)
            except (StoreError, asyncio.TimeoutError) as exc:
                self._state("watch", str(exc) or "no answer in time")
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _take_over(self, host: HostRecord) -> None:
        done = await self.store.take_over(host.name, self.name, self.settings.host_timeout_s)
        if done is None:
            return  # alive again, or another survivor has it
        await self.taken_over(done)
        log.warning("host %s silent for %.1f s: took it over, %d calls closed as host_lost, %d cut messages "
                    "made cases", host.name, done.host.silent_s, len(done.calls_closed), len(done.cases_opened),
                    extra={"event": "host_taken_over", "host": host.name, "calls": len(done.calls_closed)})
        adopted, stranded = await self._adopt_shared_copies(done.host)
        if adopted or stranded:
            log.warning("host %s: %d recordings found in the shared directory, %d only on its own disk (kept "
                        "there; copied when it comes back)", host.name, adopted, stranded)

    async def _adopt_shared_copies(self, host: HostRecord) -> tuple[int, int]:
        """Point the dead host's rows still naming its disk at their shared copies, where a copy exists and
        matches the row's sha256 (it died between the copy and the row's update). (found, left on its disk)."""
        local = await self.store.recordings_under(f"{host.recordings_dir}{os.sep}")
        if self.shared_dir is None or host.shared_folder is None:
            return 0, len(local)
        layout = SharedLayout(self.shared_dir, Path(host.recordings_dir), host.shared_folder)
        adopted = 0
        for recording in local:
            copy = layout.copy_of(Path(recording.path))
            try:
                matches = await asyncio.to_thread(sha256_file, copy) == recording.sha256
            except OSError:
                matches = False
            if matches and await self.store.move_recording(recording.id, recording.path, str(copy)):
                adopted += 1
        return adopted, len(local) - adopted


def cluster_hosts(member: ClusterMember | None) -> dict[str, object] | None:
    """What /api/health says of the cluster: this host and each host's last heartbeat; None with one host."""
    if member is None:
        return None
    return {"host": member.name, "hosts_up": member.up(), "hosts": [{
        "name": host.name, "last_seen": host.last_seen, "silent_s": round(host.silent_s, 1),
        "alive": member.alive(host), "taken_over_by": host.taken_over_by, "left": host.left_at is not None,
    } for host in member.hosts]}
