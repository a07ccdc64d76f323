"""Kafka (DESIGN §7, §8): client settings, topic names, signed record builders, the one
consumer runtime every reader shares, and the embedded broker.

Imports ``bus.wire``, ``bus.tlog``, ``bus.trust`` and the plumbing modules; never a
store, the audit, ``producers`` or ``consumers``.
"""
