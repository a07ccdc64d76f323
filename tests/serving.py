"""An ASGI app served by uvicorn on a free loopback port, for tests that speak real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def ready(port: int, status: int, seconds: float) -> dict[str, object]:
    """Poll a service's /readyz on ``port`` until it answers ``status``; its body."""
    async with httpx.AsyncClient() as client, asyncio.timeout(seconds):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                answer = await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if answer.status_code == status:
                    body: dict[str, object] = answer.json()
                    return body
            await asyncio.sleep(0.5)
