"""The post-call survey's ratings in the store and its reports, on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest

from storage import retention
from storage.crypto import IdProtector
from storage.errors import NotFound
from storage.reports import BOM, RatingSummary, all_ratings, rating_summaries, ratings_csv
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase

pytestmark = pytest.mark.unit

PROTECTOR = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
AT = 1774074600.0  # 2026-03-21 10:00 in Tehran
DAY_S = 86400.0


async def _call(store: Store, n: int, at: float = AT) -> int:
    call_id = await store.add_call(f"c{n}@host", "sip:0912@pstn", "sip:111@gw", "127.0.0.1", 0, at)
    await store.end_call(call_id, at + 60, "completed", ["queue:handled", "survey:rated"])
    return call_id


async def test_a_call_is_rated_once_and_a_retry_changes_nothing(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, PROTECTOR) as store:
        call_id = await _call(store, 1)
        case = await store.create_case(call_id, "received", "0499370899", "keypad")
        assert await store.add_rating(call_id, "agent", 4, at=AT, day="2026-03-21", case_id=case.id,
                                      agent_id="1001", agency="health")
        # The step tried again (or a second key): the first rating stands.
        assert not await store.add_rating(call_id, "agent", 1, at=AT + 5, day="2026-03-21", case_id=case.id,
                                          agent_id="1001")
        rating = await store.rating_for_call(call_id)
        assert rating is not None
        assert (rating.score, rating.kind, rating.agent_id, rating.agency, rating.case_id, rating.day) == (
            4, "agent", "1001", "health", case.id, "2026-03-21")
        assert await store.rating_for_call(await _call(store, 2)) is None
        assert len(await store_database.raw("SELECT id FROM ratings")) == 1


async def test_a_score_outside_1_to_5_or_an_unknown_call_is_refused(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, PROTECTOR) as store:
        call_id = await _call(store, 1)
        for score in (0, 6):
            with pytest.raises(ValueError, match="1 to 5"):
                await store.add_rating(call_id, "agent", score, at=AT, day="2026-03-21")
        with pytest.raises(ValueError, match="kind"):
            await store.add_rating(call_id, "sms", 3, at=AT, day="2026-03-21")
        with pytest.raises(NotFound):
            await store.add_rating(call_id + 100, "agent", 3, at=AT, day="2026-03-21")
        assert await store_database.raw("SELECT id FROM ratings") == []


async def _rate_a_week(store: Store) -> None:
    """Two agents and a follow-up over two days."""
    ratings = [("2026-03-21", "agent", "1001", "health", 5), ("2026-03-21", "agent", "1001", "health", 4),
               ("2026-03-21", "agent", "1002", None, 2), ("2026-03-21", "follow_up", None, "roads", 3),
               ("2026-03-22", "agent", "1001", "roads", 1), ("2026-03-23", "agent", "1002", "health", 5)]
    for n, (day, kind, agent, agency, score) in enumerate(ratings):
        call_id = await _call(store, n)
        assert await store.add_rating(call_id, kind, score, at=AT + n, day=day, agent_id=agent, agency=agency)


async def test_results_per_agent_agency_and_day(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, PROTECTOR) as store:
        await _rate_a_week(store)
        by_agent = rating_summaries(await store.rating_counts("agent"))
        by_agency = rating_summaries(await store.rating_counts("agency"))
        by_day = rating_summaries(await store.rating_counts("day", since_day="2026-03-21", until_day="2026-03-22"))
        first_day = rating_summaries(await store.rating_counts("agent", since_day="2026-03-21",
                                                               until_day="2026-03-21"))
        with pytest.raises(ValueError, match="grouped by"):
            await store.rating_counts("caller")
    assert by_agent == [RatingSummary("1001", (1, 0, 0, 1, 1)), RatingSummary("1002", (0, 1, 0, 0, 1)),
                        RatingSummary(None, (0, 0, 1, 0, 0))]
    assert [(s.key, s.count, s.average) for s in by_agency] == [
        ("health", 3, pytest.approx(14 / 3)), ("roads", 2, 2.0), (None, 1, 2.0)]
    assert [(s.key, s.count) for s in by_day] == [("2026-03-21", 4), ("2026-03-22", 1)]
    assert [(s.key, s.count, s.average) for s in first_day] == [("1001", 2, 4.5), ("1002", 1, 2.0), (None, 1, 3.0)]
    assert all_ratings(first_day) == RatingSummary(None, (0, 1, 1, 1, 1))
    assert RatingSummary("x", (0, 0, 0, 0, 0)).average is None


def test_the_ratings_csv_has_count_average_and_distribution() -> None:
    text = ratings_csv([RatingSummary("1001", (1, 0, 0, 1, 1)), RatingSummary(None, (0, 0, 1, 0, 0))],
                       "agent", {"1001": "مریم احمدی"})
    assert text.startswith(BOM)
    rows = list(csv.DictReader(io.StringIO(text.encode("utf-8").decode("utf-8-sig"), newline="")))
    assert rows == [
        {"agent": "1001", "name": "مریم احمدی", "count": "3", "average": "3.33", "score_1": "1", "score_2": "0",
         "score_3": "0", "score_4": "1", "score_5": "1"},
        {"agent": "", "name": "", "count": "1", "average": "3.0", "score_1": "0", "score_2": "0",
         "score_3": "1", "score_4": "0", "score_5": "0"}]


async def test_ratings_outlive_the_cdr_and_case_that_retention_deletes(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, PROTECTOR) as store:
        call_id = await _call(store, 1)
        case = await store.create_case(call_id, "received", "0499370899", "keypad")
        await store.set_case_status(case.id, "closed")
        assert await store.add_rating(call_id, "agent", 5, at=AT, day="2026-03-21", case_id=case.id,
                                      agent_id="1001", agency="health")
        # Far in the future: the closed case and the CDR are past any period.
        windows = retention.RetentionWindows(calls_days=1, closed_cases_days=1)
        result = await retention.apply(store, await retention.plan(store, windows, now=AT + 400 * DAY_S))
        assert (result.deleted["case"], result.deleted["call"], result.failures) == (1, 1, [])
        rows = await store_database.raw("SELECT call_id, case_id, agent_id, score FROM ratings")
        assert rows == [(None, None, "1001", 5)]
        assert rating_summaries(await store.rating_counts("agent")) == [RatingSummary("1001", (0, 0, 0, 0, 1))]

