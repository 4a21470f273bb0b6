"""An agent's console session over HTTP, for SIP tests that need agents logged in (no browser)."""

from __future__ import annotations

import html
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
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

    def current_offer(self) -> dict[str, Any] | None:
        """The screen-pop the console page opens with (the agent's ringing or connected call)."""
        status, page = self._open("/console")
        data = _CONSOLE_DATA.search(page)
        assert status == 200 and data, (status, page[:300])
        offer: dict[str, Any] | None = json.loads(html.unescape(data.group(1)))["offer"]
        return offer
