"""docs/protocol.md stays true: every value its worked example quotes is recomputed, and
the record it shows decodes and verifies as the document says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bus.trust.signing import pae, signature_valid
from bus.wire.codec import default_codec

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))
from protocol_example import DOCUMENT_EXAMPLE, values  # noqa: E402


def _quoted() -> dict[str, str]:
    """The ```hex NAME blocks of the document, whitespace removed."""
    text = (DOCS / "protocol.md").read_text("utf-8")
    return {
        m.group(1): re.sub(r"\s", "", m.group(2))
        for m in re.finditer(r"```hex ([a-z-]+)\n(.*?)```", text, re.S)
    }


def test_every_value_of_the_worked_example_is_what_the_code_computes() -> None:
    quoted = _quoted()
    computed = values()
    text = (DOCS / "protocol.md").read_text("utf-8")
    for name in ("public-key", "payload", "pae", "signature", "record", "event-digest"):
        assert quoted[name] == computed[name], name
    for name in ("document-fingerprint", "signed-event-fingerprint"):
        assert f"`{computed[name]}`" in text, name


def test_the_quoted_record_decodes_and_its_signature_verifies() -> None:
    quoted = _quoted()
    codec = default_codec()
    event = codec.decode_event(bytes.fromhex(quoted["record"]))
    assert codec.decode_payload(event) == DOCUMENT_EXAMPLE
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(quoted["public-key"]))
    [sig] = event.signatures
    assert signature_valid(key, sig.sig, pae(event.payload_type, event.payload))
    assert pae(event.payload_type, event.payload) == bytes.fromhex(quoted["pae"])
