"""A SASL/SCRAM listener in front of the embedded broker, for the SASL tests.

Tansu's memory storage keeps no SCRAM credential (with --authentication it refuses every
login), so this stands in for a Kafka listener that requires SASL: it answers
SaslHandshake and SaslAuthenticate itself as Kafka does (SCRAM-SHA-256/512, server side
by scramp; a refusal is SASL_AUTHENTICATION_FAILED with Kafka's own message), closes a
connection that sends anything but ApiVersions before it has logged in (Kafka's
"unexpected Kafka request during SASL handshake"), then passes every request through.

Given ``may_write(principal, topic)``, it also stands in for Kafka's authorizer where a
write is concerned: a Produce naming a topic the principal may not write is answered
TOPIC_AUTHORIZATION_FAILED for every partition in it (Kafka refuses only those topics;
docbus clients never mix them), and is not passed on. Reads are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping

from aiokafka.protocol import produce
from scramp import ScramException, ScramMechanism
from scramp.core import ScramServer

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM = 58, 33
PRODUCE, TOPIC_AUTHORIZATION_FAILED = 0, 29
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


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


async def _frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


class _Login:
    """One connection's SASL exchange: the mechanism chosen, then scramp's server."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = users
        self.server: ScramServer | None = None
        self.step = 0
        self.user: str | None = None
        self.mechanism = ""

    def handshake(self, body: bytes) -> tuple[bytes, bool]:
        (size,) = struct.unpack(">h", body[:2])
        mechanism = body[2 : 2 + size].decode()
        error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
        if not error:
            self.mechanism, scram = mechanism, ScramMechanism(mechanism)
            info = {u: scram.make_auth_info(p, iteration_count=4096) for u, p in self.users.items()}

            def known(user: str) -> tuple[bytes, bytes, bytes, int]:
                self.user = user  # scramp asks for the user's keys by the name given
                return info[user]

            self.server = scram.make_server(known)
        listed = b"".join(_string(m) for m in MECHANISMS)
        return struct.pack(">hi", error, len(MECHANISMS)) + listed, not error

    def authenticate(self, version: int, body: bytes) -> tuple[bytes, bool | None]:
        """The response, and True (logged in), None (go on) or False (refused: close)."""
        (size,) = struct.unpack(">i", body[:4])
        token = body[4 : 4 + size].decode()
        server = self.server
        assert server is not None
        try:
            if self.step == 0:
                server.set_client_first(token)
                reply, done = server.get_server_first(), None
            else:
                server.set_client_final(token)
                reply, done = server.get_server_final(), True
        except (ScramException, KeyError):
            message = (
                "Authentication failed during authentication due to invalid credentials "
                f"with SASL mechanism {self.mechanism}"
            )
            answer = struct.pack(">h", SASL_AUTHENTICATION_FAILED) + _string(message) + _bytes(b"")
            return answer + (struct.pack(">q", 0) if version else b""), False
        self.step += 1
        answer = struct.pack(">h", 0) + _string(None) + _bytes(reply.encode())
        return answer + (struct.pack(">q", 0) if version else b""), done


def _refused_produce(version: int, frame: bytes, allowed: Callable[[str], bool]) -> bytes | None:
    """The answer to a Produce that names a topic not ``allowed``; None to pass it on."""
    (client,) = struct.unpack(">h", frame[8:10])
    request = getattr(produce, f"ProduceRequest_v{version}").decode(frame[10 + max(client, 0) :])
    if all(allowed(topic) for topic, _ in request.topics):
        return None
    extra = (-1,) * (version >= 2) + (-1,) * (version >= 5) + ([], None) * (version >= 8)
    topics = [
        (topic, [(p, TOPIC_AUTHORIZATION_FAILED, -1, *extra) for p, _ in parts])
        for topic, parts in request.topics
    ]
    response = getattr(produce, f"ProduceResponse_v{version}")
    args = (topics, 0) if version >= 1 else (topics,)
    (correlation,) = struct.unpack(">i", frame[4:8])
    return struct.pack(">i", correlation) + response(*args).encode()


async def _authorized(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    allowed: Callable[[str], bool],
) -> None:
    """Requests on, each Produce checked; answers back in the order asked (aiokafka matches
    them so): an answer of ours waits for those the broker still owes before it."""
    owed: deque[bytes | None] = deque()  # None: the broker's to give

    def flush() -> None:
        while owed and owed[0] is not None:
            answer = owed.popleft()
            assert answer is not None
            writer.write(struct.pack(">i", len(answer)) + answer)

    async def answers() -> None:
        try:
            while True:
                answer = await _frame(up_reader)
                owed.popleft()
                writer.write(struct.pack(">i", len(answer)) + answer)
                flush()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    task = asyncio.create_task(answers())
    try:
        while True:
            frame = await _frame(reader)
            key, version = struct.unpack(">hh", frame[:4])
            refusal = _refused_produce(version, frame, allowed) if key == PRODUCE else None
            owed.append(refusal)
            if refusal is None:
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
            else:
                flush()
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        up_writer.close()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def sasl_listener(
    listen: int,
    upstream: int,
    users: Mapping[str, str],
    may_write: Callable[[str, str], bool] | None = None,
) -> AsyncIterator[list[str]]:
    """SASL (SCRAM) on 127.0.0.1:``listen`` for ``users`` (name → password), plain to
    ``upstream`` once logged in; with ``may_write``, writes only where it allows. Yields
    the names that logged in, one per connection."""
    logins: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = await connect(upstream, writer)
        if up is None:
            return
        up_reader, up_writer = up
        login = _Login(users)
        try:
            while True:
                frame = await _frame(reader)
                key, version, correlation = struct.unpack(">hhi", frame[:8])
                if key == API_VERSIONS:  # the broker's own answer
                    up_writer.write(struct.pack(">i", len(frame)) + frame)
                    await up_writer.drain()
                    answer = await _frame(up_reader)
                    writer.write(struct.pack(">i", len(answer)) + answer)
                    await writer.drain()
                    continue
                (client,) = struct.unpack(">h", frame[8:10])
                body = frame[10 + max(client, 0) :]
                if key == SASL_HANDSHAKE:
                    reply, ok = login.handshake(body)
                    done: bool | None = None if ok else False
                elif key == SASL_AUTHENTICATE and login.server is not None:
                    reply, done = login.authenticate(version, body)
                else:
                    break  # anything else before logging in: closed, as Kafka does
                out = struct.pack(">i", correlation) + reply
                writer.write(struct.pack(">i", len(out)) + out)
                await writer.drain()
                if done is False:
                    break
                if done:
                    user = login.user
                    assert user is not None
                    logins.append(user)
                    if may_write is None:
                        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
                    else:
                        allowed = functools.partial(may_write, user)
                        await _authorized(reader, writer, up_reader, up_writer, allowed)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    try:
        yield logins
    finally:
        server.close()
