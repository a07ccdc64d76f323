"""docbus core, one subpackage per concern (DESIGN §2); each imports only those above it:

- ``wire``   envelope model, Avro codec, headers, reason codes, edXML parsing
- ``tlog``   Merkle tree, proofs, checkpoint format (pure)
- ``trust``  signing, chains, trust store, the one verifier, PKI, sealing, address book
- ``kafka``  client settings, topics, record builders, the one consumer runtime, broker
- ``store``  the archive and its transparency log
- ``audit``  verify-archive, replay, rebuild, reports
- ``registry``, ``settings``, ``logs``: data and plumbing any layer may use
- ``cli``, ``demo``: on top, they use everything
"""
