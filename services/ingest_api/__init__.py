"""chute ingest API: POST /ingest/<name> validates records and produces them to Kafka."""
