"""The one way the HTTP side answers an error in JSON, and the headers every page carries."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def json_error(error: type[web.HTTPError], message: str, *, code: str | None = None,
               fields: list[dict[str, str]] | None = None, **init: Any) -> web.HTTPError:
    """``{"error": message, "code": code, "fields": [...]}`` (code and fields when given) as the HTTP error
    ``error``; ``init`` as the error class takes it (headers, max_size...). Messages never echo personal data."""
    body: dict[str, Any] = {"error": message}
    if code is not None:
        body["code"] = code
    if fields is not None:
        body["fields"] = fields
    return error(text=json.dumps(body, ensure_ascii=False), content_type="application/json", **init)
