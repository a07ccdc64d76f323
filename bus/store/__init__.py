"""Archive storage (DESIGN §6): the SQLite archive with its transparency log beside it.

Imports ``bus.wire`` and ``bus.tlog``; no Kafka code.
"""
