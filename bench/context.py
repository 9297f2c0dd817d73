"""State shared by the sections of one bench run, and the clean-up of what it created."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.infra import Profiler, Servers
from bench.progress import Progress
from bench.records import PIPELINE_SCHEMA
from testkit.endpoints import Endpoints, service_env
from testkit.processes import ServiceProcess
from testkit.rss import RssSampler
from testkit.waits import free_port


@dataclass
class Pipeline:
    """One uniquely named pipeline (topic, table, dead-letter topic and table) in its own
    schema folder, so a service started on it sees nothing else."""

    name: str
    schema_dir: Path
    partitions: int

    @property
    def topic(self) -> str:
        return self.name

    @property
    def table(self) -> str:
        return self.name

    def write(self) -> None:
        self.schema_dir.mkdir(parents=True, exist_ok=True)
        (self.schema_dir / "pipeline.py").write_text(
            PIPELINE_SCHEMA.format(name=self.name, partitions=self.partitions))


@dataclass
class Context:
    run_id: str
    run_dir: Path
    endpoints: Endpoints
    servers: Servers
    progress: Progress
    sampler: RssSampler
    profiler: Profiler
    keep: bool = False
    tables: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    services: list[ServiceProcess] = field(default_factory=list)

    def pipeline(self, suffix: str, partitions: int) -> Pipeline:
        pipeline = Pipeline(f"{self.run_id}_{suffix}", self.run_dir / f"schemas_{suffix}",
                            partitions)
        pipeline.write()
        self.tables += [pipeline.table, f"{pipeline.table}_dlq"]
        self.topics += [pipeline.topic, f"{pipeline.topic}_dlq"]
        return pipeline

    def service(self, label: str, module: str, schemas: list[Pipeline],
                **env: str) -> ServiceProcess:
        """A service process (not started) on the given pipelines' definitions."""
        port = free_port()
        port_var = "CHUTE_INGEST_PORT" if module == "ingest_api" else "CHUTE_SYNC_PORT"
        environment = service_env(self.endpoints, ",".join(str(p.schema_dir) for p in schemas),
                                  **{port_var: str(port)}, **env)
        service = ServiceProcess(module, environment, port, self.run_dir / f"{label}.log",
                                 label=label)
        self.services.append(service)
        return service

    def worker(self, label: str, pipeline: Pipeline, group: str,
               **env: str) -> ServiceProcess:
        if group not in self.groups:
            self.groups.append(group)
        return self.service(label, "sync_worker", [pipeline], CHUTE_SYNC_GROUP=group,
                            CHUTE_SYNC_WORKER_ID=label, **env)

    def cleanup(self) -> list[str]:
        """Stops what still runs, drops tables, deletes topics and groups; returns problems."""
        for service in self.services:  # SIGTERM: a worker leaves its group at once
            service.stop(timeout=15)
        self.sampler.close()
        if self.keep:
            return []
        problems = self.servers.drop_tables(reversed(self.tables))
        problems += self.servers.delete_groups(self.groups)
        problems += self.servers.delete_topics(self.topics)
        return problems
