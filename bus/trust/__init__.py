"""Trust (DESIGN §4, §5): signatures, certificate chains, the trust store, the one
verifier, the development PKI, sealing and the recipients' address book.

Imports ``bus.wire``, ``bus.tlog`` and ``bus.registry``; no Kafka or database code.
Reading key, certificate and trust-store files is its only I/O.
"""
