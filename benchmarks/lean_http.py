"""A lean load client: keep-alive HTTP/1.1 POSTs on raw asyncio streams, a pool of
connections, nothing parsed beyond the status line and Content-Length. httpx costs more per
request than the node it measures (7 ms against 3.85 ms); this costs a fraction of it."""

from __future__ import annotations

import asyncio
import json
import re
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class LeanClient:
    def __init__(self, url: str, token: str, connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self.connections = connections
        self._pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self._pool = asyncio.Queue()

    async def __aenter__(self) -> LeanClient:
        for _ in range(self.connections):
            self._pool.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        while not self._pool.empty():
            _, writer = self._pool.get_nowait()
            writer.close()

    async def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON; the status and the parsed answer."""
        payload = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        reader, writer = await self._pool.get()
        try:
            writer.write(head + payload)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            found = _LENGTH.search(answer)
            data = await reader.readexactly(int(found.group(1)) if found else 0)
        finally:
            self._pool.put_nowait((reader, writer))
        return int(answer.split(b" ", 2)[1]), json.loads(data) if data else None
