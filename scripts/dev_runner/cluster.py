"""The native cluster mode (`scripts/dev up --kafka-brokers N --clickhouse-replicas M
[--clickhouse-shards S]`): N combined broker+controller KRaft nodes `kafka-1..N`, Apache
ZooKeeper (Debian's package) and S x M ClickHouse servers `clickhouse-1..` replicating through
it: clickhouse-1..M are the replicas of shard 01, the next M those of shard 02, and so on.

Ports move with the single-node variables, one step per node: kafka-N listens on
CHUTE_KAFKA_PORT + 100 (N-1) (controller CHUTE_KAFKA_CONTROLLER_PORT + 100 (N-1)), clickhouse-N
on CHUTE_CLICKHOUSE_PORT / _HTTP_PORT / _INTERSERVER_PORT + 10 (N-1); ZooKeeper on
CHUTE_ZOOKEEPER_PORT. The layout `up` chose is kept in run/cluster so that `status`, `down`
and `start <svc>` see the same services. Rendering is pure; `prepare` writes the files."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

from dev_runner.configs import new_cluster_id, render_template
from dev_runner.settings import RunnerError, Settings

CLUSTER_NAME = "chute"  # the <remote_servers> entry tables are created ON CLUSTER
KAFKA_PORT_STEP = 100
CLICKHOUSE_PORT_STEP = 10
MAX_BROKERS = 9
MAX_REPLICAS = 9  # ClickHouse servers in all (shards x replicas)
ZOOKEEPER_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
_NODE_RE = re.compile(r"(kafka|clickhouse)-([1-9])")


def layout_file(s: Settings) -> Path:
    return s.run_dir / "cluster"


def check_layout(brokers: int, replicas: int, shards: int = 1) -> None:
    if not 1 <= brokers <= MAX_BROKERS:
        raise RunnerError(f"--kafka-brokers must be 1..{MAX_BROKERS}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise RunnerError(f"--clickhouse-replicas must be 1..{MAX_REPLICAS}")
    if shards < 1 or shards * replicas > MAX_REPLICAS:
        raise RunnerError(f"--clickhouse-shards must be 1 or more, with shards x replicas at "
                          f"most {MAX_REPLICAS}")


def write_layout(s: Settings, brokers: int, replicas: int, shards: int = 1) -> Settings:
    """Records the layout for later commands and returns settings that carry it."""
    check_layout(brokers, replicas, shards)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    layout_file(s).write_text(f"kafka_brokers={brokers}\nclickhouse_replicas={replicas}\n"
                              f"clickhouse_shards={shards}\n")
    return dataclasses.replace(s, kafka_brokers=brokers, clickhouse_replicas=replicas,
                               clickhouse_shards=shards)


def with_recorded_layout(s: Settings) -> Settings:
    """Settings with the layout the last `up` recorded (one broker, one server without one)."""
    try:
        text = layout_file(s).read_text()
    except OSError:
        return s
    values = dict(line.split("=", 1) for line in text.split() if "=" in line)
    try:
        brokers = int(values.get("kafka_brokers", "1"))
        replicas = int(values.get("clickhouse_replicas", "1"))
        shards = int(values.get("clickhouse_shards", "1"))
        check_layout(brokers, replicas, shards)
    except (ValueError, RunnerError):
        raise RunnerError(f"{layout_file(s)} is not a valid layout; remove it") from None
    return dataclasses.replace(s, kafka_brokers=brokers, clickhouse_replicas=replicas,
                               clickhouse_shards=shards)


# Names and ports. ------------------------------------------------------------------------

def kafka_nodes(s: Settings) -> list[str]:
    return ([f"kafka-{i}" for i in range(1, s.kafka_brokers + 1)] if s.kafka_brokers > 1
            else ["kafka"])


def clickhouse_servers(s: Settings) -> int:
    """ClickHouse servers of the layout: shards x replicas."""
    return s.clickhouse_shards * s.clickhouse_replicas


def clickhouse_clustered(s: Settings) -> bool:
    """More than one ClickHouse server: ZooKeeper and clickhouse-1.. instead of `clickhouse`."""
    return clickhouse_servers(s) > 1


def clickhouse_nodes(s: Settings) -> list[str]:
    if not clickhouse_clustered(s):
        return ["clickhouse"]
    return ["zookeeper", *(f"clickhouse-{i}" for i in range(1, clickhouse_servers(s) + 1))]


def node_shard(s: Settings, index: int) -> int:
    """The shard (1..) clickhouse-`index` is a replica of."""
    return (index - 1) // s.clickhouse_replicas + 1


def infra_services(s: Settings) -> list[str]:
    """Kafka and ClickHouse services of the layout, ZooKeeper before the replicas."""
    return [*kafka_nodes(s), *clickhouse_nodes(s)]


def node_index(name: str) -> tuple[str, int] | None:
    """('kafka', 2) for kafka-2, ('clickhouse', 1) for clickhouse-1, None otherwise."""
    match = _NODE_RE.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def kafka_ports(s: Settings, index: int) -> tuple[int, int]:
    """(broker port, controller port) of kafka-`index`."""
    step = KAFKA_PORT_STEP * (index - 1)
    return s.kafka_port + step, s.kafka_controller_port + step


def clickhouse_ports(s: Settings, index: int) -> tuple[int, int, int]:
    """(native port, HTTP port, interserver port) of clickhouse-`index`."""
    step = CLICKHOUSE_PORT_STEP * (index - 1)
    return (s.clickhouse_port + step, s.clickhouse_http_port + step,
            s.clickhouse_interserver_port + step)


def bootstrap(s: Settings) -> str:
    return ",".join(f"{s.host}:{kafka_ports(s, i)[0]}" for i in range(1, s.kafka_brokers + 1))


def service_env(s: Settings) -> tuple[tuple[str, str], ...]:
    """What chute's services are told in cluster mode: every broker, the first ClickHouse server
    with the others as failover hosts (every server has every table, the Distributed ones
    too), the cluster the tables are created on, and an insert quorum of every replica of a
    shard (what exactly-once on a replicated table needs: chute.clickhouse)."""
    env: list[tuple[str, str]] = []
    if s.kafka_brokers > 1:
        env.append(("CHUTE_KAFKA_BOOTSTRAP", bootstrap(s)))
    if clickhouse_clustered(s):
        others = [f"{s.host}:{clickhouse_ports(s, i)[0]}"
                  for i in range(2, clickhouse_servers(s) + 1)]
        env += [("CHUTE_CLICKHOUSE_HOST", s.host),
                ("CHUTE_CLICKHOUSE_PORT", str(clickhouse_ports(s, 1)[0])),
                ("CHUTE_CLICKHOUSE_ALT_HOSTS", ",".join(others)),
                ("CHUTE_CLICKHOUSE_CLUSTER", CLUSTER_NAME),
                ("CHUTE_CLICKHOUSE_INSERT_QUORUM", str(s.clickhouse_replicas))]
    return tuple(env)


# Paths. ----------------------------------------------------------------------------------

def kafka_properties(s: Settings, index: int) -> Path:
    return s.etc_dir / f"kafka-{index}" / "server.properties"


def kafka_log_dirs(s: Settings, index: int) -> Path:
    return s.data_dir / f"kafka-{index}" / "logs"


def kafka_ids_file(s: Settings) -> Path:
    """The cluster id and one directory id per node, fixed when the nodes are first formatted."""
    return s.data_dir / "kafka-cluster.ids"


def clickhouse_dir(s: Settings, index: int) -> Path:
    return s.etc_dir / f"clickhouse-{index}"


def clickhouse_config(s: Settings, index: int) -> Path:
    return clickhouse_dir(s, index) / "config.xml"


def clickhouse_log_dir(s: Settings, index: int) -> Path:
    return s.log_dir / f"clickhouse-{index}"


def zookeeper_config(s: Settings) -> Path:
    return s.etc_dir / "zookeeper" / "zoo.cfg"


# Rendering (pure). -----------------------------------------------------------------------

def render_kafka_node(template: str, s: Settings, index: int) -> str:
    port, controller = kafka_ports(s, index)
    voters = ",".join(f"{s.host}:{kafka_ports(s, i)[1]}" for i in range(1, s.kafka_brokers + 1))
    replication = min(3, s.kafka_brokers)
    return render_template(template, {
        "NODE_ID": str(index), "HOST": s.host, "KAFKA_PORT": str(port),
        "CONTROLLER_PORT": str(controller), "QUORUM_BOOTSTRAP": voters,
        "LOG_DIRS": str(kafka_log_dirs(s, index)), "REPLICATION": str(replication),
        "MIN_ISR": str(2 if replication >= 3 else 1),
    })


def initial_controllers(s: Settings, directory_ids: list[str]) -> str:
    """StorageTool's --initial-controllers: id@host:port:directory-id for every node."""
    return ",".join(f"{i}@{s.host}:{kafka_ports(s, i)[1]}:{directory_ids[i - 1]}"
                    for i in range(1, s.kafka_brokers + 1))


def kafka_format_argv(s: Settings, index: int, cluster_id: str,
                      directory_ids: list[str]) -> tuple[str, ...]:
    return (s.java, "-Xmx256m", "-cp", f"{s.kafka_home}/libs/*", "kafka.tools.StorageTool",
            "format", "--config", str(kafka_properties(s, index)), "--cluster-id", cluster_id,
            "--initial-controllers", initial_controllers(s, directory_ids),
            "--ignore-formatted")


def kafka_argv(s: Settings, index: int) -> tuple[str, ...]:
    return (s.java, *s.cluster_kafka_heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-XX:TieredStopAtLevel=1",
            "-XX:CICompilerCount=2", "-Djava.awt.headless=true",
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={s.log_dir}/kafka-{index}",
            f"-Dlog4j2.configurationFile={s.kafka_log4j}",
            "-cp", f"{s.kafka_home}/libs/*", "kafka.Kafka", str(kafka_properties(s, index)))


def render_clickhouse_node(base_template: str, cluster_template: str, s: Settings,
                           index: int) -> tuple[str, str]:
    """(config.xml, config.d/cluster.xml) of clickhouse-`index`."""
    tcp, http, interserver = clickhouse_ports(s, index)
    data = s.data_dir / f"clickhouse-{index}"
    base = render_template(base_template, {k: escape(v) for k, v in {
        "HOST": s.host, "HTTP_PORT": str(http), "TCP_PORT": str(tcp), "DATA_DIR": str(data),
        "LOG_DIR": str(clickhouse_log_dir(s, index))}.items()})
    shards = []
    for shard in range(1, s.clickhouse_shards + 1):
        first = (shard - 1) * s.clickhouse_replicas + 1
        replicas = "".join(
            f"\n                <replica><host>{s.host}</host>"
            f"<port>{clickhouse_ports(s, i)[0]}</port></replica>"
            for i in range(first, first + s.clickhouse_replicas))
        shards.append("<shard>\n                <internal_replication>true</internal_replication>"
                      f"{replicas}\n            </shard>")
    cluster = render_template(cluster_template, {
        "HOST": s.host, "INTERSERVER_PORT": str(interserver),
        "ZOOKEEPER_PORT": str(s.zookeeper_port), "CLUSTER": CLUSTER_NAME,
        "SHARDS": "\n            ".join(shards), "REPLICA": f"clickhouse-{index}",
        "SHARD": f"{node_shard(s, index):02d}"})
    return base, cluster


def render_zookeeper_config(s: Settings) -> str:
    return "\n".join([
        "# ZooKeeper for the replicated ClickHouse of chute's native cluster mode.",
        "tickTime=1000",
        f"dataDir={s.data_dir / 'zookeeper'}",
        f"clientPort={s.zookeeper_port}",
        f"clientPortAddress={s.host}",
        "maxClientCnxns=100",
        # Sessions of a SIGKILLed ClickHouse expire after its session_timeout_ms (see
        # cluster.xml.tmpl), bounded by these (2 to 20 ticks by default).
        "minSessionTimeout=2000",
        "maxSessionTimeout=30000",
        # Its Jetty admin server would take port 8080.
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,mntr",
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
        "",
    ])


def zookeeper_argv(s: Settings) -> tuple[str, ...]:
    return (s.java, "-Xmx128m", "-Xms32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.log.dir=" + str(s.log_dir), "-cp", ":".join(ZOOKEEPER_JARS),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(zookeeper_config(s)))


# Preparing (writes files). ---------------------------------------------------------------

def _kafka_ids(s: Settings) -> tuple[str, list[str]]:
    """The cluster id and node directory ids, created once; more nodes than before get new
    directory ids appended (the old nodes keep theirs)."""
    path = kafka_ids_file(s)
    words = path.read_text().split() if path.exists() else []
    cluster_id = words[0] if words else new_cluster_id()
    directory_ids = words[1:]
    while len(directory_ids) < s.kafka_brokers:
        directory_ids.append(new_cluster_id())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join([cluster_id, *directory_ids]) + "\n")
    return cluster_id, directory_ids


def prepare_kafka(s: Settings, index: int, log: Path) -> None:
    props = kafka_properties(s, index)
    props.parent.mkdir(parents=True, exist_ok=True)
    kafka_log_dirs(s, index).mkdir(parents=True, exist_ok=True)
    (s.log_dir / f"kafka-{index}").mkdir(parents=True, exist_ok=True)
    props.write_text(render_kafka_node(s.template("kafka/cluster.properties.tmpl").read_text(),
                                       s, index))
    if (kafka_log_dirs(s, index) / "meta.properties").exists():
        return
    cluster_id, directory_ids = _kafka_ids(s)
    argv = kafka_format_argv(s, index, cluster_id, directory_ids)
    with open(log, "ab") as out:
        out.write(f"\n=== chute: {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, cwd=s.root, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=120, check=False)
    if done.returncode != 0:
        raise RunnerError(f"formatting kafka-{index} failed (exit code {done.returncode}); "
                          f"see {log}")


def prepare_clickhouse(s: Settings, index: int) -> None:
    if shutil.which(s.clickhouse_bin) is None:
        raise RunnerError(f"no ClickHouse server ({s.clickhouse_bin}): run scripts/install-infra")
    base, cluster = render_clickhouse_node(
        s.template("clickhouse/config.xml.tmpl").read_text(),
        s.template("clickhouse/cluster.xml.tmpl").read_text(), s, index)
    directory = clickhouse_dir(s, index)
    (directory / "config.d").mkdir(parents=True, exist_ok=True)
    check_shard(s, index)
    (s.data_dir / f"clickhouse-{index}").mkdir(parents=True, exist_ok=True)
    clickhouse_log_dir(s, index).mkdir(parents=True, exist_ok=True)
    clickhouse_config(s, index).write_text(base)
    (directory / "config.d" / "cluster.xml").write_text(cluster)
    (directory / "users.xml").write_text(s.template("clickhouse/users.xml").read_text())


def check_shards(s: Settings) -> None:
    """check_shard for every ClickHouse server of the layout, recording nothing: what `up`
    asks before it records a layout or starts anything."""
    if clickhouse_clustered(s):
        for index in range(1, clickhouse_servers(s) + 1):
            check_shard(s, index, record=False)


def check_shard(s: Settings, index: int, record: bool = True) -> None:
    """A server's data belongs to the shard it was first started in (its replicated tables'
    ZooKeeper paths name it): a layout that moves clickhouse-`index` to another shard is
    refused until its data folder is removed. `record`: note the shard on first start."""
    data = s.data_dir / f"clickhouse-{index}"
    marker = data / "chute-shard"
    shard = f"{node_shard(s, index):02d}"
    if not marker.exists():
        if record:
            data.mkdir(parents=True, exist_ok=True)
            marker.write_text(shard + "\n")
        return
    was = marker.read_text().strip()
    if was != shard:
        raise RunnerError(
            f"clickhouse-{index} holds the tables of shard {was}, and this layout makes it a "
            f"server of shard {shard}: go back to the earlier layout, or remove {data} (and "
            f"{s.data_dir / 'zookeeper'}) to start the ClickHouse cluster afresh")


def prepare_zookeeper(s: Settings) -> None:
    missing = [jar for jar in ZOOKEEPER_JARS if not Path(jar).exists()]
    if missing:
        raise RunnerError(f"ZooKeeper is not installed ({', '.join(missing)} missing): "
                          "run scripts/install-infra")
    (s.data_dir / "zookeeper").mkdir(parents=True, exist_ok=True)
    zookeeper_config(s).parent.mkdir(parents=True, exist_ok=True)
    zookeeper_config(s).write_text(render_zookeeper_config(s))
