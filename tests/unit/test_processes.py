"""Process supervision with real processes: a child that leaves children of its own behind (as a Kamailio
whose main process dies does) takes them with it, on a stop and before a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from softswitch.control.processes import ExecChild, ProcessSupervisor, stop_leftovers

pytestmark = pytest.mark.unit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1][0] != "Z"


async def _pid_in(path: Path, timeout_s: float = 5.0) -> int:
    async with asyncio.timeout(timeout_s):
        while not path.exists() or not path.read_text().strip():
            await asyncio.sleep(0.02)
    return int(path.read_text())


async def _gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while _alive(pid) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return not _alive(pid)


async def test_a_child_killed_for_not_stopping_takes_the_processes_it_started_with_it(tmp_path: Path) -> None:
    # Both ignore SIGTERM (an ignored signal stays ignored across exec): the main process, stuck in its
    # shutdown, is killed after the timeout, and its child would live on without its group being ended.
    straggler = tmp_path / "straggler.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {straggler}; wait"
    supervisor = ProcessSupervisor(restart_backoff_s=0.05, pid_dir=tmp_path)
    supervisor.add("front", lambda: ExecChild.start(["bash", "-c", script]), marker=str(straggler))
    pid = await _pid_in(straggler)
    await supervisor.stop(timeout_s=0.5)
    assert await _gone(pid), "the child's own child outlived the stop"
    assert not (tmp_path / "front.pid").exists()


async def test_a_child_that_dies_leaves_nothing_running_into_its_restart(tmp_path: Path) -> None:
    # A main process that dies on its own (exit 3) with a child still running: the child goes before the
    # restart (a Kamailio's would hold the SIP port the restart binds).
    runs = tmp_path / "runs"
    script = (f"echo run >> {runs}; n=$(wc -l < {runs}); sleep 300 & echo $! > {tmp_path}/straggler-$n.pid; "
              "[ \"$n\" = 1 ] && exit 3; wait")
    supervisor = ProcessSupervisor(restart_backoff_s=0.05, pid_dir=tmp_path)
    supervisor.add("front", lambda: ExecChild.start(["bash", "-c", script]))
    try:
        first = await _pid_in(tmp_path / "straggler-1.pid")
        second = await _pid_in(tmp_path / "straggler-2.pid")
        assert await _gone(first), "the dead run's child was still running after the restart"
        assert _alive(second)
        assert supervisor.restarts() == {"front": 1}
    finally:
        await supervisor.stop(timeout_s=0.5)
    assert await _gone(second)


async def test_leftovers_of_a_crashed_run_are_stopped_with_their_children(tmp_path: Path) -> None:
    # What a run that died itself (SIGKILL) left: a child in a session of its own, and that child's child.
    straggler = tmp_path / "straggler.pid"
    marker = str(tmp_path / "marker-of-this-run")
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", f"trap '' TERM; sleep 300 & echo $! > {straggler}; wait # {marker}", start_new_session=True)
    (tmp_path / "front.pid").write_text(f"{process.pid}\n{marker}\n")
    pid = await _pid_in(straggler)
    stopped = await asyncio.get_running_loop().run_in_executor(None, stop_leftovers, tmp_path, 0.5)
    assert stopped == [process.pid]
    assert await process.wait() == -9
    assert await _gone(pid), "the leftover's child outlived it"
