"""The transparency log's mathematics (DESIGN §6): RFC 6962 Merkle hashing, inclusion and
consistency proofs, and the checkpoint format.

Pure: storage comes in through a ``node(level, index)`` reader, and the package imports
only ``bus.wire``. Signing a checkpoint belongs to ``bus.trust``.
"""
