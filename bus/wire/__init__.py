"""The wire format (DESIGN §3): the envelope model, the Avro single-object codec, Kafka
headers, reason codes, and edXML parsing.

Imports nothing of ``bus`` outside this package and does no I/O: everything here is a
function of bytes.
"""
