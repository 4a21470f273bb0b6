"""Control process: the local admin socket behind `softswitch status`, `calls` and `hangup`.

One JSON object a line each way over a Unix stream socket (``run/admin.sock``
under the data directory, mode 0600): ``{"command": "status"}``,
``{"command": "calls"}``, ``{"command": "hangup", "call": "<CDR id or SIP
Call-ID>"}``; the answer is ``{"ok": true, "result": ...}`` or ``{"ok": false,
"error": "<what is wrong>"}``. The server runs on the control process's event
loop; ``request`` is the client, for the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("softswitch.admin")

# A request is a command and a call reference: anything longer is not one.
MAX_REQUEST_BYTES = 4096
COMMANDS = ("status", "calls", "hangup")


class AdminError(Exception):
    """A request the switch refuses or cannot carry out; the message is the answer's ``error``."""


class NotRunning(Exception):
    """Nothing answers at the admin socket."""


class Switchboard(Protocol):
    """What the admin socket asks of the running switch (``softswitch.control.process.Softswitch``)."""

    async def admin_status(self) -> dict[str, Any]: ...

    def admin_calls(self) -> list[dict[str, Any]]: ...

    async def admin_hangup(self, call: str) -> dict[str, Any]:
        """End a call as a normal hang-up; AdminError for a call not in progress."""
        ...


async def serve_admin(board: Switchboard, path: Path) -> asyncio.Server:
    """Listen at ``path`` (a stale socket of a crashed run is replaced), for the service's user only."""
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(lambda r, w: _serve(board, r, w), path=str(path),
                                             limit=MAX_REQUEST_BYTES)
    os.chmod(path, 0o600)
    return server


async def _serve(board: Switchboard, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_REQUEST_BYTES: the rest of the stream cannot be trusted
                writer.write(_answer_error(f"a request is one JSON line of at most {MAX_REQUEST_BYTES} bytes"))
                break
            if not line:
                break
            writer.write(await _answer(board, line))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _answer(board: Switchboard, line: bytes) -> bytes:
    try:
        request = json.loads(line)
    except ValueError:
        return _answer_error("a request is one JSON object on one line")
    command = request.get("command") if isinstance(request, dict) else None
    try:
        match command:
            case "status":
                result: Any = await board.admin_status()
            case "calls":
                result = board.admin_calls()
            case "hangup":
                call = request.get("call")
                if not isinstance(call, str) or not call.strip():
                    raise AdminError("hangup needs \"call\": a CDR id or a SIP Call-ID")
                result = await board.admin_hangup(call.strip())
            case _:
                raise AdminError(f"unknown command {command!r}; the commands are {', '.join(COMMANDS)}")
    except AdminError as exc:
        return _answer_error(str(exc))
    except Exception:
        log.exception("admin request %r failed", command)
        return _answer_error("the request failed inside the softswitch; its log says why")
    return (json.dumps({"ok": True, "result": result}, ensure_ascii=False) + "\n").encode()


def _answer_error(message: str) -> bytes:
    return (json.dumps({"ok": False, "error": message}, ensure_ascii=False) + "\n").encode()


def request(path: Path, command: str, fields: dict[str, str] | None = None, timeout_s: float = 15.0) -> Any:
    """One request to the running switch and its result: NotRunning when nothing listens at ``path``,
    AdminError with the switch's answer when it refuses."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(str(exc)) from None
        sock.sendall((json.dumps({"command": command, **(fields or {})}) + "\n").encode())
        with sock.makefile("rb") as answers:
            line = answers.readline()
    if not line:
        raise AdminError("the softswitch closed the connection without an answer")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise AdminError(str(answer.get("error")))
    return answer.get("result")
