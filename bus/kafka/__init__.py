"""Kafka (DESIGN §7, §8): client settings, topic names, signed record builders, the one
consumer runtime every reader shares, the publisher (outbox, re-send until a final
status) and the embedded broker.

Imports ``bus.wire``, ``bus.tlog``, ``bus.trust``, ``bus.store`` (the outbox and blob
store the publisher writes) and the plumbing modules; never the audit, ``producers`` or
``consumers``.
"""
