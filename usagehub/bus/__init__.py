"""The bus: a NATS JetStream stream between ingest nodes (adapters) and pipeline workers.

``codec`` turns a RawMessage into bus bytes and back and names its partition and
identity; ``stream`` declares the stream and its per-partition consumers;
``publisher`` is the Sink adapters submit to on an ingest node; ``consumer``
feeds a worker's pipeline from the partitions it owns and acks after commit.
"""
