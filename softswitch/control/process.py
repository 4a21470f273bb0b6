"""Control process: supervises the SIP front and media workers, runs the IVR and the case store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from ivr.call_flow import CallbackTurn, CallFlow, FollowUp, Live, Session
from ivr.channel import RecordingResult
from ivr.follow_up import CaseStatus, FailureThrottle
from ivr.live import LiveService
from ivr.survey import Survey, SurveyTopic
from ivr.sms_offer import SmsOffer
from media.recognizer import AsyncRecognizer, load_recognizer
from media.synth import load_synthesizer
from media.wavfile import repair_wav
from softswitch import logs, protocol
from softswitch.config import Config
from softswitch.control import sipfront
from softswitch.control.callbacks import ANSWERED, CallbackService
from softswitch.control.admin import AdminError, serve_admin
from softswitch.control.calls import ControlCall, WorkerLink
from softswitch.control.capacity import WorkerPlan, plan_workers
from softswitch.control.cluster import ClusterMember, cluster_hosts
from softswitch.control.day_journal import DayJournal
from softswitch.control.desk import ControlDesk
from softswitch.control.languages import prompt_libraries
from softswitch.control.metrics import Metrics, front_statistics
from softswitch.control.recording_copy import RecordingCopier
from softswitch.control.processes import ExecChild, ProcessSupervisor, stop_leftovers, worker_command
from softswitch.control.retention import RetentionJob
from softswitch.control.sms import SmsSender, StoreSmsRequests
from softswitch.control.shared_acd import ReplicatedAcd
from softswitch.control.routing import Accept, CallFacts, Reject, caller_number, dialled_number, route
from softswitch.domain.acd import Acd, AgentStatus, QueueEntry, mask_number
from softswitch.domain.office_hours import OfficeHours
from softswitch.domain.tracking_code import code_tail
from softswitch.worker.engine import EngineInfo, probe
from softswitch.worker.settings import WorkerSettings
from storage.crypto import IdProtector
from storage.errors import Conflict, NotFound, StoreError
from storage.callbacks import Callback
from storage.models import CallRecord, HostRecord, PersonId, Recording, TakeOver
from storage.reports import rating_day
from storage.store import Store, open_store

log = logging.getLogger("softswitch.control")


class StoreCaseSink:
    """The IVR's view of the store for one call."""

    def __init__(self, store: Store, call_id: int, metrics: Metrics, kept: Callable[[Recording], None]) -> None:
        self.store = store
        self.call_id = call_id
        self.metrics = metrics
        self.kept = kept

    async def keep_recording(self, result: RecordingResult) -> None:
        recording = await self.store.add_recording(self.call_id, None, result.kind, str(result.path),
                                                   result.duration_s, result.sha256, result.complete)
        size = await asyncio.to_thread(_file_size, result.path)
        self.metrics.recording_kept(result.kind, result.duration_s, result.complete, size, result.reason)
        self.kept(recording)

    async def open_case(self, subject: PersonId, caller: PersonId | None, complete: bool) -> str:
        case = await self.store.open_call_case(self.call_id, subject, caller, complete=complete)
        await self.store.attach_recordings(self.call_id, case.id)
        return case.tracking_code


class StoreRatings:
    """The survey's view of the store for one call: its one rating, filed with the case it was about."""

    def __init__(self, store: Store, call_id: int, metrics: Metrics, tz: tzinfo) -> None:
        self.store = store
        self.call_id = call_id
        self.metrics = metrics
        self.tz = tz

    async def keep_rating(self, topic: SurveyTopic, score: int) -> None:
        case = None
        if topic.tracking_code is not None:
            with contextlib.suppress(NotFound):
                case = await self.store.get_case(topic.tracking_code)
        at = time.time()
        # The hotline's date, so that "today" and the reports' days are the agents' days.
        kept = await self.store.add_rating(self.call_id, topic.kind, score, at=at, day=rating_day(at, self.tz),
                                           case_id=case.id if case else None, agent_id=topic.agent_id,
                                           agency=case.agency if case else None)
        if kept:
            self.metrics.survey_rated(score)
        log.info("survey: rated %d after %s%s", score, "the agent's call" if topic.kind == "agent" else "a follow-up",
                 "" if kept else " (the call was rated already: kept the first)",
                 extra={"event": "survey_rating", "kind": topic.kind, "score": score, "agent": topic.agent_id})


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


# How far this host's clock may be off the database's when its calls are looked up by a time of the database.
CLOCK_MARGIN_S = 60.0
# A message's start is written before the tape gets far; a store slower than this is logged, the call goes on.
TAPE_START_WRITE_S = 2.0

# How long `softswitch hangup` waits for the call's CDR to be closed before it answers.
ADMIN_HANGUP_WAIT_S = 10.0


@dataclass
class ActiveCall:
    """A caller's call from its routing to its closed CDR, as the admin socket lists it."""

    call: ControlCall
    sip_call_id: str
    caller_number: str
    arrived_at: float
    session: Session
    disposition: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Softswitch:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.links: list[WorkerLink] = []
        # Callers' calls by CDR id (agents' legs are not listed: they are part of their caller's call).
        self.active: dict[int, ActiveCall] = {}
        self.flows: set[asyncio.Task[Any]] = set()
        self.draining = False
        # Workers that have said hello at least once, and whether the front has had
        # them all in service once: until then the switch is starting.
        self.greeted: set[int] = set()
        self.started = False
        # What keeps the switch from keeping a new call (a full disk, a failing store): while
        # there is any, workers refuse new calls with 503 and health says degraded.
        self.troubles: list[str] = []
        self.metrics = Metrics(self._live_state)
        self.front_statistics: dict[str, dict[str, float]] = {}  # Kamailio's, as of the last scrape
        # Known once the engine has been asked what it holds (the first thing run() does).
        self.engine: EngineInfo | None = None
        self.plan: WorkerPlan | None = None
        self.stopped = asyncio.Event()
        self.run_dir = config.run_dir
        self.children = ProcessSupervisor(config.workers.restart_backoff_s, pid_dir=self.run_dir)
        self.front = sipfront.FrontRpc(self.run_dir / "kamailio")
        self.recognizer: AsyncRecognizer | None = None
        # Copies closed recordings to the shared directory, when one is configured.
        self.copier: RecordingCopier | None = None
        # Sends the SMS outbox, when a gateway is configured.
        self.sms_sender: SmsSender | None = None
        # Makes the callbacks callers book, when queue.callback is enabled (and agents are configured).
        self.callbacks: CallbackService | None = None
        # This host among others on one PostgreSQL store; None with SQLite (one host).
        self.host = config.cluster.host_name
        self.cluster: ClusterMember | None = None
        # Every offered language's prompts; the first language's serve what is not a call's own.
        self.languages = prompt_libraries(config)
        self.prompts = self.languages[config.prompts.language]
        self.synthesizer = load_synthesizer(config.prompts.synthesizer)

    # -- lifecycle ---------------------------------------------------------
    async def run(self) -> None:
        cfg = self.config
        for directory in (cfg.data_dir, cfg.recordings_path, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        # A crashed run's front and workers are still running (own sessions) and hold the ports.
        await loop.run_in_executor(None, stop_leftovers, self.run_dir)
        _require_free_udp_port(cfg.sip.listen, cfg.sip.port)
        _require_short_socket_paths(cfg.control_socket.absolute(), cfg.admin_socket.absolute(),
                                    sipfront.rpc_socket(self.run_dir / "kamailio").absolute())
        self.engine = engine = await loop.run_in_executor(None, probe)
        self.plan = plan = plan_workers(cfg.workers, engine, sip_port=cfg.sip.port, agents=len(cfg.agents.accounts))
        log.info("engine pjsua2 %s holds %d calls per process: %d workers x %d calls, the front sends each %d",
                 engine.version, engine.max_calls, plan.count, plan.max_calls, plan.dispatch_limit)
        # The model is loaded and its vocabulary checked once, before any call.
        recognizer = await loop.run_in_executor(None, load_recognizer, cfg.recognizer.model_dir)
        self.recognizer = AsyncRecognizer(recognizer) if recognizer is not None else None
        for library in self.languages.values():
            await loop.run_in_executor(None, library.ensure)
        protector = IdProtector.from_key_file(cfg.under_data(cfg.security.id_key_file))
        async with open_store(cfg.store_target, protector) as store:
            self.use_store(store)
            if isinstance(self.acd, ReplicatedAcd):
                await self.acd.start()  # the shared queue as the other hosts have it (their day included)
            else:
                await self.day_journal.restore(self.acd)
            before = await self._join_cluster(store)
            await self._close_orphaned_calls()
            if before is not None and before.taken_over_by is not None:
                await self._keep_taken_over_tapes(before)
            if cfg.recordings_store.shared_dir is not None:
                # Started before any call, with the orphans' tapes stored: what waits now is the backlog.
                self.copier = RecordingCopier(store, cfg.recordings_store, cfg.recordings_path, self.metrics)
                backlog = await self.copier.start()
                log.info("recordings are copied to %s as host %s; %d waiting from before", cfg.recordings_store.
                         shared_dir, cfg.recordings_store.host_name, backlog)
            socket_path = cfg.control_socket
            socket_path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._serve_worker, path=str(socket_path))
            admin = await serve_admin(self, cfg.admin_socket)
            runner = await self._start_http()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, lambda: asyncio.ensure_future(self.drain()))
            self._start_children(plan)
            if self.callbacks is not None:
                await self.callbacks.resume()
            watch = asyncio.create_task(self._watch_registrations()) if cfg.agents.accounts else None
            health_watch = asyncio.create_task(self._watch_health())
            retention = RetentionJob.start(cfg, store, self.metrics)  # None while the config keeps everything
            self.sms_sender = SmsSender.start(cfg.sms, store, self.metrics)  # None without a gateway
            log.info("softswitch up: SIP %s:%d, HTTP %s:%d, %d workers", cfg.sip.listen, cfg.sip.port,
                     cfg.http.host, runner.addresses[0][1] if runner.addresses else cfg.http.port,
                     plan.count)
            await self.stopped.wait()
            health_watch.cancel()
            if retention is not None:
                retention.cancel()
            if watch is not None:
                watch.cancel()
            server.close()
            admin.close()
            cfg.admin_socket.unlink(missing_ok=True)
            await runner.cleanup()
            await self.desk.close()
            self.acd.close()
            await self.day_journal.close()
            if self.copier is not None:
                await self.copier.close()
            if self.sms_sender is not None:
                await self.sms_sender.close()
            if self.cluster is not None:
                # Drained with every call's CDR closed: nothing for a survivor to do. Else it is taken over.
                await self.cluster.close(leave=not self.flows)

    async def _join_cluster(self, store: Store) -> HostRecord | None:
        """On PostgreSQL: this host's heartbeat and the watch over the others start; its row as it was."""
        cfg = self.config
        if cfg.database_url is None:
            log.info("cluster: off, one host (the SQLite store is this host's own)")
            return None
        shared = cfg.recordings_store
        self.cluster = ClusterMember(store, cfg.cluster, cfg.recordings_path, shared.shared_dir,
                                     shared.host_name, taken_over=self._host_taken_over,
                                     console_url=cfg.console_url)
        before = await self.cluster.join()
        self.cluster.start()
        log.info("cluster: host %s on the shared store, a heartbeat every %g s; a host silent for %g s is "
                 "taken over", self.host, cfg.cluster.heartbeat_s, cfg.cluster.host_timeout_s)
        return before

    async def _host_taken_over(self, done: TakeOver) -> None:
        """This host took a dead one over: counted, and its callers and agents are freed in the shared queue."""
        self.metrics.host_taken_over()
        if isinstance(self.acd, ReplicatedAcd):
            gone = await self.acd.take_over(done.host.name)
            log.warning("host %s: %d of its callers left the shared queue", done.host.name, gone)
        if self.callbacks is not None:
            # Its callers waiting for a callback keep it: this host makes the calls.
            await self.callbacks.adopt(done.host.name)

    def _recording_kept(self, recording: Recording) -> None:
        """A recording's row is stored, its tape closed: on to the shared directory, if there is one."""
        if self.copier is not None:
            self.copier.submit(recording)

    def use_store(self, store: Store) -> None:
        """The parts of the switch that work on the case store: the queue, the agents' desk, the flows' services."""
        cfg = self.config
        self.store = store
        store.observe = self.metrics.store_operation
        # The facts the day's queue figures count are kept, by host, so that a restart shows them again.
        self.day_journal = DayJournal(store.acd_days, self.host)
        self.day_journal.start()
        # On PostgreSQL every host's queue is one: the ACD is replicated through the store.
        skills = cfg.agent_skills
        self.acd = (ReplicatedAcd(cfg.agents, cfg.queue, store.acd_changes, self.host, journal=self.day_journal.record,
                                  skills=skills)
                    if cfg.database_url is not None else
                    Acd(cfg.agents, cfg.queue, journal=self.day_journal.record, skills=skills))
        self.desk = ControlDesk(cfg, store, self.acd, self.prompts, self.metrics.intake_filed, self._recording_kept,
                                agent_uri=self._agent_uri, host=self.host, languages=self.languages)
        if cfg.queue.callback.enabled and cfg.agents.accounts:
            self.callbacks = CallbackService(cfg.queue.callback, store, self.acd, self.host, self._place_callback,
                                             self.desk.call_id_of, can_place=lambda: self._callback_worker() is not None,
                                             counted=self.metrics.callback_event)
        self.live = self._live_mode()
        self.sms_offer = self._sms_offer()
        # The throttle counts each call's source too (its CDR's): the From user is the caller's to choose.
        self.follow_up = FollowUp(StoreFollowUp(store), cfg.follow_up, FailureThrottle(
            store.counters, cfg.follow_up.max_failures, cfg.follow_up.failure_window_s,
            cdr_of=lambda channel: store.get_call(channel.call_id if isinstance(channel, ControlCall) else 0)))

    def _sms_offer(self) -> SmsOffer | None:
        """The IVR offers the SMS of a tracking code only with a gateway configured and the offer on."""
        cfg = self.config
        if not cfg.sms.offered:
            return None
        return SmsOffer(StoreSmsRequests(self.store, cfg.sip.service_number, self._wake_sms), cfg.sms.offer_wait_s)

    def _wake_sms(self) -> None:
        """A message was queued on this host: the sender need not wait for its next poll."""
        if self.sms_sender is not None:
            self.sms_sender.wake()

    def _agent_uri(self, agent_id: str) -> str:
        """An agent's (or a supervisor's) phones, rung through the front from a worker."""
        return f"sip:{agent_id}@{sip_address(self.config.sip.listen, self.config.sip.port)}"

    def _live_mode(self) -> Live | None:
        """Live mode exists once agents are configured; office hours and logins decide when it is offered."""
        cfg = self.config
        if not cfg.agents.accounts:
            return None
        service = LiveService(self.acd, self.desk, cfg.queue, cfg.agents.ring_timeout_s, agent_uri=self._agent_uri,
                              host=self.host, callbacks=self.callbacks, ivr=cfg.ivr,
                              agency_lines={a.phone: a.id for a in cfg.agencies if a.phone is not None})
        return Live(service, OfficeHours.from_config(cfg.office_hours), open_case=self.store.has_open_case)

    def _start_children(self, plan: WorkerPlan) -> None:
        cfg = self.config
        w = cfg.workers
        kamailio_dir = self.run_dir / "kamailio"
        argv = sipfront.command(cfg, sipfront.render(cfg, plan, kamailio_dir), kamailio_dir)
        self.children.add("kamailio", lambda: ExecChild.start(argv), marker=str(kamailio_dir))
        for i, port in enumerate(sipfront.worker_sip_ports(cfg, plan)):
            settings = WorkerSettings(
                worker_id=i, sip_host=w.host, sip_port=port, rtp_port=w.rtp_base_port + i * plan.rtp_ports_per_worker,
                rtp_port_range=plan.rtp_ports_per_worker, control_socket=cfg.control_socket, poll_ms=w.poll_ms,
                max_calls=plan.max_calls, recycle_after_calls=plan.recycle_after_calls,
                rtp_timeout_s=cfg.sip.rtp_timeout_s, session_expires_s=cfg.sip.session_expires_s,
                front=sip_address(cfg.sip.listen, cfg.sip.port), apology=str(self.prompts.path("control_lost")),
                transfer_targets=(*(a.id for a in cfg.agents.accounts),
                                  *(a.phone for a in cfg.agencies if a.phone is not None)),
                log_format=cfg.logging.format, log_level=cfg.logging.level)
            self.children.add(f"worker{i}", functools.partial(ExecChild.start, worker_command(settings)),
                              marker=f"--control-socket {cfg.control_socket} ")

    async def drain(self) -> None:
        """Stop taking calls, let running ones finish (bounded), keep every recording, then stop."""
        if self.draining:
            return
        self.draining = True
        self.children.hold()
        if self.callbacks is not None:
            await self.callbacks.close()  # stored: queued again at the next start
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
        """Calls left open by a crash of this host's control process (with several hosts, only this host's:
        another's are its own or its survivor's to close). Their workers ended them, but the tapes are
        on disk: each is finished and kept with its CDR, a message cut short becomes a case (without an
        ID: that was in the lost process's memory; a spoken ID's tape goes with it), as after a worker
        loss, and the CDR is closed as interrupted."""
        for call in await self.store.unfinished_calls(self.host if self.cluster is not None else None):
            with logs.call_context(logs.CallContext(call.sip_call_id, call.id, call.worker_id)):
                await self._close_orphaned_call(call)

    async def _close_orphaned_call(self, call: CallRecord) -> None:
        kinds = await self._keep_local_tapes(call)
        case = await self.store.case_for_call(call.id)
        if case is not None:
            await self.store.attach_recordings(call.id, case.id)
        elif "message" in kinds or call.message_started_at is not None:
            case = await self.store.open_cut_message_case(call.id, spoken_id="national_id_utterance" in kinds,
                                                          actor="recovery")
            log.warning("its message, cut by a crash, is case %s", code_tail(case.tracking_code),
                        extra={"event": "case", "tracking_code_tail": code_tail(case.tracking_code)})
        await self._end_call(call.id, "interrupted", call.ivr_path, started_at=call.arrived_at)

    async def _keep_taken_over_tapes(self, before: HostRecord) -> None:
        """This host was taken over while it was down: the survivor closed its calls and filed their cases
        without the tapes on this disk. They are here: each is finished and kept with its call's case."""
        # Its calls since that run's start (the database's clock; this host's may be a little off).
        calls = await self.store.calls_lost_with_host(self.host, since=before.started_at - CLOCK_MARGIN_S)
        kept = 0
        for call in calls:
            with logs.call_context(logs.CallContext(call.sip_call_id, call.id, call.worker_id)):
                stored = len(await self.store.recordings_for_call(call.id))
                await self._keep_local_tapes(call)
                kept += len(await self.store.recordings_for_call(call.id)) - stored
                case = await self.store.case_for_call(call.id)
                if case is not None:
                    await self.store.attach_recordings(call.id, case.id)
        log.warning("host %s had been taken over by %s: %d of its calls were closed as host_lost; %d tapes of "
                    "them kept from this disk", self.host, before.taken_over_by, len(calls), kept)

    async def _keep_local_tapes(self, call: CallRecord) -> set[str]:
        """Store the call's tapes found on this host's disk that have no row yet (repaired first: their
        writer may have died); the kinds of all its tapes found here."""
        loop = asyncio.get_running_loop()
        # By name: a stored tape may already be in the shared directory (its local file not yet removed).
        stored = {Path(r.path).name for r in await self.store.recordings_for_call(call.id)}
        kinds = set()
        # ControlCall names them recordings/<yyyy/mm/dd>/call<CDR id>-<recording>-<kind>.wav.
        for path in sorted(self.config.recordings_path.glob(f"**/call{call.id}-*-*.wav")):
            kind = path.stem.split("-", 2)[2]
            kinds.add(kind)
            if path.name in stored:
                continue
            try:
                info = await loop.run_in_executor(None, repair_wav, path)
            except (OSError, ValueError) as exc:
                log.error("call %d: recording %s cannot be read: %s", call.id, path, exc)
                continue
            await self.store.add_recording(call.id, None, kind, str(path), info.duration_s, info.sha256,
                                           complete=False)
        return kinds

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
        """Agents' reachability follows the front's registrations (usrloc drops a phone that stops answering);
        with a PostgreSQL store, every host's front's, read from the table they share."""
        shared = self.config.database_url is not None
        failing = False
        while True:
            try:
                registered = (await self.store.registered_sip_users(time.time()) if shared
                              else await self.front.registered_users())
                if self.acd.registration_changes(registered):
                    await self.acd.submit("set_registered", agent_ids=sorted(registered))
                failing = False
            except (sipfront.FrontRpcError, StoreError) as exc:
                if not failing:
                    log.warning("cannot read the front's registrations: %s", exc)
                failing = True
            await asyncio.sleep(self.config.agents.registration_poll_s)

    async def _watch_health(self) -> None:
        """Stop taking calls the switch could not keep, loudly; take them again once it can."""
        cfg = self.config.health
        while True:
            troubles = await self._check_resources()
            if troubles != self.troubles:
                if troubles:
                    log.error("not taking new calls (503 to the trunks): %s", "; ".join(troubles))
                else:
                    log.warning("taking new calls again")
                if bool(troubles) != bool(self.troubles):
                    for link in self.links:
                        if link.worker_id is not None:
                            link.send(protocol.Admit(accept=not troubles))
                self.troubles = troubles
            await asyncio.sleep(cfg.check_interval_s)

    async def _check_resources(self) -> list[str]:
        cfg = self.config
        troubles = []
        for what, directory in (("data", cfg.data_dir), ("recordings", cfg.recordings_path)):
            try:
                free_mb = shutil.disk_usage(directory).free / 2**20
            except OSError as exc:
                troubles.append(f"{what} directory {directory}: {exc.strerror}")
                continue
            if free_mb < cfg.health.min_free_mb:
                troubles.append(f"{what} directory {directory}: {free_mb:.0f} MiB free, "
                                f"below health.min_free_mb {cfg.health.min_free_mb:g}")
        try:
            await self.store.probe()
        except StoreError as exc:
            troubles.append(f"case store: {exc}")
        return sorted(set(troubles))

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
                elif self.troubles:
                    link.send(protocol.Admit(accept=False))
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
        logs.bind_call(logs.CallContext(event.sip_call_id, None, link.worker_id))
        try:
            call_id = await self.store.add_call(event.sip_call_id, event.from_uri, event.to_uri, event.source,
                                                link.worker_id, now, host=self.host)
            logs.bind_call(logs.CallContext(event.sip_call_id, call_id, link.worker_id))
            log.info("call arrived from %s, refused %d by the media worker", event.source, event.status_code,
                     extra={"event": "arrival"})
            await self._end_call(call_id, f"rejected_{event.status_code}", [], started_at=now, at=now)
        except Exception:
            log.exception("cannot record the refused call %s", event.sip_call_id)

    async def _handle_call(self, link: WorkerLink, event: protocol.Incoming) -> None:
        handle = event.call
        # This task is the call's: whatever it logs, and the tasks it starts, carries the call's fields.
        logs.bind_call(logs.CallContext(event.sip_call_id, None, link.worker_id))
        facts = CallFacts(to_uri=event.request_uri or event.to_uri, from_uri=event.from_uri, source=event.source)
        arrived_at = time.time()
        try:
            call_id = await self.store.add_call(event.sip_call_id, facts.from_uri, event.to_uri, facts.source,
                                                link.worker_id, arrived_at, host=self.host)
        except StoreError as exc:
            # No CDR can be written, so neither could its case: the trunk tries elsewhere.
            log.error("%s: refused 503, the store cannot take the call: %s", handle, exc)
            link.send(protocol.Reject(handle, 503))
            return
        logs.bind_call(logs.CallContext(event.sip_call_id, call_id, link.worker_id))
        # The caller's number is in the CDR (and the Call-ID and CDR id lead there): not in the log.
        service = dialled_number(facts.to_uri) == self.config.sip.service_number
        log.info("call arrived from %s for %s", facts.source, "the service number" if service else "another number",
                 extra={"event": "arrival", "source": facts.source})
        call = ControlCall(link, handle, call_id, self.config.recordings_path,
                           tape_started=functools.partial(self._tape_started, call_id))
        link.calls[handle] = call
        destination = route(facts, self.config.sip.service_number, self.config.sip.trunk_allow)
        if self.troubles and isinstance(destination, Accept):
            destination = Reject(503, "not taking calls")  # came in before the workers were told
        if not isinstance(destination, Accept):
            log.info("routed: refused %d (%s)", destination.status_code, destination.reason,
                     extra={"event": "routed", "decision": f"reject_{destination.status_code}"})
            link.send(protocol.Reject(handle, destination.status_code))
            await call.ended_event.wait()
            await self._end_call(call_id, f"rejected_{destination.status_code}", [], started_at=arrived_at)
            return
        log.info("routed: answered, to the IVR", extra={"event": "routed", "decision": "answer"})
        link.send(protocol.Answer(handle))
        session = Session()
        active = self.active[call_id] = ActiveCall(call, event.sip_call_id, caller_number(facts.from_uri),
                                                   arrived_at, session)
        try:
            if await call.wait_answered(self.config.ivr.answer_timeout_s):
                await self.store.answer_call(call_id, time.time())
                await self._run_flow(call, handle, caller_number(facts.from_uri), active)
            elif not call.ended:
                log.warning("%s: not confirmed within %.1fs", handle, self.config.ivr.answer_timeout_s)
        finally:
            await self._close_call(active, lambda: _disposition(call, active.session), started_at=arrived_at)

    async def _run_flow(self, call: ControlCall, key: str, number: str, active: ActiveCall,
                        callback: CallbackTurn | None = None) -> None:
        """The IVR over an answered call, its case and ratings in the store; the desk knows it as ``key``,
        the admin socket as ``active`` (whose session it becomes)."""
        sink = StoreCaseSink(self.store, call.call_id, self.metrics, self._recording_kept)
        ratings = StoreRatings(self.store, call.call_id, self.metrics, ZoneInfo(self.config.office_hours.timezone))
        flow = CallFlow(call, self.prompts, sink, self.config.ivr, label=key, recognizer=self.recognizer,
                        live=self.live, caller_number=number, follow_up=self.follow_up,
                        survey=Survey(self.config.survey, ratings), sms=self.sms_offer, languages=self.languages,
                        callback=callback)
        active.session = session = flow.session
        self.desk.track(key, call.call_id, number, session)
        try:
            await flow.run()
        finally:
            self.desk.untrack(key)
        if session.message is not None and session.tracking_code is not None:
            await self.acd.submit("count_recorded")

    def _callback_worker(self) -> WorkerLink | None:
        """The worker a callback's call goes out from: the one with the most room."""
        usable = [link for link in self.links if link.connected and link.worker_id is not None
                  and (link.max_calls is None or len(link.calls) < link.max_calls)]
        return min(usable, key=lambda link: len(link.calls), default=None) if not self.draining else None

    async def _place_callback(self, callback: Callback, entry: QueueEntry, agent: AgentStatus, attempt: int) -> str:
        """One attempt of a callback: the caller rung through the front and its trunk; once answered, the flow
        from the queue on with the agent reserved for it. What it came to (callbacks.ANSWERED or why not).
        The call is one of the switch's flows: a drain waits for it."""
        task = asyncio.create_task(self._callback_call(callback, entry, agent, attempt))
        self.flows.add(task)
        task.add_done_callback(self.flows.discard)
        return await asyncio.shield(task)

    async def _callback_call(self, callback: Callback, entry: QueueEntry, agent: AgentStatus, attempt: int) -> str:
        link = self._callback_worker()
        if link is None:
            return "no_worker"
        cfg = self.config
        front = sip_address(cfg.sip.listen, cfg.sip.port)
        handle = f"{entry.key}-{attempt}"
        # The CDR's name for it (PJSIP makes the real one): unique, as the store's ids are.
        sip_call_id = f"{handle}@callback"
        uri = f"sip:{callback.number}@{front}"
        placed_at = time.time()
        logs.bind_call(logs.CallContext(sip_call_id, None, link.worker_id))
        call_id = await self.store.add_call(sip_call_id, f"sip:{cfg.sip.service_number}@{front}", uri, "callback",
                                            link.worker_id, placed_at, host=self.host)
        logs.bind_call(logs.CallContext(sip_call_id, call_id, link.worker_id))
        call = ControlCall(link, handle, call_id, cfg.recordings_path,
                           tape_started=functools.partial(self._tape_started, call_id))
        link.calls[handle] = call
        link.send(protocol.Dial(handle, uri))
        log.info("callback %d: attempt %d placed", callback.id, attempt,
                 extra={"event": "callback_call", "callback": callback.id})
        session = Session(mode="live", caller=callback.caller, subject=callback.subject, language=callback.language,
                          topic=callback.topic)
        active = self.active[call_id] = ActiveCall(call, sip_call_id, callback.number, placed_at, session)
        outcome = ANSWERED
        try:
            if await call.wait_answered(cfg.queue.callback.ring_timeout_s):
                await self.store.answer_call(call_id, time.time())
                await self.store.callbacks.connected(callback.id)
                await self._run_flow(call, entry.key, callback.number, active, CallbackTurn(entry, agent, session))
            else:
                outcome = _not_answered(call.end_status)
        finally:
            await self._close_call(active, lambda: (_disposition(call, active.session) if outcome == ANSWERED
                                                    else f"callback_{outcome}"), started_at=placed_at)
        return outcome

    async def _close_call(self, active: ActiveCall, disposition: Callable[[], str], *, started_at: float) -> None:
        """A caller's call over: hung up if it is not yet, its CDR closed with ``disposition()`` (read once the
        call has ended), and it leaves the admin socket's list."""
        if not active.call.ended:
            await active.call.hangup()
        try:
            active.disposition = disposition()
            await self._end_call(active.call.call_id, active.disposition, active.session.path,
                                 started_at=started_at)
        finally:
            del self.active[active.call.call_id]
            active.closed.set()

    async def _tape_started(self, call_id: int, kind: str) -> None:
        """A message's tape has started: the store knows it, should this host die before the tape ends."""
        if kind != "message":
            return
        try:
            await asyncio.wait_for(self.store.message_started(call_id, time.time()), TAPE_START_WRITE_S)
        except (StoreError, asyncio.TimeoutError) as exc:
            log.warning("the message's start could not be stored (%s); the call goes on",
                        exc or "no answer in time")

    async def _end_call(self, call_id: int, disposition: str, ivr_path: Sequence[str], *, started_at: float,
                        at: float | None = None) -> None:
        """The CDR closed, and the call counted."""
        ended_at = time.time() if at is None else at
        try:
            await self.store.end_call(call_id, ended_at, disposition, ivr_path)
        except Conflict:
            # This host was silent too long while the call ran, and a survivor closed its CDR as host_lost.
            log.error("hang-up: %s, but the CDR was closed already (this host was taken over)", disposition)
            return
        self.metrics.call_ended(disposition, ivr_path)
        log.info("hang-up: %s after %.1f s", disposition, max(0.0, ended_at - started_at),
                 extra={"event": "hangup", "disposition": disposition})

    def _live_state(self) -> dict[str, Any]:
        """What /metrics reads off the running switch at each scrape."""
        snapshot: dict[str, Any] = (self.acd.snapshot() if hasattr(self, "acd")
                                    else {"queue": [], "longest_wait_s": 0.0, "agents": []})
        agents: dict[str, int] = {}
        for agent in snapshot["agents"]:
            agents[agent["state"]] = agents.get(agent["state"], 0) + 1
        return {
            "calls_active": sum(len(link.calls) for link in self.links),
            "queue_length": len(snapshot["queue"]), "longest_wait_s": snapshot["longest_wait_s"],
            "agents": agents,
            "workers": {link.worker_id: len(link.calls) for link in self.links if link.worker_id is not None},
            "restarts": self.children.restarts(), "problems": len(self.troubles),
            "today": snapshot.get("today", {}), "front": self.front_statistics,
            "recordings_waiting": self.copier.waiting if self.copier else 0,
            "recordings_oldest_wait_s": self.copier.oldest_wait_s() if self.copier else 0.0,
            "sms_waiting": self.sms_sender.waiting if self.sms_sender else 0,
            "callbacks_waiting": self.callbacks.pending() if self.callbacks else 0,
            "hosts_up": self.cluster.up() if self.cluster is not None else 1,
        }

    # -- the admin socket (softswitch.control.admin.Switchboard) -------------
    async def admin_status(self) -> dict[str, Any]:
        """Like Asterisk's `core show channels` and `queue show` at once: workers, calls, queue, agents, front."""
        health = await self.health()
        try:
            entries: list[dict[str, str]] | None = [{"uri": uri, "flags": flags}
                                                     for uri, flags in await self.front.dispatcher_entries()]
        except sipfront.FrontRpcError:
            entries = None
        snapshot = self.acd.snapshot()
        return {
            "status": health["status"], "problems": health["problems"], "engine": health["engine"],
            "workers": [{**w, "state": "draining" if self.draining else
                         "in service" if w["in_service"] else "out of service"} for w in health["workers"]],
            "workers_expected": health["workers_expected"], "restarts": health["restarts"],
            "calls_active": len(self.active),
            "queue": {"length": len(snapshot["queue"]), "longest_wait_s": snapshot["longest_wait_s"],
                      "callers": [{k: e[k] for k in ("position", "caller", "waited_s", "offered_to")}
                                  for e in snapshot["queue"]]},
            "agents": [{k: a[k] for k in ("id", "name", "state", "pause_reason", "seconds_in_state", "registered")}
                       for a in snapshot["agents"]],
            "front": {"up": entries is not None, "destinations": entries or []},
        }

    def admin_calls(self) -> list[dict[str, Any]]:
        """Each caller's call in progress; the caller's number masked, as the supervisor view shows it."""
        now = time.time()
        return [{
            "cdr_id": cdr_id, "call_id": a.sip_call_id, "worker": a.call.link.worker_id,
            "age_s": round(now - a.arrived_at, 1),
            "state": a.session.state.value if a.call.answered.is_set() else "answering",
            "agent": self.desk.agent_of(a.call.handle), "caller": mask_number(a.caller_number),
        } for cdr_id, a in sorted(self.active.items())]

    async def admin_hangup(self, call: str) -> dict[str, Any]:
        """Hang up a call (by CDR id or SIP Call-ID) as a normal hang-up: the worker ends it, recordings are
        closed and kept, the flow files its case; the CDR says ``operator_hangup``."""
        found = [(cdr_id, a) for cdr_id, a in self.active.items() if str(cdr_id) == call or a.sip_call_id == call]
        if not found:
            raise AdminError(f"no call {call!r} in progress: give a CDR id or a SIP Call-ID that "
                             "`softswitch calls` lists")
        cdr_id, active = found[0]
        with logs.call_context(logs.CallContext(active.sip_call_id, cdr_id, active.call.link.worker_id)):
            log.info("hang-up asked for by an operator", extra={"event": "operator_hangup"})
        active.call.end_by_operator()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(active.closed.wait()), ADMIN_HANGUP_WAIT_S)
        return {"cdr_id": cdr_id, "call_id": active.sip_call_id, "ended": active.closed.is_set(),
                "disposition": active.disposition}

    async def metrics_text(self) -> bytes:
        try:
            self.front_statistics = front_statistics(await self.front.call("stats.get_statistics", "all"))
        except sipfront.FrontRpcError:
            self.front_statistics = {}  # the front is down: its counters are absent, softswitch_workers_up says more
        if self.front_statistics and self.config.database_url is not None:
            # DB-only usrloc counts nothing in memory: this front's phones are its rows of the shared table.
            with contextlib.suppress(StoreError):
                self.front_statistics.setdefault("usrloc", {})["location_contacts"] = \
                    await self.store.registered_contacts(self.config.kamailio.server_id, time.time())
        return self.metrics.text()

    def intake_filed(self, channel: str, duplicate: bool) -> None:
        self.metrics.intake_filed(channel, duplicate)

    async def _start_http(self) -> web.AppRunner:
        from softswitch.web.app import build_app

        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        # HTTPS when the config names a certificate (the cookies are then Secure, see build_app).
        site = web.TCPSite(runner, self.config.http.host, self.config.http.port,
                           ssl_context=self.config.http.ssl_context())
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
        # Troubles that do not keep calls out (they are kept locally meanwhile): degraded, still HTTP 200.
        warnings = self.copier.problems() if self.copier is not None else []
        acd = getattr(self, "acd", None)
        if isinstance(acd, ReplicatedAcd) and acd.problem is not None:
            warnings.append(f"the shared queue is not followed: {acd.problem}")
        if complete:
            self.started = True
        if self.draining:
            status = "draining"
        elif not self.started:
            status = "starting"
        else:
            status = "ok" if complete and not self.troubles and not warnings else "degraded"
        return {
            "status": status,
            "problems": list(self.troubles),
            "warnings": warnings,
            "active_calls": sum(len(link.calls) for link in self.links),
            "engine": {"version": engine.version, "max_calls": engine.max_calls} if engine else None,
            "front": "up" if in_service is not None else "down",
            "workers_expected": expected,
            "workers": [{
                "id": worker_id, "pid": link.pid, "max_calls": link.max_calls, "calls": len(link.calls),
                "in_service": worker_id in serving,
            } for worker_id, link in sorted(workers.items())],
            "restarts": self.children.restarts(),
            "cluster": cluster_hosts(self.cluster),
        }


def _not_answered(status: int | None) -> str:
    """Why a callback's call was not answered, from its final SIP status (None: it rang out)."""
    if status in (None, 0, 408, 480, 487):
        return "no_answer"
    if status in (486, 600):
        return "busy"
    return f"failed_{status}"


def _disposition(call: ControlCall, session: Session) -> str:
    if not call.answered.is_set():
        return "unanswered"
    if call.end_reason == "media lost":
        return "worker_lost"
    if call.operator_hangup:
        return "operator_hangup"
    if session.ended_by is not None:
        return "caller_hangup"
    return "completed"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a tape the worker never created (its media failed): counted as a failure by its reason


def sip_address(host: str, port: int) -> str:
    """host:port as PJSIP writes a packet's source (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StartRefused(RuntimeError):
    """Something the service needs at start is not there (a free SIP port, a usable socket path)."""


# A Unix socket's path must fit sockaddr_un.sun_path (108 bytes on Linux, the NUL included).
UNIX_PATH_MAX = 107


def _require_short_socket_paths(*paths: Path) -> None:
    """Kamailio cannot open its RPC socket on a longer path and would be restarted in a loop: say so."""
    for path in paths:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise StartRefused(f"the socket path {path} is {len(os.fsencode(path))} bytes, over the "
                               f"{UNIX_PATH_MAX} a Unix socket may have: choose a shorter data_dir")


def _require_free_udp_port(host: str, port: int) -> None:
    """Kamailio binds with SO_REUSEADDR, so a second front (or another program) on the same UDP port would
    start without an error and split the traffic: refuse to start instead, naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartRefused(f"the SIP port {host}:{port} is taken by another process ({exc.strerror}); "
                            f"find it with `ss -ulpn 'sport = :{port}'`") from None


def serve(config: Config) -> None:
    logs.configure(config.logging.format, config.logging.level, "control")
    # Everything this process and its children write (the store, recordings, the front's config,
    # logs) is personal data or evidence: for the service's own user only.
    os.umask(0o077)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Softswitch(config).run())
