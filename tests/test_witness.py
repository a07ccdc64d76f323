"""Witnesses (DESIGN §6) on the real broker: cosigning a growing log, readers demanding
cosignatures, and a forked log caught with both of its checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bus.audit.replay import read_topics
from bus.audit.verify import verify_archive
from bus.audit.witness import Witness, WitnessState, published, witness_once
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.runtime import ConsumerRuntime, Output, Record
from bus.kafka.topics import Topics
from bus.registry import Registry
from bus.store.outbox import State
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, consistency_proof, leaf_hash
from bus.trust.signing import sign_checkpoint
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verifier
from bus.wire.headers import COSIGNED_BY, WITNESS_CERT, header, log_headers
from bus.wire.model import Role
from consumers.archiver import Archiver
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import NGHE_AN, Stack, read_topic, running_stack
from tests.witnessing import checkpoint_record, pinned_witness, signed_notes

pytestmark = pytest.mark.integration


async def _archive(stack: Stack, n: int) -> None:
    for i in range(n):
        doc = new_document(MINISTRY, [NGHE_AN], f"Văn bản chứng kiến {i}")
        await stack.publisher.publish(doc)
        async with asyncio.timeout(30):
            assert (await stack.publisher.wait(doc.document_id)).state is State.ARCHIVED


async def _verify(stack: Stack, required: int) -> set[str]:
    verifier = Verifier(stack.pki.trust)
    records = read_topics(stack.settings, [stack.settings.topics.checkpoints], None, None)
    topic = await published(records, verifier)
    report = verify_archive(stack.archive, verifier, None, required, topic)
    return {f.kind for f in report.findings}


async def test_a_witness_cosigns_a_growing_log_and_readers_can_demand_it(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await _archive(stack, 3)
        assert "forged checkpoint" in await _verify(stack, 1)  # nobody has cosigned yet
        state = WitnessState(tmp_path / "witness")
        witness = pinned_witness(pki, state)
        await witness_once(stack.settings, witness)
        assert witness.cosigned == 3 and not state.alarms()
        assert await _verify(stack, 1) == set()
        assert "forged checkpoint" in await _verify(stack, 2)  # one witness is not two
        # A certificate that is no pinned witness cosigns in vain.
        rogue = Witness(
            Verifier(pki.trust), pki.key("bridge.vpcp", Role.SERVICE), WitnessState(tmp_path / "r"),
            stack.settings.topics,
        )  # fmt: skip
        await witness_once(stack.settings, rogue)
        assert "forged checkpoint" in await _verify(stack, 2)
        state.close()


async def test_a_forked_log_is_caught_with_both_checkpoints(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await _archive(stack, 2)
        state = WitnessState(tmp_path / "witness")
        witness = pinned_witness(pki, state)
        await witness_once(stack.settings, witness)
        latest = stack.archive.latest_checkpoint()
        assert latest is not None and stack.archiver_key is not None
        # The archiver's own key (stolen, or the archiver lying) shows another history:
        # the same size with another root, then a shorter log than any it published.
        chain = stack.archiver_key.chain_der
        producer = stack.settings.producer()
        await producer.start()
        for size, root in ((latest.checkpoint.size, b"\x66" * 32), (0, b"\x01" * 32)):
            fork = sign_checkpoint(Checkpoint("docbus.archiver", size, root), stack.archiver_key)
            await producer.send_and_wait(
                stack.settings.topics.checkpoints,
                fork,
                key=b"docbus.archiver",
                headers=log_headers(chain, 0, []),
            )
        await producer.stop()
        fresh = pinned_witness(pki, state)
        await witness_once(stack.settings, fresh)
        alarms = state.alarms()
        assert [a.kind for a in alarms] == ["split view", "rollback"]
        assert all(a.known == latest.signed for a in alarms)
        assert b"\n0\n" in alarms[1].seen
        cosigned = [
            r
            for r in await _all(stack)
            if header(r.headers, COSIGNED_BY) is not None and b"ZmZm" in (r.value or b"")
        ]
        assert cosigned == []  # the fork was never cosigned
        state.close()


async def test_a_checkpoint_whose_archiver_died_before_publishing_it_is_published_again(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    # An archiver killed after its commit and before its outputs went out: its checkpoint
    # is in the archive and on no topic, and the next checkpoint's proof starts from it.
    # The archiver that gets the re-delivery publishes it again; the witness goes on.
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await _archive(stack, 2)
        state = WitnessState(tmp_path / "witness")
        witness = pinned_witness(pki, state)
        await witness_once(stack.settings, witness)
        assert witness.cosigned == 2
        await stack.stop_service("archiver")
        doc = new_document(MINISTRY, [NGHE_AN], "Văn bản của người lưu trữ đã chết")
        await stack.publisher.publish(doc)
        topics, key = stack.settings.topics, stack.archiver_key
        assert key is not None
        delivered = await read_topic(stack.settings, topics.deliver("nghe-an"), 3)
        [record] = [r for r in delivered if r.key == doc.document_id.encode()]
        dead = Archiver(stack.archive, key, topics, stack.verifier(), stack.blobs)
        outputs = await dead.handle([record])  # committed; the outputs die with it
        assert any(isinstance(o, Output) and o.topic == topics.checkpoints for o in outputs)
        latest = stack.archive.latest_checkpoint()
        assert latest is not None and latest.checkpoint.size == 3
        archiver = Archiver(stack.archive, key, topics, stack.verifier(), stack.blobs)
        stack.start_service(
            "archiver",
            ConsumerRuntime(
                stack.settings, archiver, "docbus.archiver", pattern=topics.deliver_pattern
            ),
        )
        await stack.started()
        async with asyncio.timeout(30):  # the re-delivery is answered again
            assert (await stack.publisher.wait(doc.document_id)).state is State.ARCHIVED
        await _archive(stack, 1)  # size 4, its proof from size 3
        await witness_once(stack.settings, witness)
        last = state.last("docbus.archiver")
        assert last is not None and last[0].size == 4 and not state.alarms()
        assert await _verify(stack, 1) == set()  # every checkpoint cosigned
        state.close()


async def _all(stack: Stack) -> list[Record]:
    return [
        r
        async for r in read_topics(stack.settings, [stack.settings.topics.checkpoints], None, None)
    ]


def test_a_bent_proof_beside_a_genuine_checkpoint_is_refused_without_an_alarm(
    pki: Pki, tmp_path: Path
) -> None:
    # The attacker re-publishes the archiver's genuine next checkpoint with a garbled
    # consistency proof ahead of the real one: nothing is cosigned, no false alarm, and
    # the real one is then accepted.

    archiver = pki.key("docbus.archiver", Role.SERVICE)
    chain = archiver.chain_der
    tree = MemoryTree([leaf_hash(bytes([i])) for i in range(5)])
    first = sign_checkpoint(Checkpoint("docbus.archiver", 3, tree.root(3)), archiver)
    second = sign_checkpoint(Checkpoint("docbus.archiver", 5, tree.root(5)), archiver)
    proof = consistency_proof(tree.node, 3, 5)
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    assert len(witness.process([checkpoint_record(first, log_headers(chain, 0, []), 0)])) == 1
    bent = witness.process([checkpoint_record(second, log_headers(chain, 3, [b"\x00" * 32]), 1)])
    assert [type(r).__name__ for r in bent] == ["Reject"] and not state.alarms()
    good = witness.process([checkpoint_record(second, log_headers(chain, 3, proof), 2)])
    assert [type(r).__name__ for r in good] == ["Output"] and not state.alarms()
    state.close()


def test_a_revoked_archiver_key_gets_no_cosignature(pki: Pki, tmp_path: Path) -> None:
    archiver = pki.key("docbus.archiver", Role.SERVICE)
    chain = archiver.chain_der
    cert = tmp_path / "archiver.pem"
    cert.write_bytes(archiver.chain[0].public_bytes(Encoding.PEM))
    pki.dev.revoke(cert)
    note = sign_checkpoint(Checkpoint("docbus.archiver", 1, b"\x01" * 32), archiver)
    state = WitnessState(tmp_path)
    witness = Witness(
        Verifier(TrustStore.load(pki.dev.trust_dir)),
        pki.key("docbus.witness", Role.SERVICE),
        state,
        Topics(),
    )
    time.sleep(1.1)  # a revocation takes effect from the next whole second
    [result] = witness.process([checkpoint_record(note, log_headers(chain, 0, []), 0)])
    assert type(result).__name__ == "Reject" and "revoked" in result.message  # type: ignore[union-attr]
    state.close()


async def test_a_truncated_archive_is_caught_against_the_published_checkpoints(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await _archive(stack, 3)
        assert await _verify(stack, 0) == set()
        # Whoever can write the archive deletes its newest row, log node and checkpoint.
        with sqlite3.connect(stack.archive.path) as db:
            db.execute("DELETE FROM entries WHERE log_index = 2")
            db.execute("DELETE FROM log_nodes WHERE level = 0 AND idx = 2")
            db.execute("DELETE FROM checkpoints WHERE size = 3")
        kinds = await _verify(stack, 0)
        assert {"checkpoint missing", "entries lost"} <= kinds
        # A forged cosignature line on the topic spoils nothing.
        witness_cert = pki.key("docbus.witness", Role.SERVICE).chain
        latest = stack.archive.latest_checkpoint()
        assert latest is not None
        bogus = (
            latest.signed + "— docbus.witness AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".encode()
        )
        producer = stack.settings.producer()
        await producer.start()
        await producer.send_and_wait(
            stack.settings.topics.checkpoints,
            bogus,
            key=b"docbus.archiver",
            headers=[
                (COSIGNED_BY, b"docbus.witness"),
                *((WITNESS_CERT, c.public_bytes(Encoding.DER)) for c in witness_cert),
            ],
        )
        await producer.stop()
        verifier = Verifier(stack.pki.trust)
        records = read_topics(stack.settings, [stack.settings.topics.checkpoints], None, None)
        topic = await published(records, verifier)
        assert topic.cosignatures == {}


def test_checkpoints_that_arrive_out_of_order_are_cosigned_in_order_without_an_alarm(
    pki: Pki, tmp_path: Path
) -> None:
    # Several archivers publish side by side: the size-7 note (its proof from 5) may reach
    # the witness before the size-5 note (its proof from 3). Both are genuine, one chain:
    # the witness holds the early one until its predecessor is accepted.
    archiver = pki.key("docbus.archiver", Role.SERVICE)
    chain = archiver.chain_der
    tree, notes = signed_notes(archiver, 7, (3, 5, 7))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    first = witness.process([checkpoint_record(notes[3], log_headers(chain, 0, []), 0)])
    early = log_headers(chain, 5, consistency_proof(tree.node, 5, 7))
    assert witness.process([checkpoint_record(notes[7], early, 1)]) == []  # held, no verdict
    late = log_headers(chain, 3, consistency_proof(tree.node, 3, 5))
    both = witness.process([checkpoint_record(notes[5], late, 2)])
    assert [type(r).__name__ for r in [*first, *both]] == ["Output"] * 3
    assert not state.alarms()
    last = state.last("docbus.archiver")
    assert last is not None and last[0].size == 7
    state.close()


def test_the_unsigned_proof_header_cannot_stall_a_witness_nor_hide_a_rollback(
    pki: Pki, tmp_path: Path
) -> None:
    # The size a proof starts from travels unsigned. An attacker re-publishes a genuine
    # early note many times under other sizes, and a genuine older note with a size from
    # far ahead: the real predecessor still releases the real early note, and the older
    # note is still reported as the rollback it is.
    archiver = pki.key("docbus.archiver", Role.SERVICE)
    chain = archiver.chain_der
    tree, notes = signed_notes(archiver, 9, (3, 4, 5, 9))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([checkpoint_record(notes[3], log_headers(chain, 0, []), 0)])
    real = log_headers(chain, 5, consistency_proof(tree.node, 5, 9))
    assert witness.process([checkpoint_record(notes[9], real, 1)]) == []  # held
    for n, since in enumerate((5, 5, 4, 6, 8, 1000) * 20):  # copies, none replaces it
        witness.process([checkpoint_record(notes[9], log_headers(chain, since, []), 2 + n)])
    late = log_headers(chain, 3, consistency_proof(tree.node, 3, 5))
    released = witness.process([checkpoint_record(notes[5], late, 500)])
    assert "Output" in [type(r).__name__ for r in released]
    last = state.last("docbus.archiver")
    assert last is not None and last[0].size == 9 and not state.alarms()
    witness.process([checkpoint_record(notes[4], log_headers(chain, 1_000_000, []), 501)])
    assert [a.kind for a in state.alarms()] == ["rollback"]
    state.close()
