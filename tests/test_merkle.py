"""RFC 6962 Merkle trees against the known-answer tests of transparency-dev/merkle.

The vectors (testonly/constants.go and testonly/reference_test.go of that project) are
written here as data: the eight leaf inputs, every root hash, and the inclusion and
consistency proofs its reference implementation was checked against.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bus.tlog.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex
LEAVES = [
    h(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAF_HASHES = [
    h(x)
    for x in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    )
]
ROOTS = [
    h(x)
    for x in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
INCLUSION = {  # (index, size): proof
    (0, 1): [],
    (0, 2): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
    (1, 2): ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CONSISTENCY = {  # (size1, size2): proof
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


def test_leaf_and_root_hashes_match_the_vectors() -> None:
    assert [leaf_hash(x) for x in LEAVES] == LEAF_HASHES
    assert MemoryTree().root() == EMPTY_ROOT == ROOTS[0]
    for size in range(1, 9):
        assert MemoryTree(LEAVES[:size]).root() == ROOTS[size], size
    tree = MemoryTree(LEAVES)
    assert [tree.root(size) for size in range(9)] == ROOTS  # past roots from the grown tree


def test_inclusion_proofs_match_and_verify() -> None:
    tree = MemoryTree(LEAVES)
    for (index, size), want in INCLUSION.items():
        proof = inclusion_proof(tree.node, index, size)
        assert proof == [h(x) for x in want], (index, size)
        assert verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])


def test_consistency_proofs_match_and_verify() -> None:
    tree = MemoryTree(LEAVES)
    for (size1, size2), want in CONSISTENCY.items():
        proof = consistency_proof(tree.node, size1, size2)
        assert proof == [h(x) for x in want], (size1, size2)
        assert verify_consistency(size1, size2, ROOTS[size1], ROOTS[size2], proof)


def test_every_proof_of_the_eight_leaf_tree_verifies_and_a_wrong_one_does_not() -> None:
    tree = MemoryTree(LEAVES)
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(tree.node, index, size)
            assert verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])
            assert not verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size - 1])
            if proof:
                bent = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                assert not verify_inclusion(LEAF_HASHES[index], index, size, bent, ROOTS[size])
            other = LEAF_HASHES[(index + 1) % 8]
            assert (
                not verify_inclusion(other, index, size, proof, ROOTS[size])
                or other == LEAF_HASHES[index]
            )
        for size1 in range(0, size + 1):
            proof = consistency_proof(tree.node, size1, size)
            assert verify_consistency(size1, size, ROOTS[size1], ROOTS[size], proof)
            if 0 < size1 < size:
                assert not verify_consistency(size1, size, ROOTS[size1 - 1], ROOTS[size], proof)


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_proofs_hold_for_any_tree(entries: list[bytes], data: st.DataObject) -> None:
    tree = MemoryTree(entries)
    size = data.draw(st.integers(1, len(entries)))
    index = data.draw(st.integers(0, size - 1))
    size1 = data.draw(st.integers(0, size))
    reference = MemoryTree(entries[:size])
    assert tree.root(size) == reference.root()
    proof = inclusion_proof(tree.node, index, size)
    assert verify_inclusion(leaf_hash(entries[index]), index, size, proof, reference.root())
    cproof = consistency_proof(tree.node, size1, size)
    assert verify_consistency(size1, size, tree.root(size1), tree.root(size), cproof)
