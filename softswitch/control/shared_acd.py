"""Control process: one queue and one set of agent states for every host on one PostgreSQL store.

Each host holds a replica of the ACD (``softswitch.domain.acd.Acd``, unchanged
logic). A change (``submit``) is appended to ``acd_changes`` in the one order
the database gives (``storage.acd_changes``) and every host applies every
change in that order, at the time the database stamped on it; so every
replica makes the same decisions, and a change refused on one (an agent
taken by another host's caller a moment earlier) is refused on all. A
caller's host learns the outcome of its change by applying it.

Hosts hear of new changes through ``LISTEN``/``NOTIFY`` and read them at least
every ``poll_s`` (a lost notification only delays). The host whose change a
timer depends on runs it (an agent's wrap-up ends by a change its call's host
submits); a dead host's calls are ended by one change (``host_lost``) that its
takeover submits, and a host starting submits the same for its own previous
run. Every ``snapshot_every`` changes, the host that made the change writes
the state as a snapshot; a host starts from the latest snapshot and the
changes after it. Day facts are journalled by the host whose change counted
them, so that each fact is stored once.

Reads (position, estimated wait, snapshot) are of the local replica: at most
one notification behind. Each change costs one transaction on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from softswitch.domain.acd import CHANGES, Acd, AgentsSettings, AgentStatus, DayFact, QueueEntry, QueueSettings
from storage.acd_changes import AcdChange, AcdChanges
from storage.errors import StoreError

log = logging.getLogger("softswitch.shared_acd")

SNAPSHOT_EVERY = 500
KEEP_CHANGES = 5000  # kept before the latest snapshot, so that a host a little behind need not start over
POLL_S = 1.0


class ReplicatedAcd(Acd):
    def __init__(self, agents: AgentsSettings, queue: QueueSettings, changes: AcdChanges, host: str, *,
                 journal: Callable[[DayFact], None] = lambda fact: None, snapshot_every: int = SNAPSHOT_EVERY,
                 keep_changes: int = KEEP_CHANGES, poll_s: float = POLL_S,
                 skills: Mapping[str, Iterable[str]] | None = None) -> None:
        # Monotonic time means nothing on another host: a replica counts in wall time, the database's for
        # changes.
        super().__init__(agents, queue, clock=time.time, wall=time.time, journal=self._journal_own, skills=skills)
        self._changes = changes
        self.host = host
        self._journal_to = journal
        self._snapshot_every = snapshot_every
        self._keep_changes = keep_changes
        self._poll_s = poll_s
        self.applied = 0  # the id of the last change applied here
        self._own = False  # while applying: whether the change is this host's
        self._outcomes: dict[int, Any] = {}  # this host's changes applied, by id: a result or the error
        self._in_order = asyncio.Lock()
        self._wake = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self.problem: str | None = None  # why the other hosts' changes cannot be read now

    async def start(self) -> None:
        """Catch up from the latest snapshot, follow the other hosts, and end this host's calls of a
        previous run (they died with it). Before any call of this host is queued."""
        snapshot = await self._changes.latest_snapshot()
        if snapshot is not None:
            self.load_state(snapshot.state)
            self.applied = snapshot.change_id
        await self._catch_up()
        self._outcomes.clear()  # of a previous run of this host: nobody waits for them
        self._follower = asyncio.ensure_future(self._follow())
        if gone := await self.submit("host_lost", host=self.host):
            log.warning("%d callers queued by this host's previous run left the queue", gone)

    def close(self) -> None:
        super().close()
        for task in [self._follower, *self._background]:
            if task is not None:
                task.cancel()

    async def submit(self, name: str, **args: Any) -> Any:
        if name not in CHANGES:
            raise ValueError(f"no ACD change is called {name!r}")
        change = await self._changes.append(self.host, name, args)
        await self._catch_up(change.id)
        if change.id not in self._outcomes:
            raise StoreError(f"the shared queue's change {change.id} was committed but cannot be read back")
        outcome = self._outcomes.pop(change.id)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def take_over(self, host: str) -> int:
        """``host`` is dead (this host won its takeover): its callers leave the queue, its agents are free."""
        gone: int = await self.submit("host_lost", host=host)
        return gone

    # -- entries are named by key: a snapshot taken up again makes new objects ---------------------------

    def position(self, entry: QueueEntry) -> int:
        return super().position(self._entry(entry.key) or entry)

    async def next_agent(self, entry: QueueEntry) -> AgentStatus:
        return await super().next_agent(self._entry(entry.key) or entry)

    # -- following the order ---------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            try:
                async with self._changes.listen(self._wake.set):
                    await self._poll()
            except StoreError as exc:
                self._state(str(exc))
                await asyncio.sleep(self._poll_s)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            await self._catch_up()
            self._state(None)

    def _state(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem is None:
                log.info("following the shared queue's changes again")
            else:
                log.error("cannot follow the shared queue's changes: %s", problem)
            self.problem = problem

    async def _catch_up(self, upto: int | None = None) -> None:
        """Apply the changes after the last one applied: all there are, or at least up to ``upto``."""
        async with self._in_order:
            while upto is None or self.applied < upto:
                batch = await self._changes.after(self.applied)
                if batch and batch[0].id > self.applied + 1:
                    await self._skip_to_snapshot(batch[0].id)
                    continue
                for change in batch:
                    self._apply_change(change)
                if not batch or (upto is None and len(batch) < 1000):
                    break

    async def _skip_to_snapshot(self, first: int) -> None:
        """Changes missing before ``first``: ids a failed append used up, or changes pruned while this host
        lagged behind a snapshot; then it starts again from that snapshot."""
        snapshot = await self._changes.latest_snapshot()
        if snapshot is not None and self.applied < snapshot.change_id:
            log.warning("the shared queue's changes %d..%d are gone: taking up snapshot %d",
                        self.applied + 1, first - 1, snapshot.change_id)
            self.load_state(snapshot.state)
            self.applied = snapshot.change_id
        else:
            self.applied = first - 1

    def _apply_change(self, change: AcdChange) -> None:
        self._own = change.host == self.host
        outcome: Any
        try:
            outcome = self.apply(change.name, change.args, at=change.at)
        except (ValueError, LookupError) as exc:
            outcome = exc  # the same state refuses it on every host
        except Exception as exc:  # noqa: BLE001 - one bad change must not stop the order
            log.exception("shared queue: change %d (%s) failed", change.id, change.name)
            outcome = exc
        finally:
            own, self._own = self._own, False
        self.applied = change.id
        if own:
            self._outcomes[change.id] = outcome
            if change.id % self._snapshot_every == 0:
                self._spawn(self._changes.save_snapshot(change.id, self.export_state(), self._keep_changes))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(self._report(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _report(work: Any) -> None:
        try:
            await work
        except StoreError as exc:
            log.error("shared queue: %s", exc)

    # -- what only the change's own host does ----------------------------------------------------------

    def _journal_own(self, fact: DayFact) -> None:
        if self._own:
            self._journal_to(fact)

    def _start_wrap_up(self, agent: Any, seconds: float) -> None:
        if self._own:
            super()._start_wrap_up(agent, seconds)

    def _wrap_up_over(self, agent_id: str, since: float) -> None:
        self._agents[agent_id].wrap_up = None
        self._spawn(self.submit("end_wrap_up", agent_id=agent_id, since=since))
