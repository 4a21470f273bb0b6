"""The shared recordings store: real files, a real SQLite store, a real tmpfs for a full or unmounted share."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from softswitch.config import ConfigError, RecordingsStoreConfig, load_config
from softswitch.control.metrics import Metrics, idle_state
from softswitch.control.recording_copy import RecordingCopier
from softswitch.web.agency import AgencyServices, add_agency_routes
from softswitch.web.sessions import install_sessions
from storage.backup import backup, restore
from storage.crypto import IdProtector
from storage.models import Recording
from storage.shared_recordings import SharedLayout
from storage.store import Store, open_store
from tests.browser.demo import write_wav
from tests.support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.unit

HOST = "host-a"
DAY = Path("2026") / "12" / "02"
TIMEOUT_S = 10.0
LIVE = idle_state()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copies(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("softswitch_recording_copies_total", {"outcome": outcome})
    return value or 0.0


class World:
    def __init__(self, store: Store, data: Path, shared: Path) -> None:
        self.store = store
        self.data = data
        self.recordings = data / "recordings"
        self.shared = shared
        self.metrics = Metrics(lambda: LIVE)
        self.calls = 0

    def settings(self, **changes: Any) -> RecordingsStoreConfig:
        values: dict[str, Any] = {"shared_dir": self.shared, "host": HOST, "retry_initial_s": 0.01,
                                  "retry_max_s": 0.05, "backlog_alarm_s": 0.0} | changes
        return RecordingsStoreConfig(**values)

    def copier(self, after_write: Callable[[Path], None] | None = None, **changes: Any) -> RecordingCopier:
        return RecordingCopier(self.store, self.settings(**changes), self.recordings, self.metrics,
                               after_write=after_write)

    async def recording(self, kind: str = "message", seconds: float = 1.0) -> Recording:
        """A closed tape in the local recordings directory and its row, as the control process stores them."""
        self.calls += 1
        call_id = await self.store.add_call(f"c{self.calls}@127.0.0.1", "sip:a@127.0.0.1", "sip:111@127.0.0.1",
                                            "127.0.0.1", 0, float(self.calls))
        (self.recordings / DAY).mkdir(parents=True, exist_ok=True)
        tape = write_wav(self.recordings / DAY / f"call{call_id}-1-{kind}.wav", seconds)
        return await self.store.add_recording(call_id, None, kind, str(tape), seconds, _sha(tape), True)

    def copy_of(self, recording: Recording) -> Path:
        return self.shared / HOST / Path(recording.path).relative_to(self.recordings)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    (tmp_path / "share").mkdir()
    protector = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
    async with open_store(tmp_path / "var" / "softswitch.db", protector) as store:
        yield World(store, tmp_path / "var", tmp_path / "share")


@asynccontextmanager
async def running(copier: RecordingCopier) -> AsyncIterator[RecordingCopier]:
    await copier.start()
    try:
        yield copier
    finally:
        await copier.close()


async def settle(copier: RecordingCopier, condition: Callable[[], bool]) -> None:
    await asyncio.wait_for(copier.wait_until(condition), TIMEOUT_S)


async def test_a_recording_moves_to_the_shared_directory_verified_and_leaves_the_local_disk(world: World) -> None:
    conversation = await world.recording("conversation", seconds=2.0)
    utterance = await world.recording("national_id_utterance")
    async with running(world.copier()) as copier:
        for recording in (conversation, utterance):
            copier.submit(recording)
        await settle(copier, lambda: copier.waiting == 0)
        assert copier.problems() == []
    for recording in (conversation, utterance):
        row = await world.store.get_recording(recording.id)
        copy = world.copy_of(recording)
        assert row.path == str(copy) and row.sha256 == recording.sha256
        assert _sha(copy) == recording.sha256
        assert not Path(recording.path).exists()
    assert _copies(world.metrics, "copied") == 2
    assert [p.name for p in world.shared.rglob(".*.part")] == []


async def test_a_missing_share_is_retried_reported_once_and_copied_when_it_is_back(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    recording = await world.recording()
    away = world.shared.with_name("share-unmounted")
    world.shared.rename(away)  # as an unmounted share looks from inside its filesystem: gone
    caplog.set_level(logging.WARNING, logger="softswitch.recordings")
    async with running(world.copier()) as copier:
        copier.submit(recording)
        await settle(copier, lambda: _copies(world.metrics, "failed") >= 3)
        assert Path(recording.path).exists()
        assert (await world.store.get_recording(recording.id)).path == recording.path
        [problem] = copier.problems()
        assert "1 recordings not yet copied" in problem and "missing (not mounted?)" in problem
        assert not world.shared.exists()  # never created by the copier: that would be the local disk
        away.rename(world.shared)
        await settle(copier, lambda: copier.waiting == 0)
        assert copier.problems() == []
    assert (await world.store.get_recording(recording.id)).path == str(world.copy_of(recording))
    assert not Path(recording.path).exists()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "cannot copy recordings" in m]) == 1, said  # once, not per retry
    assert len([m for m in said if "work again" in m]) == 1, said


async def test_a_full_read_only_then_unmounted_share_keeps_the_local_file_until_a_verified_copy_exists(
        world: World, tmp_path: Path) -> None:
    recording = await world.recording(seconds=4.0)  # 64 kB of audio
    with mounted_tmpfs(tmp_path / "mnt", "32k") as mount:
        world.shared = mount / "recordings"
        world.shared.mkdir()
        async with running(world.copier()) as copier:
            copier.submit(recording)
            await settle(copier, lambda: _copies(world.metrics, "failed") >= 2)
            assert "No space left on device" in copier.problems()[0]
            assert Path(recording.path).exists() and list(world.shared.rglob("*.wav*")) == []
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            failed = _copies(world.metrics, "failed")
            await settle(copier, lambda: _copies(world.metrics, "failed") >= failed + 2)
            assert "Read-only file system" in copier.problems()[0]
            subprocess.run(["umount", str(mount)], check=True)
            failed = _copies(world.metrics, "failed")
            await settle(copier, lambda: _copies(world.metrics, "failed") >= failed + 2)
            assert "missing (not mounted?)" in copier.problems()[0]
            assert not world.shared.exists() and Path(recording.path).exists()
            # Mounted again, larger, the directory on it as before: the copy goes through.
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True)
            world.shared.mkdir()
            await settle(copier, lambda: copier.waiting == 0)
        row = await world.store.get_recording(recording.id)
        assert row.path == str(world.copy_of(recording)) and _sha(Path(row.path)) == recording.sha256
        assert not Path(recording.path).exists()


async def test_a_copy_damaged_on_its_way_is_not_kept_and_the_row_stays(world: World) -> None:
    recording = await world.recording()
    damaged: list[Path] = []
    share_is_faulty = True

    def fault_injection_damage_the_copy(written: Path) -> None:
        """Fault injection: the share hands back other bytes than were written, while it is faulty."""
        if share_is_faulty:
            with open(written, "r+b") as f:
                f.seek(100)
                f.write(b"\xff\xfe")
            damaged.append(written)

    async with running(world.copier(after_write=fault_injection_damage_the_copy)) as copier:
        copier.submit(recording)
        await settle(copier, lambda: _copies(world.metrics, "mismatch") >= 2)
        assert (await world.store.get_recording(recording.id)).path == recording.path
        assert Path(recording.path).exists() and not world.copy_of(recording).exists()
        assert "did not match its sha256" in copier.problems()[0]
        share_is_faulty = False
        await settle(copier, lambda: copier.waiting == 0)
    assert _copies(world.metrics, "mismatch") == len(damaged) and _copies(world.metrics, "copied") == 1
    assert not any(p.exists() for p in damaged)  # no damaged copy left behind
    assert _sha(world.copy_of(recording)) == recording.sha256


async def test_a_local_file_that_no_longer_matches_its_row_is_reported_as_damage_and_never_copied(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    recording = await world.recording()
    with open(recording.path, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    before = Path(recording.path).read_bytes()
    async with running(world.copier()) as copier:
        copier.submit(recording)
        await settle(copier, lambda: copier.waiting == 0)
        [problem] = copier.problems()
    assert f"1 recordings damaged (sha256 differs), kept local and not copied: ids {recording.id}" == problem
    row = await world.store.get_recording(recording.id)
    assert (row.path, row.sha256) == (recording.path, recording.sha256)  # never "fixed"
    assert Path(recording.path).read_bytes() == before
    assert list(world.shared.rglob("*")) == [world.shared / HOST] + list((world.shared / HOST).rglob("*"))
    assert list(world.shared.rglob("*.wav*")) == []
    assert _copies(world.metrics, "damaged") == 1
    assert any(r.levelno == logging.ERROR and "is damaged" in r.getMessage() for r in caplog.records)


async def test_a_row_whose_file_is_missing_is_reported_lost_loudly_and_never_copied(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    lost = await world.recording()
    kept = await world.recording()
    Path(lost.path).unlink()
    async with running(world.copier()) as copier:  # both found at start, as after a restart
        await settle(copier, lambda: copier.waiting == 0)
        assert copier.problems() == [f"1 recordings lost (the file is missing), kept local and not copied: "
                                     f"ids {lost.id}"]
    assert (await world.store.get_recording(lost.id)).path == lost.path
    assert not world.copy_of(lost).exists()
    assert (await world.store.get_recording(kept.id)).path == str(world.copy_of(kept))
    assert _copies(world.metrics, "lost") == 1
    assert any(r.levelno == logging.ERROR and f"recording {lost.id} (message) is lost" in r.getMessage()
               for r in caplog.records)


async def test_a_restart_takes_up_the_backlog_and_finishes_a_copy_cut_before_its_row_was_updated(
        world: World) -> None:
    waiting = [await world.recording() for _ in range(3)]
    # The run before stopped after renaming this copy into place, before pointing the row at it.
    cut = waiting[0]
    world.copy_of(cut).parent.mkdir(parents=True)
    shutil.copyfile(cut.path, world.copy_of(cut))
    inode = world.copy_of(cut).stat().st_ino
    away = world.shared.with_name("share-down")
    world.shared.rename(away)
    async with running(world.copier()) as copier:  # the share is down: nothing moves
        await settle(copier, lambda: _copies(world.metrics, "failed") >= 3)
        assert copier.waiting == 3
    away.rename(world.shared)
    async with running(world.copier()) as copier:
        assert copier.waiting == 3  # all three found again at start
        await settle(copier, lambda: copier.waiting == 0)
    for recording in waiting:
        assert (await world.store.get_recording(recording.id)).path == str(world.copy_of(recording))
        assert not Path(recording.path).exists()
    assert world.copy_of(cut).stat().st_ino == inode  # found verified, not written again


async def test_another_file_under_the_copys_name_is_never_overwritten(world: World) -> None:
    recording = await world.recording()
    world.copy_of(recording).parent.mkdir(parents=True)
    world.copy_of(recording).write_bytes(b"someone else's file")
    async with running(world.copier()) as copier:
        copier.submit(recording)
        await settle(copier, lambda: copier.waiting == 0)
        assert "blocked by another file" in copier.problems()[0]
    assert world.copy_of(recording).read_bytes() == b"someone else's file"
    assert (await world.store.get_recording(recording.id)).path == recording.path
    assert Path(recording.path).exists()


async def test_the_agency_page_plays_a_recording_from_the_shared_directory(world: World) -> None:
    """Readers go by the row's path; here through the real agency page, logged in, after the copy."""
    from tests.unit.test_agency import AGENCIES, HEALTH_PASSWORD, HEALTH_USER, SUBJECT_ID, _login, _referred_case
    from media.synth import EspeakSynthesizer

    case = await _referred_case(world.store, world.data, "health", SUBJECT_ID, "shared@trunk")
    (world.recordings / DAY).mkdir(parents=True)
    tape = write_wav(world.recordings / DAY / f"call{case.call_id}-1-message.wav", 0.5)
    recording = await world.store.add_recording(case.call_id or 0, case.id, "message", str(tape), 0.5, _sha(tape),
                                                True)
    async with running(world.copier()) as copier:
        copier.submit(recording)
        await settle(copier, lambda: copier.waiting == 0)
    assert not tape.exists()
    app = web.Application()
    install_sessions(app, world.store)
    add_agency_routes(app, AgencyServices(world.store, AGENCIES, EspeakSynthesizer(), world.data / "answers"))
    async with TestClient(TestServer(app)) as client:
        await _login(client, "health", HEALTH_USER, HEALTH_PASSWORD)
        response = await client.get(f"/agency/cases/{case.tracking_code}/recordings/{recording.id}")
        assert response.status == 200
        assert hashlib.sha256(await response.read()).hexdigest() == recording.sha256


async def test_a_backup_keeps_shared_recordings_and_a_restore_puts_them_back_local(world: World,
                                                                                   tmp_path: Path) -> None:
    shared_one = await world.recording()
    async with running(world.copier()) as copier:
        await settle(copier, lambda: copier.waiting == 0)
    local_one = await world.recording()
    moving = await world.recording()
    # Copied while the backup runs, after the store was copied: the row the backup holds still says local.
    world.copy_of(moving).parent.mkdir(parents=True, exist_ok=True)
    Path(moving.path).rename(world.copy_of(moving))
    summary = await asyncio.to_thread(backup, world.data / "softswitch.db", world.data, tmp_path / "backup",
                                      shared=SharedLayout(world.shared, world.recordings, HOST))
    assert summary.files == 3
    fresh = tmp_path / "elsewhere"
    restore(tmp_path / "backup", fresh / "softswitch.db", fresh, {"k1"})
    protector = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
    async with open_store(fresh / "softswitch.db", protector) as store:
        for recording in (shared_one, local_one, moving):
            row = await store.get_recording(recording.id)
            # Back in the recordings directory, whence the shared store takes it again.
            assert row.path == str(fresh / "recordings" / Path(recording.path).relative_to(world.recordings))
            assert _sha(Path(row.path)) == recording.sha256


def test_the_shared_directory_is_checked_on_load(tmp_path: Path) -> None:
    data = tmp_path / "var"

    def load(shared: object, **more: Any) -> RecordingsStoreConfig:
        overrides = {"data_dir": str(data), "recordings_store.shared_dir": shared} | more
        return load_config(overrides=overrides).recordings_store

    assert load(None).shared_dir is None  # unset: local only, as before
    assert load(str(tmp_path / "not-yet" / "there")).shared_dir == tmp_path / "not-yet" / "there"  # creatable
    (tmp_path / "share").mkdir()
    assert load(str(tmp_path / "share")).host_name == os.uname().nodename.split(".")[0]
    (tmp_path / "a-file").write_text("x")
    for shared, says in (("relative/dir", "must be an absolute path"),
                         (str(tmp_path / "a-file"), "is not a directory"),
                         (str(tmp_path / "a-file" / "below"), "cannot be created"),
                         (str(data / "recordings" / "shared"), "must not contain each other"),
                         (str(data / "recordings"), "must not contain each other"),
                         ("/proc", "is a mount point")):
        with pytest.raises(ConfigError, match=says):
            load(shared)
    with pytest.raises(ConfigError, match="recordings_store.host"):
        load(str(tmp_path / "share"), **{"recordings_store.host": "../up"})


async def test_a_local_file_left_after_its_row_moved_to_the_copy_is_removed_at_start(world: World) -> None:
    recording = await world.recording()
    copy = world.copy_of(recording)
    copy.parent.mkdir(parents=True)
    shutil.copyfile(recording.path, copy)
    # The run before stopped between pointing the row at the copy and removing the local file.
    assert await world.store.move_recording(recording.id, recording.path, str(copy))
    unknown = write_wav(world.recordings / DAY / "call99-1-message.wav")  # no row: not this sweep's to touch
    async with running(world.copier()) as copier:
        assert copier.waiting == 0
        await settle(copier, lambda: not Path(recording.path).exists())
    assert _sha(copy) == recording.sha256
    assert unknown.exists()


async def test_a_crashed_calls_tape_already_copied_is_not_stored_twice_at_recovery(world: World) -> None:
    """The control process died mid-call, after a tape's row moved to the copy but before its local file
    went: the recovery of cut calls (Softswitch._close_orphaned_calls) must know that tape by its name."""
    from softswitch.control.process import Softswitch

    recording = await world.recording("national_id_utterance")
    copy = world.copy_of(recording)
    copy.parent.mkdir(parents=True)
    shutil.copyfile(recording.path, copy)
    assert await world.store.move_recording(recording.id, recording.path, str(copy))
    switch = Softswitch(load_config(overrides={"data_dir": str(world.data)}))
    switch.store = world.store
    await switch._close_orphaned_calls()
    [row] = await world.store.recordings_for_call(recording.call_id)
    assert row.path == str(copy)
    assert (await world.store.get_call(recording.call_id)).disposition == "interrupted"
