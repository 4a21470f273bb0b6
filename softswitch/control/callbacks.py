"""Control process: callbacks, booked by waiting callers, made when their turn comes.

A caller who books one (``ivr.live.LiveCall``, through ``book``) leaves their
queue entry where it was, renamed to the callback's key; the callback is
stored (``storage.callbacks``), so a restart of the host queues it again, at
the end of the queue. For each callback a task waits in the queue like any
caller (``Acd.next_agent``); when it is offered an agent the softswitch calls
the number through the SIP front and its outbound trunk (``place``, the
control process's, which runs the call's flow from the queue on). An
attempt that is not answered frees the agent at once and the callback keeps
its place, offered no agent until ``retry_after_s`` has passed, while callers
behind it go ahead; after ``attempts`` of them it leaves the queue and a case
says it could not be made, filed under the IDs the caller gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ivr.call_flow import Session
from ivr.live import CallbackRequest
from softswitch.config import CallbackConfig
from softswitch.domain.acd import Acd, AgentStatus, NotQueued, QueueEntry, mask_number
from storage.callbacks import CONNECTED, DONE, UNREACHED, Callback, queue_key
from storage.errors import Conflict
from storage.store import Store

log = logging.getLogger("softswitch.callbacks")

ANSWERED = "answered"
# What an attempt came to: answered, or why not (no_answer, busy, failed_<SIP code>, no_worker).
Place = Callable[[Callback, QueueEntry, AgentStatus, int], Awaitable[str]]
NO_WORKER_RETRY_S = 5.0
UNREACHED_SUMMARY = "درخواست تماس برگشتی؛ پس از {attempts} بار تماس، پاسخی دریافت نشد."


class CallbackService:
    def __init__(self, cfg: CallbackConfig, store: Store, acd: Acd, host: str, place: Place,
                 call_id_of: Callable[[str], int | None], can_place: Callable[[], bool] = lambda: True,
                 counted: Callable[[str], None] = lambda outcome: None) -> None:
        """``place``: makes one attempt, the call's flow included; ``call_id_of``: a queued call's CDR id;
        ``can_place``: whether a worker could take the call now (an attempt without one is not counted);
        ``counted``: told "booked", each attempt's outcome and "unreached" (the metrics)."""
        self.cfg = cfg
        self.store = store
        self.acd = acd
        self.host = host
        self.place = place
        self.call_id_of = call_id_of
        self.can_place = can_place
        self.counted = counted
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._calling: set[int] = set()  # callbacks whose call is in progress: drain lets them finish
        self.stopping = False

    # -- ivr.live.CallbackBooking --------------------------------------------------
    async def book(self, number: str, entry: QueueEntry, request: CallbackRequest) -> bool:
        try:
            callback = await self.store.callbacks.book(
                number, self.host, self.call_id_of(entry.key), priority=request.priority, skills=request.skills,
                language=request.language, topic=request.topic, caller=request.caller, subject=request.subject)
        except Conflict:
            return False
        try:
            await self.acd.submit("to_callback", key=entry.key, callback_key=callback.queue_key)
            queued = entry
        except (NotQueued, ValueError):
            # The entry went meanwhile: the callback still gets its turn, from the end of the queue.
            queued = await self._queue(callback)
        log.info("callback %d booked", callback.id, extra={"event": "callback_booked", "callback": callback.id})
        self.counted("booked")
        self._start(callback, queued)
        return True

    # -- lifecycle -------------------------------------------------------------
    async def resume(self) -> int:
        """This host's stored callbacks queued again (after a restart, or adopted); how many."""
        resumed = 0
        for callback in await self.store.callbacks.open_for(self.host):
            if callback.id in self._tasks:
                continue  # served already
            if callback.status == CONNECTED:
                # Its conversation was going on when the host stopped: the call is closed as any orphan.
                await self.store.callbacks.finish(callback.id, DONE, "interrupted")
                continue
            self._start(callback, await self._queue(callback))
            resumed += 1
        if resumed:
            log.info("%d callbacks queued again", resumed, extra={"event": "callbacks_resumed"})
        return resumed

    async def adopt(self, host: str) -> int:
        """``host`` was lost and this one took it over: its stored callbacks are this host's now, queued here
        (after the shared queue dropped that host's entries); how many."""
        if self.stopping:
            return 0
        adopted = await self.store.callbacks.adopt(host, self.host)
        if adopted:
            log.warning("%d callbacks of host %s adopted", adopted, host,
                        extra={"event": "callbacks_adopted", "host": host})
            await self.resume()
        return adopted

    async def close(self) -> None:
        """No more attempts; a callback's call in progress goes on (the drain waits for it). The waiting ones
        leave the queue (stored, they are queued again when this host starts): a shared queue must not keep
        entries nobody serves ahead of other hosts' callers."""
        self.stopping = True
        waiting = {callback_id: task for callback_id, task in self._tasks.items() if callback_id not in self._calling}
        for task in waiting.values():
            task.cancel()
        for callback_id, task in waiting.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.acd.submit("leave", key=queue_key(callback_id), reason="host_stopped")

    def pending(self) -> int:
        return len(self._tasks)

    # -- each callback -----------------------------------------------------------
    async def _queue(self, callback: Callback) -> QueueEntry:
        args = {"key": callback.queue_key, "caller_number": mask_number(callback.number), "host": self.host,
                "skills": list(callback.skills), "priority": callback.priority, "callback": True,
                "hold_s": max(0.0, callback.next_at - time.time())}
        try:
            entry: QueueEntry = await self.acd.submit("join", **args)
        except ValueError:
            # Still queued from before this host restarted (a shared queue): queued afresh.
            await self.acd.submit("leave", key=callback.queue_key, reason="host_restarted")
            entry = await self.acd.submit("join", **args)
        return entry

    def _start(self, callback: Callback, entry: QueueEntry) -> None:
        task = asyncio.create_task(self._serve(callback, entry))
        self._tasks[callback.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(callback.id, None))

    async def _serve(self, callback: Callback, entry: QueueEntry) -> None:
        try:
            while not self.stopping:
                agent = await self.acd.next_agent(entry)
                if not self.can_place():
                    # No worker to call from (starting, or all full): not the caller's miss, so not counted.
                    await self.acd.submit("callback_missed", key=entry.key, agent_id=agent.id, retry_s=NO_WORKER_RETRY_S)
                    continue
                self._calling.add(callback.id)
                try:
                    attempt = await self.store.callbacks.calling(callback.id)
                    try:
                        outcome = await self.place(callback, entry, agent, attempt)
                    except Exception:
                        # The store or the link failed mid-attempt: counted as a miss, and the agent freed.
                        log.exception("callback %d: attempt %d failed", callback.id, attempt)
                        outcome = "error"
                finally:
                    self._calling.discard(callback.id)
                self.counted(outcome)
                if outcome == ANSWERED:
                    await self.store.callbacks.finish(callback.id, DONE, ANSWERED)
                    return
                log.info("callback %d: attempt %d of %d not answered (%s)", callback.id, attempt,
                         self.cfg.attempts, outcome, extra={"event": "callback_missed", "callback": callback.id,
                                                           "reason": outcome})
                if attempt >= self.cfg.attempts:
                    await self.acd.submit("leave", key=entry.key, reason="callback_unreached")
                    await self._unreached(callback, attempt, outcome)
                    return
                await self.acd.submit("callback_missed", key=entry.key, agent_id=agent.id,
                                      retry_s=self.cfg.retry_after_s)
                await self.store.callbacks.retry(callback.id, time.time() + self.cfg.retry_after_s, outcome)
        except NotQueued:
            # Its entry left the queue without it (this host was taken for lost): queued again at the next start.
            log.warning("callback %d is no longer queued", callback.id, extra={"event": "callback_dropped"})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("callback %d failed; it stays stored and is queued again at the next start", callback.id)

    async def _unreached(self, callback: Callback, attempts: int, outcome: str) -> None:
        """Every attempt failed: the matter is still a case, saying so."""
        subject, on_behalf_of = Session(caller=callback.caller, subject=callback.subject).parties()
        summary = UNREACHED_SUMMARY.format(attempts=attempts)
        try:
            if callback.call_id is None:
                raise Conflict("no call to file it under")
            case = await self.store.open_call_case(callback.call_id, subject, on_behalf_of)
        except Conflict:
            case = await self.store.create_case(None, "received", subject.national_id, subject.source,
                                                id_status=subject.status, caller=on_behalf_of)
        await self.store.add_case_event(case.id, "system", "callback_unreached", attempts=attempts, last=outcome,
                                        summary=summary, topic=callback.topic)
        await self.store.callbacks.finish(callback.id, UNREACHED, outcome, case.id)
        self.counted("unreached")
        log.info("callback %d not reached after %d attempts; case opened", callback.id, attempts,
                 extra={"event": "callback_unreached", "callback": callback.id})
