"""The trust policy (DESIGN §4): which role a certificate may sign in, which certificates
act as the pinned services, and which bridges may speak for which agencies.

Read from ``policy.toml`` in the trust folder; without it roles come only from the docbus
role EKUs, no service is pinned (so no status is trusted) and no bridge is allowed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.model import Role

POLICY_FILE = "policy.toml"

#: The project's OID arc for role EKUs (a private-enterprise-style arc of this project).
DOCBUS_ARC = "1.3.6.1.4.1.65503.1"
ROLE_EKUS: dict[str, Role] = {
    f"{DOCBUS_ARC}.1": Role.SIGNER,
    f"{DOCBUS_ARC}.2": Role.AGENCY,
    f"{DOCBUS_ARC}.3": Role.SERVICE,
}
ENCRYPTION_EKU = f"{DOCBUS_ARC}.4"


def role_eku(role: Role) -> x509.ObjectIdentifier:
    """The EKU that marks a certificate for ``role``."""
    for oid, r in ROLE_EKUS.items():
        if r is role:
            return x509.ObjectIdentifier(oid)
    raise Misconfigured(f"no EKU for {role}")


class Service(StrEnum):
    """The services a certificate can be pinned as."""

    GATEWAY = "gateway"
    ARCHIVER = "archiver"
    WITNESS = "witness"
    DIRECTORY = "directory"


@dataclass(frozen=True)
class RoleRule:
    """A certificate without a docbus role EKU takes ``role`` if every given field matches."""

    role: Role
    issuer: str | None = None
    subject_ou: str | None = None
    policy_oid: str | None = None

    def matches(self, cert: x509.Certificate) -> bool:
        if self.issuer is not None and cert.issuer.rfc4514_string() != self.issuer:
            return False
        if self.subject_ou is not None:
            units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
            if self.subject_ou not in {str(u.value) for u in units}:
                return False
        if self.policy_oid is not None:
            try:
                policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
            except x509.ExtensionNotFound:
                return False
            if self.policy_oid not in {p.policy_identifier.dotted_string for p in policies.value}:
                return False
        return True


@dataclass(frozen=True)
class TrustPolicy:
    """Roles, pinned services and bridges; empty means: EKU roles only, nothing pinned."""

    roles: tuple[RoleRule, ...] = ()
    services: Mapping[Service, frozenset[str]] = field(default_factory=dict)
    bridges: Mapping[str, frozenset[str]] = field(default_factory=dict)
    allow_stale_crl: bool = False
    witnesses: Mapping[str, str] = field(default_factory=dict)  # name → cosignature key
    witness_quorum: int = 0

    @classmethod
    def load(cls, folder: Path) -> TrustPolicy:
        """``folder/policy.toml``, or the empty policy; DocbusError(policy) names a bad key."""
        path = folder / POLICY_FILE
        if not path.is_file():
            return cls()
        try:
            data = tomllib.loads(path.read_text("utf-8"))
            return cls.parse(data)
        except (tomllib.TOMLDecodeError, ValueError, TypeError, KeyError) as exc:
            raise DocbusError(Reason.POLICY, f"{path}: {exc}") from exc

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TrustPolicy:
        unknown = set(data) - {"role", "services", "bridges", "revocation", "witnesses"}
        if unknown:
            raise Misconfigured(f"unknown keys {sorted(unknown)}")
        rules = tuple(
            RoleRule(
                role=Role(rule["role"]),
                issuer=rule.get("issuer"),
                subject_ou=rule.get("subject_ou"),
                policy_oid=rule.get("policy_oid"),
            )
            for rule in data.get("role", [])
        )
        services = {Service(k): frozenset(v) for k, v in data.get("services", {}).items()}
        bridges = {k: frozenset(v) for k, v in data.get("bridges", {}).items()}
        stale = bool(data.get("revocation", {}).get("allow_stale_crl", False))
        witnessing = dict(data.get("witnesses", {}))
        quorum = int(witnessing.pop("required", 0))
        keys = {str(k): str(v) for k, v in witnessing.get("keys", {}).items()}
        return cls(rules, services, bridges, stale, keys, quorum)

    def role_of(self, cert: x509.Certificate) -> Role | None:
        """The one role ``cert`` may sign in: its docbus EKU, else the first matching rule."""
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            found = {ROLE_EKUS[u.dotted_string] for u in usages if u.dotted_string in ROLE_EKUS}
        except x509.ExtensionNotFound:
            found = set()
        if len(found) > 1:
            return None  # a certificate fills one role: several role EKUs make it none
        if found:
            return found.pop()
        for rule in self.roles:
            if rule.matches(cert):
                return rule.role
        return None

    def is_service(self, service: Service, agency: str | None) -> bool:
        """Whether a SERVICE certificate of ``agency`` is pinned as ``service``."""
        return agency is not None and agency in self.services.get(service, frozenset())

    def bridge_serves(self, bridge: str | None, agency: str) -> bool:
        return bridge is not None and agency in self.bridges.get(bridge, frozenset())
