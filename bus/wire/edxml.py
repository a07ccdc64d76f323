"""The national e-document message format (edXML, QCVN 102:2016/BTTTT): what both
directions of the bridge share — namespaces, code tables, safe parsing, element paths.
"""

from __future__ import annotations

import re
from collections import Counter
from xml.etree.ElementTree import Element, ParseError

import structlog
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Action, Priority, StatusCode

log = structlog.get_logger(__name__)

NS_2016 = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
HEADER = "edXMLEnvelope/edXMLHeader/MessageHeader"
TRACE = "edXMLEnvelope/edXMLHeader/TraceHeaderList"
NAMESPACES = (NS_2016, "http://www.mic.gov.vn/TBT/QCVN_102_2012")
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_ELEMENTS = 100_000
ORIGINAL = "original.edxml"

STATUS_CODES = {
    "01": StatusCode.RECEIVED,
    "02": StatusCode.REJECTED,
    "03": StatusCode.ACCEPTED,
    "04": StatusCode.ASSIGNED,
    "05": StatusCode.PROCESSING,
    "06": StatusCode.COMPLETED,
    "13": StatusCode.WITHDRAW_REQUESTED,
    "15": StatusCode.CHANGE_ACCEPTED,
    "16": StatusCode.CHANGE_REFUSED,
}
PRIORITIES = {
    "0": Priority.NORMAL,
    "1": Priority.URGENT,
    "2": Priority.VERY_URGENT,
    "3": Priority.EXPRESS,
}
ACTIONS = {"0": Action.NEW, "1": Action.REVOKE, "2": Action.UPDATE, "3": Action.REPLACE}
DATE = "%Y/%m/%d"
TIMESTAMP = "%Y/%m/%d %H:%M:%S"

_PREFIX = re.compile(rb"\A(\s*)(\d*)(\s*)<")


class EdxmlError(DocbusError):
    """An edXML message that cannot be taken, naming the element path when there is one."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(Reason.MALFORMED, f"{path}: {message}" if path else message)
        self.path = path


def parse(data: bytes) -> tuple[Element, str]:
    """The root element and namespace of an edXML message; EdxmlError for anything else.

    No DTD, entity or external reference is processed. Whitespace before the XML
    declaration is tolerated, and so are the stray digits some systems put there
    (logged); any other prefix is an error.
    """
    if len(data) > MAX_BYTES:
        raise EdxmlError(f"message of {len(data)} bytes is over the {MAX_BYTES}-byte limit")
    match = _PREFIX.match(data)
    if match is None:
        raise EdxmlError("not XML: the message does not start with '<'")
    if match.group(2):
        log.warning(
            "stray bytes before the XML declaration ignored", prefix=match.group(2).decode()
        )
    body = data[match.end() - 1 :]
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise EdxmlError(f"refused: {type(exc).__name__}") from exc
    except ParseError as exc:
        raise EdxmlError(f"not well-formed XML: {exc}") from exc
    except (LookupError, ValueError) as exc:  # an encoding Python does not know, and the like
        raise EdxmlError(f"not readable XML: {exc}") from exc
    ns, _, local = root.tag[1:].partition("}") if root.tag.startswith("{") else ("", "", root.tag)
    if local != "edXML":
        raise EdxmlError(f"the root element is {local}, not edXML")
    if ns not in NAMESPACES:
        raise EdxmlError(f"unknown namespace {ns or '(none)'}; expected {' or '.join(NAMESPACES)}")
    return root, ns


def local_name(element: Element) -> str:
    return element.tag.rpartition("}")[2]


def leaf_paths(element: Element) -> list[tuple[str, Element]]:
    """Every element under ``element`` with its path; repeated siblings get [n] (1-based).

    Linear in the number of elements and iterative (no recursion): a deep or wide message
    costs its size, and one deeper than ``MAX_DEPTH`` or larger than ``MAX_ELEMENTS`` is
    refused.
    """
    out: list[tuple[str, Element]] = []
    stack = _children(element, "", 1)
    while stack:
        path, child, depth = stack.pop()
        out.append((path, child))
        if len(out) > MAX_ELEMENTS:
            raise EdxmlError(f"more than {MAX_ELEMENTS} elements")
        if depth >= MAX_DEPTH:
            raise EdxmlError(f"nested deeper than {MAX_DEPTH} elements", path)
        stack.extend(_children(child, path, depth + 1))
    return out


def _children(parent: Element, prefix: str, depth: int) -> list[tuple[str, Element, int]]:
    """``parent``'s children with their paths, last first (to be popped in document order)."""
    names = [local_name(c) for c in parent]
    total = Counter(names)
    seen: Counter[str] = Counter()
    children = []
    for child, name in zip(parent, names, strict=True):
        seen[name] += 1
        step = f"{name}[{seen[name]}]" if total[name] > 1 else name
        children.append((f"{prefix}/{step}" if prefix else step, child, depth))
    children.reverse()
    return children
