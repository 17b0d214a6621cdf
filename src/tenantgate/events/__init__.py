"""Events out of the registry: every audit ledger entry as a CloudEvent, and per-tenant quota usage for billing,
to NATS JetStream or to JSON-lines files (``tenantgate events export``).

``cloudevents`` is the codec, ``file_sink`` and ``nats_sink`` the two sinks behind one Protocol (``sinks``),
``exporter`` the loops that read the ledger and the counters and publish, each off the event loop where it
blocks."""
