"""The native cluster mode's layout and rendered configuration: every node gets its own ports,
directories and identity, all moving with the environment, and the layout `up` chose is the
one later commands see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dev_runner import RunnerError, Settings, cluster
from dev_runner.services import core_services, service_spec

ROOT = Path(__file__).resolve().parents[2]
ENV = {"CHUTE_KAFKA_PORT": "25092", "CHUTE_KAFKA_CONTROLLER_PORT": "25093",
       "CHUTE_CLICKHOUSE_PORT": "25000", "CHUTE_CLICKHOUSE_HTTP_PORT": "25123",
       "CHUTE_CLICKHOUSE_INTERSERVER_PORT": "25009", "CHUTE_ZOOKEEPER_PORT": "25181"}


def settings(tmp_path: Path, brokers: int = 3, replicas: int = 2, shards: int = 1) -> Settings:
    s = Settings.from_env({"CHUTE_STATE": str(tmp_path / "state"), **ENV})
    return cluster.write_layout(s, brokers, replicas, shards)


def test_cluster_services_replace_the_single_servers(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert core_services(s) == ["kafka-1", "kafka-2", "kafka-3", "zookeeper", "clickhouse-1",
                                "clickhouse-2", "control-plane", "ingest-api"]
    single = cluster.write_layout(s, 1, 1)
    assert core_services(single)[:2] == ["kafka", "clickhouse"]


def test_the_recorded_layout_is_read_back(tmp_path: Path) -> None:
    s = settings(tmp_path, brokers=3, replicas=2)
    fresh = Settings.from_env({"CHUTE_STATE": str(s.state), **ENV})
    again = cluster.with_recorded_layout(fresh)
    assert (again.kafka_brokers, again.clickhouse_replicas) == (3, 2)


@pytest.mark.parametrize(("brokers", "replicas", "shards"),
                         [(0, 1, 1), (1, 0, 1), (10, 1, 1), (1, 1, 0), (1, 2, 5)])
def test_a_layout_out_of_range_is_refused(tmp_path: Path, brokers: int, replicas: int,
                                          shards: int) -> None:
    with pytest.raises(RunnerError, match=r"--kafka-brokers|--clickhouse-replicas|shards"):
        settings(tmp_path, brokers, replicas, shards)


def test_shards_are_recorded_and_their_servers_numbered_shard_by_shard(tmp_path: Path) -> None:
    s = settings(tmp_path, brokers=3, replicas=2, shards=2)
    again = cluster.with_recorded_layout(Settings.from_env({"CHUTE_STATE": str(s.state), **ENV}))
    assert (again.kafka_brokers, again.clickhouse_replicas, again.clickhouse_shards) == (3, 2, 2)
    assert cluster.clickhouse_nodes(s) == ["zookeeper", "clickhouse-1", "clickhouse-2",
                                           "clickhouse-3", "clickhouse-4"]
    assert [cluster.node_shard(s, i) for i in range(1, 5)] == [1, 1, 2, 2]
    two = settings(tmp_path, brokers=1, replicas=1, shards=2)
    assert cluster.clickhouse_nodes(two) == ["zookeeper", "clickhouse-1", "clickhouse-2"]
    assert [cluster.node_shard(two, i) for i in (1, 2)] == [1, 2]


def test_a_sharded_server_names_its_shard_and_lists_every_shard(tmp_path: Path) -> None:
    s = settings(tmp_path, brokers=1, replicas=2, shards=2)
    _, extra = cluster.render_clickhouse_node(
        (ROOT / "scripts/infra/clickhouse/config.xml.tmpl").read_text(),
        (ROOT / "scripts/infra/clickhouse/cluster.xml.tmpl").read_text(), s, 3)
    assert "<shard>02</shard>" in extra and "<replica>clickhouse-3</replica>" in extra
    shards = re.findall(r"<shard>\s*<internal_replication>true</internal_replication>(.*?)"
                        r"</shard>", extra, re.S)
    assert [re.findall(r"<port>(\d+)</port></replica>", x) for x in shards] == [
        ["25000", "25010"], ["25020", "25030"]]
    env = dict(cluster.service_env(s))
    assert env["CHUTE_CLICKHOUSE_ALT_HOSTS"] == "127.0.0.1:25010,127.0.0.1:25020,127.0.0.1:25030"
    assert env["CHUTE_CLICKHOUSE_INSERT_QUORUM"] == "2"  # the replicas of a shard


def test_every_node_has_its_own_ports_in_the_block(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ports = [p for name in cluster.infra_services(s) for p in service_spec(name, s).ports]
    assert len(ports) == len(set(ports)), ports
    assert sorted(ports) == [25000, 25009, 25010, 25019, 25092, 25093, 25123, 25133, 25181,
                             25192, 25193, 25292, 25293]


def test_a_kafka_node_names_every_controller_and_replicates_internal_topics(
        tmp_path: Path) -> None:
    s = settings(tmp_path)
    text = cluster.render_kafka_node(
        (ROOT / "scripts/infra/kafka/cluster.properties.tmpl").read_text(), s, 2)
    assert "node.id=2\n" in text
    assert ("controller.quorum.bootstrap.servers=127.0.0.1:25093,127.0.0.1:25193,"
            "127.0.0.1:25293\n") in text
    assert "listeners=PLAINTEXT://127.0.0.1:25192,CONTROLLER://127.0.0.1:25193\n" in text
    assert "offsets.topic.replication.factor=3\n" in text
    assert "min.insync.replicas=2\n" in text
    assert "controller.quorum.voters" not in text.replace("# controller.quorum.voters", "")
    assert str(cluster.kafka_log_dirs(s, 2)) in text


def test_storage_is_formatted_with_every_initial_controller(tmp_path: Path) -> None:
    s = settings(tmp_path)
    argv = cluster.kafka_format_argv(s, 1, "CID", ["d1", "d2", "d3"])
    value = argv[argv.index("--initial-controllers") + 1]
    assert value == "1@127.0.0.1:25093:d1,2@127.0.0.1:25193:d2,3@127.0.0.1:25293:d3"
    assert "--standalone" not in argv


def test_a_clickhouse_replica_gets_its_macros_zookeeper_and_distributed_ddl(
        tmp_path: Path) -> None:
    s = settings(tmp_path)
    base, extra = cluster.render_clickhouse_node(
        (ROOT / "scripts/infra/clickhouse/config.xml.tmpl").read_text(),
        (ROOT / "scripts/infra/clickhouse/cluster.xml.tmpl").read_text(), s, 2)
    assert "<tcp_port>25010</tcp_port>" in base and "<http_port>25133</http_port>" in base
    assert str(s.data_dir / "clickhouse-2") + "/" in base
    assert "<interserver_http_port>25019</interserver_http_port>" in extra
    assert "<replica>clickhouse-2</replica>" in extra and "<shard>01</shard>" in extra
    assert "<port>25181</port>" in extra
    assert "<distributed_ddl>" in extra
    assert re.findall(r"<port>(\d+)</port></replica>", extra) == ["25000", "25010"]
    assert "@" not in extra.replace("at-signs", "")


def test_services_are_told_every_broker_and_the_other_replicas(tmp_path: Path) -> None:
    s = settings(tmp_path)
    env = dict(service_spec("sync-worker-1", s).env_forced)
    assert env["CHUTE_KAFKA_BOOTSTRAP"] == "127.0.0.1:25092,127.0.0.1:25192,127.0.0.1:25292"
    assert env["CHUTE_CLICKHOUSE_PORT"] == "25000"
    assert env["CHUTE_CLICKHOUSE_ALT_HOSTS"] == "127.0.0.1:25010"
    assert env["CHUTE_CLICKHOUSE_CLUSTER"] == cluster.CLUSTER_NAME
    assert env["CHUTE_CLICKHOUSE_INSERT_QUORUM"] == "2"  # every replica


def test_zookeeper_listens_on_loopback_without_its_admin_server(tmp_path: Path) -> None:
    text = cluster.render_zookeeper_config(settings(tmp_path))
    assert "clientPort=25181\n" in text and "clientPortAddress=127.0.0.1\n" in text
    assert "admin.enableServer=false\n" in text


def test_down_stops_the_brokers_and_replicas_together_then_zookeeper(tmp_path: Path) -> None:
    from dev_runner.supervise import _infra_tiers

    s = settings(tmp_path)
    assert _infra_tiers(s) == [["kafka-1", "kafka-2", "kafka-3", "clickhouse-1", "clickhouse-2"],
                               ["zookeeper"]]
    # Back to one node each, a cluster node that still has a pid file is stopped too.
    single = cluster.write_layout(s, 1, 1)
    (single.run_dir / "kafka-2.pid").write_text("1\n")
    assert _infra_tiers(single) == [["kafka", "clickhouse", "kafka-2"], []]


def test_a_server_is_not_moved_to_another_shard_with_its_data(tmp_path: Path) -> None:
    replicas = settings(tmp_path, brokers=1, replicas=2, shards=1)
    cluster.check_shard(replicas, 2)  # first start: records shard 01
    cluster.check_shard(replicas, 2)
    shards = settings(tmp_path, brokers=1, replicas=1, shards=2)
    cluster.check_shard(shards, 1)  # still shard 01
    with pytest.raises(RunnerError, match="clickhouse-2 holds the tables of shard 01, and this "
                                          "layout makes it a server of shard 02"):
        cluster.check_shard(shards, 2)


def test_up_refuses_such_a_layout_before_recording_or_starting_anything(tmp_path: Path) -> None:
    from dev_runner.supervise import up

    replicas = settings(tmp_path, brokers=1, replicas=2, shards=1)
    cluster.check_shard(replicas, 1)
    cluster.check_shard(replicas, 2)
    with pytest.raises(RunnerError, match="clickhouse-2 holds the tables of shard 01"):
        up(settings=replicas, clickhouse_replicas=1, clickhouse_shards=2)
    recorded = cluster.with_recorded_layout(replicas)
    assert (recorded.clickhouse_replicas, recorded.clickhouse_shards) == (2, 1)
