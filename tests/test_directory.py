"""The national directory (DESIGN §13): its canonical form, its one signature by the pinned
operator, versions that only go forward, and its topic on the embedded broker, attacked by a
genuine certificate that is not the operator's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import given
from hypothesis import strategies as st

from bus.directory.generate import make_directory, national
from bus.directory.model import Directory, DirectoryError, diff, parse_directory
from bus.directory.parts import is_part, split
from bus.directory.signed import (
    DirectoryReader,
    forward,
    open_directory,
    read_file,
    sign_directory,
    to_file,
)
from bus.kafka.acls import Rule, delivery_grants, parse_acls
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.clients import KafkaSettings
from bus.kafka.directory import load_directory, read_directory
from bus.kafka.records import document_record, send_once
from bus.kafka.runtime import Output
from bus.kafka.topics import Topics, ensure_topics
from bus.registry import VIETNAM, Registry
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.trust.signing import SigningKey, sign_event
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.limits import MAX_RECORD_BYTES
from bus.wire.model import Document, Role
from consumers.inbox import document_folder
from producers.document import new_document
from tests.acls import ACLS
from tests.conftest import MINISTRY, PROVINCE, Pki
from tests.stack import file_appears, read_topic, running_stack

SEED = json.loads(
    (Path(__file__).resolve().parents[1] / "bus" / "data" / "registry.json").read_text("utf-8")
)
ISSUED = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


def _directory(version: int, registry: dict[str, object] | None = None) -> Directory:
    return make_directory(
        registry or SEED, {PROVINCE: "-----BEGIN CERTIFICATE-----"}, version, ISSUED
    )


def _operator(pki: Pki) -> SigningKey:
    return pki.key("docbus.directory", Role.SERVICE)


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@given(
    name=texts,
    version=st.integers(min_value=1, max_value=10**12 - 1),
    encryption=st.dictionaries(texts, texts, max_size=4),
    signing=st.dictionaries(texts, st.lists(texts, max_size=3), max_size=4),
)
def test_a_directory_reads_back_as_written_and_only_in_canonical_form(
    name: str, version: int, encryption: dict[str, str], signing: dict[str, list[str]]
) -> None:
    made = make_directory(SEED, encryption, version, ISSUED, name, signing)
    data = made.to_json()
    assert parse_directory(data) == made
    spaced = json.dumps(json.loads(data), ensure_ascii=False, indent=1).encode()
    with pytest.raises(DirectoryError, match="canonical"):
        parse_directory(spaced)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(version=True), "version"),
        (lambda d: d.update(format=2), "format"),
        (lambda d: d.pop("registry"), "registry"),
        (lambda d: d.update(issued="2026-12-03T07:00:00"), "time zone"),
        (lambda d: d["registry"]["agencies"][0].update(unit="nowhere"), "unknown unit"),
    ],
)
def test_a_malformed_directory_is_refused_saying_why(change: object, said: str) -> None:
    data = json.loads(_directory(1).to_json())
    change(data)  # type: ignore[operator]
    encoded = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(DirectoryError, match=said):
        parse_directory(encoded.encode())


def test_the_operators_signature_opens_and_any_other_is_refused(pki: Pki) -> None:
    verifier = Verifier(pki.trust)
    made = _directory(3)
    assert open_directory(sign_directory(made, _operator(pki)), verifier) == made
    # A genuine certificate that is not the pinned operator's: a gateway, an agency.
    for key in (pki.key("docbus.gateway", Role.SERVICE), pki.key(MINISTRY, Role.AGENCY)):
        with pytest.raises(DirectoryError, match=r"no pinned directory|role"):
            open_directory(sign_directory(made, key), verifier)
    codec = default_codec()
    *parts, (named, manifest) = sign_directory(made, _operator(pki))
    event = codec.decode_event(manifest)
    unsigned = codec.encode_event(sign_event(event.payload_type, event.payload, []))
    with pytest.raises(DirectoryError, match="no signature"):
        open_directory([*parts, (named, unsigned)], verifier)
    # The operator's signature over another manifest: a part named that was not signed.
    other = event.payload.replace(parts[0][0].split(b"/")[-1], b"0" * 64)
    with pytest.raises(DirectoryError, match="does not verify"):
        forged = codec.encode_event(event.__class__(event.payload_type, other, event.signatures))
        open_directory([*parts, (named, forged)], verifier)
    # A part altered (one agency's certificate swapped) is no longer the part it names.
    altered = [
        (k, v.replace(b"-----BEGIN CERTIFICATE-----", b"-----BEGIN CERTIFICATE----!"))
        for k, v in parts
    ]
    with pytest.raises(DirectoryError, match="not found"):
        open_directory([*altered, (named, manifest)], verifier)
    # A document is not a directory, however well signed.
    record = document_record(
        new_document(MINISTRY, [PROVINCE], "x"), [pki.key(MINISTRY, Role.SIGNER)]
    )
    with pytest.raises(DirectoryError, match="not a directory"):
        open_directory([(b"vn/000000000009/x", record)], verifier)


def test_versions_only_go_forward() -> None:
    forward(None, "vn", 1)
    forward(_directory(1), "vn", 2)
    for older in (1, 2):
        with pytest.raises(DirectoryError, match="not newer"):
            forward(_directory(2), "vn", older)
    with pytest.raises(DirectoryError, match="is not 'vn'"):
        forward(_directory(2), "elsewhere", 5)


def test_a_merger_reads_as_an_operator_expects() -> None:
    merged = json.loads(json.dumps(SEED))
    [unit] = [u for u in merged["units"] if u["id"] == "nghe-an"]
    unit.update(valid_to="2026-12-31", successor="ha-tinh")
    lines = diff(_directory(1), _directory(2, merged))
    assert lines == [
        "version 1 → 2",
        "~ unit nghe-an: successor None → 'ha-tinh'",
        "~ unit nghe-an: valid_to None → '2026-12-31'",
    ]
    assert (
        _directory(2, merged).parsed.resolve(PROVINCE, date(2027, 1, 1)).jurisdiction.id
        == "ha-tinh"
    )


def test_at_national_size_every_generated_agency_resolves_to_a_province() -> None:
    grown = _directory(1, national(SEED, communes=3300, agencies=20000))
    registry = grown.parsed
    assert len(registry.agencies) == 20000
    assert sum(u.level.value == "COMMUNE" for u in registry.units.values()) >= 3300
    provinces = {u.id for u in registry.units.values() if u.level.value == "PROVINCE"}
    for agency in list(registry.agencies.values())[-50:]:
        assert registry.resolve(agency.code, date(2026, 12, 3)).jurisdiction.id in provinces


def _national(pki: Pki, renewed: str | None = None) -> Directory:
    """A directory at national size with every agency's encryption certificate and one
    signing chain (the same made-up PEM bytes for each: size, not validity, is the point)."""
    registry = national(SEED, communes=3300, agencies=20000)
    pem = (pki.dev.trust_dir / "issuing-ca.cert.pem").read_text("ascii")
    codes = [a["code"] for a in registry["agencies"]]
    encryption = {code: pem + (code if code == renewed else "") for code in codes}
    return make_directory(
        registry, encryption, 2 if renewed else 1, ISSUED, signing={code: [pem] for code in codes}
    )


def test_at_national_size_a_version_travels_in_parts_and_a_renewal_is_one_new_part(
    pki: Pki,
) -> None:
    made = _national(pki)
    records = sign_directory(made, _operator(pki))
    assert len(made.to_json()) > 7 * MAX_RECORD_BYTES  # far over one record
    assert all(len(value) <= MAX_RECORD_BYTES for _, value in records)
    assert open_directory(records, Verifier(pki.trust)) == made
    # The offline file holds the same records.
    assert read_file(to_file(records)) == records
    # A renewed certificate: one part differs, the others are written once for both.
    renewed_code = made.registry["agencies"][1234]["code"]
    _, before = split(made)
    _, after = split(_national(pki, renewed_code))
    assert len(after.keys() - before.keys()) == 1


def test_a_version_whose_parts_come_later_waits_for_them(pki: Pki) -> None:
    reader = DirectoryReader(Verifier(pki.trust))
    assert reader.feed(sign_directory(_directory(1), _operator(pki))).version == 1  # type: ignore[union-attr]
    records = sign_directory(_directory(2, _merged(date(2027, 1, 1))), _operator(pki))
    parts = [r for r in records if is_part(r[0])]
    manifest = [r for r in records if not is_part(r[0])]
    assert reader.feed(manifest) is None and reader.current.version == 1  # type: ignore[union-attr]
    assert "not found" in reader.refused[-1]
    assert reader.feed(parts).version == 2  # type: ignore[union-attr]


async def test_on_the_topic_the_newest_genuine_version_wins_and_forgeries_change_nothing(
    pki: Pki, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = broker.settings()
    await ensure_topics(settings, [settings.topics.directory], partitions=1)
    verifier = Verifier(pki.trust)
    assert await load_directory(settings, verifier) is None  # nothing yet
    # Offline: no valid directory on the topic, the signed file.
    offline = tmp_path / "directory.signed"
    offline.write_bytes(to_file(sign_directory(_directory(1), _operator(pki))))
    assert (await load_directory(settings, verifier, offline)).version == 1  # type: ignore[union-attr]

    operator, gateway = _operator(pki), pki.key("docbus.gateway", Role.SERVICE)
    producer = settings.producer()
    await producer.start()
    try:
        # Junk written first under the name of a part version 2 will have: never taken
        # for it, and never a reason for the operator not to write the genuine part.
        [(squatted, _)] = [r for r in sign_directory(_directory(2), operator) if is_part(r[0])]
        await _put(producer, settings, [(squatted, b"{}")])
        reader = DirectoryReader(verifier)
        assert squatted not in await read_directory(settings, reader)
        assert "under another's name" in reader.refused[-1]
        for made, key in (
            (_directory(1), operator),
            (_directory(2), operator),
            (_directory(9), gateway),
            (_directory(1), operator),  # a genuine older version again after the newer one
        ):
            await _put(producer, settings, sign_directory(made, key))
    finally:
        await producer.stop()
    found = await load_directory(settings, verifier, offline)
    assert found is not None and found.version == 2  # not the forged 9, not the replayed 1
    # A reader with version 2 in force finds nothing newer: the forgery changes nothing.
    reader = DirectoryReader(verifier)
    await read_directory(settings, reader)
    assert reader.settle() == found
    await read_directory(settings, reader)
    assert reader.settle() is None
    assert any("no pinned directory" in r for r in reader.refused)
    assert reader.feed(sign_directory(_directory(1), operator)) is None  # a replay, later
    assert "not newer than version 2" in reader.refused[-1]


async def _put(
    producer: AIOKafkaProducer, settings: KafkaSettings, records: list[tuple[bytes, bytes]]
) -> None:
    for key, value in records:
        await producer.send_and_wait(settings.topics.directory, value, key=key)


def test_the_operator_publishes_and_everyone_reads_with_the_command(
    pki: Pki, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    key, cert = pki.dev.issue(
        "docbus.directory", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True
    )
    trust = ["--trust", str(pki.dev.trust_dir)]
    env = broker.client_env()

    def docbus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bus", "directory", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    asyncio.run(
        ensure_topics(broker.settings(), [broker.settings().topics.directory], partitions=1)
    )
    for version in (1, 2):
        made = docbus(
            "generate", "--version", str(version), "--output", str(tmp_path / f"{version}.json")
        )
        assert made.returncode == 0, made.stderr
    assert (
        docbus("publish", str(tmp_path / "2.json"), "--key", f"{key},{cert}", *trust).returncode
        == 0
    )
    again = docbus("publish", str(tmp_path / "1.json"), "--key", f"{key},{cert}", *trust)
    assert again.returncode == 1 and "not newer" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
    shown = docbus("show", *trust)
    assert shown.returncode == 0 and "directory vn version 2" in shown.stdout, shown.stderr


NEW_COMMUNE_AGENCY = "000.77.01.H25"


def _merged(on: date) -> dict[str, object]:
    """The seed with Nghệ An merged into Hà Tĩnh from ``on`` (Vietnam's date), and a commune
    of Hà Tĩnh created that day with an agency of its own."""
    merged = json.loads(json.dumps(SEED))
    [unit] = [u for u in merged["units"] if u["id"] == "nghe-an"]
    unit.update(valid_to=(on - timedelta(days=1)).isoformat(), successor="ha-tinh")
    since = {"valid_from": on.isoformat(), "valid_to": None, "successor": None}
    merged["units"].append(
        {"id": "xa-moi", "name": "Xã Mới", "level": "COMMUNE", "parent": "ha-tinh", **since}
    )
    merged["agencies"].append(
        {"code": NEW_COMMUNE_AGENCY, "name": "UBND xã Mới", "unit": "xa-moi", **since}
    )
    return merged


def _midnight() -> datetime:
    """Vietnam's midnight nearest to now: documents dated a minute either side of it are
    within the verifier's tolerance whatever the time of day."""
    now = datetime.now(VIETNAM)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start if now.hour < 12 else start + timedelta(days=1)


def _dated(document: Document, at: datetime) -> Document:
    return dataclasses.replace(document, issued_at=at)


async def test_a_running_gateway_routes_by_a_newer_directory_without_a_restart(
    pki: Pki, registry: Registry, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    operator = _operator(pki)
    settings = broker.settings()
    async with running_stack(broker.bootstrap, pki, registry, tmp_path, services=False) as stack:
        producer = settings.producer()
        await producer.start()
        try:
            await _put(producer, settings, sign_directory(_directory(1), operator))
            log = tmp_path / "gateway.log"
            gateway = _gateway(pki, broker, log)
            try:
                first = new_document(MINISTRY, [PROVINCE], "Trước khi công bố")
                await stack.publisher.publish(first)
                assert await _delivered(settings, "nghe-an", first.document_id)
                # A merger and a new commune from Vietnam's midnight, published while it runs.
                midnight = _midnight()
                merged = _directory(2, _merged(midnight.date()))
                await _put(producer, settings, sign_directory(merged, operator))
                await _logged(log, '"version": 2', 40)
                minute = timedelta(minutes=1)
                before = _dated(new_document(MINISTRY, [PROVINCE], "Ngày cũ"), midnight - minute)
                after = _dated(new_document(MINISTRY, [PROVINCE], "Ngày mới"), midnight + minute)
                created = _dated(
                    new_document(MINISTRY, [NEW_COMMUNE_AGENCY], "Xã mới"), midnight + minute
                )
                for doc in (before, after, created):
                    await stack.publisher.publish(doc)
                assert await _delivered(settings, "nghe-an", before.document_id)  # as before
                assert await _delivered(settings, "ha-tinh", after.document_id)  # its successor
                assert await _delivered(settings, "ha-tinh", created.document_id)
                # A newer version signed by a genuine agency key: refused, logged, no change.
                forged = json.loads(json.dumps(_merged(midnight.date())))
                [unit] = [u for u in forged["units"] if u["id"] == "nghe-an"]
                unit["successor"] = "thanh-hoa"
                records = sign_directory(_directory(3, forged), pki.key(MINISTRY, Role.AGENCY))
                await _put(producer, settings, records)
                await _logged(log, "directory refused", 40)
                last = _dated(new_document(MINISTRY, [PROVINCE], "Sau bản giả"), midnight + minute)
                await stack.publisher.publish(last)
                assert await _delivered(settings, "ha-tinh", last.document_id)
                assert gateway.poll() is None  # the same process: no restart
            finally:
                gateway.terminate()
                gateway.wait(30)
        finally:
            await producer.stop()


async def _delivered(settings: KafkaSettings, jurisdiction: str, document_id: str) -> bool:
    """Whether the document reaches the jurisdiction's delivery topic within 30 s."""
    topic = settings.topics.deliver(jurisdiction)
    for _ in range(10):
        records = await read_topic(settings, topic, 1000, 3)
        if any(document_id.encode() in (r.value or b"") for r in records):
            return True
    return False


def _gateway(pki: Pki, broker: EmbeddedBroker, log: Path) -> subprocess.Popen[bytes]:
    issued = pki.dev.issue("docbus.gateway", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    return _serve(broker, log, "gateway", pki, issued)


def _serve(
    broker: EmbeddedBroker, log: Path, service: str, pki: Pki, key: tuple[Path, Path], *more: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "bus", "serve", service, "--trust", str(pki.dev.trust_dir)),
            *("--key", f"{key[0]},{key[1]}", *more),
        ],
        env=broker.client_env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def test_a_running_inbox_follows_its_new_jurisdiction_and_misses_nothing_of_the_old(
    pki: Pki, registry: Registry, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    operator, settings = _operator(pki), broker.settings()
    async with running_stack(broker.bootstrap, pki, registry, tmp_path, services=False) as stack:
        for key, value in sign_directory(_directory(1), operator):
            await send_once(settings, Output(settings.topics.directory, key, value))
        folder = tmp_path / "inbox"
        agency_key = pki.dev.issue(PROVINCE, CertRole.AGENCY, KeyAlgorithm.ED25519, replace=True)
        logs = {name: tmp_path / f"{name}.log" for name in ("gateway", "inbox")}
        services = [
            _gateway(pki, broker, logs["gateway"]),
            _serve(
                broker,
                logs["inbox"],
                "inbox",
                pki,
                agency_key,
                "--agency",
                PROVINCE,
                "--dir",
                str(folder),
            ),
        ]
        try:
            first = new_document(MINISTRY, [PROVINCE], "Trước khi công bố")
            await stack.publisher.publish(first)
            await file_appears(
                document_folder(folder, MINISTRY, first.document_id, 0) / "event.avro", 60
            )
            midnight, minute = _midnight(), timedelta(minutes=1)
            merged = _directory(2, _merged(midnight.date()))
            for key, value in sign_directory(merged, operator):
                await send_once(settings, Output(settings.topics.directory, key, value))
            for log in logs.values():
                await _logged(log, '"version": 2', 40)
            before = _dated(new_document(MINISTRY, [PROVINCE], "Ngày cũ"), midnight - minute)
            after = _dated(new_document(MINISTRY, [PROVINCE], "Ngày mới"), midnight + minute)
            for doc in (before, after):
                await stack.publisher.publish(doc)
            assert await _delivered(settings, "ha-tinh", after.document_id)
            for doc in (before, after):  # the old topic still read, the new one followed
                await file_appears(
                    document_folder(folder, MINISTRY, doc.document_id, 0) / "event.avro", 60
                )
            assert all(service.poll() is None for service in services)  # no restart
        finally:
            for service in services:
                service.terminate()
                service.wait(30)


async def _logged(log: Path, text: str, seconds: float) -> None:
    for _ in range(int(seconds / 0.5)):
        if text in await asyncio.to_thread(log.read_text):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{text} not logged within {seconds}s")


def test_deploy_acls_let_each_agency_read_the_delivery_topics_the_directory_gives_it() -> None:
    # deploy/acls.txt is checked against the directory: an agency's principal (known by its
    # inbox group, docbus.inbox.CODE) reads exactly its jurisdictions' delivery topics.
    rules = parse_acls(ACLS.read_text("utf-8"))
    topics, today = Topics(), date(2026, 12, 3)
    assert delivery_grants(rules, _directory(1).parsed, today, topics) == ([], [])
    # A merger named ahead: Nghệ An's inbox must read Hà Tĩnh's topic too, before the day.
    ahead = _directory(2, _merged(date(2027, 1, 1))).parsed
    missing, surplus = delivery_grants(rules, ahead, today, topics)
    assert missing == [Rule("inbox-nghe-an", "Read", "topic", "docbus.deliver.ha-tinh", "literal")]
    assert surplus == []
    # Once it is done, the old topic is no longer needed.
    done = _directory(2, _merged(date(2026, 7, 1))).parsed
    missing, surplus = delivery_grants(rules, done, today, topics)
    assert [r.name for r in missing] == ["docbus.deliver.ha-tinh"]
    assert [r.name for r in surplus] == ["docbus.deliver.nghe-an"]


def test_the_operator_checks_the_acls_against_a_directory_with_the_command(
    pki: Pki, tmp_path: Path
) -> None:
    signed = tmp_path / "d2.signed"
    signed.write_bytes(
        to_file(sign_directory(_directory(2, _merged(date(2027, 1, 1))), _operator(pki)))
    )
    checked = subprocess.run(
        [
            *(sys.executable, "-m", "bus", "directory", "acls", "--file", str(signed)),
            *("--acls", str(ACLS), "--on", "2026-12-03", "--trust", str(pki.dev.trust_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1, checked.stderr
    assert checked.stdout.splitlines()[0].split() == [
        "+", "inbox-nghe-an", "Read", "topic", "docbus.deliver.ha-tinh", "literal"
    ]  # fmt: skip
    assert "1 rules to add, 0 to remove" in checked.stdout


def test_an_inbox_reads_every_jurisdiction_its_agency_has_from_today_on() -> None:
    today = date(2026, 12, 3)
    assert _directory(1).parsed.jurisdictions_from(PROVINCE, today) == ["nghe-an"]
    ahead = _directory(2, _merged(date(2027, 1, 1))).parsed  # a merger named ahead
    assert ahead.jurisdictions_from(PROVINCE, today) == ["nghe-an", "ha-tinh"]
    done = _directory(2, _merged(date(2026, 7, 1))).parsed  # one already made
    assert done.jurisdictions_from(PROVINCE, today) == ["ha-tinh"]
