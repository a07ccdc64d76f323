"""Reason codes (DESIGN §7) and the one error type that carries them."""

from __future__ import annotations

from enum import StrEnum


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


class DocbusError(Exception):
    """An input the bus refuses, with the reason code a machine can act on."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
