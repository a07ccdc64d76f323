"""docbus core: envelope model, codec, signatures, trust, registry and Kafka wiring."""
