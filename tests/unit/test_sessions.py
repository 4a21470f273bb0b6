"""Unit tests for what the console and the agency page share (softswitch.web.sessions): the login throttle under
concurrent and distributed guessing, sessions in the store (shared by two hosts, kept across a restart), Secure
cookies over HTTPS, and JSON bodies.

Sources are told apart by a test middleware that takes the peer address from a header, since every test
client comes from 127.0.0.1. (Closing a second TestClient on a server closes the server, so one client
plays several browsers where it can.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from media.synth import EspeakSynthesizer
from softswitch.config import Config, HttpConfig
from softswitch.control.process import Softswitch
from softswitch.web.console import ERRORS, add_console_routes
from softswitch.web.sessions import (
    JSON_BODY_MAX_BYTES,
    LOGIN_FAILURES_ALLOWED,
    LOGIN_FAILURES_PER_ID,
    LOGIN_FAILURES_PER_SOURCE,
    PAGE_ERRORS,
    SESSION_COOKIE,
    LoginThrottle,
    install_sessions,
)
from storage import counters
from storage.store import Store, open_store
from tests.conftest import fixed_protector
from tests.fakes.desk import FakeDesk, fake_account
from tests.support.postgres import StoreDatabase

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

AGENT, AGENT_PASSWORD = "maryam", "agent-pass"
OTHER, OTHER_PASSWORD = "ali", "other-pass"
SOURCE_HEADER = "X-Test-Source"
Client = TestClient[web.Request, web.Application]


class SlowDesk(FakeDesk):
    """A desk whose password check takes as long as scrypt does, counting the checks that run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks = 0
        self._lock = threading.Lock()

    def verify_agent(self, agent_id: str, password: str) -> bool:
        with self._lock:
            self.checks += 1
        time.sleep(0.05)
        return super().verify_agent(agent_id, password)


@web.middleware
async def _test_source(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    source = request.headers.get(SOURCE_HEADER)
    return await handler(request if source is None else request.clone(remote=source))


def _slow_desk() -> SlowDesk:
    return SlowDesk([(fake_account(AGENT, "مریم احمدی"), AGENT_PASSWORD),
                     (fake_account(OTHER, "علی رضایی"), OTHER_PASSWORD)])


@pytest.fixture
async def desk() -> AsyncIterator[SlowDesk]:
    fake = _slow_desk()
    yield fake
    await fake.close()


@pytest.fixture
async def client(desk: SlowDesk, web_store: Store) -> AsyncIterator[Client]:
    async with TestClient(TestServer(_console_app(desk, web_store))) as test_client:
        yield test_client


def _console_app(desk: FakeDesk, store: Store) -> web.Application:
    app = web.Application(middlewares=[_test_source])  # before the session middleware, which sees the clone
    install_sessions(app, store)
    add_console_routes(app, desk, heartbeat_s=0.2)
    return app


def _csrf(html: str, pattern: str = r'name="csrf" value="([^"]+)"') -> str:
    match = re.search(pattern, html)
    assert match, f"no {pattern} in the page"
    return match.group(1)


async def _post_login(client: TestClient[Any, Any], agent_id: str, password: str, source: str = "10.0.0.1"
                      ) -> ClientResponse:
    token = _csrf(await (await client.get("/console/login")).text())
    return await client.post("/console/login", data={"agent_id": agent_id, "password": password, "csrf": token},
                             headers={SOURCE_HEADER: source}, allow_redirects=False)


async def _page_token(client: TestClient[Any, Any]) -> str:
    page = await client.get("/console")
    assert page.status == 200
    return _csrf(await page.text(), r'<meta name="csrf-token" content="([^"]+)"')


# -- the throttle ------------------------------------------------------------------------------


async def test_concurrent_wrong_passwords_are_tried_no_more_than_the_limit(client: Client, desk: SlowDesk) -> None:
    attempts = 50
    async with contextlib.AsyncExitStack() as stack:
        # One browser each, each with its own login form, all posting at once while scrypt runs.
        browsers: list[TestClient[Any, Any]] = [await stack.enter_async_context(TestClient(client.server)) for _ in range(attempts)]
        tokens = [_csrf(await (await b.get("/console/login")).text()) for b in browsers]
        responses = await asyncio.gather(*(
            b.post("/console/login", data={"agent_id": AGENT, "password": f"guess-{i}", "csrf": token},
                   allow_redirects=False)
            for i, (b, token) in enumerate(zip(browsers, tokens, strict=True))))
        statuses = sorted(r.status for r in responses)
    assert statuses == [401] * LOGIN_FAILURES_ALLOWED + [429] * (attempts - LOGIN_FAILURES_ALLOWED)
    assert desk.checks == LOGIN_FAILURES_ALLOWED


async def test_the_right_password_from_a_source_that_has_not_failed_still_logs_in(client: Client) -> None:
    attacker, agent = "203.0.113.7", "10.1.2.3"
    for i in range(LOGIN_FAILURES_ALLOWED + 10):
        assert (await _post_login(client, AGENT, f"guess-{i}", attacker)).status in (401, 429)
    throttled = await _post_login(client, AGENT, AGENT_PASSWORD, attacker)
    assert throttled.status == 429 and ERRORS["login_throttled"] in await throttled.text()
    response = await _post_login(client, AGENT, AGENT_PASSWORD, agent)
    assert (response.status, response.headers["Location"]) == (303, "/console")


async def test_a_source_guessing_many_ids_is_blocked_for_all_and_others_are_not(client: Client) -> None:
    sprayer = "198.51.100.9"
    for i in range(LOGIN_FAILURES_PER_SOURCE):
        assert (await _post_login(client, f"user{i}", "123456", sprayer)).status == 401
    assert (await _post_login(client, OTHER, OTHER_PASSWORD, sprayer)).status == 429  # even a right password
    assert (await _post_login(client, OTHER, OTHER_PASSWORD, "10.9.9.9")).status == 303


async def test_guessing_one_id_from_many_sources_gets_one_guess_each_past_the_cap(client: Client) -> None:
    for i in range(LOGIN_FAILURES_PER_ID):
        assert (await _post_login(client, AGENT, "123456", f"192.0.2.{i + 1}")).status == 401
    # Past the id's cap a source that has failed at it is refused, though below its own limit...
    assert (await _post_login(client, AGENT, AGENT_PASSWORD, "192.0.2.1")).status == 429
    # ...while a source that has not failed there logs in, and a fresh guesser gets just one try.
    assert (await _post_login(client, AGENT, AGENT_PASSWORD, "10.0.0.50")).status == 303
    client.session.cookie_jar.clear()  # log in form again, not the console
    assert (await _post_login(client, AGENT, "654321", "192.0.2.200")).status == 401
    assert (await _post_login(client, AGENT, "654322", "192.0.2.200")).status == 429


async def test_log_lines_name_no_password_and_no_unknown_id(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="softswitch.web")
    typed_in_the_id_field = "my-secret-Passw0rd"
    for _ in range(LOGIN_FAILURES_ALLOWED + 1):
        await _post_login(client, typed_in_the_id_field, "x", "10.0.0.7")
        await _post_login(client, AGENT, "wrong-password-1", "10.0.0.8")
    text = caplog.text
    assert "throttled" in text and "10.0.0.7" in text and repr(AGENT) in text
    assert typed_in_the_id_field not in text and "wrong-password-1" not in text


async def test_throttle_windows_and_a_success(web_store: Store) -> None:
    throttle = LoginThrottle(web_store.counters, "test", 2, 10, per_source=4, per_id=3)
    for at in (0.0, 1.0):
        # ids are compared case-insensitively
        assert await throttle.begin("A" if at else "a", "s1", at) is not None
    assert await throttle.begin("a", "s1", 5.0) is None  # the pair's limit
    assert await throttle.begin("b", "s1", 5.0) is not None  # other ids from that source: up to per_source
    assert await throttle.begin("a", "s2", 5.0) is not None  # a source that has not failed
    assert await throttle.begin("a", "s1", 11.5) is not None  # the window has passed for the first failure
    ok = await throttle.begin("c", "s3", 20.0)
    assert ok is not None
    await ok.succeeded()
    assert not await throttle.blocked("c", "s3", 20.0)
    # The console's counts are not the agency page's.
    assert not await LoginThrottle(web_store.counters, "other", 2, 10).blocked("a", "s1", 5.0)


async def test_throttle_rows_stay_bounded_under_a_spray(web_store: Store, tmp_path: Path) -> None:
    throttle = LoginThrottle(web_store.counters, "test", window_s=1.0)
    for i in range(1000):
        await throttle.begin(f"id{i}", f"10.0.{i // 250}.{i % 250}", float(i) / 10)
    [(rows,)] = await web_store._db.fetchall("SELECT count(*) FROM throttle_hits")
    assert rows <= 3 * 11 + 3 * counters.PURGE_BATCH  # the last second's attempts, and not much of the rest


# -- sessions in the store ---------------------------------------------------------------------


async def test_a_session_whose_lifetime_is_over_is_signed_out_and_its_cookie_deleted(
        client: Client, web_store: Store) -> None:
    assert (await _post_login(client, AGENT, AGENT_PASSWORD)).status == 303
    token = await _page_token(client)
    await web_store._db.execute("UPDATE web_sessions SET expires_at = 0")
    response = await client.get("/console", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/console/login")
    assert re.search(rf"{SESSION_COOKIE}=\"?\"?;", response.headers["Set-Cookie"])  # deleted
    response = await client.post("/console/api/agent/login", json={}, headers={"X-CSRF-Token": token})
    assert response.status == 401


async def test_a_session_idle_too_long_is_signed_out(client: Client, web_store: Store) -> None:
    assert (await _post_login(client, AGENT, AGENT_PASSWORD)).status == 303
    assert (await client.get("/console", allow_redirects=False)).status == 200
    await web_store._db.execute("UPDATE web_sessions SET last_seen_at = last_seen_at - 8 * 3600 - 1")
    assert (await client.get("/console", allow_redirects=False)).status == 303


async def test_a_logout_ends_the_open_event_streams_of_that_user(client: Client) -> None:
    assert (await _post_login(client, AGENT, AGENT_PASSWORD)).status == 303
    token = await _page_token(client)
    stream = await client.get("/console/events")
    assert stream.status == 200
    assert (await stream.content.readline()).startswith(b"data: ")  # the state
    assert (await client.post("/console/logout", data={"csrf": token}, allow_redirects=False)).status == 303
    async with asyncio.timeout(5):  # within a heartbeat (0.2 s here), the stream ends
        rest = await stream.content.read()
    assert b"data: " not in rest


@contextlib.asynccontextmanager
async def _two_hosts(store_database: StoreDatabase, desks: tuple[SlowDesk, SlowDesk]
                     ) -> AsyncIterator[tuple[Client, Client]]:
    """Two control processes' consoles on one database: two stores, two servers."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for desk in desks:
            store = await stack.enter_async_context(open_store(store_database.target, fixed_protector()))
            clients.append(await stack.enter_async_context(TestClient(TestServer(_console_app(desk, store)))))
        yield clients[0], clients[1]


def _cookie(client: Client) -> dict[str, str]:
    """The session cookie of one host's browser, to send to the other host (on another port)."""
    token = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    return {"Cookie": f"{SESSION_COOKIE}={token}"}


async def test_fifty_wrong_passwords_at_two_hosts_are_checked_five_times(store_database: StoreDatabase) -> None:
    desks = (_slow_desk(), _slow_desk())
    try:
        async with _two_hosts(store_database, desks) as hosts, contextlib.AsyncExitStack() as stack:
            # One browser each, half at each host, each with its own login form, all posting at once.
            browsers: list[TestClient[Any, Any]] = [
                await stack.enter_async_context(TestClient(hosts[n % 2].server)) for n in range(50)]
            tokens = [_csrf(await (await b.get("/console/login")).text()) for b in browsers]
            responses = await asyncio.gather(*(
                b.post("/console/login", data={"agent_id": AGENT, "password": f"guess-{i}", "csrf": token},
                       allow_redirects=False) for i, (b, token) in enumerate(zip(browsers, tokens, strict=True))))
            statuses = sorted(r.status for r in responses)
        assert statuses == [401] * LOGIN_FAILURES_ALLOWED + [429] * (50 - LOGIN_FAILURES_ALLOWED)
        assert desks[0].checks + desks[1].checks == LOGIN_FAILURES_ALLOWED
    finally:
        for desk in desks:
            await desk.close()


async def test_a_session_made_on_one_host_works_on_the_other_and_a_logout_there_ends_it(
        store_database: StoreDatabase) -> None:
    desks = (_slow_desk(), _slow_desk())
    try:
        async with _two_hosts(store_database, desks) as (a, b):
            assert (await _post_login(a, AGENT, AGENT_PASSWORD)).status == 303
            cookie = _cookie(a)
            page = await b.get("/console", headers=cookie, allow_redirects=False)
            assert page.status == 200
            token = _csrf(await page.text(), r'<meta name="csrf-token" content="([^"]+)"')
            assert token == await _page_token(a)  # one session, one CSRF secret, on both hosts
            stream = await a.get("/console/events")
            assert (await stream.content.readline()).startswith(b"data: ")
            logout = await b.post("/console/logout", data={"csrf": token}, headers=cookie, allow_redirects=False)
            assert logout.status == 303
            async with asyncio.timeout(5):  # host A's stream ends at its next heartbeat
                assert b"data: " not in await stream.content.read()
            assert (await a.get("/console", allow_redirects=False)).status == 303
    finally:
        for desk in desks:
            await desk.close()


async def test_a_session_survives_a_restart(store_database: StoreDatabase) -> None:
    desk = _slow_desk()
    try:
        async with open_store(store_database.target, fixed_protector()) as store:
            async with TestClient(TestServer(_console_app(desk, store))) as before:
                assert (await _post_login(before, AGENT, AGENT_PASSWORD)).status == 303
                cookie = _cookie(before)
        async with open_store(store_database.target, fixed_protector()) as store:
            async with TestClient(TestServer(_console_app(desk, store))) as after:
                assert (await after.get("/console", headers=cookie, allow_redirects=False)).status == 200
    finally:
        await desk.close()


# -- JSON bodies -------------------------------------------------------------------------------


async def test_json_nested_absurdly_deep_gets_400_not_500(client: Client) -> None:
    assert (await _post_login(client, AGENT, AGENT_PASSWORD)).status == 303
    token = await _page_token(client)
    depth = 30_000  # 60 kB: within the body limit, far past the parser's recursion limit
    response = await client.post("/console/api/cases", data=b"[" * depth + b"]" * depth,
                                 headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"] == PAGE_ERRORS["too_deep"]
    response = await client.post("/console/api/cases", data=b"[" * 100_000 + b"]" * 100_000,
                                 headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert response.status == 413  # larger than any form of the console sends
    assert (await response.json())["error"] == PAGE_ERRORS["too_large"]
    chunked = await client.post("/console/api/cases", data=_chunks(b" " * (JSON_BODY_MAX_BYTES + 1)),
                                headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert chunked.status == 413  # no Content-Length to go by


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 8192):
        yield data[start:start + 8192]


# -- HTTPS -------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _secure_cookie(response: ClientResponse) -> str:
    cookie = response.headers["Set-Cookie"]
    assert re.search(r";\s*Secure\b", cookie), cookie
    return cookie


async def test_https_site_of_the_softswitch_sets_secure_cookies(tmp_path: Path, web_store: Store) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    config = Config(data_dir=tmp_path, http=HttpConfig(port=0, tls_cert_file=cert_file, tls_key_file=key_file))
    desk = FakeDesk([(fake_account(AGENT, "مریم احمدی"), AGENT_PASSWORD)])
    switch = SimpleNamespace(config=config, desk=desk, store=web_store, synthesizer=EspeakSynthesizer(),
                             intake_filed=lambda channel, duplicate: None)
    runner = await Softswitch._start_http(switch)  # type: ignore[arg-type]  # the real site, as `run` starts it
    try:
        port = runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(cert_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust),
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # an IP host
            base = f"https://127.0.0.1:{port}"
            form = await browser.get(f"{base}/console/login")
            _secure_cookie(form)
            response = await browser.post(f"{base}/console/login", allow_redirects=False, data={
                "agent_id": AGENT, "password": AGENT_PASSWORD, "csrf": _csrf(await form.text())})
            assert response.status == 303
            assert "HttpOnly" in _secure_cookie(response)
            page = await browser.get(f"{base}/console", allow_redirects=False)
            assert page.status == 200  # the Secure cookie went back over HTTPS
        async with aiohttp.ClientSession() as plain:  # plain HTTP is not served on that port
            with pytest.raises(aiohttp.ClientError):
                await plain.get(f"http://127.0.0.1:{port}/console/login")
    finally:
        await runner.cleanup()
        await desk.close()


async def test_secure_cookies_behind_a_tls_terminating_proxy(desk: SlowDesk, web_store: Store) -> None:
    http = HttpConfig(secure_cookies=True)
    assert http.cookies_secure and not http.tls and http.ssl_context() is None
    app = web.Application()
    install_sessions(app, web_store, secure_cookies=http.cookies_secure)
    add_console_routes(app, desk)
    async with TestClient(TestServer(app)) as plain:  # the proxy speaks plain HTTP to the softswitch
        _secure_cookie(await plain.get("/console/login"))
    assert not HttpConfig().cookies_secure


def test_tls_config_needs_both_files_and_a_matching_key(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    assert HttpConfig(tls_cert_file=cert_file, tls_key_file=key_file).cookies_secure
    with pytest.raises(ValidationError, match="go together"):
        HttpConfig(tls_cert_file=cert_file)
    with pytest.raises(ValidationError, match="cannot serve HTTPS"):
        HttpConfig(tls_cert_file=cert_file, tls_key_file=tmp_path / "missing.pem")
    (tmp_path / "other").mkdir()
    _, other_key = _self_signed(tmp_path / "other")
    with pytest.raises(ValidationError, match="cannot serve HTTPS"):
        HttpConfig(tls_cert_file=cert_file, tls_key_file=other_key)
