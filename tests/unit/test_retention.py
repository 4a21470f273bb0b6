"""Retention on a real store file with real files: exactly what is past its period goes, rows and files together.

Every test builds the same store: a case in every status, old and new, with a
recording and (answered, closed) answer audio, and calls without cases. "Old"
rows are dated back with plain UPDATEs, so the windows are a few days wide.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, time as wall_time, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from softswitch import cli
from softswitch.config import Config, RetentionConfig, load_config
from softswitch.control.metrics import Metrics, idle_state
from softswitch.control import retention as retention_job
from softswitch.control.retention import RetentionJob, next_run, run_once
from softswitch.domain.cases import CASE_STATUSES, CLOSED, SECONDS_PER_DAY
from storage.callbacks import Callback
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.retention import RetentionWindows, apply, plan
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase

pytestmark = pytest.mark.unit

NATIONAL_ID = "0499370899"
DAYS = 5.0
ALL = RetentionWindows(recordings_days=DAYS, calls_days=DAYS, closed_cases_days=DAYS)
OLD_S = 10 * SECONDS_PER_DAY  # older than every window


@dataclass
class Built:
    """What the scenario made: ids by name, and every file the store names."""

    calls: dict[str, int] = field(default_factory=dict)
    cases: dict[str, int] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    recordings: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


async def _backdate(store: Store, seconds: float, *, call: int | None = None, case: int | None = None) -> None:
    """Move a call (its CDR and recordings) or a case (and its history) ``seconds`` into the past."""
    if call is not None:
        await store._update("UPDATE calls SET arrived_at = arrived_at - ?,"
                            " ended_at = CASE WHEN ended_at IS NULL THEN NULL ELSE ended_at - ? END WHERE id = ?",
                            (seconds, seconds, call))
        await store._update("UPDATE recordings SET created_at = created_at - ? WHERE call_id = ?", (seconds, call))
    if case is not None:
        await store._update("UPDATE cases SET created_at = created_at - ?, updated_at = updated_at - ? WHERE id = ?",
                            (seconds, seconds, case))
        await store._update("UPDATE case_events SET at = at - ? WHERE case_id = ?", (seconds, case))


async def _call(store: Store, built: Built, name: str, *, ended: bool = True,
                recording: str | None = "message") -> int:
    call_id = await store.add_call(f"{name}@127.0.0.1", "sip:09121234567@127.0.0.1", "sip:111@127.0.0.1",
                                   "127.0.0.1", 0, time.time())
    if ended:
        await store.end_call(call_id, time.time(), "completed", ["greeting"])
    built.calls[name] = call_id
    if recording is not None:
        path = built.files.setdefault("dir", Path()) / "recordings" / f"call{call_id}-1-{recording}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF" + name.encode())
        kept = await store.add_recording(call_id, None, recording, str(path), 1.0, "0" * 64, True)
        built.recordings[name] = kept.id
        built.files[f"recording:{name}"] = path
    return call_id


async def _answer(store: Store, built: Built, name: str, case_id: int, n: int) -> None:
    path = built.files["dir"] / "answers" / built.codes[name] / f"{n}-recorded.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF answer")
    await store.set_answer(case_id, "agency:health/u1", audio_path=str(path), audio_sha256="0" * 64)
    built.files[f"answer:{name}:{n}"] = path


async def _build(store: Store, data: Path) -> Built:
    built = Built(files={"dir": data})
    for status in CASE_STATUSES:
        for age in ("old", "new"):
            name = f"{status}-{age}"
            call_id = await _call(store, built, name)
            case = await store.open_call_case(call_id, PersonId(NATIONAL_ID, "keypad", "verified"))
            await store.attach_recordings(call_id, case.id)
            built.cases[name], built.codes[name] = case.id, case.tracking_code
            if status in ("answered", CLOSED):
                await _answer(store, built, name, case.id, 1)
                await _answer(store, built, name, case.id, 2)  # replaces the first; both files are the case's
            if status != "received":
                await store.set_case_status(case.id, status)
            if age == "old":
                await _backdate(store, OLD_S, call=call_id, case=case.id)
    # A closed case changed lately, whose recording is old: the recording goes, the case and its CDR stay.
    call_id = await _call(store, built, "closed-lately")
    case = await store.open_call_case(call_id, PersonId(None, "none", "none"))
    await store.attach_recordings(call_id, case.id)
    built.cases["closed-lately"], built.codes["closed-lately"] = case.id, case.tracking_code
    await store.set_case_status(case.id, CLOSED)
    await _backdate(store, OLD_S, call=call_id, case=case.id)
    await store.add_case_event(case.id, "agent:1001", "contact", call_id=call_id)  # a new history row
    # Calls without cases: hung up in the menu (a spoken ID kept), refused, recent, and one still going.
    await _backdate(store, OLD_S, call=await _call(store, built, "menu-old", recording="national_id_utterance"))
    await _backdate(store, OLD_S, call=await _call(store, built, "refused-old", recording=None))
    await _call(store, built, "menu-new", recording="national_id_utterance")
    await _backdate(store, OLD_S, call=await _call(store, built, "going-old", ended=False,
                                                    recording="national_id_utterance"))
    return built


# What the windows of ALL delete, and nothing else.
GONE_CASES = {"closed-old"}
GONE_RECORDINGS = {"closed-old", "closed-lately", "menu-old"}
GONE_CALLS = {"closed-old", "menu-old", "refused-old"}
GONE_FILES = {"recording:closed-old", "recording:closed-lately", "recording:menu-old",
              "answer:closed-old:1", "answer:closed-old:2"}


async def _rows(store: Store, table: str) -> set[int]:
    return {row[0] for row in await store._fetchall(f"SELECT id FROM {table}")}


async def _present(store: Store, built: Built) -> tuple[set[str], set[str], set[str], set[str]]:
    """The scenario's names still there: cases, recordings, calls, files."""
    cases, recordings, calls = [await _rows(store, t) for t in ("cases", "recordings", "calls")]
    return ({n for n, i in built.cases.items() if i in cases},
            {n for n, i in built.recordings.items() if i in recordings},
            {n for n, i in built.calls.items() if i in calls},
            {n for n, p in built.files.items() if n != "dir" and p.exists()})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "var"


def _protector(data: Path) -> IdProtector:
    return IdProtector.from_key_file(data / "keys" / "national_id.json")


async def test_a_run_deletes_exactly_what_is_past_its_period_and_the_plan_named_it_first(data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        cases0, recordings0, calls0, files0 = await _present(store, built)
        due = await plan(store, ALL, time.time())
        assert {c.tracking_code for c in due.cases} == {built.codes[n] for n in GONE_CASES}
        assert {r.id for r in due.all_recordings()} == {built.recordings[n] for n in GONE_RECORDINGS}
        assert {k.id for k in due.calls} == {built.calls[n] for n in GONE_CALLS}
        assert sorted(due.cases[0].answer_files) == sorted(str(built.files[f"answer:closed-old:{n}"]) for n in (1, 2))
        assert await _present(store, built) == (cases0, recordings0, calls0, files0)  # planning deletes nothing
        events_before = len(await store.case_events(built.cases["closed-old"]))

        result = await apply(store, due)
        cases, recordings, calls, files = await _present(store, built)
        assert (cases0 - cases, recordings0 - recordings, calls0 - calls, files0 - files) == (
            GONE_CASES, GONE_RECORDINGS, GONE_CALLS, GONE_FILES)
        assert dict(result.deleted) == {"recording": 3, "answer_audio": 2, "case": 1, "case_event": events_before,
                                        "call": 3}
        assert not result.failures and not +result.missing and not any(result.kept.values())
        assert await store.case_events(built.cases["closed-old"]) == []
        # Every recording of a case not closed is there, old or new, with its file.
        for status in CASE_STATUSES:
            if status != CLOSED:
                for age in ("old", "new"):
                    kept = await store.recordings_for_case(built.cases[f"{status}-{age}"])
                    assert len(kept) == 1 and Path(kept[0].path).exists()
        assert {r.id for r in await store.recordings_for_call(built.calls["going-old"])} == {
            built.recordings["going-old"]}  # a call still going keeps its recordings and CDR
        # A second run finds nothing more.
        assert (await plan(store, ALL, time.time())).empty


async def test_without_a_period_nothing_is_ever_deleted(data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        before = await _present(store, built)
        far_future = time.time() + 3650 * SECONDS_PER_DAY
        assert (await plan(store, RetentionWindows(), far_future)).empty
        result = await run_once(store, RetentionConfig(), far_future)
        assert not result.deleted and not result.failures
        assert await _present(store, built) == before
        assert RetentionJob.start(Config(), store, Metrics(idle_state)) is None  # the daily job never starts


async def test_each_period_alone_touches_only_its_kind(data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        now = time.time()
        only_cases = await plan(store, RetentionWindows(closed_cases_days=DAYS), now)
        # The closed case goes with its recordings although recordings have no period; nothing else.
        assert [c.tracking_code for c in only_cases.cases] == [built.codes["closed-old"]]
        assert not only_cases.recordings and not only_cases.calls
        only_recordings = await plan(store, RetentionWindows(recordings_days=DAYS), now)
        assert not only_recordings.cases and not only_recordings.calls
        assert {r.id for r in only_recordings.recordings} == {
            built.recordings[n] for n in ("closed-old", "closed-lately", "menu-old")}
        # CDRs alone: only those nothing that stays refers to (a refused call; not a call with a recording).
        only_calls = await plan(store, RetentionWindows(calls_days=DAYS), now)
        assert [k.id for k in only_calls.calls] == [built.calls["refused-old"]]


async def test_a_missing_file_lets_its_row_go_and_a_file_that_cannot_be_removed_keeps_everything(data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        # As after a crash between the two steps: the file went, its row stayed.
        built.files["recording:menu-old"].unlink()
        # A path that is a directory cannot be unlinked (root may unlink in a read-only directory).
        blocked = built.files["recording:closed-old"]
        blocked.unlink()
        blocked.mkdir()
        (blocked / "inside").write_bytes(b"x")
        result = await apply(store, await plan(store, ALL, time.time()))
        assert result.missing["recording"] == 1
        assert [(f.kind, f.item, f.path) for f in result.failures] == [
            ("recording", str(built.recordings["closed-old"]), str(blocked))]
        cases, recordings, calls, _ = await _present(store, built)
        assert "menu-old" not in recordings and "menu-old" not in calls
        # The recording keeps its row, so its case and CDR stay too (their other files are gone: rows naming
        # files already missing, which a later run finishes).
        assert {"closed-old"} <= cases and {"closed-old"} <= recordings and {"closed-old"} <= calls
        assert result.kept["case"] == {built.cases["closed-old"]} and result.kept["call"] == {built.calls["closed-old"]}
        assert blocked.is_dir() and (blocked / "inside").exists()
        # Once the file can go, the next run finishes the case.
        (blocked / "inside").unlink()
        blocked.rmdir()
        again = await apply(store, await plan(store, ALL, time.time()))
        assert (again.deleted["case"], again.deleted["call"], again.missing["recording"]) == (1, 1, 1)
        assert again.missing["answer_audio"] == 2 and not again.failures


async def test_the_file_goes_where_the_row_names_it_at_the_moment_of_deletion(data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        due = await plan(store, ALL, time.time())
        # Moved to shared storage after the plan (another part of the service may do so).
        moved = data.parent / "shared" / built.files["recording:menu-old"].name
        moved.parent.mkdir()
        built.files["recording:menu-old"].rename(moved)
        await store._update("UPDATE recordings SET path = ? WHERE id = ?", (str(moved), built.recordings["menu-old"]))
        # And a case reopened after the plan: it is no longer due, so nothing of it goes.
        await store.set_case_status(built.cases["closed-old"], "referred")
        result = await apply(store, due)
        assert not moved.exists() and result.missing["recording"] == 0
        assert result.kept["case"] == {built.cases["closed-old"]} and built.files["recording:closed-old"].exists()
        cases, _, calls, _ = await _present(store, built)
        assert "closed-old" in cases and "closed-old" in calls and "menu-old" not in calls


async def test_the_daily_job_logs_one_line_and_counts_by_kind(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(overrides={"data_dir": str(data), "retention.recordings_days": DAYS,
                                    "retention.calls_days": DAYS, "retention.closed_cases_days": DAYS})
    async with open_store(config.database_path, _protector(data)) as store:
        await _build(store, data)
        metrics = Metrics(idle_state)
        with caplog.at_level(logging.INFO, logger="softswitch.retention"):
            result = await RetentionJob(config, store, metrics).run_now()
    assert result is not None and result.deleted["case"] == 1
    lines = [r for r in caplog.records if r.name == "softswitch.retention"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "deleted 1 closed cases" in lines[0].getMessage() and "3 recordings" in lines[0].getMessage()
    text = metrics.text().decode()
    assert 'softswitch_retention_deleted_total{kind="recording"} 3.0' in text
    assert 'softswitch_retention_deleted_total{kind="call"} 3.0' in text
    assert NATIONAL_ID not in text and NATIONAL_ID not in lines[0].getMessage()


async def test_a_large_run_goes_in_bounded_rounds_to_the_same_end(data: Path, store_database: StoreDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_job, "ROUND_ITEMS", 1)  # one of each kind per round
    config = RetentionConfig(recordings_days=DAYS, calls_days=DAYS, closed_cases_days=DAYS)
    async with open_store(store_database.target, _protector(data)) as store:
        built = await _build(store, data)
        before = await _present(store, built)
        first = await plan(store, ALL, time.time(), limit=1)
        assert not first.complete and (len(first.cases), len(first.recordings), len(first.calls)) == (1, 1, 1)
        rounds: list[int] = []
        result = await run_once(store, config, time.time(), on_plan=lambda due: rounds.append(len(due.calls)))
        after = await _present(store, built)
        assert [b - a for b, a in zip(before, after)] == [GONE_CASES, GONE_RECORDINGS, GONE_CALLS, GONE_FILES]
        assert len(rounds) >= 3 and result.deleted["call"] == 3 and not result.failures


async def test_the_daily_job_waits_for_run_at_and_stops_when_cancelled(data: Path) -> None:
    now = datetime.now(ZoneInfo("Asia/Tehran"))
    later = (now.hour + 12) % 24  # half a day away, whatever the time
    config = load_config(overrides={"data_dir": str(data), "retention.calls_days": DAYS,
                                    "retention.run_at": f"{later:02d}:{now.minute:02d}"})
    async with open_store(config.database_path, _protector(data)) as store:
        built = await _build(store, data)
        task = RetentionJob.start(config, store, Metrics(idle_state))
        assert task is not None
        await asyncio.sleep(0.2)
        assert not task.done() and built.calls["refused-old"] in await _rows(store, "calls")  # not yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


TEHRAN = ZoneInfo("Asia/Tehran")  # +03:30 all year: Iran has kept no daylight saving time since 2022


@pytest.mark.parametrize(("now_local", "run_at", "expected_local"), [
    ("2026-12-02 02:00", "03:30", "2026-12-02 03:30"),  # later today
    ("2026-12-02 03:30", "03:30", "2026-12-03 03:30"),  # just ran: tomorrow
    ("2026-12-02 23:50", "00:10", "2026-12-03 00:10"),  # across midnight
    ("2026-12-31 23:59", "03:30", "2027-01-01 03:30"),  # across the year
    ("2026-03-20 22:00", "03:30", "2026-03-21 03:30"),  # Nowruz, once a DST change: the same offset now
])
def test_the_next_run_is_the_next_time_the_local_clock_reads_run_at(now_local: str, run_at: str,
                                                                    expected_local: str) -> None:
    now = datetime.strptime(now_local, "%Y-%m-%d %H:%M").replace(tzinfo=TEHRAN)
    hour, minute = map(int, run_at.split(":"))
    at = next_run(now.astimezone(timezone.utc), wall_time(hour, minute), TEHRAN)  # any zone in, the local clock out
    assert at.strftime("%Y-%m-%d %H:%M") == expected_local
    assert 0 < at.timestamp() - now.timestamp() <= SECONDS_PER_DAY


def test_across_midnight_the_wait_is_twenty_minutes() -> None:
    now = datetime(2026, 12, 2, 20, 20, tzinfo=timezone.utc)  # 23:50 in Tehran
    assert next_run(now, wall_time(0, 10), TEHRAN).timestamp() - now.timestamp() == 20 * 60


def _config_file(tmp_path: Path, data: Path, retention: str = "") -> Path:
    path = tmp_path / "softswitch.yaml"
    path.write_text(f"data_dir: {data}\n{retention}", encoding="utf-8")
    return path


RETENTION_YAML = f"retention:\n  recordings_days: {DAYS}\n  calls_days: {DAYS}\n  closed_cases_days: {DAYS}\n" \
                 "  run_at: '04:00'\n"


async def test_the_command_dry_runs_then_deletes_the_same_set_beside_a_running_store(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path, data, RETENTION_YAML)
    # The store stays open, as the running softswitch holds it: the command works beside it (WAL).
    async with open_store(data / "softswitch.db", _protector(data)) as store:
        built = await _build(store, data)
        before = await _present(store, built)
        assert await asyncio.to_thread(cli.main, ["--config", str(config), "retention", "--dry-run", "--list"]) == 0
        dry = capsys.readouterr().out
        assert await _present(store, built) == before and "nothing was deleted" in dry
        assert "closed cases: 1," in dry and "recordings: 2 more" in dry and "CDRs: 3," in dry
        listed_cases = set(re.findall(r"^  case (\d+) ", dry, re.M))
        listed_recordings = {int(n) for n in re.findall(r"^  recording (\d+) ", dry, re.M)}
        listed_calls = {int(n) for n in re.findall(r"^  CDR (\d+) ", dry, re.M)}
        assert NATIONAL_ID not in dry and "*" * 8 not in dry and "0912" not in dry

        assert await asyncio.to_thread(cli.main, ["--config", str(config), "retention"]) == 0
        done = capsys.readouterr().out
        assert "deleted 1 closed cases" in done and "3 recordings" in done and "3 CDRs" in done
        cases, recordings, calls, _ = await _present(store, built)
        assert listed_cases == {built.codes[n] for n in before[0] - cases}
        assert listed_recordings == {built.recordings[n] for n in before[1] - recordings}
        assert listed_calls == {built.calls[n] for n in before[2] - calls}
        await store.add_call("after@127.0.0.1", "sip:a@127.0.0.1", "sip:111@127.0.0.1", "127.0.0.1", 0, time.time())


def test_the_command_refuses_without_a_period_and_names_a_file_it_could_not_remove(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def build() -> Built:
        async with open_store(data / "softswitch.db", _protector(data)) as store:
            return await _build(store, data)
    built = asyncio.run(build())
    unset = _config_file(tmp_path, data)
    assert cli.main(["--config", str(unset), "retention"]) == 2
    assert "nothing deleted" in capsys.readouterr().err
    assert cli.main(["--config", str(unset), "retention", "--dry-run"]) == 0
    assert "nothing would go" in capsys.readouterr().out
    assert all(path.exists() for name, path in built.files.items() if name != "dir")

    blocked = built.files["recording:menu-old"]
    blocked.unlink()
    blocked.mkdir()
    assert cli.main(["--config", str(_config_file(tmp_path, data, RETENTION_YAML)), "retention"]) == 1
    out = capsys.readouterr().out
    assert f"could not remove 1 files, kept with their rows: recording {built.recordings['menu-old']} {blocked}" in out


def test_the_config_takes_positive_periods_and_a_quoted_time() -> None:
    assert not load_config().retention.configured and load_config().retention.run_at == "03:30"
    config = load_config(overrides={"retention.calls_days": 365, "retention.run_at": "23:05"})
    assert config.retention.configured and config.retention.run_time == wall_time(23, 5)
    for bad, message in ((("retention.recordings_days", 0), "greater than 0"),
                         (("retention.run_at", 210), "write run_at in quotes"),  # YAML's reading of 03:30
                         (("retention.run_at", "3:30"), "should match pattern")):
        with pytest.raises(Exception, match=message):
            load_config(overrides=dict([bad]))


async def test_a_callback_over_goes_with_the_cdr_that_booked_it_and_an_open_one_keeps_its_cdr(
        data: Path, store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, _protector(data)) as store:
        booked: dict[str, Callback] = {}
        for name in ("made", "waiting"):
            call_id = await store.add_call(f"{name}@trunk", "sip:0912@pstn", "sip:111@gw", "pstn", 0, time.time())
            await store.end_call(call_id, time.time(), "caller_hangup", ["queue:callback"])
            await _backdate(store, OLD_S, call=call_id)
            booked[name] = await store.callbacks.book(f"0912000000{len(booked)}", "h1", call_id,
                                                      caller=PersonId(NATIONAL_ID, "keypad", "verified"))
        await store.callbacks.finish(booked["made"].id, "done", "answered")
        due = await plan(store, RetentionWindows(calls_days=DAYS), time.time())
        assert [k.id for k in due.calls] == [booked["made"].call_id]
        result = await apply(store, due)
        assert dict(result.deleted) == {"callback": 1, "call": 1} and not result.failures
        assert await _rows(store, "callbacks") == {booked["waiting"].id}
        assert await _rows(store, "calls") == {booked["waiting"].call_id}
