"""RFC 6962 / RFC 9162 Merkle trees: hashes, inclusion and consistency proofs.

Pure logic. A tree is read through one function, ``node(level, index)``: the hash of the
perfect subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``. Any store that
keeps those hashes as leaves are appended (:class:`MemoryTree` here, the archive's SQLite
table) gets roots and proofs in O(log n) lookups, with no whole-tree rehash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 ‖ entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(node: Node, start: int, size: int) -> bytes:
    """The hash of leaves ``[start, start + size)`` as RFC 6962 splits them."""
    if size & (size - 1) == 0 and start % size == 0:
        return node(size.bit_length() - 1, start // size)
    k = _split(size)
    return node_hash(subtree_hash(node, start, k), subtree_hash(node, start + k, size - k))


def root_hash(node: Node, size: int) -> bytes:
    """The root hash of the first ``size`` leaves."""
    return EMPTY_ROOT if size == 0 else subtree_hash(node, 0, size)


def inclusion_proof(node: Node, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 6962 §2.1.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")

    def path(m: int, start: int, n: int) -> list[bytes]:
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, start, k), subtree_hash(node, start + k, n - k)]
        return [*path(m - k, start + k, n - k), subtree_hash(node, start, k)]

    return path(index, 0, size)


def consistency_proof(node: Node, size1: int, size2: int) -> list[bytes]:
    """The proof that the tree of ``size1`` is a prefix of the tree of ``size2`` (§2.1.2)."""
    if not 0 <= size1 <= size2:
        raise ValueError(f"no consistency proof from {size1} to {size2}")
    if size1 in (0, size2):
        return []

    def sub(m: int, start: int, n: int, whole: bool) -> list[bytes]:
        if m == n:
            return [] if whole else [subtree_hash(node, start, n)]
        k = _split(n)
        if m <= k:
            return [*sub(m, start, k, whole), subtree_hash(node, start + k, n - k)]
        return [*sub(m - k, start + k, n - k, False), subtree_hash(node, start, k)]

    return sub(size1, 0, size2, True)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` under ``root`` (RFC 9162)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (size1, root1) is a prefix of (size2, root2)."""
    if not 0 <= size1 <= size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


def completed_nodes(index: int, leaf: bytes, node: Node) -> list[tuple[int, int, bytes]]:
    """The perfect-subtree hashes appending leaf ``index`` completes, leaf included.

    Appending is amortised O(1): a leaf at an odd index closes its parent, and so on up.
    """
    out = [(0, index, leaf)]
    level, i, h = 0, index, leaf
    while i & 1:
        h = node_hash(node(level, i - 1), h)
        level, i = level + 1, i >> 1
        out.append((level, i, h))
    return out


class MemoryTree:
    """A Merkle tree kept in memory (for auditors recomputing an archive, and tests)."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for entry in leaves:
            self.append(leaf_hash(entry))

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash; returns its index."""
        index = self.size
        for level, i, h in completed_nodes(index, leaf, self.node):
            if level == len(self.levels):
                self.levels.append([])
            assert len(self.levels[level]) == i
            self.levels[level].append(h)
        return index

    def root(self, size: int | None = None) -> bytes:
        return root_hash(self.node, self.size if size is None else size)


class CompactRange:
    """The right edge of a growing tree: one perfect-subtree root per set bit of its size.

    Appending and the root cost O(log n) and the memory stays O(log n), so a log of any
    size can be re-hashed in one streaming pass (as transparency-dev's ``compact`` does).
    """

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # largest subtree first

    def append(self, leaf: bytes) -> None:
        self._peaks.append(leaf)
        size = self.size
        while size & 1:
            right = self._peaks.pop()
            self._peaks[-1] = node_hash(self._peaks[-1], right)
            size >>= 1
        self.size += 1

    def root(self) -> bytes:
        """The RFC 6962 root hash of the leaves appended so far."""
        if not self._peaks:
            return hashlib.sha256(b"").digest()
        acc = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            acc = node_hash(peak, acc)
        return acc
