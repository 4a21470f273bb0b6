"""The generated Kamailio configuration is accepted by Kamailio itself, and sized by the worker plan."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from softswitch.config import Config, ConfigError, load_config
from softswitch.control import sipfront
from softswitch.control.capacity import plan_workers
from softswitch.worker.engine import EngineInfo

pytestmark = pytest.mark.unit

BUILT = EngineInfo(version="2.17", max_calls=1000)
WHEEL = EngineInfo(version="2.15.1", max_calls=4)


def test_rendered_config_passes_kamailio_check(tmp_path: Path) -> None:
    if shutil.which("kamailio") is None:
        pytest.fail("kamailio is not installed: run scripts/setup.sh")
    config = load_config(overrides={"workers.count": 3, "sip.port": 25999})
    plan = plan_workers(config.workers, BUILT, sip_port=25999, agents=10)
    cfg = sipfront.render(config, plan, tmp_path)
    # Workers start inactive and probed (flags 9); each has its own load id and limit.
    assert (tmp_path / "dispatcher.list").read_text().splitlines() == [
        f"1 sip:127.0.0.1:{5070 + i} 9 0 duid=w{i};maxload=990" for i in range(3)]
    checked = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "127.0.0.1]:25999" in checked.stdout + checked.stderr


def test_with_an_outbound_trunk_the_front_sends_a_workers_call_to_a_number_out_to_it(tmp_path: Path) -> None:
    config = load_config(overrides={"queue.callback.enabled": True, "sip.outbound_trunk": "127.0.0.1:5090",
                                    "sip.port": 25998})
    plan = plan_workers(config.workers, BUILT, sip_port=25998, agents=0)
    cfg = sipfront.render(config, plan, tmp_path)
    text = cfg.read_text()
    assert 'route(WORKER_TO_TRUNK)' in text and '$ru = "sip:" + $rU + "@127.0.0.1:5090";' in text
    checked = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    # Without an outbound trunk nothing goes out.
    assert "WORKER_TO_TRUNK" not in sipfront.render(load_config(), plan, tmp_path / "off").read_text()


def test_plan_fills_in_what_the_config_leaves_open() -> None:
    workers = load_config().workers
    built = plan_workers(workers, BUILT, sip_port=5060, agents=0, cpus=2)
    assert (built.count, built.max_calls, built.dispatch_limit) == (2, 1000, 1000)
    assert built.rtp_ports_per_worker >= 2 * built.max_calls
    assert built.recycle_after_calls == 0  # 2.17 needs no recycling
    wheel = plan_workers(workers, WHEEL, sip_port=5060, agents=0, cpus=2)
    assert (wheel.count, wheel.max_calls, wheel.recycle_after_calls) == (4, 4, 2000)


def test_plan_keeps_slots_for_agents_legs_and_never_exceeds_the_engine() -> None:
    workers = load_config(overrides={"workers.count": 1, "workers.max_calls": 5000}).workers
    plan = plan_workers(workers, BUILT, sip_port=5060, agents=30)
    assert (plan.max_calls, plan.dispatch_limit) == (1000, 970)
    wheel = plan_workers(workers, WHEEL, sip_port=5060, agents=30)
    assert (wheel.max_calls, wheel.dispatch_limit) == (4, 2)  # half kept for agents' legs


def test_plan_refuses_sizes_that_overflow_the_port_space() -> None:
    workers = load_config(overrides={"workers.count": 40}).workers
    with pytest.raises(ConfigError, match="overflow port 65535"):
        plan_workers(workers, BUILT, sip_port=5060, agents=0)


def test_the_route_key_is_private_and_survives_a_rerender(tmp_path: Path) -> None:
    config = load_config(overrides={"data_dir": str(tmp_path), "workers.count": 1,
                                    "kamailio.flood_requests": 7, "sip.trunk_allow": ["10.1.0.0/16"]})
    plan = plan_workers(config.workers, BUILT, sip_port=config.sip.port, agents=0)
    text = sipfront.render(config, plan, tmp_path).read_text()
    key = (tmp_path / "route.key").read_text().strip()
    assert (tmp_path / "route.key").stat().st_mode & 0o777 == 0o600
    assert f'"{key}" + $ci' in text  # Record-Routes are signed with it
    assert "$var(limit) = 7;" in text and '"10.1.0.0/16"' in text
    sipfront.render(config, plan, tmp_path)
    assert (tmp_path / "route.key").read_text().strip() == key


def _rendered(tmp_path: Path, database_url: str | None = None) -> tuple[Config, Path]:
    """The front's config for one worker and one agent, server_id 7, with this database_url."""
    config = load_config(overrides={"data_dir": str(tmp_path), "workers.count": 1, "kamailio.server_id": 7,
                                    "database_url": database_url})
    plan = plan_workers(config.workers, BUILT, sip_port=config.sip.port, agents=1)
    return config, sipfront.render(config, plan, tmp_path)


def _kamailio_check(cfg: Path) -> None:
    checked = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_with_sqlite_the_registrations_stay_in_the_fronts_memory(tmp_path: Path) -> None:
    config, cfg = _rendered(tmp_path)
    text = cfg.read_text()
    assert 'modparam("usrloc", "db_mode", 0)' in text
    assert f'modparam("usrloc", "ka_timeout", {config.agents.keepalive_timeout_s})' in text
    assert "db_postgres" not in text and "db_url" not in text and "server_id=" not in text
    assert "\nreply_route {" not in text and "DROP_SILENT" not in text
    assert "}\n\n# A failed authentication" in text  # the shared registrations' routes leave no trace
    assert sipfront.registrar_database(config, tmp_path) is None
    assert sipfront.command(config, cfg, tmp_path)[0] == "kamailio"  # no environment of its own
    assert not (tmp_path / "pgpass").exists()
    _kamailio_check(cfg)


def test_with_postgresql_every_front_shares_the_location_table(tmp_path: Path) -> None:
    password = "s3cret:with\\colon"
    config, cfg = _rendered(tmp_path, "postgresql://softswitch:s3cret%3Awith%5Ccolon@db.example:6432/calls"
                                      "?sslmode=verify-full&sslrootcert=/etc/softswitch/db-ca.pem")
    text = cfg.read_text()
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert 'modparam("usrloc", "db_mode", 3)' in text and 'modparam("usrloc", "expires_type", 1)' in text
    assert 'modparam("usrloc", "db_url", "postgres://softswitch@db.example:6432/calls")' in text
    assert "server_id=7\n" in text and "server_id = 7 AND" in text
    assert 'modparam("usrloc", "ka_filter", 1)' in text and '"ka_timeout"' not in text
    assert "\nreply_route {" in text and "route[DROP_SILENT]" in text
    # The password is in no file but libpq's own password file, which only the owner reads.
    assert "s3cret" not in text
    pgpass = tmp_path / "pgpass"
    assert pgpass.stat().st_mode & 0o777 == 0o600
    assert pgpass.read_text() == "*:*:*:*:s3cret\\:with\\\\colon\n"
    assert password not in " ".join(sipfront.command(config, cfg, tmp_path))
    assert sipfront.command(config, cfg, tmp_path)[:5] == [
        "env", f"PGPASSFILE={pgpass}", "PGSSLMODE=verify-full", "PGSSLROOTCERT=/etc/softswitch/db-ca.pem",
        "kamailio"]
    _kamailio_check(cfg)


@pytest.mark.parametrize(("url", "kamailio_url", "environment"), [
    ("postgresql://front@10.0.0.5/softswitch", "postgres://front@10.0.0.5:5432/softswitch", []),
    # A Unix socket's directory: with peer authentication no secret is written anywhere.
    ("postgresql://softswitch@/calls?host=/run/postgresql&port=5433", "postgres://softswitch@/calls",
     ["PGHOST=/run/postgresql", "PGPORT=5433"]),
], ids=["tcp", "unix-socket"])
def test_without_a_password_no_password_file_is_written(tmp_path: Path, url: str, kamailio_url: str,
                                                        environment: list[str]) -> None:
    config, cfg = _rendered(tmp_path, url)
    assert f'modparam("usrloc", "db_url", "{kamailio_url}")' in cfg.read_text()
    assert sipfront.command(config, cfg, tmp_path)[:len(environment) + 2] == ["env", *environment, "kamailio"]
    assert not (tmp_path / "pgpass").exists()
    _kamailio_check(cfg)


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://softswitch:pw@db.example/calls?application_name=x", "cannot pass 'application_name'"),
    ("postgresql://softswitch:pw@[2001:db8::5]/calls", "needs its server host"),
    ("postgresql://soft%40switch:pw@db.example/calls", "needs its user"),
], ids=["unknown-parameter", "ipv6-host", "escaped-user"])
def test_a_url_the_front_cannot_use_is_refused_without_quoting_it(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        _rendered(tmp_path, url)
    assert "pw" not in str(refused.value)
    assert not (tmp_path / "kamailio.cfg").exists()
