"""An agent's console session over HTTP, for SIP tests that need agents logged in (no browser)."""

from __future__ import annotations

import contextlib
import html
import http.cookiejar
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

_FORM_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
_CONSOLE_DATA = re.compile(r'<script type="application/json" id="console-data">(.*?)</script>', re.DOTALL)


class ConsoleClient:
    def __init__(self, base_url: str, agent_id: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        self.agent_id = agent_id
        self.password = password
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def _open(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
              method: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {}, method=method)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def login(self, as_agent: bool = True) -> ConsoleClient:
        """Log in to the console and (as an agent) report Ready."""
        status, page = self._open("/console/login")
        token = _FORM_CSRF.search(page)
        assert status == 200 and token, (status, page[:300])
        form = urllib.parse.urlencode({"agent_id": self.agent_id, "password": self.password,
                                       "csrf": token.group(1)}).encode()
        status, page = self._open("/console/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        meta = _META_CSRF.search(page)
        assert status == 200 and meta, (status, page[:300])
        self.csrf = meta.group(1)
        if as_agent:
            self.action("login")
        return self

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        status, text = self._open(path, json.dumps(body).encode(),
                                  {"Content-Type": "application/json", "X-CSRF-Token": self.csrf})
        return status, json.loads(text) if text else None

    def delete(self, path: str) -> tuple[int, Any]:
        status, text = self._open(path, None, {"X-CSRF-Token": self.csrf}, method="DELETE")
        return status, json.loads(text) if text else None

    def action(self, action: str, **body: Any) -> Any:
        status, reply = self.post(f"/console/api/agent/{action}", body)
        assert status == 200, (status, reply)
        return reply

    def get_json(self, path: str) -> tuple[int, Any]:
        status, text = self._open(path)
        return status, json.loads(text) if text else None

    def events(self, path: str = "/console/events") -> EventStream:
        """The console's event stream, as the page reads it."""
        return EventStream(self.opener.open(urllib.request.Request(self.base + path), timeout=30))

    def current_offer(self) -> dict[str, Any] | None:
        """The screen-pop the console page opens with (the agent's ringing or connected call)."""
        status, page = self._open("/console")
        data = _CONSOLE_DATA.search(page)
        assert status == 200 and data, (status, page[:300])
        offer: dict[str, Any] | None = json.loads(html.unescape(data.group(1)))["offer"]
        return offer


class EventStream:
    """Server-Sent Events of one stream, read on a thread of their own until ``close``."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # Closing the response from the test's thread ends the read here in one of these ways.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            for line in self._response:
                if line.startswith(b"data: "):
                    with self._changed:
                        self.events.append(json.loads(line[6:]))
                        self._changed.notify_all()

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((e for e in self.events if matches(e)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such console event within {timeout_s}s; events: {self.events}")
                self._changed.wait(remaining)

    def close(self) -> None:
        self._response.close()
