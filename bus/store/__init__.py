"""Storage (DESIGN §6, §7): the SQLite archive with its transparency log beside it, the
blob store, and the publisher's durable outbox.

Imports ``bus.wire`` and ``bus.tlog``; no Kafka code.
"""
