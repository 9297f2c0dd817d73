"""The seam on confluent-kafka (librdkafka): `producer`, `consumer` and `admin`, each one of
the seam's interfaces, and `common`, what the three share.

librdkafka runs its network I/O and heartbeats on its own threads and calls rebalance and
delivery callbacks only from `poll()`/`consume()`: consumer callbacks therefore run on the
polling thread by construction; producer delivery reports are served by one daemon thread
per producer that polls it.
"""
