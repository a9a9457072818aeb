"""Request body limits, as a small ASGI middleware: a request whose body is larger than allowed is answered
413 with a message before the application reads it (uploads get their own, larger limit)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

MAX_JSON_BYTES = 1024**2  # a request's JSON: prompts are cut at 300 characters anyway
MAX_UPLOAD_BYTES = 6 * 1024**2  # an upload: gradio's own max_file_size (5 MB) plus multipart overhead
MAX_FILE_SIZE = "5mb"  # gradio's per-file upload limit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over the limit: by Content-Length up front, and by counting a body sent without one."""

    def __init__(self, app: Callable, json_bytes: int = MAX_JSON_BYTES, upload_bytes: int = MAX_UPLOAD_BYTES):
        self.app, self.json_bytes, self.upload_bytes = app, json_bytes, upload_bytes

    def limit(self, scope: Scope) -> int:
        return self.upload_bytes if scope.get("path", "").rstrip("/").endswith("/upload") else self.json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await refuse(send, limit)
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await refuse(send, limit)


async def refuse(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"the request body is larger than this server accepts ({limit:,} bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
