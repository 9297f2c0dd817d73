"""chute's own librdkafka producer for whole batches: `rdbatch.c`, a C extension built with the
package against the system's librdkafka (librdkafka-dev), wrapped by `producer.NativeProducer`.

The ingest API sends each request's records as one batch: handed to librdkafka in one call,
reported once. Where the extension was not built, importing `producer` raises ImportError and
`chute.kafka.producer()` returns the confluent-kafka producer instead.
"""
