"""The worked example of docs/protocol.md, computed: run it to print every value the
document quotes (tests/test_protocol.py checks the document still says these).

    python docs/protocol_example.py
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.trust.signing import pae
from bus.wire.codec import DOCUMENT, SIGNED_EVENT, default_codec
from bus.wire.model import DOCUMENT_TYPE, Algorithm, Document, Role, Signature, SignedEvent

#: A key for the example only: the 32-byte Ed25519 seed 00 01 02 … 1f.
SEED = bytes(range(32))
DOCUMENT_EXAMPLE = Document(
    document_id="3f1b8c2e-7a4d-4e59-9c1a-2b6d0e8f4a17",
    sender="000.00.00.G22",
    recipients=("000.00.00.H41",),
    subject="Kế hoạch",
    issued_at=datetime(2026, 11, 25, 8, 0, tzinfo=UTC),
)


def values() -> dict[str, str]:
    """Each quoted value by its name in the document, as lowercase hex (or text)."""
    codec = default_codec()
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    public = key.public_key().public_bytes_raw()
    payload = codec.encode_document(DOCUMENT_EXAMPLE)
    signed = pae(DOCUMENT_TYPE, payload)
    sig = key.sign(signed)
    event = SignedEvent(
        DOCUMENT_TYPE,
        payload,
        (Signature(Role.SIGNER, Algorithm.ED25519, "00" * 32, (), sig),),
    )
    record = codec.encode_event(event)
    return {
        "public-key": public.hex(),
        "document-fingerprint": codec.fingerprint(DOCUMENT).hex(),
        "signed-event-fingerprint": codec.fingerprint(SIGNED_EVENT).hex(),
        "payload": payload.hex(),
        "pae": signed.hex(),
        "signature": sig.hex(),
        "record": record.hex(),
        "event-digest": hashlib.sha256(record).hexdigest(),
    }


if __name__ == "__main__":
    for name, value in values().items():
        print(f"{name}:\n{value}\n")
