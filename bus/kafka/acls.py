"""The Kafka ACLs the national directory calls for (DESIGN §13): each agency's principal reads the
delivery topics of every jurisdiction the directory gives its agency from a day on (a
merger named ahead included), so that its inbox can follow a new jurisdiction without a
restart. An agency's principal is the one that may join its inbox group
(``docbus.inbox.CODE``). Pure: the rules (``deploy/acls.txt``'s lines) and a registry in,
the rules missing and the rules left over out."""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

from bus.kafka.topics import Topics
from bus.registry import Registry
from bus.wire.errors import DocbusError, Misconfigured


class Rule(NamedTuple):
    principal: str
    operation: str
    resource: str
    name: str
    pattern: str

    def __str__(self) -> str:
        width = (f"{self.principal:<17}", f"{self.operation:<10}", f"{self.resource:<9}")
        return " ".join((*width, f"{self.name:<28}", self.pattern))


def parse_acls(text: str) -> list[Rule]:
    """The rules of an ACL file: one per line, five words, ``#`` for comments."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 5:
            raise Misconfigured(f"ACL line {number}: expected five words, found {len(words)}")
        rules.append(Rule(*words))
    return rules


def delivery_grants(
    rules: list[Rule], registry: Registry, on: date, topics: Topics
) -> tuple[list[Rule], list[Rule]]:
    """The delivery-topic reads the directory calls for that ``rules`` lack, and those
    ``rules`` grant to an agency's principal that it no longer calls for."""
    inbox = topics.prefix + ".inbox."
    agencies = {
        r.name.removeprefix(inbox): r.principal
        for r in rules
        if r.resource == "group" and r.name.startswith(inbox) and r.pattern == "literal"
    }
    wanted: set[Rule] = set()
    for code, principal in agencies.items():
        try:
            jurisdictions = registry.jurisdictions_from(code, on)
        except DocbusError:
            jurisdictions = []  # an agency the directory no longer has reads nothing
        wanted |= {
            Rule(principal, "Read", "topic", topics.deliver(j), "literal") for j in jurisdictions
        }
    principals = set(agencies.values())
    granted = {
        r
        for r in rules
        if r.principal in principals
        and r.operation == "Read"
        and r.resource == "topic"
        and r.name.startswith(topics.deliver(""))
    }
    return sorted(wanted - granted), sorted(granted - wanted)
