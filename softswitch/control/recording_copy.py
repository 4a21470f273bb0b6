"""Control process: copies closed recordings into the shared directory, verified, and points their rows there.

A recording is written where its call is (the local recordings directory) and
gets a row only once its tape is closed; from then on it waits here until a
copy under ``<shared_dir>/<host>/`` has been read back with the row's sha256.
Then the row is pointed at the copy and the local file removed, in that order,
so that at every moment the row names a file that holds the recording. A
failure is retried with a bounded backoff shared by all copies (a share that
is down is down for all), logged when the state changes, counted, and named
by ``/api/health`` once the backlog is older than ``backlog_alarm_s``. A lost
or damaged file is reported and never copied; its row is never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from media.shared_copy import CopyProblem, ShareUnavailable, copy_verified
from media.wavfile import sha256_file
from softswitch.config import RecordingsStoreConfig
from softswitch.control.metrics import Metrics
from storage.errors import StoreError
from storage.models import Recording
from storage.shared_recordings import SharedLayout, is_under
from storage.store import Store

log = logging.getLogger("softswitch.recordings")

# How many ids a health problem lists before "…".
_IDS_SHOWN = 10
T = TypeVar("T")


@dataclass
class _Waiting:
    recording: Recording
    since: float  # time.monotonic() when it joined the backlog


class RecordingCopier:
    def __init__(self, store: Store, settings: RecordingsStoreConfig, recordings_dir: Path, metrics: Metrics, *,
                 after_write: Callable[[Path], None] | None = None) -> None:
        if settings.shared_dir is None:
            raise ValueError("no recordings_store.shared_dir to copy into")
        self.store = store
        self.settings = settings
        self.shared_dir = settings.shared_dir
        self.recordings_dir = recordings_dir
        self.layout = SharedLayout(settings.shared_dir, recordings_dir, settings.host_name)
        self.metrics = metrics
        self.after_write = after_write  # fault injection for tests (media.shared_copy.copy_verified)
        self._waiting: dict[int, _Waiting] = {}
        self._ready: asyncio.Queue[int] = asyncio.Queue()
        # Lost, damaged or blocked by another file: reported, kept as they are, not tried again in this run.
        self._held: dict[int, CopyProblem] = {}
        self._failure: str | None = None  # why copies fail now; None while they work
        self._backoff_s = 0.0
        self._failed_at = 0.0
        self._resume_at = 0.0
        self._workers: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()  # set after every attempt, and once the leftovers are checked
        # Threads of its own: a share that hangs (a hard NFS mount) holds these, not the loop's default
        # executor that the rest of the control process uses. One more for the start's leftover check.
        self._threads = ThreadPoolExecutor(settings.copies_in_parallel + 1, thread_name_prefix="recording-copy")

    async def start(self) -> int:
        """Take up this host's recordings still local (from before a restart) and start copying; how many."""
        waiting = await self.store.recordings_under(f"{self.recordings_dir}{os.sep}")
        for recording in waiting:
            self.submit(recording)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.settings.copies_in_parallel)]
        self._workers.append(asyncio.create_task(self._remove_leftovers({Path(r.path) for r in waiting})))
        return len(self._waiting)

    async def close(self) -> None:
        """Stop copying; what waits stays local and is taken up at the next start."""
        for worker in self._workers:
            worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._workers)
        self._workers = []
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads,
                                                                functools.partial(function, *args, **kwargs))

    async def _remove_leftovers(self, waiting: set[Path]) -> None:
        """Local tapes whose rows already name their verified copies: a run stopped between pointing the
        row there and removing the file. A tape of a call in progress has no such row, so calls may go on."""
        tapes = await self._in_thread(lambda: sorted(self.recordings_dir.rglob("*.wav")))
        for tape in (t for t in tapes if t not in waiting):
            copy = self.layout.copy_of(tape)
            recording = await self.store.recording_at(str(copy))
            if recording is None:
                continue  # no row names its copy: not a leftover
            try:
                if await self._in_thread(lambda: sha256_file(tape) == recording.sha256 == sha256_file(copy)):
                    await self._in_thread(tape.unlink)
                    log.info("recording %d: removed the local file left after its verified copy", recording.id)
            except OSError as exc:
                log.warning("recording %d: the local file %s left after its copy stays: %s", recording.id, tape,
                            exc)
        self._progress.set()

    def submit(self, recording: Recording) -> None:
        """A recording whose row is stored (its tape closed): copy it."""
        if recording.id in self._waiting or recording.id in self._held:
            return
        if not is_under(Path(recording.path), self.recordings_dir):
            log.warning("recording %d is not under the recordings directory %s: it stays where it is (%s)",
                        recording.id, self.recordings_dir, recording.path)
            return
        self._waiting[recording.id] = _Waiting(recording, time.monotonic())
        self._ready.put_nowait(recording.id)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after each attempt (bound it with a timeout)."""
        while not condition():
            self._progress.clear()
            await self._progress.wait()

    # -- what health and metrics read ---------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def oldest_wait_s(self) -> float:
        return time.monotonic() - min((w.since for w in self._waiting.values()), default=time.monotonic())

    def problems(self) -> list[str]:
        """What /api/health names: a backlog older than the alarm, and recordings that cannot be copied."""
        found = []
        oldest = self.oldest_wait_s()
        if self._waiting and oldest >= self.settings.backlog_alarm_s:
            found.append(f"{len(self._waiting)} recordings not yet copied to {self.shared_dir}, the oldest "
                         f"waiting {oldest:.0f} s" + (f": {self._failure}" if self._failure else ""))
        for outcome, what in (("lost", "lost (the file is missing)"), ("damaged", "damaged (sha256 differs)"),
                              ("conflict", "blocked by another file in the shared directory")):
            ids = sorted(i for i, problem in self._held.items() if problem.outcome == outcome)
            if ids:
                shown = ", ".join(map(str, ids[:_IDS_SHOWN])) + (", …" if len(ids) > _IDS_SHOWN else "")
                found.append(f"{len(ids)} recordings {what}, kept local and not copied: ids {shown}")
        return found

    # -- copying --------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            recording_id = await self._ready.get()
            delay = self._resume_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            waiting = self._waiting.get(recording_id)
            if waiting is not None:
                await self._copy(waiting.recording)
                self._progress.set()

    async def _copy(self, recording: Recording) -> None:
        local = Path(recording.path)
        destination = self.layout.copy_of(local)
        started = time.monotonic()
        try:
            await self._in_thread(copy_verified, local, destination, recording.sha256, self.shared_dir,
                                  after_write=self.after_write)
            moved = await self.store.move_recording(recording.id, recording.path, str(destination))
        except CopyProblem as problem:
            self._failed(recording, problem, started)
            return
        except (StoreError, sqlite3.Error) as exc:
            # The verified copy stays where it is; the next attempt finds it and only updates the row.
            self._failed(recording, ShareUnavailable(f"case store: {exc}", reason="case store"), started)
            return
        if not moved:
            del self._waiting[recording.id]
            log.error("recording %d: its row no longer names %s; the local file is kept", recording.id, local)
            self.metrics.recording_copied("conflict")
            return
        try:
            await self._in_thread(local.unlink, missing_ok=True)
        except OSError as exc:
            log.error("recording %d is in the shared directory, but its local file stays: %s", recording.id, exc)
        del self._waiting[recording.id]  # done once the local file is gone too
        self.metrics.recording_copied("copied")
        self._set_failure(None)
        self._backoff_s = 0.0

    def _failed(self, recording: Recording, problem: CopyProblem, started: float) -> None:
        self.metrics.recording_copied(problem.outcome)
        if not problem.retry:
            # A recording's own state change: each is said once, loudly.
            del self._waiting[recording.id]
            self._held[recording.id] = problem
            log.error("recording %d (%s) is %s: %s; its row is unchanged", recording.id, recording.kind,
                      problem.outcome, problem)
            return
        self._ready.put_nowait(recording.id)
        now = time.monotonic()
        if started >= self._failed_at:  # copies begun before the last failure do not double the pause again
            self._backoff_s = min(max(2 * self._backoff_s, self.settings.retry_initial_s), self.settings.retry_max_s)
        self._failed_at = now
        self._resume_at = max(self._resume_at, now + self._backoff_s)
        self._set_failure(problem.reason)

    def _set_failure(self, reason: str | None) -> None:
        """Log when copies start failing, fail for another reason, or work again: not at every retry."""
        if reason == self._failure:
            return
        if reason is None:
            log.warning("copies to the shared directory %s work again; %d recordings waiting", self.shared_dir,
                        len(self._waiting))
        else:
            log.error("cannot copy recordings to the shared directory %s (%s); %d waiting, kept local and "
                      "retried up to every %g s", self.shared_dir, reason, len(self._waiting),
                      self.settings.retry_max_s)
        self._failure = reason
