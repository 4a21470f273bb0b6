"""The generated Kamailio configuration is accepted by Kamailio itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from softswitch import sipfront
from softswitch.config import load_config

pytestmark = pytest.mark.unit


def test_rendered_config_passes_kamailio_check(tmp_path: Path) -> None:
    if shutil.which("kamailio") is None:
        pytest.fail("kamailio is not installed: run scripts/setup.sh")
    config = load_config(overrides={"workers.count": 3, "sip.port": 25999})
    cfg = sipfront.render(config, tmp_path)
    assert (tmp_path / "dispatcher.list").read_text().splitlines() == [
        "1 sip:127.0.0.1:5070 0 0", "1 sip:127.0.0.1:5071 0 0", "1 sip:127.0.0.1:5072 0 0"]
    checked = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "127.0.0.1]:25999" in checked.stdout + checked.stderr
