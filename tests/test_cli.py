"""The command line as a user meets it: real processes, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.topics import ensure_topics
from tests.conftest import MINISTRY, PROVINCE
from tests.stack import read_topic

DOCBUS = str(Path(sys.executable).with_name("docbus"))


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DOCBUS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr + result.stdout
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI with a ministry's signer, seal and ML-DSA co-signer, and a signed event."""
    d = tmp_path_factory.mktemp("cli")
    assert run("pki", "init", "--dir", d / "pki").returncode == 0
    for role, alg in (("signer", "ed25519"), ("agency", "ecdsa-p256")):
        out = run(
            "pki", "issue", "--dir", d / "pki", "--agency", MINISTRY, "--role", role, "--alg", alg
        )
        assert out.returncode == 0, out.stderr
        key, cert = out.stdout.split()
        assert key.endswith(f"{MINISTRY}/{role}.key.pem") and Path(key).is_file()
        assert cert.endswith(f"{MINISTRY}/{role}.cert.pem") and Path(cert).is_file()
    (d / "qd.txt").write_text("Nội dung quyết định", encoding="utf-8")
    return d


def _keys(d: Path, role: str) -> str:
    base = d / "pki" / "agencies" / MINISTRY
    return f"{base / f'{role}.key.pem'},{base / f'{role}.cert.pem'}"


def _publish(d: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "publish",
        "--from",
        MINISTRY,
        "--to",
        PROVINCE,
        "--to",
        "000.00.00.H04",
        "--subject",
        "V/v kết nối, liên thông phần mềm quản lý văn bản",
        "--file",
        d / "qd.txt",
        "--signer",
        _keys(d, "signer"),
        "--seal",
        _keys(d, "agency"),
        "--code-number",
        "57-NQ/TW",
        "--type",
        "Nghị quyết",
        "--priority",
        "URGENT",
        "--output",
        out,
        *extra,
    )


def test_publish_then_verify_json(world: Path) -> None:
    assert _publish(world, world / "ev.avro").returncode == 0
    out = run("verify", world / "ev.avro", "--trust", world / "pki" / "trust", "--json")
    assert out.returncode == 0, out.stdout
    verdict = json.loads(out.stdout)
    assert verdict["valid"] is True and verdict["reason"] is None
    assert verdict["sender"] == MINISTRY
    assert verdict["recipients"] == [PROVINCE, "000.00.00.H04"]
    assert [s["role"] for s in verdict["signatures"]] == ["SIGNER", "AGENCY"]
    assert [s["alg"] for s in verdict["signatures"]] == ["ED25519", "ECDSA_P256_SHA256"]
    assert all(len(s["key_id"]) == 64 and MINISTRY in s["subject"] for s in verdict["signatures"])


def _second_key(world: Path, role: str, name: str, *alg: str) -> tuple[str, str]:
    """Another certificate of the ministry in ``role``, beside the shared one (--name)."""
    out = run(
        "pki", "issue", "--dir", world / "pki", "--agency", MINISTRY, "--role", role,
        "--name", name, *alg,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key, cert = out.stdout.split()
    return key, cert


def test_publish_with_an_ml_dsa_cosignature(world: Path) -> None:
    # A second AGENCY certificate (ML-DSA-65) beside the ECDSA seal: a distinct key, same role.
    key, cert = _second_key(world, "agency", "pq", "--alg", "ml-dsa-65")
    assert _publish(world, world / "pq.avro", "--cosign", f"{key},{cert}").returncode == 0
    verdict = json.loads(
        run("verify", world / "pq.avro", "--trust", world / "pki" / "trust", "--json").stdout
    )
    assert verdict["valid"] and verdict["signatures"][2]["alg"] == "ML_DSA_65"


def test_a_tampered_file_is_rejected_with_exit_1(world: Path) -> None:
    _publish(world, world / "t.avro")
    data = bytearray((world / "t.avro").read_bytes())
    i = data.index("kết nối".encode())
    data[i] ^= 0x01
    (world / "t.avro").write_bytes(bytes(data))
    out = run("verify", world / "t.avro", "--trust", world / "pki" / "trust")
    assert out.returncode == 1
    assert out.stdout.startswith("REJECTED bad_signature")


def test_revoked_then_verified_at_a_time_before_and_after(world: Path) -> None:
    # A signer certificate of its own: the shared signer stays valid.
    key, cert = _second_key(world, "signer", "revoked-signer")
    ev = world / "rev.avro"
    assert (
        run(
            "publish",
            "--from",
            MINISTRY,
            "--to",
            PROVINCE,
            "--subject",
            "x",
            "--signer",
            f"{key},{cert}",
            "--seal",
            _keys(world, "agency"),
            "--output",
            ev,
        ).returncode
        == 0
    )
    assert run("pki", "revoke", "--dir", world / "pki", "--cert", cert).returncode == 0
    time.sleep(1.1)  # a CRL keeps whole seconds: a revocation counts from the next one
    out = run("verify", ev, "--trust", world / "pki" / "trust", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["reason"] == "certificate_revoked"


def test_verify_with_at_outside_validity_is_expired(world: Path) -> None:
    _publish(world, world / "e.avro")
    out = run(
        "verify",
        world / "e.avro",
        "--trust",
        world / "pki" / "trust",
        "--at",
        "2040-01-01",
        "--json",
    )
    assert out.returncode == 1 and json.loads(out.stdout)["reason"] == "certificate_expired"


def test_bad_input_gets_one_line_and_the_right_exit_code(world: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"not avro at all")
    out = run("verify", junk, "--trust", world / "pki" / "trust")
    assert out.returncode == 1 and out.stdout.startswith("REJECTED malformed")
    out = run("verify", junk, "--trust", tmp_path)  # a folder with no anchor
    assert out.returncode == 1 and "no trust anchor" in out.stderr
    out = run("verify", junk, "--trust", world / "pki" / "trust", "--at", "yesterday")
    assert out.returncode == 2
    out = run(
        "publish",
        "--from",
        MINISTRY,
        "--to",
        PROVINCE,
        "--subject",
        "x",
        "--signer",
        "nope.pem",
        "--seal",
        _keys(world, "agency"),
        "--output",
        tmp_path / "o",
    )
    assert out.returncode == 2 and "KEY.pem,CERT.pem" in out.stderr
    out = run(
        "publish",
        "--from",
        MINISTRY,
        "--to",
        PROVINCE,
        "--subject",
        "x",
        "--signer",
        _keys(world, "agency"),
        "--seal",
        f"{junk},{junk}",
        "--output",
        tmp_path / "o",
    )
    assert out.returncode == 2 and "junk.avro" in out.stderr
    out = run("pki", "init", "--dir", world / "pki")
    assert out.returncode == 1 and "exists already" in out.stderr
    out = run("pki", "issue", "--dir", tmp_path / "none", "--agency", MINISTRY, "--role", "signer")
    assert out.returncode == 1 and "docbus pki init" in out.stderr


def test_registry_resolve_and_list() -> None:
    out = run("registry", "resolve", "000.00.00.H04", "--at", "2025-08-01")
    assert out.returncode == 0
    assert "bac-ninh" in out.stdout and "000.00.00.H04 -> 000.00.00.H06" in out.stdout
    out = run("registry", "resolve", "000.00.00.H99")
    assert out.returncode == 1 and "unknown_recipient" in out.stderr
    rows = json.loads(run("registry", "list", "--at", "2025-08-01", "--json").stdout)
    assert {r["jurisdiction"] for r in rows if r["level"] != "COMMUNE"} >= {
        "central",
        "bac-ninh",
        "hue",
    }
    assert not any(r["code"] == "000.00.00.H04" for r in rows)  # Bắc Giang's UBND ended
    out = run("registry", "list", "--at", "2025-13-01")
    assert out.returncode == 2


def test_every_command_has_help() -> None:
    for cmd in (
        ["pki", "init"],
        ["pki", "issue"],
        ["pki", "revoke"],
        ["publish"],
        ["verify"],
        ["registry", "resolve"],
        ["registry", "list"],
    ):
        out = run(*cmd, "--help")
        assert out.returncode == 0 and "Usage:" in out.stdout


@pytest.mark.parametrize("kem", ["x25519", "mlkem768-x25519"])
def test_publish_confidential_then_open_by_recipient_only(world: Path, kem: str) -> None:
    pki = world / "pki"
    for agency in (PROVINCE, "000.00.00.H06", "000.00.01.H41"):
        out = run(
            "pki", "issue", "--dir", pki, "--agency", agency, "--role", "encryption", "--kem", kem
        )
        assert out.returncode == 0, out.stderr
    (world / "mat.txt").write_text("Tài liệu mật", encoding="utf-8")
    event = world / f"secret-{kem}.avro"
    out = run(
        "publish",
        "--from",
        MINISTRY,
        "--to",
        PROVINCE,
        "--to",
        "000.00.00.H06",
        "--subject",
        "Kế hoạch mật",
        "--file",
        world / "mat.txt",
        "--signer",
        _keys(world, "signer"),
        "--seal",
        _keys(world, "agency"),
        "--confidential",
        "SECRET",
        "--address-book",
        pki / "agencies",
        "--trust",
        pki / "trust",
        "--kem",
        kem,
        "--output",
        event,
    )
    assert out.returncode == 0, out.stderr
    assert "Kế hoạch mật".encode() not in event.read_bytes()
    assert "Tài liệu mật".encode() not in event.read_bytes()
    assert run("verify", event, "--trust", pki / "trust").returncode == 0
    key = pki / "agencies" / "000.00.00.H06" / "encryption.key.pem"
    out = run("open", event, "--key", key, "--trust", pki / "trust", "--out", world / f"open-{kem}")
    assert out.returncode == 0 and "as 000.00.00.H06" in out.stdout
    assert (world / f"open-{kem}" / "attachments" / "mat.txt").read_text(
        encoding="utf-8"
    ) == "Tài liệu mật"
    assert (world / f"open-{kem}" / "subject.txt").read_text(
        encoding="utf-8"
    ).strip() == "Kế hoạch mật"
    outsider = pki / "agencies" / "000.00.01.H41" / "encryption.key.pem"
    out = run("open", event, "--key", outsider, "--trust", pki / "trust", "--out", world / "no")
    assert out.returncode == 1 and "not a recipient's key" in out.stderr
    assert not (world / "no").exists()


def test_publish_confidential_refuses_a_recipient_without_certificate(world: Path) -> None:
    out = run(
        "publish",
        "--from",
        MINISTRY,
        "--to",
        "000.00.00.G10",
        "--subject",
        "x",
        "--signer",
        _keys(world, "signer"),
        "--seal",
        _keys(world, "agency"),
        "--confidential",
        "SECRET",
        "--address-book",
        world / "pki" / "agencies",
        "--trust",
        world / "pki" / "trust",
        "--output",
        world / "never.avro",
    )
    assert out.returncode == 1 and "no encryption certificate for 000.00.00.G10" in out.stderr
    assert not (world / "never.avro").exists()


def test_pki_issue_never_overwrites_a_key_nor_takes_a_malformed_code(world: Path) -> None:
    key = world / "pki" / "agencies" / MINISTRY / "signer.key.pem"
    before = key.read_bytes()
    again = run("pki", "issue", "--dir", world / "pki", "--agency", MINISTRY, "--role", "signer")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert key.read_bytes() == before and key.stat().st_mode & 0o777 == 0o600
    for code in ("../../etc", "000.00.00.g22", "G22", "000.00.00.G22/x"):
        bad = run("pki", "issue", "--dir", world / "pki", "--agency", code, "--role", "signer")
        assert bad.returncode == 1 and "neither an agency code" in bad.stderr, code
        assert "Traceback" not in bad.stderr


def test_a_password_protected_key_needs_its_password(world: Path, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("mật khẩu đủ dài\n", "utf-8")
    out = run(
        "pki", "issue", "--dir", world / "pki", "--agency", MINISTRY, "--role", "signer",
        "--name", "protected", "--password-file", secret,
    )  # fmt: skip
    key, cert = out.stdout.split()
    assert b"ENCRYPTED PRIVATE KEY" in Path(key).read_bytes()
    args = [
        "publish", "--from", MINISTRY, "--to", PROVINCE, "--subject", "x",
        "--signer", f"{key},{cert}", "--seal", _keys(world, "agency"),
        "--output", tmp_path / "e.avro",
    ]  # fmt: skip
    refused = run(*args)
    assert refused.returncode == 2 and "DOCBUS_KEY_PASSWORD_FILE" in refused.stderr
    assert "Traceback" not in refused.stderr
    opened = run(*args, env={"DOCBUS_KEY_PASSWORD_FILE": str(secret)})
    assert opened.returncode == 0, opened.stderr


def test_attachment_names_from_the_wire_stay_files_of_their_own(tmp_path: Path) -> None:
    from bus.wire.names import attachment_files, path_segment

    names = attachment_files(
        ["..", "a\x00b.pdf", "../../event.avro", "x" * 300, "dup.pdf", "sub/dup.pdf", "DUP.pdf"]
    )
    assert names[0] == "attachment-1" and names[1] == "ab.pdf" and names[2] == "event.avro"
    assert len(names[3].encode()) <= 200 and len(set(n.lower() for n in names)) == len(names)
    assert names[4:] == ["dup.pdf", "dup-2.pdf", "DUP-3.pdf"]
    for hostile in ("..", ".", "a/b", ""):
        segment = path_segment(hostile)
        assert "/" not in segment and segment not in ("", ".", "..")
        assert (tmp_path / segment).resolve().parent == tmp_path.resolve()


def test_a_broker_that_is_down_is_exit_75_in_one_line(world: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    for command in (
        ["topics", "ensure"],
        [
            "publish",
            *("--from", MINISTRY, "--to", "000.00.00.H41", "--subject", "x"),
            *("--file", str(tmp_path / "a.txt"), "--trust", str(world / "pki" / "trust")),
            *("--outbox", str(tmp_path / "outbox.sqlite")),
            *("--signer", _keys(world, "signer")),
            *("--seal", _keys(world, "agency")),
        ],
    ):
        done = subprocess.run(
            [DOCBUS, *command, "--bootstrap", "127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DOCBUS_BLOB_DIR": str(tmp_path / "blobs")},
        )
        assert done.returncode == 75, done.stderr
        # One line: no aiokafka log lines, no "Unclosed AIOKafkaProducer", no traceback.
        assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
        assert done.stderr.startswith("Error: broker unavailable, try again later")


def test_what_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    for command in (
        ["archive", "list", "--data-dir", str(tmp_path / "nowhere")],
        ["outbox", "list", "--outbox", str(tmp_path / "nowhere.sqlite")],
    ):
        done = subprocess.run([DOCBUS, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("Error: no ") and "Traceback" not in done.stderr


@pytest.mark.integration
def test_publish_without_wait_only_queues_and_sends(
    world: Path, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = broker.settings()
    asyncio.run(ensure_topics(settings, [settings.topics.submitted]))
    done = run(
        "publish",
        *("--from", MINISTRY, "--to", "000.00.00.H41", "--subject", "Chỉ xếp hàng"),
        *("--signer", _keys(world, "signer"), "--seal", _keys(world, "agency")),
        *("--trust", world / "pki" / "trust", "--outbox", tmp_path / "outbox.sqlite"),
        *("--bootstrap", broker.bootstrap, "--json"),
    )
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert sent["state"] == "PENDING" and sent["sent"] == 1

    async def groups_and_records() -> tuple[list[str], list[bytes]]:
        admin = settings.admin()
        await admin.start()
        try:
            groups = [g[0] for g in await admin.list_consumer_groups()]
        finally:
            await admin.close()
        found = await read_topic(settings, settings.topics.submitted, 1)
        return groups, [r.key or b"" for r in found]

    groups, keys = asyncio.run(groups_and_records())
    assert not [g for g in groups if g.startswith("docbus.outbox")]  # no group was joined
    assert keys == [sent["document_id"].encode()]
