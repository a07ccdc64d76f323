"""The one error model (DESIGN §7): reason codes, and the root every docbus error has.

:class:`BusError` is the root. Each error says whether it is **transient** (the
infrastructure's: a broker, a database or a disk that may come back; retried for as long as
it takes, never dead-lettered, exit 75) or **permanent** (it can never succeed as it is).
Permanent errors split into :class:`DocbusError` (a refused input, with its reason code:
dead-lettered, exit 1) and :class:`Misconfigured` (the setup is wrong: a setting, a login,
an access the broker refuses; fix it and start again: exit 2). Each driver's errors
(sqlite3, psycopg, aiokafka, the OS) are turned into these once, in the adapter that calls
the driver; the consumer runtime and the CLI read ``transient`` and ``exit_code`` only.
"""

from __future__ import annotations

import errno
from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Stable machine codes for why a record was rejected."""

    MALFORMED = "malformed"
    UNKNOWN_SCHEMA = "unknown_schema"
    BAD_SIGNATURE = "bad_signature"
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    SENDER_MISMATCH = "sender_mismatch"
    MISSING_SIGNATURE_ROLE = "missing_signature_role"
    WEAK_ALGORITHM = "weak_algorithm"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    ATTACHMENT_HASH_MISMATCH = "attachment_hash_mismatch"
    TOO_LARGE = "too_large"
    DUPLICATE_CONFLICT = "duplicate_conflict"
    POLICY = "policy"
    ROLE_MISMATCH = "role_mismatch"
    REVOCATION_UNKNOWN = "revocation_unknown"
    UNSAFE_NAME = "unsafe_name"


class BusError(Exception):
    """The root of every error docbus raises on purpose."""

    #: The infrastructure's, not the input's: try again later.
    transient: ClassVar[bool] = False
    #: What a command exits with (DESIGN §7).
    exit_code: ClassVar[int] = 1


class Unavailable(BusError):
    """A broker, a database or a disk that cannot serve now (down, locked, full, timed out).

    :param component: what is unavailable ("broker", "database", "disk").
    """

    transient = True
    exit_code = 75

    def __init__(self, component: str, message: str) -> None:
        super().__init__(f"{component} unavailable, try again later: {message}")
        self.component = component


class Misconfigured(BusError, ValueError):
    """The setup is wrong and no retry can fix it: a bad setting or file, a login the
    broker refuses, an access its ACLs deny."""

    exit_code = 2


class DocbusError(BusError):
    """An input the bus refuses, with the reason code a machine can act on."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


#: Errors of the OS that a retry may cure: a full or failing disk, too many open files, a
#: resource busy for now. Any other OSError is about the thing asked for (missing, denied).
TRANSIENT_ERRNO = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.EBUSY}
)


def os_error(exc: OSError, what: str = "disk") -> BusError:
    """An OS error classified: a timeout, a lost connection or an errno a retry may cure is
    :class:`Unavailable`; anything else (no such file, permission denied) is permanent."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return Unavailable("network", str(exc) or type(exc).__name__)
    if exc.errno in TRANSIENT_ERRNO:
        return Unavailable(what, str(exc))
    return BusError(str(exc))


def classify(exc: BaseException) -> BusError | None:
    """A raised error as the bus's own: itself if it is one, an OS error classified, None
    for anything else (a bug, never mistaken for an unavailable infrastructure)."""
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, OSError):
        return os_error(exc)
    return None
