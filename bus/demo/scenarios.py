"""The demo's scenarios: documents as agency systems send them, attacks as an attacker
would try them, and the fate each must meet."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from aiokafka import AIOKafkaConsumer

from bus.demo.stack import (
    ARCHIVER,
    BAC_GIANG,
    BAC_NINH,
    BRIDGE,
    GATEWAY,
    MINISTRY,
    NGHE_AN,
    SO_NOI_VU_NGHE_AN,
    UNKNOWN,
    Stack,
    docbus,
    pair,
)
from bus.store.archive import open_archive
from bus.store.documents import Search
from bus.store.schema import fold
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verified, Verifier
from bus.wire.model import Status, StatusCode, now_ms


@dataclass
class Scenario:
    name: str
    expect: str
    document_id: str = ""
    outcome: str = "?"
    ok: bool = False
    note: str = ""


def publish(stack: Stack, *args: str | Path) -> dict[str, object]:
    """``docbus publish --wait --json``, as an agency system would run it."""
    done = stack.run(
        "publish",
        "--wait",
        "--json",
        "--trust",
        stack.trust,
        "--outbox",
        stack.folder / "outbox.sqlite",
        "--timeout",
        "60",
        *args,
        timeout=120,
    )
    if not done.stdout.strip():
        raise RuntimeError(f"publish failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def statuses(
    stack: Stack, until: dict[str, set[tuple[str, str]]], seconds: float
) -> dict[str, list[Status]]:
    """Every verified status on the status topic, by document, until ``until`` is met."""
    verifier = Verifier(TrustStore.load(stack.trust), Policy(issued_at_tolerance=None))
    found: dict[str, list[Status]] = {}
    consumer = AIOKafkaConsumer(
        stack.settings.topics.status,
        **stack.settings.common(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()

    def met() -> bool:
        return all(
            want <= {(s.code.value, s.by) for s in found.get(doc, [])}
            for doc, want in until.items()
        )

    try:
        deadline = time.monotonic() + seconds
        while not met() and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=200)).values():
                for record in part:
                    verdict = verifier.verify(record.value or b"", now_ms())
                    if isinstance(verdict, Verified) and isinstance(verdict.payload, Status):
                        found.setdefault(verdict.payload.document_id, []).append(verdict.payload)
    finally:
        await consumer.stop()
    return found


def run_scenarios(stack: Stack) -> list[Scenario]:
    """Publish every scenario's document, wait for the statuses, and judge each fate."""
    ministry = _ministry(stack)
    plan = _routing_plan(stack, ministry)
    states: dict[str, str] = {}
    for scenario, args in plan:
        result = publish(stack, *args)
        scenario.document_id = str(result["document_id"])
        states[scenario.document_id] = " ".join(
            str(x) for x in (result["state"], result.get("reason")) if x
        )
    secret = _send_secret(stack, states)
    legacy = _send_legacy(stack)
    tampered = _send_tampered(stack, ministry)
    plain, multi, merged, unknown, untrusted = (s for s, _ in plan)
    until = {
        plain.document_id: {("RECEIVED", NGHE_AN)},
        multi.document_id: {("RECEIVED", NGHE_AN), ("RECEIVED", BAC_NINH)},
        merged.document_id: {("RECEIVED", BAC_NINH)},
        tampered.document_id: {("REJECTED", GATEWAY)},
        secret.document_id: {("RECEIVED", NGHE_AN), ("RECEIVED", BAC_NINH)},
        legacy.document_id: {("ARCHIVED", ARCHIVER), ("RECEIVED", NGHE_AN)},
    }
    seen = asyncio.run(statuses(stack, until, seconds=30))
    _judge_routing(plain, multi, merged, states, seen)
    for s in (unknown, untrusted):
        s.outcome = states[s.document_id]
        s.ok = s.outcome == s.expect
    verdicts = [st for st in seen.get(tampered.document_id, []) if st.code is StatusCode.REJECTED]
    tampered.outcome = (
        " ".join(["REJECTED", *(st.reason or "" for st in verdicts)]) if verdicts else "?"
    )
    tampered.ok = tampered.outcome == tampered.expect
    _check_secret(stack, secret, states[secret.document_id])
    _judge_legacy(stack, legacy, seen)
    return [plain, multi, merged, unknown, untrusted, secret, legacy, tampered]


def _ministry(stack: Stack) -> list[str]:
    letter = stack.folder / "cong-van.txt"
    letter.write_text("Kính gửi: UBND các tỉnh.\nVăn phòng Chính phủ thông báo ...\n", "utf-8")
    return [
        "--from",
        MINISTRY,
        "--file",
        str(letter),
        "--signer",
        pair(stack.pki, MINISTRY, CertRole.SIGNER),
        "--seal",
        pair(stack.pki, MINISTRY, CertRole.AGENCY),
    ]


def _impostor(stack: Stack) -> list[str]:
    """The ministry's name on keys from a CA nobody trusts."""
    rogue = DevPki(stack.folder / "rogue-pki")
    if not (rogue.root / "ca").exists():
        rogue.init()
    for role in (CertRole.SIGNER, CertRole.AGENCY):
        if not (rogue.root / "agencies" / MINISTRY / f"{role.value}.key.pem").exists():
            rogue.issue(MINISTRY, role, KeyAlgorithm.ED25519)
    return [
        "--from",
        MINISTRY,
        "--signer",
        pair(rogue.root, MINISTRY, CertRole.SIGNER),
        "--seal",
        pair(rogue.root, MINISTRY, CertRole.AGENCY),
    ]


def _routing_plan(stack: Stack, ministry: list[str]) -> list[tuple[Scenario, list[str]]]:
    return [
        (
            Scenario("plain: ministry → province", "ARCHIVED, RECEIVED by H41"),
            [
                *ministry,
                "--to",
                NGHE_AN,
                "--subject",
                PLAIN_SUBJECT,
            ],
        ),
        (
            Scenario("two jurisdictions", "ARCHIVED, RECEIVED by H41 and H06"),
            [
                *ministry,
                "--to",
                NGHE_AN,
                "--to",
                BAC_NINH,
                "--subject",
                "V/v triển khai Nghị quyết 57-NQ/TW",
                "--code-number",
                "57-NQ/TW",
                "--priority",
                "URGENT",
            ],
        ),
        (
            Scenario("merged province: Bắc Giang", "ARCHIVED via H06, RECEIVED by H06"),
            [*ministry, "--to", BAC_GIANG, "--subject", "V/v bàn giao hồ sơ sau sắp xếp"],
        ),
        (
            Scenario("unknown agency", "REJECTED unknown_recipient"),
            [*ministry, "--to", UNKNOWN, "--subject", "Gửi nhầm địa chỉ"],
        ),
        (
            Scenario("untrusted CA", "REJECTED untrusted_certificate"),
            [
                *_impostor(stack),
                "--to",
                NGHE_AN,
                "--subject",
                "Văn bản giả danh Văn phòng Chính phủ",
            ],
        ),
    ]


PLAIN_SUBJECT = "V/v kết nối, liên thông phần mềm quản lý văn bản"
SECRET_SUBJECT, SECRET_BODY = "Phương án bảo vệ bí mật nhà nước", "Nội dung TUYỆT MẬT"


def _send_secret(stack: Stack, states: dict[str, str]) -> Scenario:
    secret = Scenario("SECRET, sealed to H41 and H06", "opened by H41, H06 only")
    (stack.folder / "mat.txt").write_text(SECRET_BODY, "utf-8")
    result = publish(
        stack,
        "--from",
        MINISTRY,
        "--file",
        stack.folder / "mat.txt",
        "--signer",
        pair(stack.pki, MINISTRY, CertRole.SIGNER),
        "--seal",
        pair(stack.pki, MINISTRY, CertRole.AGENCY),
        "--to",
        NGHE_AN,
        "--to",
        BAC_NINH,
        "--subject",
        SECRET_SUBJECT,
        "--confidential",
        "SECRET",
        "--address-book",
        stack.pki / "agencies",
        "--kem",
        KemAlgorithm.MLKEM768_X25519.value,
    )
    secret.document_id = str(result["document_id"])
    states[secret.document_id] = str(result["state"])
    return secret


def _send_legacy(stack: Stack) -> Scenario:
    legacy = Scenario("edXML in through the bridge", "ARCHIVED, edXML out at H41")
    done = stack.run(
        "edxml",
        "import",
        str(files("bus") / "data" / "legacy-message.edxml"),
        "--signer",
        pair(stack.pki, BRIDGE, CertRole.SERVICE),
        "--seal",
        pair(stack.pki, MINISTRY, CertRole.AGENCY),
        "--outbox",
        stack.folder / "bridge-outbox.sqlite",
        "--trust",
        stack.trust,
    )
    legacy.document_id = done.stdout.split(" ")[0] if done.returncode == 0 else ""
    return legacy


def _send_tampered(stack: Stack, ministry: list[str]) -> Scenario:
    tampered = Scenario("tampered in transit", "REJECTED bad_signature")
    event = stack.folder / "tampered.avro"
    done = stack.run(
        "publish",
        *ministry,
        "--to",
        NGHE_AN,
        "--subject",
        "Quyết định bổ nhiệm",
        "--output",
        event,
        check=True,
    )
    tampered.document_id = done.stdout.split()[0]
    raw = bytearray(event.read_bytes())
    raw[raw.index("bổ nhiệm".encode())] ^= 0x01
    stack.send(stack.settings.topics.submitted, bytes(raw), tampered.document_id.encode())
    return tampered


def _codes(seen: dict[str, list[Status]], doc: str) -> set[tuple[str, str]]:
    return {(s.code.value, s.by) for s in seen.get(doc, [])}


def _judge_routing(
    plain: Scenario,
    multi: Scenario,
    merged: Scenario,
    states: dict[str, str],
    seen: dict[str, list[Status]],
) -> None:
    for s, agencies in ((plain, [NGHE_AN]), (multi, [NGHE_AN, BAC_NINH]), (merged, [BAC_NINH])):
        received = [a for a in agencies if ("RECEIVED", a) in _codes(seen, s.document_id)]
        s.outcome = (
            f"{states[s.document_id]}, RECEIVED by {', '.join(a[-3:] for a in received) or '-'}"
        )
        s.ok = states[s.document_id] == "ARCHIVED" and len(received) == len(agencies)
    rerouted = [
        st.rerouted for st in seen.get(merged.document_id, []) if st.code is StatusCode.DELIVERED
    ]
    merged.ok = merged.ok and rerouted == [{BAC_GIANG: BAC_NINH}]
    merged.outcome = merged.outcome.replace(
        "ARCHIVED", "ARCHIVED via H06" if merged.ok else "ARCHIVED"
    )


def _judge_legacy(stack: Stack, legacy: Scenario, seen: dict[str, list[Status]]) -> None:
    out = (
        stack.folder
        / "edxml-out"
        / NGHE_AN
        / f"{MINISTRY}-{quote(legacy.document_id, safe='')}-r0.edxml"
    )
    exported = out.read_text("utf-8") if out.exists() else ""
    archived = ("ARCHIVED", ARCHIVER) in _codes(seen, legacy.document_id)
    legacy.ok = archived and "qua trục liên thông" in exported and "<edXML:Subject>" in exported
    legacy.outcome = (
        f"{'ARCHIVED' if archived else 'not archived'}; "
        f"{'edXML written for the legacy system' if legacy.ok else 'no edXML out'}"
    )


def _check_secret(stack: Stack, scenario: Scenario, state: str) -> None:
    """Recipients read it; a third agency's inbox, the gateway and the archive cannot."""
    folder, subject, body = stack.folder, SECRET_SUBJECT, SECRET_BODY
    opened = [
        a[-3:]
        for a in (NGHE_AN, BAC_NINH)
        if subject
        in _read(folder / "inbox" / a / MINISTRY / scenario.document_id / "0" / "document.json")
        and _read(
            folder / "inbox" / a / MINISTRY / scenario.document_id / "0" / "attachments" / "mat.txt"
        )
        == body
    ]
    outsider_kept = (
        folder / "inbox" / SO_NOI_VU_NGHE_AN / MINISTRY / scenario.document_id
    ).exists()
    event = folder / "secret.avro"
    archive = folder / "archive" / "archive.sqlite"
    leaks = [
        p.name
        for p in (
            archive,
            archive.with_name("archive.sqlite-wal"),
            *(folder / "logs").glob("*.log"),
        )
        if p.exists() and (subject.encode() in p.read_bytes() or body.encode() in p.read_bytes())
    ]
    if stack.database is not None:  # the rows themselves, as PostgreSQL holds them
        with open_archive(None, database=stack.database) as rows:
            kept = b"".join(e.event + e.subject.encode() for e in rows.entries())
        if subject.encode() in kept or body.encode() in kept:
            leaks.append("the archive database")
    done = stack.run(
        "archive",
        "export",
        scenario.document_id,
        "--data-dir",
        folder / "archive",
        "--out",
        folder / "secret-export",
    )
    exported = folder / "secret-export" / MINISTRY / "r0" / "event.avro"
    if done.returncode == 0 and exported.exists():
        event.write_bytes(exported.read_bytes())
    refused = (
        stack.run(
            "open",
            event,
            "--key",
            stack.pki / "agencies" / SO_NOI_VU_NGHE_AN / "encryption.key.pem",
            "--trust",
            stack.trust,
            "--out",
            folder / "outsider-open",
        ).returncode
        == 1
        and event.exists()
    )
    scenario.ok = (
        state == "ARCHIVED" and len(opened) == 2 and not outsider_kept and not leaks and refused
    )
    scenario.outcome = (
        f"{state}, opened by {', '.join(opened) or '-'}; third agency "
        f"{'refused' if refused and not outsider_kept else 'READ IT'}; "
        f"{'no plaintext in archive or logs' if not leaks else 'LEAK in ' + ', '.join(leaks)}"
    )


def _read(path: Path) -> str:
    return path.read_text("utf-8") if path.exists() else ""


def audit(stack: Stack) -> Scenario:
    """The auditor's two checks: the archive against its signed checkpoints, and every
    delivery to Nghệ An replayed against the archive."""
    scenario = Scenario("audit: archive and replay", "clean")
    archive = stack.folder / "archive"
    checks = [
        docbus(
            "audit",
            "verify-archive",
            "--data-dir",
            archive,
            "--trust",
            stack.trust,
            "--report",
            stack.folder / "audit-archive.html",
        ),
        docbus(
            "audit",
            "replay",
            "--topic",
            stack.settings.topics.deliver("nghe-an"),
            "--archive",
            archive,
            "--trust",
            stack.trust,
            "--report",
            stack.folder / "audit-replay.json",
        ),
    ]
    codes = [
        subprocess.run(c, env=stack.env, capture_output=True, text=True, timeout=120).returncode
        for c in checks
    ]
    scenario.ok = codes == [0, 0]
    with open_archive(archive, database=stack.database) as store:
        latest = store.latest_checkpoint()
    final = latest.checkpoint if latest else None
    scenario.document_id = f"{final.size} entries" if final else "-"
    if latest is not None and final is not None:
        scenario.note = (
            f"final checkpoint: {final.origin}, {final.size} entries, root {final.root.hex()}, "
            f"signed {latest.at.isoformat()}"
        )
    scenario.outcome = ("clean" if scenario.ok else f"exit codes {codes}") + (
        f"; checkpoint {final.size} {final.root.hex()[:16]}…" if final else ""
    )
    return scenario


def search_with_evidence(stack: Stack, document_id: str) -> Scenario:
    """What the unified document management system does: find the plain document by its
    subject typed without diacritics, take its evidence bundle, check it offline."""
    scenario = Scenario("archive: search, then evidence", "found, proven", document_id)
    typed = fold(PLAIN_SUBJECT)
    with open_archive(stack.folder / "archive", database=stack.database) as store:
        found = [e.document_id for e in store.search(Search(text=typed))[0]]
    bundle = stack.folder / "evidence.json"
    exported = stack.run("evidence", "export", document_id, "--out", bundle, *_archive(stack))
    checked = stack.run("evidence", "verify", bundle, "--trust", stack.trust)
    proven = exported.returncode == 0 and checked.returncode == 0
    scenario.ok = document_id in found and proven
    scenario.outcome = (
        f"{'found' if document_id in found else 'NOT FOUND'} by {typed!r}, "
        f"{'proven' if proven else 'evidence NOT proven: ' + checked.stdout + checked.stderr}"
    )
    return scenario


def _archive(stack: Stack) -> list[str | Path]:
    """The options naming the demo's archive (the database comes from DOCBUS_DATABASE)."""
    return ["--data-dir", stack.folder / "archive"]
