"""The generated Kamailio configuration is accepted by Kamailio itself, and sized by the worker plan."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from softswitch.config import ConfigError, load_config
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
