"""Routing decisions and configuration validation, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from softswitch.config import ConfigError, load_config
from softswitch.control.routing import Accept, CallFacts, Reject, dialled_number, route

pytestmark = pytest.mark.unit

ALLOW = ("127.0.0.0/8", "::1/128", "10.20.0.0/16")


@pytest.mark.parametrize("uri, number", [
    ("sip:111@127.0.0.1:5060", "111"),
    ("<sip:111@trunk.example;user=phone>", "111"),
    ('"Caller" <sip:0912-123-4567@host>', "09121234567"),
    ("tel:111", "111"),
    ("sip:host-only", None),
    ("garbage", None),
])
def test_dialled_number(uri: str, number: str | None) -> None:
    assert dialled_number(uri) == number


@pytest.mark.parametrize("to_uri, source, expected", [
    ("sip:111@127.0.0.1", "127.0.0.1", Accept("ivr")),
    ("sip:111@127.0.0.1", "10.20.3.4:5060", Accept("ivr")),
    ("sip:111@[::1]", "::1", Accept("ivr")),
    ("sip:112@127.0.0.1", "127.0.0.1", Reject(404, "number not served here")),
    ("sip:1110@127.0.0.1", "127.0.0.1", Reject(404, "number not served here")),
    ("sip:111@127.0.0.1", "192.0.2.7", Reject(403, "source not on the trunk allow-list")),
    ("sip:111@127.0.0.1", "not-an-address", Reject(403, "source not on the trunk allow-list")),
])
def test_route(to_uri: str, source: str, expected: object) -> None:
    assert route(CallFacts(to_uri=to_uri, from_uri="sip:caller@x", source=source), "111", ALLOW) == expected


def test_disallowed_source_is_refused_before_the_number_is_looked_at() -> None:
    assert route(CallFacts("sip:999@x", "sip:a@b", "192.0.2.1"), "111", ALLOW).status_code == 403  # type: ignore[union-attr]


def test_embedded_defaults_load() -> None:
    config = load_config()
    assert config.sip.port == 5060 and config.http.port == 8111 and config.sip.service_number == "111"
    assert config.data_dir.is_absolute()


@pytest.mark.parametrize("body, fragment", [
    ("sip: {port: 70000}", "sip.port"),
    ("workers: {count: 0}", "workers.count"),
    ("sip: {trunk_allow: [not-a-net]}", "trunk_allow"),
    ("sip: {unknown_key: 1}", "unknown_key"),
    ("workers: {base_port: 5059, count: 4}", "falls inside the worker SIP ports"),
    ("- a list", "mapping"),
])
def test_bad_config_names_the_field(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(path)


def test_softswitch_refuses_to_start_with_a_missing_speech_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "no-such-model"
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nrecognizer: {{model_dir: {missing}}}\n"
                      "sip: {port: 45060}\nhttp: {port: 48111}\n"
                      "workers: {count: 1, base_port: 45100, rtp_base_port: 46000}\n")
    done = subprocess.run([sys.executable, "-m", "softswitch.cli", "--config", str(config), "run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot start" in done.stderr and str(missing) in done.stderr


def test_example_config_is_the_embedded_defaults() -> None:
    from softswitch.config import CONFIG_DIR

    assert load_config(CONFIG_DIR / "softswitch.example.yaml") == load_config()


def test_the_store_is_the_sqlite_file_unless_a_postgresql_url_is_set(tmp_path: Path) -> None:
    assert load_config().store_target == load_config().database_path
    url = "postgresql://softswitch:s3cret@db.example:5432/cases?sslmode=verify-full"
    config = load_config(overrides={"database_url": url})
    assert config.store_target == url
    # The password never shows where the config is printed or logged.
    assert "s3cret" not in config.model_dump_json() and "s3cret" not in repr(config)
    for bad, fragment in [("mysql://softswitch:s3cret@db/cases", "postgresql:// URL"),
                          ("postgresql://softswitch:s3cret@db.example", "names no database"),
                          ("postgresql://softswitch:s3cret@db.example:99999/cases", "port"),
                          ("postgresql:///cases", "names no server host")]:
        with pytest.raises(ConfigError, match=fragment) as excinfo:
            load_config(overrides={"database_url": bad})
        assert "database_url" in str(excinfo.value) and "s3cret" not in str(excinfo.value)
