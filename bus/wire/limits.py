"""The bounds on what travels (DESIGN §7): one record size, and a bound on every structure.

``MAX_RECORD_BYTES`` is the one size limit. The publisher checks it before sending
(``too_large``), the codec refuses a longer record, the producers' ``max_request_size`` and
the topics' ``max.message.bytes`` are set from it. Attachments above ``BLOB_THRESHOLD`` do
not count against it: they travel through the blob store, by hash.
"""

from __future__ import annotations

from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Document

MAX_RECORD_BYTES = 4 * 1024 * 1024
#: What a topic must accept: one record plus its batch framing and headers.
MAX_MESSAGE_BYTES = MAX_RECORD_BYTES + 64 * 1024
BLOB_THRESHOLD = 512 * 1024
#: The largest attachment, and all of a document's attachments together (DESIGN §7: 100 MiB
#: is the tested case): one document cannot make a reader copy or hash more than this.
MAX_BLOB_BYTES = 1024 * 1024 * 1024
#: A sealed document's parts are opened in memory: together at most this.
MAX_SEALED_BYTES = 128 * 1024 * 1024

MAX_PARTIES = 1000
MAX_ATTACHMENTS = 256
MAX_EXTRA = 512
MAX_EXTRA_KEY = 512
MAX_TEXT = 64 * 1024
#: Longest document id or attachment name: both become file names (255-byte limit).
MAX_NAME = 200
#: The largest revision: an Avro int.
MAX_REVISION = 2**31 - 1


def check_bounds(doc: Document) -> None:
    """Raise ``too_large`` for a document with more of anything than the bus carries."""
    parties = len(doc.recipients) + len(doc.cc)
    if parties > MAX_PARTIES:
        raise _too_large(f"{parties} recipients and cc (at most {MAX_PARTIES})")
    if len(doc.attachments) > MAX_ATTACHMENTS:
        raise _too_large(f"{len(doc.attachments)} attachments (at most {MAX_ATTACHMENTS})")
    if len(doc.extra) > MAX_EXTRA:
        raise _too_large(f"{len(doc.extra)} extra fields (at most {MAX_EXTRA})")
    for key, value in doc.extra.items():
        if len(key) > MAX_EXTRA_KEY or len(value) > MAX_TEXT:
            raise _too_large(f"extra field {key[:40]!r}… is too long")
    for name, text in (
        ("subject", doc.subject),
        ("code_number", doc.code_number),
        ("document_type", doc.document_type),
        ("promulgation_place", doc.promulgation_place),
        ("signer_name", doc.signer_name),
        ("signer_title", doc.signer_title),
        ("response_for", doc.response_for),
    ):
        if text is not None and len(text) > MAX_TEXT:
            raise _too_large(f"{name} of {len(text)} characters (at most {MAX_TEXT})")
    total = sum(max(a.size, 0) for a in doc.attachments)
    if total > MAX_BLOB_BYTES:
        raise _too_large(f"attachments of {total} bytes together (at most {MAX_BLOB_BYTES})")
    if doc.sealed is not None and total > MAX_SEALED_BYTES:
        raise _too_large(f"sealed attachments of {total} bytes (at most {MAX_SEALED_BYTES})")


def check_record_size(size: int) -> None:
    """Raise ``too_large`` for a signed record over the one limit."""
    if size > MAX_RECORD_BYTES:
        raise _too_large(
            f"the signed record is {size} bytes, over the {MAX_RECORD_BYTES}-byte limit "
            f"(attachments over {BLOB_THRESHOLD} bytes go to the blob store)"
        )


def _too_large(message: str) -> DocbusError:
    return DocbusError(Reason.TOO_LARGE, message)
