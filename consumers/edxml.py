"""Export docbus documents and statuses as edXML (the receiving half of the bridge).

The output follows the samples' structure in the 2016 namespace: mapped fields are
written to their elements, and every ``extra`` entry whose key is an element path is put
back at that path, so importing the export gives the same document.
"""

from __future__ import annotations

import base64
import re
from xml.etree.ElementTree import Element, SubElement, register_namespace, tostring

import structlog

from bus.wire.edxml import (
    ACTIONS,
    DATE,
    HEADER,
    NS_2016,
    ORIGINAL,
    PRIORITIES,
    STATUS_CODES,
    TIMESTAMP,
    TRACE,
)
from bus.wire.model import Document, Status

_STEP = re.compile(r"([A-Za-z_][\w.-]*)(?:\[(\d+)\])?")
_CODE = {v: k for k, v in STATUS_CODES.items()}
_PRIORITY = {v: k for k, v in PRIORITIES.items()}
_ACTION = {v: k for k, v in ACTIONS.items()}

log = structlog.get_logger(__name__)

register_namespace("edXML", NS_2016)

#: Elements the signed fields fill: an ``extra`` may not add one (a third recipient, say).
_MAPPED = re.compile(
    re.escape(HEADER)
    + r"/(?:(?:From|To)/OrganId|DocumentId|Code/.*)$|"
    + re.escape(TRACE)
    + r"/Bussiness/BussinessDocType$"
)
_INDEX = re.compile(r"\[(\d+)\]")
MAX_OUTPUT_ELEMENTS = 20_000
#: Elements a document has once: an ``extra`` may not add a second one (From[2], …).
_ONCE = {"edXMLEnvelope", "edXMLHeader", "MessageHeader", "From", "Code", "Bussiness"}


def _forbidden(key: str, recipients: int) -> bool:
    """Whether an ``extra`` key would add to or override what the signed fields say."""
    for step in key.split("/"):
        found = _INDEX.search(step)
        index = int(found.group(1)) if found else 1
        name = _INDEX.sub("", step)
        if (name in _ONCE and index > 1) or (name == "To" and index > recipients):
            return True
    return bool(_MAPPED.match(_INDEX.sub("", key)))


class _Budget(ValueError):
    """A path that would make the output larger than its bound."""


class _Tree:
    """An edXML tree under construction, addressed by element paths.

    The output is bounded (DESIGN §7): at most ``MAX_OUTPUT_ELEMENTS`` elements, however
    large the indexes an ``extra`` key names ("Pad[3000000]" is skipped, not built).
    """

    def __init__(self) -> None:
        self.root = Element(f"{{{NS_2016}}}edXML")
        self.created = 0
        self._kids: dict[tuple[int, str], list[Element]] = {}

    def at(self, path: str) -> Element:
        """The element at ``path`` ("A/B[2]/C"), creating it and its ancestors as needed."""
        steps = []
        for step in path.split("/"):
            match = _STEP.fullmatch(step)
            if match is None:
                raise ValueError(f"not an element path: {path}")
            steps.append((match.group(1), int(match.group(2) or 1)))
        node = self.root
        for name, index in steps:
            tag = f"{{{NS_2016}}}{name}"
            same = self._kids.setdefault((id(node), tag), [])
            if index > len(same) and self.created + index - len(same) > MAX_OUTPUT_ELEMENTS:
                raise _Budget(path)
            while len(same) < index:
                same.append(SubElement(node, tag))
                self.created += 1
            node = same[index - 1]
        return node

    def put(self, path: str, value: str | None) -> None:
        if value:
            self.at(path).text = value

    def extras(self, extra: dict[str, str], recipients: int = 1) -> None:
        """Fields without a docbus home, back at their paths; never over a mapped field
        (the sender, recipients, ids and the rest come from the signed fields alone)."""
        for key, value in sorted(extra.items()):
            if "/" not in key or _forbidden(key, recipients):
                continue
            try:
                if not self.at(key).text:
                    self.put(key, value)
            except (_Budget, ValueError):
                log.warning("extra field left out of the edXML output", key=key[:80])

    def bytes(self) -> bytes:
        return (
            b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + tostring(self.root, encoding="unicode").encode()
        )


def _many(parent: str, name: str, n: int, i: int) -> str:
    return f"{parent}/{name}[{i + 1}]" if n > 1 else f"{parent}/{name}"


def document_to_edxml(doc: Document) -> bytes:
    """A document as an edXML message (its kept original message is not re-attached)."""
    t = _Tree()
    t.put(f"{HEADER}/From/OrganId", doc.sender)
    for i, code in enumerate(doc.recipients):
        t.put(f"{_many(HEADER, 'To', len(doc.recipients), i)}/OrganId", code)
    t.put(f"{HEADER}/DocumentId", doc.document_id)
    if doc.code_number:
        number, _, notation = doc.code_number.partition("/")
        t.put(f"{HEADER}/Code/CodeNumber", number)
        t.put(f"{HEADER}/Code/CodeNotation", notation)
    t.put(f"{HEADER}/PromulgationInfo/Place", doc.promulgation_place)
    if doc.promulgated_at:
        t.put(f"{HEADER}/PromulgationInfo/PromulgationDate", doc.promulgated_at.strftime(DATE))
    t.put(f"{HEADER}/DocumentType/TypeName", doc.document_type)
    t.put(f"{HEADER}/Subject", doc.subject)
    t.put(f"{HEADER}/SignerInfo/Position", doc.signer_title)
    t.put(f"{HEADER}/SignerInfo/FullName", doc.signer_name)
    if doc.due_date:
        t.put(f"{HEADER}/DueDate", doc.due_date.strftime(DATE))
    t.put(f"{HEADER}/OtherInfo/Priority", _PRIORITY[doc.priority])
    t.put(f"{HEADER}/ResponseFor/DocumentId", doc.response_for)
    t.put(f"{TRACE}/Bussiness/BussinessDocType", _ACTION.get(doc.action, "0"))
    files = [a for a in doc.attachments if a.name != ORIGINAL]
    for i, a in enumerate(files):
        ref = _many("edXMLEnvelope/edXMLBody/edXMLManifest", "Reference", len(files), i)
        t.put(f"{ref}/AttachmentName", a.name)
        t.put(f"{ref}/ContentType", a.media_type)
        if a.content is None:
            continue  # in the blob store: the file lies beside the message, not inside it
        part = _many("AttachmentEncoded", "Attachment", len(files), i)
        t.put(f"{part}/AttachmentName", a.name)
        t.put(f"{part}/ContentType", a.media_type)
        t.put(f"{part}/ContentTransferEncoded", base64.b64encode(a.content).decode())
    t.extras(doc.extra, len(doc.recipients))
    return t.bytes()


def status_to_edxml(status: Status) -> bytes:
    """A status as an edXML status message (codes 01-06, 13, 15, 16)."""
    if status.code not in _CODE:
        raise ValueError(f"{status.code.value} has no edXML status code")
    t = _Tree()
    t.put(f"{HEADER}/From/OrganId", status.by)
    t.put(f"{HEADER}/ResponseFor/DocumentId", status.document_id)
    t.put(f"{HEADER}/StatusCode", _CODE[status.code])
    t.put(f"{HEADER}/Description", status.message)
    t.put(f"{HEADER}/Timestamp", status.at.strftime(TIMESTAMP))
    t.extras(status.extra)
    return t.bytes()
