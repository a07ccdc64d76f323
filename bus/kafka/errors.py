"""aiokafka's errors in the bus's error model (:mod:`bus.wire.errors`), classified once.

Everything that talks to a broker (the consumer runtime, the publisher, the admin commands,
the CLI) asks :func:`classified` what a failure means, and nothing else.
"""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    MessageSizeTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)

from bus.wire.errors import BusError, DocbusError, Misconfigured, Reason, Unavailable, classify

LOGIN_REFUSED = (
    "SASL authentication failed: the broker knows no such user or password "
    "(DOCBUS_SASL_USERNAME, DOCBUS_SASL_PASSWORD)"
)

_FORBIDDEN = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


class Forbidden(Misconfigured):
    """The broker's ACLs deny this principal what it asked (a topic, a group): no retry
    grants it, an operator must."""


class TooLarge(DocbusError):
    """A record larger than the broker or the producer takes: no retry makes it fit."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.TOO_LARGE, message)


def classified(exc: BaseException) -> BusError | None:
    """A failure in the error model: a refusal by the broker's ACLs or its login is
    :class:`Forbidden` or :class:`Misconfigured`, a record too large :class:`TooLarge`,
    a retriable Kafka error (or the network) :class:`Unavailable`; None for a bug."""
    if isinstance(exc, _FORBIDDEN):
        return Forbidden(f"the broker refused: {type(exc).__name__} ({exc})")
    if isinstance(exc, MessageSizeTooLargeError):
        return TooLarge(f"the broker refused the record's size: {exc}")
    if isinstance(exc, SaslAuthenticationFailed) or scram_refused(exc):
        return Misconfigured(LOGIN_REFUSED)
    if isinstance(exc, UnsupportedSaslMechanismError):
        return Misconfigured(
            "the broker does not offer this SASL mechanism: check DOCBUS_SASL_MECHANISM"
        )
    if isinstance(exc, KafkaError):
        if exc.retriable:
            return Unavailable("broker", str(exc) or type(exc).__name__)
        return BusError(f"the broker refused: {exc!r}")
    return classify(exc)


def scram_refused(exc: BaseException) -> bool:
    """aiokafka's SCRAM client fails on a server's refusal in its final message (``e=…``,
    where Kafka itself answers SASL_AUTHENTICATION_FAILED) with a bare KeyError raised
    where it reads that message."""
    if not isinstance(exc, KeyError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "process_server_final_message"
