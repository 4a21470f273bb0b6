"""Web: an agent's console on one host, their call's desk on another.

With several hosts on one store (README, "Several hosts"), an agent may log in to the console of any
host while the caller they are rung for came in at another: the call's desk (its screen-pop, the
caller's national ID, case filing, the tracking code read to the caller, the call's recordings) lives
with the call, in the control process of the caller's host. The console of the agent's host then
relays the agent's own requests for that call to the call's host, as the agent's browser sent them:
with their session cookie and CSRF header, which every host checks alike (sessions are in the shared
store). So the one desk that holds the call decides, and nothing about the caller travels but to the
agent who is rung for them.

A relayed request carries ``X-Softswitch-Relayed``; a host never relays one again.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from softswitch.web.responses import json_error
from softswitch.web.sessions import CSRF_HEADER

log = logging.getLogger("softswitch.relay")

RELAYED_HEADER = "X-Softswitch-Relayed"
_FORWARDED_HEADERS = ("Cookie", CSRF_HEADER, "Content-Type", "Accept", "Range")
_RETURNED_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Cache-Control",
                     "X-Content-Type-Options", "Content-Disposition")
UNREACHABLE = "سامانه‌ای که این تماس در آن است در دسترس نیست. چند لحظه دیگر دوباره تلاش کنید."


class HostRelay:
    """Relays an agent's console requests to the host whose desk holds their call."""

    def __init__(self, console_url_of: Callable[[str], Awaitable[str | None]], *, timeout_s: float = 10.0,
                 ca_file: Path | None = None) -> None:
        self._url_of = console_url_of  # a host's name -> the base URL of its web server, None if unknown
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @staticmethod
    def relayed(request: web.Request) -> bool:
        return RELAYED_HEADER in request.headers

    async def forward(self, request: web.Request, host: str, timeout_s: float | None = None) -> web.StreamResponse:
        """The request as the agent sent it, answered by ``host`` (within ``timeout_s``, else the relay's)."""
        body = await request.read()
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().request(request.method, await self._url(host, request.path_qs), data=body,
                                              headers=self._headers(request), ssl=self._ssl,
                                              timeout=timeout) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    name: upstream.headers[name] for name in _RETURNED_HEADERS if name in upstream.headers})
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError, LookupError) as exc:
            log.warning("relay to host %s: %s %s failed: %s", host, request.method, request.path, exc)
            raise json_error(web.HTTPBadGateway, UNREACHABLE, code="host_unreachable") from None

    async def get_json(self, request: web.Request, host: str, path: str) -> Any:
        """GET ``path`` at ``host`` as the agent: its JSON, or None when it cannot be had."""
        try:
            async with self._client().get(await self._url(host, path), headers=self._headers(request),
                                          ssl=self._ssl) as upstream:
                if upstream.status != 200:
                    log.warning("relay to host %s: GET %s answered %d", host, path, upstream.status)
                    return None
                return await upstream.json()
        except (aiohttp.ClientError, TimeoutError, LookupError, ValueError) as exc:
            log.warning("relay to host %s: GET %s failed: %s", host, path, exc)
            return None

    async def events(self, request: web.Request, host: str, path: str) -> AsyncIterator[dict[str, Any]]:
        """The Server-Sent Events of ``path`` at ``host``, as the agent, until that stream ends. No total
        time limit: a stream lasts as long as the call."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        async with self._client().get(await self._url(host, path), headers=self._headers(request), ssl=self._ssl,
                                      timeout=timeout) as upstream:
            if upstream.status != 200:
                raise aiohttp.ClientResponseError(upstream.request_info, (), status=upstream.status)
            async for line in upstream.content:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def _url(self, host: str, path: str) -> str:
        base = await self._url_of(host)
        if not base:
            raise LookupError(f"host {host} has no console URL in the store")
        return base.rstrip("/") + path

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        headers = {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}
        headers[RELAYED_HEADER] = "1"
        return headers
