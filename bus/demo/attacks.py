"""The demo's attacks (DESIGN §4), tried as an attacker holding one genuine certificate
and write access to every topic would try them, each with the fate it must meet."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from pathlib import Path

from bus.audit.replay import read_topics
from bus.demo.scenarios import Scenario, publish, statuses
from bus.demo.stack import MINISTRY, NGHE_AN, Stack, docbus, pair
from bus.kafka.records import status_record
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import leaf_hash
from bus.trust.pki import CertRole
from bus.trust.signing import SigningKey, sign_checkpoint
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError
from bus.wire.headers import header
from bus.wire.model import LogProof, Role, Status, StatusCode, event_digest, now_ms


def run_attacks(stack: Stack) -> list[Scenario]:
    """Every attack in turn; each scenario says what happened and whether it held."""
    return [_relabel(stack), _forgedstatuses(stack), _planted(stack), _revoked(stack)]


def _key(stack: Stack, agency: str, role: CertRole, name: str | None = None) -> SigningKey:
    base = stack.pki / "agencies" / agency / (name or role.value)
    return SigningKey.load(
        Role(role.value.upper()), Path(f"{base}.key.pem"), Path(f"{base}.cert.pem")
    )


def _record(stack: Stack, out: Path, *args: str | Path) -> bytes:
    """A signed record ``docbus publish --output`` writes (not sent)."""
    stack.run("publish", *args, "--output", out, check=True)
    return out.read_bytes()


def _relabel(stack: Stack) -> Scenario:
    """The signer's one signature, copied and relabelled as the agency's seal."""
    scenario = Scenario("attack: SIGNER relabelled AGENCY", "REJECTED role_mismatch")
    signer = pair(stack.pki, MINISTRY, CertRole.SIGNER)
    raw = _record(
        stack,
        stack.folder / "relabel.avro",
        *("--from", MINISTRY, "--to", NGHE_AN, "--subject", "Một chữ ký, hai vai"),
        *("--signer", signer, "--seal", pair(stack.pki, MINISTRY, CertRole.AGENCY)),
    )
    codec = default_codec()
    event = codec.decode_event(raw)
    first = event.signatures[0]
    forged = dataclasses.replace(
        event, signatures=(first, dataclasses.replace(first, role=Role.AGENCY))
    )
    doc = codec.decode_document(event.payload)
    scenario.document_id = doc.document_id
    stack.send(stack.settings.topics.submitted, codec.encode_event(forged))
    seen = asyncio.run(statuses(stack, {doc.document_id: {("REJECTED", "docbus.gateway")}}, 30))
    reasons = [s.reason for s in seen.get(doc.document_id, []) if s.code is StatusCode.REJECTED]
    scenario.outcome = " ".join(["REJECTED", *map(str, reasons)]) if reasons else "not rejected"
    scenario.ok = scenario.outcome == scenario.expect
    return scenario


def _forgedstatuses(stack: Stack) -> Scenario:
    """With the gateway down, a province forges ARCHIVED (with a one-leaf "log" it signs
    itself) and REJECTED for the ministry's exact record; the outbox must ignore both."""
    scenario = Scenario(
        "attack: forged ARCHIVED and REJECTED", "PENDING while forged, then ARCHIVED"
    )
    stack.stop("gateway")
    subject = f"Chờ cổng trục {time.monotonic_ns()}"
    waiting = subprocess.Popen(
        docbus(
            "publish", "--wait", "--json", "--timeout", "8", "--trust", stack.trust,
            "--outbox", stack.folder / "forged-outbox.sqlite",
            "--from", MINISTRY, "--to", NGHE_AN, "--subject", subject,
            "--signer", pair(stack.pki, MINISTRY, CertRole.SIGNER),
            "--seal", pair(stack.pki, MINISTRY, CertRole.AGENCY),
        ),
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    record = _submitted_with(stack, subject)
    codec = default_codec()
    doc = codec.decode_document(codec.decode_event(record).payload)
    scenario.document_id = doc.document_id
    forger = _key(stack, NGHE_AN, CertRole.AGENCY)
    cp = Checkpoint(NGHE_AN, 1, leaf_hash(record))
    proof = LogProof(0, 1, cp.root, (), sign_checkpoint(cp, forger))
    for code in (StatusCode.ARCHIVED, StatusCode.REJECTED):
        forged = Status(
            doc.document_id,
            code,
            NGHE_AN,
            now_ms(),
            reason="policy" if code is StatusCode.REJECTED else None,
            log=proof if code is StatusCode.ARCHIVED else None,
            event_digest=event_digest(record),
        )
        # Keyed for the sender, as its genuine statuses are: its node does read it.
        stack.send(
            stack.settings.topics.status, status_record(forged, [forger]), doc.sender.encode()
        )
    out, _ = waiting.communicate(timeout=60)
    state = str(json.loads(out)["state"]) if out.strip() else "?"
    stack.start("gateway")
    stack.wait_ready(only="gateway")
    seen = asyncio.run(statuses(stack, {doc.document_id: {("ARCHIVED", "docbus.archiver")}}, 30))
    archived = any(s.code is StatusCode.ARCHIVED and s.by == "docbus.archiver" for s in
                   seen.get(doc.document_id, []))  # fmt: skip
    scenario.outcome = f"{state} while forged, then {'ARCHIVED' if archived else 'not archived'}"
    scenario.ok = scenario.outcome == scenario.expect
    return scenario


def _submitted_with(stack: Stack, subject: str, seconds: float = 20) -> bytes:
    """The record on the submitted topic whose subject is ``subject`` (what the attacker,
    who can read every topic, sees)."""
    codec = default_codec()

    async def find() -> bytes | None:
        async for r in read_topics(stack.settings, [stack.settings.topics.submitted], None, None):
            try:
                doc = codec.decode_document(codec.decode_event(r.value or b"").payload)
            except DocbusError:  # hostile records on the topic
                continue
            if doc.subject == subject:
                return bytes(r.value or b"")
        return None

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = asyncio.run(find())
        if found is not None:
            return found
        time.sleep(0.3)
    raise RuntimeError(f"no submitted record with subject {subject!r}")


def _planted(stack: Stack) -> Scenario:
    """A province's validly signed document written straight onto a delivery topic, with
    an unsigned header back-dating it."""
    scenario = Scenario("attack: record planted on a delivery topic", "refused by archiver, inbox")
    raw = _record(
        stack,
        stack.folder / "planted.avro",
        *("--from", NGHE_AN, "--to", NGHE_AN, "--subject", "Văn bản cấy thẳng"),
        *("--signer", pair(stack.pki, NGHE_AN, CertRole.SIGNER)),
        *("--seal", pair(stack.pki, NGHE_AN, CertRole.AGENCY)),
    )
    codec = default_codec()
    doc = codec.decode_document(codec.decode_event(raw).payload)
    scenario.document_id = doc.document_id
    stack.send(
        stack.settings.topics.deliver("nghe-an"),
        raw,
        doc.document_id.encode(),
        [("docbus.received_at", b"2020-01-01T00:00:00+00:00")],
    )
    stages = _rejected_stages(stack, doc.document_id, {"archiver", "inbox"})
    shown = stack.run("archive", "show", doc.document_id, "--data-dir", stack.folder / "archive")
    kept = list((stack.folder / "inbox").glob(f"*/*/{doc.document_id}"))
    refused = {"archiver", "inbox"} <= stages and shown.returncode == 1 and not kept
    scenario.outcome = (
        f"refused by {', '.join(sorted(stages))}" if refused else "ARCHIVED or RECEIVED"
    )
    scenario.ok = scenario.outcome == scenario.expect
    return scenario


def _rejected_stages(stack: Stack, key: str, want: set[str], seconds: float = 20) -> set[str]:
    async def stages() -> set[str]:
        found = set()
        async for r in read_topics(stack.settings, [stack.settings.topics.rejected], None, None):
            if (r.key or b"").decode() == key:
                found.add((header(r.headers, "docbus.error.stage") or b"").decode())
        return found

    deadline = time.monotonic() + seconds
    found: set[str] = set()
    while time.monotonic() < deadline and not want <= found:
        found = asyncio.run(stages())
        time.sleep(0.3)
    return found


def _revoked(stack: Stack) -> Scenario:
    """A signer's key revoked while every service runs: refused without a restart."""
    scenario = Scenario(
        "attack: key revoked while running", "ARCHIVED before, REJECTED certificate_revoked after"
    )
    issued = stack.run(
        *("pki", "issue", "--dir", stack.pki, "--agency", MINISTRY, "--role", "signer"),
        *("--name", f"revocable-{time.monotonic_ns()}"),
        check=True,
    )
    key, cert = issued.stdout.split()
    common = ["--from", MINISTRY, "--to", NGHE_AN, "--signer", f"{key},{cert}"]
    common += ["--seal", pair(stack.pki, MINISTRY, CertRole.AGENCY)]
    before = publish(stack, *common, "--subject", "Trước khi thu hồi khóa")
    stack.run("pki", "revoke", "--dir", stack.pki, "--cert", cert, check=True)
    time.sleep(2.5)  # the services re-read the trust folder every second here
    after = publish(stack, *common, "--subject", "Sau khi thu hồi khóa")
    scenario.document_id = str(after["document_id"])
    scenario.outcome = (
        f"{before['state']} before, "
        + " ".join(str(x) for x in (after["state"], after.get("reason")) if x)
        + " after"
    )
    scenario.ok = scenario.outcome == scenario.expect
    return scenario
