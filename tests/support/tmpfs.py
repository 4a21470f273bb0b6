"""A small tmpfs a test mounts for a full or unmounted disk (root only), and unmounts again."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``size`` as mount(8) takes it ("64m", "32k"); the test is skipped where it cannot mount."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Only what this mounted, lazily: a file still open in it must not keep it mounted.
        subprocess.run(["umount", "-l", str(path)], check=False)
