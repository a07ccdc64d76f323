"""Import edXML messages into docbus documents and statuses (the sending half of the bridge).

Every element of the message lands somewhere: in a Document or Status field, or under
its element path in ``extra``; the original message is kept as an attachment. The
message's own XMLDSig signature is recorded (algorithm, certificate subject); the bridge
signs the result with its own keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime, timedelta, timezone
from xml.etree.ElementTree import Element

from bus.wire.edxml import (
    ACTIONS,
    DATE,
    HEADER,
    ORIGINAL,
    PRIORITIES,
    STATUS_CODES,
    TIMESTAMP,
    TRACE,
    EdxmlError,
    leaf_paths,
    local_name,
    parse,
)
from bus.wire.model import Action, Attachment, Document, Priority, Status, attachment, now_ms

VIETNAM = timezone(timedelta(hours=7))  # edXML timestamps are local time without a zone


class _Message:
    """Path lookups over one parsed message, remembering what was taken."""

    def __init__(self, root: Element) -> None:
        self.paths = dict(leaf_paths(root))
        self.taken: set[str] = set()

    def text(self, path: str, required: bool = False) -> str | None:
        element = self.paths.get(path)
        value = None if element is None or element.text is None else element.text.strip()
        if element is not None:
            self.taken.add(path)
        if required and not value:
            raise EdxmlError("missing or empty", path)
        return value or None

    def each(self, parent: str, name: str) -> list[str]:
        """The paths of every ``name`` child of ``parent``, in order."""
        pattern = re.compile(re.escape(f"{parent}/{name}") + r"(\[\d+\])?")
        return [p for p in self.paths if pattern.fullmatch(p)]

    def first(self, *paths: str) -> str | None:
        """The first of ``paths`` present (for the spellings systems use)."""
        return next((p for p in paths if p in self.paths), None)

    def day(self, path: str) -> date | None:
        value = self.text(path)
        if value is None:
            return None
        try:
            return datetime.strptime(value, DATE).date()
        except ValueError:
            raise EdxmlError(f"{value!r} is not a yyyy/mm/dd date", path) from None

    def leftovers(self) -> dict[str, str]:
        """Every element with text that no field took, by path."""
        return {
            path: element.text.strip()
            for path, element in self.paths.items()
            if path not in self.taken and element.text and element.text.strip() and not len(element)
        }


def _signature(message: _Message) -> dict[str, str]:
    found = {}
    for path, element in message.paths.items():
        if local_name(element) == "SignatureMethod" and element.get("Algorithm"):
            found["edxml.signature.algorithm"] = element.get("Algorithm", "")
        elif local_name(element) == "X509SubjectName" and element.text:
            found["edxml.signature.subject"] = element.text.strip()
        if "/Signature/" in f"/{path}/":
            message.taken.add(path)
    return found


#: Where an edXML status names the document's sender: the agency its status is for.
RESPONSE_FOR = f"{HEADER}/ResponseFor/OrganId"


def import_edxml(data: bytes) -> Document | Status:
    """The Document or Status an edXML message carries. Raises EdxmlError (malformed)."""
    root, _ = parse(data)
    message = _Message(root)
    if f"{HEADER}/StatusCode" in message.paths:
        return _status(message)
    return _document(message, data)


def _status(m: _Message) -> Status:
    code = m.text(f"{HEADER}/StatusCode", required=True) or ""
    if code not in STATUS_CODES:
        raise EdxmlError(f"unknown status code {code!r}", f"{HEADER}/StatusCode")
    stamp = m.text(f"{HEADER}/Timestamp")
    try:
        at = datetime.strptime(stamp, TIMESTAMP).replace(tzinfo=VIETNAM) if stamp else now_ms()
    except ValueError:
        raise EdxmlError(
            f"{stamp!r} is not a yyyy/mm/dd hh:mm:ss time", f"{HEADER}/Timestamp"
        ) from None
    return Status(
        document_id=m.text(f"{HEADER}/ResponseFor/DocumentId", required=True) or "",
        code=STATUS_CODES[code],
        by=m.text(f"{HEADER}/From/OrganId", required=True) or "",
        at=at,
        message=m.text(f"{HEADER}/Description"),
        extra={**_signature(m), **m.leftovers()},
    )


def _document(m: _Message, original: bytes) -> Document:
    sender = m.text(f"{HEADER}/From/OrganId", required=True) or ""
    recipients = [m.text(f"{p}/OrganId", required=True) or "" for p in m.each(HEADER, "To")]
    if not recipients:
        raise EdxmlError("no recipient", f"{HEADER}/To/OrganId")
    number, notation = m.text(f"{HEADER}/Code/CodeNumber"), m.text(f"{HEADER}/Code/CodeNotation")
    business = m.first(f"{TRACE}/Bussiness", f"{TRACE}/Business") or f"{TRACE}/Bussiness"
    kind = m.text(f"{business}/BussinessDocType") or m.text(f"{business}/BusinessDocType") or "0"
    if kind not in ACTIONS:
        raise EdxmlError(f"unknown business type {kind!r}", f"{business}/BussinessDocType")
    priority = m.text(f"{HEADER}/OtherInfo/Priority") or "0"
    files = _attachments(m)
    return Document(
        document_id=m.text(f"{HEADER}/DocumentId", required=True) or "",
        sender=sender,
        recipients=tuple(recipients),
        subject=m.text(f"{HEADER}/Subject", required=True) or "",
        issued_at=now_ms(),
        action=ACTIONS.get(kind, Action.NEW),
        code_number="/".join(x for x in (number, notation) if x) or None,
        document_type=m.text(f"{HEADER}/DocumentType/TypeName"),
        promulgated_at=m.day(f"{HEADER}/PromulgationInfo/PromulgationDate"),
        promulgation_place=m.text(f"{HEADER}/PromulgationInfo/Place"),
        signer_name=m.text(f"{HEADER}/SignerInfo/FullName"),
        signer_title=m.text(f"{HEADER}/SignerInfo/Position"),
        priority=PRIORITIES.get(priority, Priority.NORMAL),
        due_date=m.day(f"{HEADER}/DueDate"),
        response_for=m.text(f"{HEADER}/ResponseFor/DocumentId"),
        attachments=(*files, attachment(ORIGINAL, original, "application/xml")),
        extra={**_signature(m), **m.leftovers()},
    )


def _attachments(m: _Message) -> list[Attachment]:
    out = []
    for path in m.each("AttachmentEncoded", "Attachment"):
        name = m.text(f"{path}/AttachmentName", required=True) or ""
        encoded = f"{path}/ContentTransferEncoded"
        raw = m.text(encoded, required=True) or ""
        try:
            content = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            raise EdxmlError("attachment content is not base64", encoded) from None
        out.append(attachment(name, content, m.text(f"{path}/ContentType")))
    return out
