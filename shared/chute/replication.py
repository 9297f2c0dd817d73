"""How many copies a topic keeps and how many must be in sync (pure).

With acks=all a write is acknowledged once every in-sync replica has it, and the broker refuses
it (NOT_ENOUGH_REPLICAS, the ingest API's 503) while fewer than `min.insync.replicas` are in
sync. Three copies with two in sync survive the loss of any one broker without losing an
acknowledged record and without refusing writes; two copies with one in sync do not refuse
writes but an acknowledged record may live on one broker only.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DEFAULT_REPLICATION = 3


@dataclass(frozen=True)
class Replication:
    factor: int
    min_insync: int | None  # None: leave the broker's min.insync.replicas

    def topic_configs(self) -> dict[str, str]:
        return {} if self.min_insync is None else {"min.insync.replicas": str(self.min_insync)}


def topic_replication(brokers: int, factor: int | None = None, min_insync: int | None = None,
                      default_factor: int | None = None,
                      default_min_insync: int | None = None) -> Replication:
    """The stream's own settings, else the global ones, else min(3, brokers) copies with 2 in
    sync from 3 copies on. A factor above the brokers or a min.insync above the factor could
    never accept a write: refused here with the reason rather than by Kafka later."""
    chosen = factor or default_factor or max(1, min(MAX_DEFAULT_REPLICATION, brokers))
    insync = min_insync or default_min_insync
    if insync is None and chosen >= 3:
        insync = 2
    if chosen > max(brokers, 1):
        raise ValueError(f"replication factor {chosen} needs {chosen} brokers; the cluster "
                         f"has {brokers}")
    if insync is not None and insync > chosen:
        raise ValueError(f"min.insync.replicas {insync} is more than the {chosen} copies: "
                         "no write could ever be acknowledged")
    return Replication(chosen, insync)
