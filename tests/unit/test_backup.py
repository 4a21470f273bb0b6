"""Backups while the store is written to, restored into a fresh data directory: cases, IDs and files all back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storage.backup import BackupError, backup, restore
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.store import Store, open_store
from tests.browser.demo import write_wav

pytestmark = pytest.mark.unit

NATIONAL_ID = "0499370899"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _case_with_files(store: Store, data: Path, n: int) -> str:
    call_id = await store.add_call(f"c{n}@127.0.0.1", "sip:a@127.0.0.1", "sip:111@127.0.0.1", "127.0.0.1", 0,
                                   float(n))
    day = data / "recordings" / "2026" / "12" / "02"
    day.mkdir(parents=True, exist_ok=True)
    (data / "answers").mkdir(exist_ok=True)
    tape = write_wav(day / f"call{call_id}-1-message.wav")
    await store.add_recording(call_id, None, "message", str(tape), 1.0, _sha(tape), True)
    case = await store.open_call_case(call_id, PersonId(NATIONAL_ID, "keypad", "verified"))
    await store.attach_recordings(call_id, case.id)
    answer = write_wav(data / "answers" / f"{case.tracking_code}.wav", seconds=0.5)
    await store.set_answer(case.id, "agency:health/u1", audio_path=str(answer), audio_sha256=_sha(answer))
    return case.tracking_code


async def test_a_backup_made_while_writing_restores_every_case_and_file(tmp_path: Path) -> None:
    data = tmp_path / "var"
    key_file = data / "keys" / "national_id.json"
    protector = IdProtector.from_key_file(key_file)
    async with open_store(data / "softswitch.db", protector) as store:
        codes = [await _case_with_files(store, data, n) for n in range(5)]
        writing = True

        async def keep_writing() -> int:
            n = 100
            while writing:
                await store.add_call(f"w{n}@127.0.0.1", "sip:a@127.0.0.1", "sip:111@127.0.0.1", "127.0.0.1", 0, 1.0)
                n += 1
                await asyncio.sleep(0)
            return n - 100
        writer = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.05)
        summary = await asyncio.to_thread(backup, data / "softswitch.db", data, tmp_path / "backup")
        writing = False
        assert await writer > 0  # the service went on writing during the copy
    assert (summary.cases, summary.files, summary.key_ids) == (5, 10, ("k1",))
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["key_ids"] == ["k1"] and len(manifest["files"]) == 10
    assert not any(p.name == "national_id.json" for p in (tmp_path / "backup").rglob("*"))  # never the key

    fresh = tmp_path / "elsewhere" / "var"
    (fresh / "keys").mkdir(parents=True)
    shutil.copyfile(key_file, fresh / "keys" / "national_id.json")
    restored = restore(tmp_path / "backup", fresh / "softswitch.db", fresh,
                       IdProtector.from_key_file(fresh / "keys" / "national_id.json").key_ids)
    assert (restored.cases, restored.files) == (5, 10)
    async with open_store(fresh / "softswitch.db", IdProtector.from_key_file(fresh / "keys" / "national_id.json")) \
            as store:
        for code in codes:
            case = await store.get_case(code)
            assert await store.person_matches(case.id, NATIONAL_ID)  # the ID decrypts and matches
            recordings = await store.recordings_for_case(case.id)
            assert [Path(r.path).parent.parent.parent.parent for r in recordings] == [fresh / "recordings"]
            assert all(_sha(Path(r.path)) == r.sha256 for r in recordings)
            assert case.answer_audio is not None and Path(case.answer_audio).is_relative_to(fresh)
            assert _sha(Path(case.answer_audio)) == case.answer_audio_sha256


async def test_restore_refuses_to_overwrite_or_to_go_without_its_key(tmp_path: Path) -> None:
    data = tmp_path / "var"
    async with open_store(data / "softswitch.db", IdProtector.from_key_file(data / "keys" / "k.json")) as store:
        await _case_with_files(store, data, 1)
    backup(data / "softswitch.db", data, tmp_path / "backup")
    with pytest.raises(BackupError, match="not empty"):
        backup(data / "softswitch.db", data, tmp_path / "backup")
    with pytest.raises(BackupError, match="exists: restore into a fresh data directory"):
        restore(tmp_path / "backup", data / "softswitch.db", data, {"k1"})
    with pytest.raises(BackupError, match="lacks key id"):
        restore(tmp_path / "backup", tmp_path / "new" / "softswitch.db", tmp_path / "new", {"k2"})
    assert not (tmp_path / "new" / "softswitch.db").exists()
    (tmp_path / "backup" / "files" / "answers").joinpath(next((tmp_path / "backup" / "files" / "answers")
                                                              .iterdir()).name).write_bytes(b"RIFF tampered")
    with pytest.raises(BackupError, match="does not match its sha256"):
        restore(tmp_path / "backup", tmp_path / "new" / "softswitch.db", tmp_path / "new", {"k1"})
    assert not (tmp_path / "new" / "softswitch.db").exists()  # nothing half-restored is taken for a store


def test_the_commands_back_up_and_restore_and_say_what_the_key_is(tmp_path: Path) -> None:
    data = tmp_path / "var"

    async def fill() -> None:
        async with open_store(data / "softswitch.db", IdProtector.from_key_file(data / "keys" / "national_id.json")) \
                as store:
            await _case_with_files(store, data, 1)
    asyncio.run(fill())

    def softswitch(config_data: Path, *args: str) -> subprocess.CompletedProcess[str]:
        config = config_data.parent / "softswitch.yaml"
        config.write_text(f"data_dir: {config_data}\n")
        return subprocess.run([sys.executable, "-m", "softswitch.cli", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=60)

    made = softswitch(data, "backup", str(tmp_path / "b"))
    assert made.returncode == 0 and "1 cases, 2 files" in made.stdout and "k1" in made.stdout, made.stderr
    fresh = tmp_path / "fresh" / "var"
    fresh.mkdir(parents=True)
    refused = softswitch(fresh, "restore", str(tmp_path / "b"))
    assert refused.returncode == 2 and "put the national-ID key file at" in refused.stderr
    (fresh / "keys").mkdir()
    shutil.copyfile(data / "keys" / "national_id.json", fresh / "keys" / "national_id.json")
    done = softswitch(fresh, "restore", str(tmp_path / "b"))
    assert done.returncode == 0 and "restored 1 cases and 2 files" in done.stdout, done.stderr
    assert (fresh / "softswitch.db").exists()


def test_backup_and_restore_on_postgresql_point_to_its_own_tools(tmp_path: Path) -> None:
    config = tmp_path / "softswitch.yaml"
    # Never connected to: the commands refuse before they open the store.
    config.write_text(f"data_dir: {tmp_path / 'var'}\ndatabase_url: postgresql://softswitch:s3cret@127.0.0.1:1/cases\n")
    for command in ("backup", "restore"):
        done = subprocess.run([sys.executable, "-m", "softswitch.cli", "--config", str(config), command,
                               str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "pg_dump" in done.stderr and "pg_basebackup" in done.stderr
        assert "s3cret" not in done.stderr + done.stdout
    assert not (tmp_path / "b").exists()
