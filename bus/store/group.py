"""Group commit: many callers' writes in one transaction, so one fsync answers them all.

A caller awaits :meth:`GroupWriter.put`; the first one starts a writer that hands everything
queued to ``write`` in a worker thread, and again for what was queued meanwhile, until the
queue is empty. Each caller returns once the call that held its item returned (its item is
durable), or raises what that call raised."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupWriter(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self.write = write
        self._queued: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def put(self, item: T) -> None:
        """Queue ``item``; returns once it is written."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await asyncio.to_thread(self.write, [item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
