"""Access control and request limits, as pure ASGI middleware (so server-sent events stream untouched).

API key: with a key set, every route (API, uploads, downloads, the UI and its assets) needs either
`Authorization: Bearer <key>` or the session cookie that the key page sets. A browser that asks for a page
without either is sent to the key page (`/login`), which asks once and sets a cookie for the browser session
(no expiry date: it ends when the browser closes). The cookie holds an HMAC of the key, never the key.
Anything else gets 401 in OpenAI's error shape.

Body size: requests with a body over the limit get 413 (declared Content-Length, or counted as it arrives).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.server.errors import error_body

COOKIE = "assistant_session"
LOGIN_PATH = "/login"


def _send_json(status: int, body: dict, headers: list | None = None):
    payload = json.dumps(body).encode()

    async def send_it(send: Any) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": payload})

    return send_it


async def _send_html(send: Any, status: int, text: str, headers: list | None = None) -> None:
    payload = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(payload)).encode()), (b"cache-control", b"no-store"),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Assistant: API key</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}button{{padding:.5rem 1rem}}
.err{{color:#b00}}</style></head>
<body><h2>Assistant</h2><p>This server is protected by an API key. Enter it once; it is kept for this
browser session.</p>{error}
<form method="post" action="{action}"><input type="password" name="key" id="key" autofocus
 placeholder="API key" autocomplete="current-password"><input type="hidden" name="next" value="{next}">
<button type="submit" id="enter">Enter</button></form></body></html>"""


class AccessMiddleware:
    """API key check (when `api_key` is set) and body-size limits for every HTTP request."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self._secret = secrets.token_bytes(32)
        self._session = hmac.new(self._secret, (api_key or "").encode(), hashlib.sha256).hexdigest()

    # ---- checks
    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.api_key.encode()):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self._session.encode()):
                return True
        return False

    def _limit(self, path: str) -> int:
        return self.max_upload_bytes if path.startswith(("/v1/files", "/gradio_api/upload", "/upload")) \
            else self.max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.api_key is not None:
            if scope["type"] == "http" and path == LOGIN_PATH:
                return await self._login(scope, receive, send)
            if not self._authorized(headers):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                wants_page = scope["method"] == "GET" and b"text/html" in headers.get(b"accept", b"")
                if wants_page:
                    target = quote(path + ("?" + scope["query_string"].decode() if scope.get("query_string") else ""))
                    return await _send_html(send, 303, "", [(b"location", f"{LOGIN_PATH}?next={target}".encode())])
                return await _send_json(401, error_body(
                    401, "Missing or wrong API key: send 'Authorization: Bearer <key>' (the key the server was "
                         "started with, --api-key or ASSISTANT_API_KEY)", code="invalid_api_key"),
                    [(b"www-authenticate", b"Bearer")])(send)
        if scope["type"] == "http":
            limit = self._limit(path)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await self._too_large(send, limit)
            receive = self._counting(receive, limit)
        try:
            await self.app(scope, receive, send)
        except _TooLarge:
            await self._too_large(send, self._limit(path))

    async def _too_large(self, send: Any, limit: int) -> None:
        await _send_json(413, error_body(413, f"request body too large: the limit is {limit} bytes",
                                         code="request_too_large"))(send)

    def _counting(self, receive: Any, limit: int) -> Any:
        seen = 0

        async def wrapped() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        return wrapped

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        target = query.get("next", ["/"])[0]
        if scope["method"] == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if len(body) > 16384 or not message.get("more_body"):
                    break
            form = parse_qs(body.decode("utf-8", "replace"))
            key = form.get("key", [""])[0]
            target = form.get("next", [target])[0]
            if not target.startswith("/") or target.startswith("//"):
                target = "/"
            if hmac.compare_digest(key.encode(), self.api_key.encode()):
                cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"
                return await _send_html(send, 303, "", [(b"location", target.encode()),
                                                        (b"set-cookie", cookie.encode())])
            page = LOGIN_PAGE.format(error='<p class="err" id="error">Wrong key.</p>',
                                     action=LOGIN_PATH, next=html.escape(target))
            return await _send_html(send, 401, page)
        page = LOGIN_PAGE.format(error="", action=LOGIN_PATH, next=html.escape(target))
        await _send_html(send, 200, page)


class _TooLarge(StarletteHTTPException):
    """Raised while the body is read; an HTTPException so that FastAPI passes it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes")
