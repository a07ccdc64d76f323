"""A TLS terminator in front of the embedded broker, for the TLS tests.

Tansu 0.6 takes --cert but never reads it (its TLS acceptor is built and dropped), so it
cannot serve TLS itself: this stands in for the TLS listener a real Kafka has, with the
broker advertising the terminator's port. With ``client_ca`` it demands a client
certificate signed by it (mTLS), as a broker's authenticated listener does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def connect(
    upstream: int, client: asyncio.StreamWriter
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to the broker behind, or None (and the client's closed) if it is down."""
    try:
        return await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        client.close()
        return None


@contextlib.asynccontextmanager
async def tls_terminator(
    listen: int, upstream: int, cert: Path, client_ca: Path | None = None
) -> AsyncIterator[None]:
    """TLS on 127.0.0.1:``listen`` (``cert``: chain and key in one PEM), plain to
    ``upstream``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await connect(upstream, writer)
        if up is not None:
            await asyncio.gather(pipe(reader, up[1]), pipe(up[0], writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    try:
        yield
    finally:
        server.close()
