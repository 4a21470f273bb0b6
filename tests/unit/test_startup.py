"""Start-up refuses, in one line, what would otherwise fail later or silently."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def start(tmp_path: Path, sip_port: int, *, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``softswitch run`` on loopback ports of its own, as far as it gets."""
    config = tmp_path / "softswitch.yaml"
    config.write_text(f"data_dir: {data_dir or tmp_path / 'var'}\nsip: {{port: {sip_port}}}\n"
                      f"http: {{port: {sip_port + 3051}}}\n"
                      f"workers: {{count: 1, base_port: {sip_port + 10}, rtp_base_port: {sip_port + 1040}}}\n")
    return subprocess.run([sys.executable, "-m", "softswitch.cli", "--config", str(config), "run"],
                          capture_output=True, text=True, timeout=120)


def test_a_taken_sip_port_stops_the_start_with_its_name(tmp_path: Path) -> None:
    """Kamailio would bind it anyway (SO_REUSEADDR) and share the traffic with whoever holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 45360))
        done = start(tmp_path, 45360)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the SIP port 127.0.0.1:45360 is taken" in done.stderr and "Traceback" not in done.stderr


def test_a_data_dir_too_deep_for_unix_sockets_is_named(tmp_path: Path) -> None:
    """Else Kamailio cannot open its RPC socket there and is restarted in a loop while health says starting."""
    done = start(tmp_path, 45460, data_dir=tmp_path / ("d" * 60) / ("e" * 60))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "over the 107 a Unix socket may have: choose a shorter data_dir" in done.stderr
    assert "Traceback" not in done.stderr


def test_start_up_on_a_damaged_store_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "softswitch.db").write_bytes(b"not a database\n" * 300)
    done = start(tmp_path, 45260)
    assert done.returncode == 3, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("softswitch:")]
    assert len(lines) == 1 and "damaged" in lines[0] and "Restore the last backup" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
