"""The witness's hold (DESIGN §6) under attack: checkpoints that arrive before the one
their proof starts from wait in the witness's state, and nothing an attacker with one
genuine certificate and the checkpoint topic does to the hold gets a fork cosigned, hides
it, raises a false alarm or stalls the witness for good.

Each test feeds genuine notes (signed by the archiver's key) through the witness's
handler, as the runtime would from the topic.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bus.audit.witness import STATE_FILE, WitnessState
from bus.kafka.runtime import Output, Record, Reject
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import MemoryTree, consistency_proof
from bus.trust.signing import sign_checkpoint
from bus.wire.headers import CONSISTENCY_FROM, log_headers
from tests.conftest import Pki
from tests.witnessing import Log, checkpoint_record, entry, pinned_witness


def _kinds(results: list[Output | Reject] | list[object]) -> list[str]:
    return [type(r).__name__ for r in results]


def _last(state: WitnessState) -> int:
    last = state.last("docbus.archiver")
    assert last is not None
    return last[0].size


def _with(record: Record, name: str, value: bytes | None) -> Record:
    """The record with header ``name`` set to ``value`` (None: without it)."""
    headers = [(k, v) for k, v in record.headers if k != name]
    return checkpoint_record(
        record.value or b"", headers + ([(name, value)] if value is not None else []), 0
    )


def test_a_fork_below_the_last_checkpoint_is_a_rollback_though_it_proves_a_prefix(
    pki: Pki, tmp_path: Path
) -> None:
    # The log's key (or an archive restored from a backup at size 3) signs another
    # history after size 3: a size-5 note with a valid proof from 3, once 7 was accepted.
    # The witness has seen every size of the one chain up to 7, so an unseen 5 is no
    # late genuine note: it is reported, and the forked history is never cosigned.
    log = Log.of(pki, 7, (3, 7))
    fork = MemoryTree([entry(i) for i in range(3)] + [b"forged %d" % i for i in range(7)])
    assert fork.root(3) == log.tree.root(3) and fork.root(5) != log.tree.root(5)
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3), log.record(7, 3, 1)])
    forged = sign_checkpoint(Checkpoint("docbus.archiver", 5, fork.root(5)), log.archiver)
    proof = log_headers(log.archiver.chain_der, 3, consistency_proof(fork.node, 3, 5))
    [refused] = witness.process([checkpoint_record(forged, proof, 2)])
    assert isinstance(refused, Reject) and [a.kind for a in state.alarms()] == ["rollback"]
    assert witness.cosigned == 2
    state.close()


def test_a_new_witness_waits_for_the_logs_first_checkpoint_published_late(
    pki: Pki, tmp_path: Path
) -> None:
    # An archiver died before publishing size 5; another published 9 (its proof from 5),
    # and 5 comes later, published again. A witness that has seen nothing yet does not
    # take 9 on trust (it would then call 5 a rollback): it waits for the chain's start.
    log = Log.of(pki, 9, (5, 9))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    assert witness.process([log.record(9, 5)]) == []
    assert _kinds(witness.process([log.record(5, 0, 1)])) == ["Output", "Output"]
    assert _last(state) == 9 and not state.alarms()
    state.close()


def test_a_held_checkpoint_outlives_a_restart_of_the_witness(pki: Pki, tmp_path: Path) -> None:
    # Size 7 (its proof from 5) is held, and its offset committed; the witness restarts;
    # 5 comes, then 9 (its proof from 7). Had the hold been lost with the process, 7 would
    # never come again, and the witness would wait for ever.
    log = Log.of(pki, 9, (3, 5, 7, 9))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3)])
    assert witness.process([log.record(7, 5, 1)]) == []
    state.close()
    state = WitnessState(tmp_path)  # restarted
    witness = pinned_witness(pki, state)
    witness.process([log.record(5, 3, 2)])
    assert _kinds(witness.process([log.record(9, 7, 3)])) == ["Output"]
    assert _last(state) == 9 and not state.alarms()
    state.close()


def test_a_long_chain_released_at_once_is_cosigned_to_its_end(pki: Pki, tmp_path: Path) -> None:
    # The archiver of size 2 died before publishing it; the others published 3…1200, each
    # proof from the one before, all held. Size 2, published again, releases them all: a
    # chain longer than Python's recursion limit, checked one after another.
    n = 1200
    log = Log.of(pki, n, range(1, n + 1))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(1)])
    for size in range(3, n + 1):
        assert witness.process([log.record(size, size - 1, size)]) == []
    released = witness.process([log.record(2, 1, 2)])
    assert _kinds(released) == ["Output"] * (n - 1)
    assert _last(state) == n and not state.alarms()
    state.close()


def test_copies_of_a_held_checkpoint_cannot_push_it_out(pki: Pki, tmp_path: Path) -> None:
    # While the genuine size 7 waits for 5, the attacker publishes it again 300 times under
    # another starting size, each copy padded to fill the hold. The genuine copy stays.
    log = Log.of(pki, 11, (3, 5, 7, 9, 11))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3)])
    assert witness.process([log.record(7, 5, 1)]) == []
    for i in range(300):
        padded = [*log_headers(log.archiver.chain_der, 6, []), ("x", b"\0" * 60_000)]
        witness.process([checkpoint_record(log.notes[7], padded, 2 + i)])
    assert _kinds(witness.process([log.record(5, 3, 400)])) == ["Output", "Output"]
    assert _kinds(witness.process([log.record(9, 7, 401)])) == ["Output"]
    assert _last(state) == 9 and not state.alarms()
    with sqlite3.connect(tmp_path / STATE_FILE) as db:  # what the copies could make it keep
        held = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM held").fetchone()
    assert held[0] == 0
    state.close()


def test_what_the_hold_keeps_is_what_it_counts(pki: Pki, tmp_path: Path) -> None:
    # Megabytes in the record's key and in header names, which a bound on the value and
    # header values alone would not see: nothing that large is held.
    log = Log.of(pki, 9, (3, 7))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3)])
    key = b"k" * (4 << 20)
    for i in range(10):
        headers = (*log_headers(log.archiver.chain_der, 4 + i % 3, []), ("n" * (1 << 20), b""))
        record = Record("docbus.checkpoints", 0, i, 0, 0, key, log.notes[7], None, 0, 0, headers)
        [refused] = witness.process([record])  # checked at once: no proof from 3
        assert isinstance(refused, Reject)
    with sqlite3.connect(tmp_path / STATE_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM held").fetchone()[0] == 0
    assert not state.alarms()
    state.close()


def test_a_held_fork_is_found_out_when_the_witness_passes_its_size(
    pki: Pki, tmp_path: Path
) -> None:
    # The archiver's key signs a fork at size 8 whose proof, it says, starts from 7 (a
    # size that never comes): held, then checked when the witness moves past 8.
    log = Log.of(pki, 9, (3, 5, 9))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3)])
    fork = sign_checkpoint(Checkpoint("docbus.archiver", 8, b"\x66" * 32), log.archiver)
    assert witness.process([log.carry(fork, 7, 1)]) == []
    witness.process([log.record(5, 3, 2)])
    assert [a.kind for a in state.alarms()] == []
    results = witness.process([log.record(9, 5, 3)])
    assert _kinds(results) == ["Output", "Reject"]  # 9 cosigned; the fork reported
    assert [a.kind for a in state.alarms()] == ["rollback"] and _last(state) == 9
    state.close()


def test_a_size_past_what_any_log_holds_is_malformed_and_the_witness_goes_on(
    pki: Pki, tmp_path: Path
) -> None:
    # 2**63 fits the 19 digits a checkpoint's size may have, not a tree size (Go's tlog,
    # SQLite): refused as malformed, and the state is still writable afterwards.
    log = Log.of(pki, 5, (3, 5))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    huge = sign_checkpoint(Checkpoint("docbus.archiver", 2**63, b"\x01" * 32), log.archiver)
    [refused] = witness.process([log.carry(huge, 0)])
    assert isinstance(refused, Reject) and refused.reason.value == "malformed"
    assert _kinds(witness.process([log.record(3, 0, 1), log.record(5, 3, 2)])) == ["Output"] * 2
    assert _last(state) == 5
    state.close()


def test_a_proofs_start_of_thousands_of_digits_is_no_proof(pki: Pki, tmp_path: Path) -> None:
    # More digits than Python turns into an int: read as no header, never a crash that
    # would leave the batch half done.
    log = Log.of(pki, 9, (3, 5, 7))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    witness.process([log.record(3)])
    witness.process([log.record(7, 5, 1)])
    poisoned = _with(log.record(5, 3), CONSISTENCY_FROM, b"1" * 5000)
    [refused] = witness.process([poisoned])
    assert isinstance(refused, Reject)
    assert _kinds(witness.process([log.record(5, 3, 3)])) == ["Output", "Output"]
    assert _last(state) == 7 and not state.alarms()
    state.close()


def test_a_cosignature_lost_with_the_process_is_sent_when_its_checkpoint_comes_again(
    pki: Pki, tmp_path: Path
) -> None:
    # The witness accepted size 3 and stopped before its cosignature went out: the record
    # comes again in the first batch (its offset was not committed), and the cosignature
    # goes out then. Copies of it later on make nothing.
    log = Log.of(pki, 3, (3,))
    state = WitnessState(tmp_path)
    asyncio.run(pinned_witness(pki, state).handle([log.record(3)]))  # outputs die with it
    restarted = pinned_witness(pki, state)
    [again] = asyncio.run(restarted.handle([log.record(3)]))
    assert isinstance(again, Output) and b"docbus.witness" in again.value
    assert asyncio.run(restarted.handle([log.record(3)])) == []
    state.close()


def test_a_stripped_header_gets_no_false_alarm_from_a_new_witness(pki: Pki, tmp_path: Path) -> None:
    # A new witness waits for the log's first checkpoint (5, published late). The attacker
    # publishes the genuine 9 again without its proof's start, and 9 is taken on trust as
    # a first checkpoint is. The genuine 5 then predates the witness's watch: not
    # cosigned, and no rollback is reported for one consistent log.
    log = Log.of(pki, 9, (5, 9))
    state = WitnessState(tmp_path)
    witness = pinned_witness(pki, state)
    assert witness.process([log.record(9, 5)]) == []
    witness.process([_with(log.record(9, 5), CONSISTENCY_FROM, None)])
    [refused] = witness.process([log.record(5)])
    assert isinstance(refused, Reject) and "predates" in refused.message
    assert not state.alarms() and _last(state) == 9
    state.close()
