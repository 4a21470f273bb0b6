"""Test softphones for SIP tests: a wrapper that runs tests/sip/softphone.py and awaits its events.

Protocol (one JSON object per line). Commands, on the process's stdin:

    {"cmd": "register", "registrar": "sip:127.0.0.1:16060", "user": "1001", "password": "...",
     "realm": "softswitch-111", "expires_s": 60}           realm "*" answers any realm
    {"cmd": "unregister"}
    {"cmd": "answer_policy", "answer_after_s": 1.0}        incoming calls: 180, then 200 after 1 s
    {"cmd": "answer_policy", "answer_after_s": null}       ... 180 and ring until "answer"
    {"cmd": "answer_policy", "reject_code": 486}           ... refused with 486 at once
    {"cmd": "dial", "uri": "sip:111@127.0.0.1:16060", "headers": {"X-Foo": "bar"}}
    {"cmd": "answer", "call": ID}  {"cmd": "reject", "call": ID, "code": 486}
    {"cmd": "dtmf", "call": ID, "digits": "0499370899#", "duration_ms": 160}    RFC 4733
    {"cmd": "play", "call": ID, "wav": "/path.wav", "loop": true}    8 kHz mono WAV; starts with media
    {"cmd": "stop_play", "call": ID}
    {"cmd": "record", "call": ID, "wav": "/path.wav"}       what the phone hears, until stop or the end
    {"cmd": "stop_record", "call": ID}
    {"cmd": "hold", "call": ID}  {"cmd": "unhold", "call": ID}      re-INVITE sendonly, then sendrecv
    {"cmd": "transfer", "call": ID, "uri": "sip:..."}      REFER (blind transfer)
    {"cmd": "info", "call": ID, "content_type": "application/dtmf", "body": "5"}
    {"cmd": "hangup", "call": ID, "code": 603}             no "call": every call; "code" optional
    {"cmd": "quit"}                                        stdin EOF or SIGTERM quits as well

"call" may be left out when exactly one call is up. Events, on stdout; each has
"event" and "t" (time.monotonic() of the phone, comparable with this process's on Linux):

    {"event": "ready", "pid": 123, "sip_port": 16200, "uri": "sip:phone@127.0.0.1:16200"}
    {"event": "registered", "code": 200, "reason": "OK", "expires_s": 60, "contacts": ["<sip:...>;expires=60"]}
    {"event": "unregistered", "code": 200, "reason": "OK"}
    {"event": "reg_failed", "code": 403, "reason": "Wrong Password"}
    {"event": "answer_policy", "answer_after_s": 1.0, "reject_code": null}   acknowledges the command
    {"event": "dialing", "call": ID, "uri": "sip:..."}
    {"event": "incoming", "call": ID, "from": "<sip:...>", "to": "<sip:...>", "request_uri": "sip:...",
     "source": "127.0.0.1:16060", "headers": {"X-...": "..."}}
    {"event": "state", "call": ID, "state": "CALLING|INCOMING|EARLY|CONNECTING|CONFIRMED|DISCONNECTED",
     "code": 180, "reason": "Ringing"}
    {"event": "media", "call": ID}                         audio flows: pending play/record start
    {"event": "dtmf", "call": ID, "digit": "5"}
    {"event": "play_done", "call": ID, "wav": "..."}       only for "loop": false
    {"event": "recorded", "call": ID, "wav": "...", "complete": true}    the library closed the WAV file
    {"event": "ended", "call": ID, "code": 200, "reason": "Normal call clearing", "connected_s": 3.2}
    {"event": "transfer_status", "call": ID, "code": 403, "reason": "Forbidden", "final": true}
    {"event": "error", "cmd": "dtmf", "detail": "..."}
    {"event": "bye"}                                       last line before a clean exit (code 0)

A call's ID is its SIP Call-ID as this phone sees it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from softswitch.config import PROJECT_ROOT

Event = dict[str, Any]


class Softphone:
    """One softphone process on the given ports; a context manager that stops it (by its PID) at the end.

    ``wait_for`` returns the first event that matches and was not returned
    before, so waiting twice for "incoming" gives two different calls.
    """

    def __init__(self, name: str, log_dir: Path, *, sip_port: int, rtp_port: int, rtp_port_range: int = 20,
                 user: str = "phone", sip_trace: bool = False, nat_host: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.name = name
        self.host, self.sip_port = host, sip_port
        self.uri = f"sip:{user}@{host}:{sip_port}"
        self.log_path = log_dir / f"{name}.log"
        self._argv = [sys.executable, "-m", "tests.sip.softphone", "--host", host, "--sip-port", str(sip_port),
                      "--rtp-port", str(rtp_port), "--rtp-port-range", str(rtp_port_range), "--user", user]
        if sip_trace:
            self._argv.append("--sip-trace")
        if nat_host:
            self._argv += ["--nat-host", nat_host]
        self._events: list[Event] = []
        self._taken: set[int] = set()
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self.returncode: int | None = None

    # -- process -----------------------------------------------------------
    def start(self, timeout_s: float = 15) -> Softphone:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self._process = subprocess.Popen(self._argv, cwd=str(PROJECT_ROOT), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        threading.Thread(target=self._read_events, name=f"{self.name}-events", daemon=True).start()
        self.wait_for("ready", timeout_s=timeout_s)
        return self

    def stop(self, timeout_s: float = 10) -> int:
        """Quit cleanly (hang up, unregister); kill the process if it does not exit in time."""
        process = self._process
        if process is None:
            return self.returncode if self.returncode is not None else 0
        if process.poll() is None:
            try:
                self.send("quit")
                assert process.stdin is not None
                process.stdin.close()
            except (OSError, ValueError):
                pass  # it is already gone
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()  # Popen.kill signals this process's own PID
                process.wait()
        self.returncode = process.returncode
        self._process = None
        return self.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _read_events(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.rstrip("\n")}
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._events.append({"event": "exited", "t": time.monotonic()})
            self._changed.notify_all()

    # -- commands ----------------------------------------------------------
    def send(self, cmd: str, **fields: Any) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError(f"softphone {self.name} is not running")
        process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        process.stdin.flush()

    def register(self, registrar: str, user: str, password: str, *, realm: str = "*", expires_s: int = 60,
                 timeout_s: float = 10) -> Event:
        """Register and return the outcome: a "registered" or "reg_failed" event."""
        self.send("register", registrar=registrar, user=user, password=password, realm=realm, expires_s=expires_s)
        return self.wait_for(("registered", "reg_failed"), timeout_s=timeout_s)

    def unregister(self, timeout_s: float = 10) -> Event:
        self.send("unregister")
        return self.wait_for(("unregistered", "reg_failed"), timeout_s=timeout_s)

    def answer_policy(self, answer_after_s: float | None = 0.0, reject_code: int | None = None) -> None:
        """How incoming calls are met from now on (acknowledged before this returns)."""
        self.send("answer_policy", answer_after_s=answer_after_s, reject_code=reject_code)
        self.wait_for("answer_policy", timeout_s=5)

    def dial(self, uri: str, headers: dict[str, str] | None = None, timeout_s: float = 5) -> str:
        """Start a call; return its ID (the SIP Call-ID)."""
        self.send("dial", uri=uri, headers=headers or {})
        return str(self.wait_for(("dialing", "error"), timeout_s=timeout_s, predicate=_not_error)["call"])

    def dtmf(self, call: str, digits: str, duration_ms: int = 160) -> None:
        self.send("dtmf", call=call, digits=digits, duration_ms=duration_ms)

    def play(self, call: str, wav: Path, loop: bool = True) -> None:
        self.send("play", call=call, wav=str(wav), loop=loop)

    def stop_play(self, call: str) -> None:
        self.send("stop_play", call=call)

    def record(self, call: str, wav: Path) -> None:
        self.send("record", call=call, wav=str(wav))

    def stop_record(self, call: str, timeout_s: float = 5) -> Event:
        self.send("stop_record", call=call)
        return self.wait_for("recorded", call=call, timeout_s=timeout_s)

    def hold(self, call: str) -> None:
        self.send("hold", call=call)

    def unhold(self, call: str) -> None:
        self.send("unhold", call=call)

    def transfer(self, call: str, uri: str) -> None:
        self.send("transfer", call=call, uri=uri)

    def info(self, call: str, content_type: str, body: str) -> None:
        self.send("info", call=call, content_type=content_type, body=body)

    def kill(self) -> None:
        """A phone that dies: no BYE, no more RTP, no unregistration."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def answer(self, call: str) -> None:
        self.send("answer", call=call)

    def reject(self, call: str, code: int = 486) -> None:
        self.send("reject", call=call, code=code)

    def hangup(self, call: str | None = None, code: int | None = None) -> None:
        self.send("hangup", call=call, code=code)

    # -- events ------------------------------------------------------------
    def wait_for(self, event: str | tuple[str, ...] | None = None, *, timeout_s: float = 10,
                 predicate: Callable[[Event], bool] | None = None, **fields: Any) -> Event:
        """The first event not returned before whose name is `event` (one of them), whose
        `fields` are equal to those given, and for which `predicate` holds."""
        names = (event,) if isinstance(event, str) else event

        def matches(candidate: Event) -> bool:
            return ((names is None or candidate.get("event") in names)
                    and all(candidate.get(k) == v for k, v in fields.items())
                    and (predicate is None or predicate(candidate)))
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index, candidate in enumerate(self._events):
                    if index not in self._taken and matches(candidate):
                        self._taken.add(index)
                        return candidate
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._events and self._events[-1]["event"] == "exited"):
                    break
                self._changed.wait(remaining)
        wanted = " ".join(filter(None, [str(names or "any event"), str(fields or "")]))
        raise AssertionError(f"softphone {self.name}: no {wanted} within {timeout_s}s; events:\n"
                             + "\n".join(json.dumps(e, ensure_ascii=False) for e in self.events()[-25:])
                             + f"\nlog tail ({self.log_path}):\n" + self._log_tail())

    def events(self, event: str | None = None) -> list[Event]:
        """Every event so far (of one name), taken or not."""
        with self._changed:
            return [e for e in self._events if event is None or e.get("event") == event]

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def phones_at(front_port: int, directory: Path, **kwargs: Any) -> Iterator[Phones]:
    """Phones registering at the front on 127.0.0.1:``front_port``, all stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        yield Phones(directory, stack, front=f"127.0.0.1:{front_port}", **kwargs)


class Phones:
    """Softphones on ports of their own, all stopped (by PID) when the stack closes.

    Phone n takes SIP port ``sip_port + n`` and RTP ports from ``rtp_port + 20 n``;
    ``numbers`` may be shared by several of these (one per test) so that no port is
    used twice against one softswitch, whose front may still hold an earlier
    phone's registration.
    """

    def __init__(self, directory: Path, stack: contextlib.ExitStack, *, front: str, password: str,
                 sip_port: int, rtp_port: int, numbers: Iterator[int] | None = None) -> None:
        self.directory, self.stack = directory, stack
        self.front, self.password = front, password
        self.sip_port, self.rtp_port = sip_port, rtp_port
        self.numbers = numbers if numbers is not None else itertools.count()

    def new(self, name: str, nat_host: str | None = None) -> Softphone:
        n = next(self.numbers)
        phone = Softphone(name, self.directory, sip_port=self.sip_port + n, rtp_port=self.rtp_port + 20 * n,
                          user=name, nat_host=nat_host)
        return self.stack.enter_context(phone)

    def agent(self, agent_id: str, answer_after_s: float | None, *, nat_host: str | None = None,
              name: str | None = None) -> Softphone:
        """A softphone registered at the front as this agent, answering after answer_after_s (None: never)."""
        phone = self.new(name or f"agent{agent_id}", nat_host=nat_host)
        outcome = phone.register(f"sip:{self.front}", agent_id, self.password)
        assert outcome["event"] == "registered" and outcome["code"] == 200, outcome
        phone.answer_policy(answer_after_s)
        return phone


def _not_error(event: Event) -> bool:
    if event["event"] == "error":
        raise AssertionError(f"softphone refused the command: {event}")
    return True
