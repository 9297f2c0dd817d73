"""What the tests, the bench (`bench/`) and the load generator (`scripts/loadgen`) share: one
definition of each.

    endpoints   where Kafka and ClickHouse are (the dev runner's settings and CHUTE_* variables),
                the environment chute's services get
    waits       `wait_for` (poll until true), `free_port`, `port_open`
    processes   chute's services as real processes: start, readiness, logs, stop
    rss         resident memory of processes: one reading, peaks sampled in a thread
    offsets     end offsets of a topic, committed offsets of a consumer group
    stats       the percentile definition every report uses (nearest rank)
    loadgen     steady HTTP load that records which ids were acknowledged
    httpload    a lean asyncio HTTP/1.1 client for closed- and open-loop load
    memory      the sync worker's consumer, table store, producer and clock in memory
"""
