"""Control process: supervises the SIP front and media workers, runs the IVR and the case store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from ivr.call_flow import CallFlow, FollowUp, Live, Session
from ivr.channel import RecordingResult
from ivr.follow_up import CaseStatus, FailureThrottle, agency_prompt
from ivr.live import LiveService
from media.prompts import PromptLibrary
from media.recognizer import AsyncRecognizer, load_recognizer
from media.synth import load_synthesizer
from softswitch import protocol
from softswitch.config import Config, load_prompt_texts
from softswitch.control import sipfront
from softswitch.control.calls import ControlCall, WorkerLink
from softswitch.control.capacity import WorkerPlan, plan_workers
from softswitch.control.desk import ControlDesk
from softswitch.control.processes import ExecChild, ProcessSupervisor, worker_command
from softswitch.control.routing import Accept, CallFacts, caller_number, route
from softswitch.domain.acd import Acd
from softswitch.domain.office_hours import OfficeHours
from softswitch.worker.engine import EngineInfo, probe
from softswitch.worker.settings import WorkerSettings
from storage.crypto import IdProtector
from storage.errors import NotFound
from storage.models import PersonId
from storage.store import Store, open_store

log = logging.getLogger("softswitch.control")


class StoreCaseSink:
    """The IVR's view of the store for one call."""

    def __init__(self, store: Store, call_id: int) -> None:
        self.store = store
        self.call_id = call_id

    async def keep_recording(self, result: RecordingResult) -> None:
        await self.store.add_recording(self.call_id, None, result.kind, str(result.path), result.duration_s,
                                       result.sha256, result.complete)

    async def open_case(self, subject: PersonId, caller: PersonId | None, complete: bool) -> str:
        case = await self.store.open_call_case(self.call_id, subject, caller, complete=complete)
        await self.store.attach_recordings(self.call_id, case.id)
        return case.tracking_code


class StoreFollowUp:
    """The follow-up's view of the store: a case's status, only for its subject or submitter."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def status_for(self, tracking_code: str, national_id: str) -> CaseStatus | None:
        try:
            case = await self.store.get_case(tracking_code)
        except NotFound:
            return None
        if not await self.store.person_matches(case.id, national_id):
            return None
        return CaseStatus(case.status, case.agency, Path(case.answer_audio) if case.answer_audio else None)


class Softswitch:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.links: list[WorkerLink] = []
        self.flows: set[asyncio.Task[None]] = set()
        self.children = ProcessSupervisor(config.workers.restart_backoff_s)
        self.draining = False
        # Workers that have said hello at least once, and whether the front has had
        # them all in service once: until then the switch is starting.
        self.greeted: set[int] = set()
        self.started = False
        # Known once the engine has been asked what it holds (the first thing run() does).
        self.engine: EngineInfo | None = None
        self.plan: WorkerPlan | None = None
        self.stopped = asyncio.Event()
        self.run_dir = config.under_data(Path("run"))
        self.front = sipfront.FrontRpc(self.run_dir / "kamailio")
        self.recognizer: AsyncRecognizer | None = None
        # Agencies are named in follow-up answers: their names are prompts too.
        texts = load_prompt_texts(config.prompts.texts) | {agency_prompt(a.id): a.name for a in config.agencies}
        self.prompts = PromptLibrary(texts, config.prompt_cache, config.prompts.override_dir,
                                     voice=config.prompts.voice)
        self.synthesizer = load_synthesizer(config.prompts.synthesizer)

    # -- lifecycle ---------------------------------------------------------
    async def run(self) -> None:
        cfg = self.config
        for directory in (cfg.data_dir, cfg.recordings_path, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self.engine = engine = await loop.run_in_executor(None, probe)
        self.plan = plan = plan_workers(cfg.workers, engine, sip_port=cfg.sip.port, agents=len(cfg.agents.accounts))
        log.info("engine pjsua2 %s holds %d calls per process: %d workers x %d calls, the front sends each %d",
                 engine.version, engine.max_calls, plan.count, plan.max_calls, plan.dispatch_limit)
        # The model is loaded and its vocabulary checked once, before any call.
        recognizer = await loop.run_in_executor(None, load_recognizer, cfg.recognizer.model_dir)
        self.recognizer = AsyncRecognizer(recognizer) if recognizer is not None else None
        await loop.run_in_executor(None, self.prompts.ensure)
        protector = IdProtector.from_key_file(cfg.under_data(cfg.security.id_key_file))
        async with open_store(cfg.database_path, protector) as store:
            self.store = store
            await self._close_orphaned_calls()
            self.acd = Acd(cfg.agents, cfg.queue)
            self.desk = ControlDesk(cfg, store, self.acd, self.prompts)
            self.live = self._live_mode()
            self.follow_up = FollowUp(StoreFollowUp(store), cfg.follow_up,
                                      FailureThrottle(cfg.follow_up.max_failures, cfg.follow_up.failure_window_s))
            socket_path = cfg.control_socket
            socket_path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._serve_worker, path=str(socket_path))
            runner = await self._start_http()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, lambda: asyncio.ensure_future(self.drain()))
            self._start_children(plan)
            watch = asyncio.create_task(self._watch_registrations()) if cfg.agents.accounts else None
            log.info("softswitch up: SIP %s:%d, HTTP %s:%d, %d workers", cfg.sip.listen, cfg.sip.port,
                     cfg.http.host, runner.addresses[0][1] if runner.addresses else cfg.http.port,
                     plan.count)
            await self.stopped.wait()
            if watch is not None:
                watch.cancel()
            server.close()
            await runner.cleanup()
            await self.desk.close()
            self.acd.close()

    def _live_mode(self) -> Live | None:
        """Live mode exists once agents are configured; office hours and logins decide when it is offered."""
        cfg = self.config
        if not cfg.agents.accounts:
            return None
        front = f"[{cfg.sip.listen}]" if ":" in cfg.sip.listen else cfg.sip.listen
        service = LiveService(self.acd, self.desk, cfg.queue, cfg.agents.ring_timeout_s,
                              agent_uri=lambda agent_id: f"sip:{agent_id}@{front}:{cfg.sip.port}")
        return Live(service, OfficeHours.from_config(cfg.office_hours))

    def _start_children(self, plan: WorkerPlan) -> None:
        cfg = self.config
        w = cfg.workers
        kamailio_dir = self.run_dir / "kamailio"
        argv = sipfront.command(cfg, sipfront.render(cfg, plan, kamailio_dir), kamailio_dir)
        self.children.add("kamailio", lambda: ExecChild.start(argv))
        for i, port in enumerate(sipfront.worker_sip_ports(cfg, plan)):
            settings = WorkerSettings(
                worker_id=i, sip_host=w.host, sip_port=port, rtp_port=w.rtp_base_port + i * plan.rtp_ports_per_worker,
                rtp_port_range=plan.rtp_ports_per_worker, control_socket=cfg.control_socket, poll_ms=w.poll_ms,
                max_calls=plan.max_calls, recycle_after_calls=plan.recycle_after_calls,
                rtp_timeout_s=cfg.sip.rtp_timeout_s, session_expires_s=cfg.sip.session_expires_s)
            self.children.add(f"worker{i}", functools.partial(ExecChild.start, worker_command(settings)))

    async def drain(self) -> None:
        """Stop taking calls, let running ones finish (bounded), keep every recording, then stop."""
        if self.draining:
            return
        self.draining = True
        self.children.hold()
        log.info("draining: %d calls running", len(self.flows))
        for link in self.links:
            link.send(protocol.Drain())
        if self.flows:
            _, pending = await asyncio.wait(self.flows, timeout=self.config.drain_timeout_s)
            for link in self.links:
                for call in list(link.calls.values()):
                    link.send(protocol.HangupCall(call.handle))
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self.children.stop()
        self.stopped.set()

    async def _close_orphaned_calls(self) -> None:
        """Calls left open by a previous crash of the control process: close their CDRs."""
        for call in await self.store.unfinished_calls():
            await self.store.end_call(call.id, time.time(), "interrupted", call.ivr_path)

    # -- workers -----------------------------------------------------------
    async def _serve_worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = WorkerLink(writer)
        self.links.append(link)
        try:
            while line := await reader.readline():
                try:
                    event = protocol.decode_event(line)
                except ValueError as exc:
                    log.error("worker %s sent a bad event: %s", link.worker_id, exc)
                    continue
                self._on_event(link, event)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            link.connected = False
            self.links.remove(link)
            if link.worker_id is not None and not self.draining:
                # Until it answers the front's probe again, no call is offered to it.
                asyncio.ensure_future(self._take_out(link.worker_id))
            if link.calls:
                log.error("worker %s lost with %d calls", link.worker_id, len(link.calls))
            for call in list(link.calls.values()):
                call.on_ended("media lost")
            writer.close()

    async def _watch_registrations(self) -> None:
        """Agents' reachability follows the front's registrations (usrloc drops a phone that stops answering)."""
        failing = False
        while True:
            try:
                self.acd.set_registered(await self.front.registered_users())
                failing = False
            except sipfront.FrontRpcError as exc:
                if not failing:
                    log.warning("cannot read the front's registrations: %s", exc)
                failing = True
            await asyncio.sleep(self.config.agents.registration_poll_s)

    async def _take_out(self, worker_id: int) -> None:
        try:
            await self.front.take_out(sipfront.worker_uri(self.config, worker_id))
        except sipfront.FrontRpcError as exc:
            log.warning("could not take worker %d out of the front: %s", worker_id, exc)

    def _on_event(self, link: WorkerLink, event: protocol.Event) -> None:
        match event:
            case protocol.Hello(worker_id=worker_id, pid=pid, max_calls=max_calls):
                link.worker_id, link.pid, link.max_calls = worker_id, pid, max_calls
                self.greeted.add(worker_id)
                if self.draining:
                    link.send(protocol.Drain())
            case protocol.Capacity(max_calls=max_calls):
                link.max_calls = max_calls
                log.info("worker %s holds at most %d calls", link.worker_id, max_calls)
            case protocol.Incoming():
                self._flow(self._handle_call(link, event))
            case protocol.Refused():
                self._flow(self._record_refused(link, event))
            case _:
                call = link.calls.get(getattr(event, "call", ""))
                if call is not None:
                    call.on_event(event)
                    if isinstance(event, protocol.Hangup):
                        link.calls.pop(call.handle, None)

    def _flow(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.flows.add(task)
        task.add_done_callback(self.flows.discard)

    async def _record_refused(self, link: WorkerLink, event: protocol.Refused) -> None:
        """Every INVITE leaves a CDR row, also one the worker's library refused (e.g. 488, no common codec)."""
        now = time.time()
        try:
            call_id = await self.store.add_call(event.sip_call_id, event.from_uri, event.to_uri, event.source,
                                                link.worker_id, now)
            await self.store.end_call(call_id, now, f"rejected_{event.status_code}", [])
        except Exception:
            log.exception("cannot record the refused call %s", event.sip_call_id)

    async def _handle_call(self, link: WorkerLink, event: protocol.Incoming) -> None:
        handle = event.call
        facts = CallFacts(to_uri=event.request_uri or event.to_uri, from_uri=event.from_uri, source=event.source)
        call_id = await self.store.add_call(event.sip_call_id, facts.from_uri, event.to_uri, facts.source,
                                            link.worker_id, time.time())
        call = ControlCall(link, handle, call_id, self.config.recordings_path)
        link.calls[handle] = call
        destination = route(facts, self.config.sip.service_number, self.config.sip.trunk_allow)
        if not isinstance(destination, Accept):
            link.send(protocol.Reject(handle, destination.status_code))
            await call.ended_event.wait()
            await self.store.end_call(call_id, time.time(), f"rejected_{destination.status_code}", [])
            return
        link.send(protocol.Answer(handle))
        session = Session()
        try:
            if await call.wait_answered(self.config.ivr.answer_timeout_s):
                await self.store.answer_call(call_id, time.time())
                flow = CallFlow(call, self.prompts, StoreCaseSink(self.store, call_id), self.config.ivr,
                                label=handle, recognizer=self.recognizer, live=self.live,
                                caller_number=caller_number(facts.from_uri), follow_up=self.follow_up)
                session = flow.session
                self.desk.track(handle, call_id, flow.caller_number, session)
                await flow.run()
                if session.message is not None and session.tracking_code is not None:
                    self.acd.count_recorded()
            elif not call.ended:
                log.warning("%s: not confirmed within %.1fs", handle, self.config.ivr.answer_timeout_s)
        finally:
            self.desk.untrack(handle)
            if not call.ended:
                await call.hangup()
            await self.store.end_call(call_id, time.time(), _disposition(call, session), session.path)

    async def _start_http(self) -> web.AppRunner:
        from softswitch.web.app import build_app

        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.http.host, self.config.http.port)
        await site.start()
        return runner

    async def health(self) -> dict[str, Any]:
        """``starting`` until every worker has said hello and the front has them all in service;
        ``degraded`` while one is down or out of the front's service afterwards."""
        workers = {link.worker_id: link for link in self.links if link.worker_id is not None}
        engine = self.engine
        expected = self.plan.count if self.plan is not None else None
        try:
            in_service: set[str] | None = await self.front.active_workers()
        except sipfront.FrontRpcError:
            in_service = None  # the front is down (or not up yet)
        serving = {worker_id for worker_id in workers
                   if in_service is not None and sipfront.worker_uri(self.config, worker_id) in in_service}
        complete = expected is not None and len(serving) >= expected and len(self.greeted) >= expected
        if complete:
            self.started = True
        if self.draining:
            status = "draining"
        elif not self.started:
            status = "starting"
        else:
            status = "ok" if complete else "degraded"
        return {
            "status": status,
            "active_calls": sum(len(link.calls) for link in self.links),
            "engine": {"version": engine.version, "max_calls": engine.max_calls} if engine else None,
            "front": "up" if in_service is not None else "down",
            "workers_expected": expected,
            "workers": [{
                "id": worker_id, "pid": link.pid, "max_calls": link.max_calls, "calls": len(link.calls),
                "in_service": worker_id in serving,
            } for worker_id, link in sorted(workers.items())],
            "restarts": self.children.restarts(),
        }


def _disposition(call: ControlCall, session: Session) -> str:
    if not call.answered.is_set():
        return "unanswered"
    if call.end_reason == "media lost":
        return "worker_lost"
    if session.ended_by is not None:
        return "caller_hangup"
    return "completed"


def serve(config: Config) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s control %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Softswitch(config).run())
