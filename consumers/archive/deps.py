"""What the archive API's routes depend on: the archive they read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bus.store.archive import Archive


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(archive_of)]
