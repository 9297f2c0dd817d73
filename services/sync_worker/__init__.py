"""sync-worker: Kafka topic -> batched, columnar ClickHouse inserts (decode, batch, insert,
commit)."""
