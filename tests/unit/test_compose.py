"""compose.yaml and the service Dockerfiles, checked without a Docker engine.

The file is validated against the Compose JSON schema, then held to the contract that the native
runner (`scripts/dev`) uses too: the same modules, ports and CHUTE_* variables, with container
addresses in place of 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
LIB_SH = REPO / "scripts" / "lib.sh"
# The Compose spec's JSON schema: a copy vendored into the project's tests if there is one,
# else the team's copy in the folder beside the repository (<repo>/../shared).
SCHEMA_CANDIDATES = (
    REPO / "tests" / "vendor" / "compose-spec" / "compose-spec.json",
    REPO.parent / "shared" / "vendor" / "compose-spec" / "compose-spec.json",
)

ANY = None  # a contract value that may be anything (secrets, user settings)

# Environment every Python service gets, with the value compose must give it when the user's
# environment sets nothing (natively the addresses are 127.0.0.1 and the log format "console").
SHARED_ENV: dict[str, str | None] = {
    "CHUTE_KAFKA_BOOTSTRAP": "kafka:9092",
    "CHUTE_CLICKHOUSE_HOST": "clickhouse",
    "CHUTE_CLICKHOUSE_PORT": "9000",
    "CHUTE_CLICKHOUSE_USER": "default",
    "CHUTE_CLICKHOUSE_PASSWORD": ANY,
    "CHUTE_CLICKHOUSE_DATABASE": "default",
    "CHUTE_SCHEMAS": "schemas",
    "CHUTE_LOG_FORMAT": "json",
}


@dataclass(frozen=True)
class ServiceContract:
    """How one Python service is started, the same in compose and in `scripts/dev`."""

    module: str
    args: tuple[str, ...]
    port_env: str
    port: int
    dockerfile: str
    published: bool
    extra_env: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        return ["python", "-m", self.module, *self.args]

    @property
    def env(self) -> dict[str, str | None]:
        return {**SHARED_ENV, self.port_env: str(self.port), **self.extra_env}


CONTRACT: dict[str, ServiceContract] = {
    "control-plane": ServiceContract(
        module="control_plane",
        args=("serve",),
        port_env="CHUTE_CONTROL_PORT",
        port=4200,
        dockerfile="services/control_plane/Dockerfile",
        published=True,
        extra_env={"CHUTE_CONTROL_HOST": "0.0.0.0"},
    ),
    "ingest-api": ServiceContract(
        module="ingest_api",
        args=(),
        port_env="CHUTE_INGEST_PORT",
        port=4000,
        dockerfile="services/ingest_api/Dockerfile",
        published=True,
        extra_env={"CHUTE_INGEST_MAX_BODY_BYTES": "10485760", "CHUTE_INGEST_API_KEYS": ANY,
                   "CHUTE_INGEST_HOST": "0.0.0.0"},
    ),
    "sync-worker": ServiceContract(
        module="sync_worker",
        args=(),
        port_env="CHUTE_SYNC_PORT",
        port=4100,
        dockerfile="services/sync_worker/Dockerfile",
        published=False,
        extra_env={"CHUTE_SYNC_GROUP": "chute-sync", "CHUTE_SYNC_HOST": "0.0.0.0"},
    ),
}
INFRA = ("kafka", "clickhouse", "prometheus", "grafana")
INSTALL_INPUTS = ("pyproject.toml", "README.md", "shared", "services", "schemas")


# --- helpers -----------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(COMPOSE_FILE.read_text()))


def services() -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], load_compose()["services"])


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+]([^}]*))?\}")


def with_empty_environment(value: str) -> str:
    """The value compose uses when none of the referenced variables is set."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str
    published: str
    target: int


def port_mappings(service: Mapping[str, Any]) -> list[PortMapping]:
    """Both Compose port syntaxes: "[ip:][host:]container[/proto]" and the long mapping."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append(
                PortMapping(
                    str(entry.get("host_ip", "")),
                    str(entry.get("published", "")),
                    int(entry["target"]),
                )
            )
            continue
        parts = str(entry).split("/", 1)[0].split(":")
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 else ""
        host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
        result.append(PortMapping(host_ip, published, target))
    return result


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def native_kafka_version() -> str:
    text = LIB_SH.read_text()
    match = re.search(
        r"^\s*(?:export\s+)?KAFKA_VERSION=[\"']?(?:\$\{KAFKA_VERSION:-)?([0-9][0-9A-Za-z.\-]*)",
        text,
        re.MULTILINE,
    )
    assert match, f"no KAFKA_VERSION assignment found in {LIB_SH}"
    return match.group(1)


# --- the Compose file as a whole ----------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema_file = next((p for p in SCHEMA_CANDIDATES if p.is_file()), None)
    if schema_file is None:
        pytest.skip(
            "Compose JSON schema not found (looked for "
            + ", ".join(str(p) for p in SCHEMA_CANDIDATES)
            + ")"
        )
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_compose_defines_exactly_the_expected_services() -> None:
    assert set(services()) == set(CONTRACT) | set(INFRA)


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert healthcheck_text(service) not in ("NONE", ""), name


def test_every_published_port_binds_localhost_only() -> None:
    for name, service in services().items():
        for mapping in port_mappings(service):
            assert mapping.host_ip == "127.0.0.1", f"{name}: {mapping} is open beyond 127.0.0.1"
            assert mapping.published, f"{name}: {mapping} has no fixed host port"


def test_shared_environment_comes_from_one_anchor() -> None:
    compose = load_compose()
    extensions = [v for k, v in compose.items() if k.startswith("x-") and isinstance(v, dict)]
    shared = [ext for ext in extensions if set(SHARED_ENV) <= set(ext)]
    assert len(shared) == 1, "the shared CHUTE_* environment should live in one x- extension"
    assert "<<: *" in COMPOSE_FILE.read_text(), "services should merge it with a YAML alias"


# --- Python services -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_service_environment_matches_the_native_contract(name: str) -> None:
    contract = CONTRACT[name]
    env = environment(services()[name])
    chute_env = {k: v for k, v in env.items() if k.startswith("CHUTE_")}
    assert set(chute_env) == set(contract.env), (
        f"{name}: unexpected {sorted(set(chute_env) - set(contract.env))}, "
        f"missing {sorted(set(contract.env) - set(chute_env))}"
    )
    for key, expected in contract.env.items():
        if expected is not ANY:
            assert with_empty_environment(chute_env[key]) == expected, f"{name}: {key}"


def test_clickhouse_password_is_the_same_for_server_and_services() -> None:
    all_services = services()
    server = environment(all_services["clickhouse"])["CLICKHOUSE_PASSWORD"]
    assert with_empty_environment(server), "the image denies network access to a password-less user"
    for name in CONTRACT:
        assert environment(all_services[name])["CHUTE_CLICKHOUSE_PASSWORD"] == server, name


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_service_builds_its_own_dockerfile_from_the_repo_root(name: str) -> None:
    contract = CONTRACT[name]
    build = services()[name]["build"]
    assert isinstance(build, dict), f"{name}: build should name its Dockerfile"
    context = REPO / str(build.get("context", "."))
    assert context.resolve() == REPO, f"{name}: the Dockerfiles copy from the repository root"
    assert build["dockerfile"] == contract.dockerfile
    assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} is missing"
    assert "image" not in services()[name], f"{name}: an image name makes compose try a pull"


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_service_command_and_ports_match_the_contract(name: str) -> None:
    contract = CONTRACT[name]
    service = services()[name]
    if "command" in service:  # the Dockerfile's CMD is the contract; an override must agree
        assert service["command"] == contract.command[3:] or service["command"] == contract.command
    assert "entrypoint" not in service, name
    text = healthcheck_text(service)
    assert "python" in text and "urllib" in text and "/health" in text, name
    assert contract.port_env in text and str(contract.port) in text, name
    if contract.published:
        assert [m.target for m in port_mappings(service)] == [contract.port], name
        assert [m.published for m in port_mappings(service)] == [str(contract.port)], name


def test_sync_worker_can_be_scaled() -> None:
    worker = services()["sync-worker"]
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    assert "hostname" not in worker, "replicas take their worker id from distinct hostnames"
    assert not worker.get("ports"), "a fixed host port prevents --scale; use expose"
    assert str(CONTRACT["sync-worker"].port) in [str(p) for p in worker.get("expose", [])]
    assert "CHUTE_SYNC_WORKER_ID" not in environment(worker)
    assert "deploy" not in worker or "replicas" not in (worker["deploy"] or {})


def test_services_start_only_after_their_dependencies_are_healthy() -> None:
    all_services = services()

    def waits_for(name: str) -> dict[str, str]:
        depends = all_services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs the long syntax"
        return {dep: str(spec.get("condition")) for dep, spec in depends.items()}

    assert waits_for("control-plane") == {
        "kafka": "service_healthy",
        "clickhouse": "service_healthy",
    }
    for name in ("ingest-api", "sync-worker"):
        assert waits_for(name).get("control-plane") == "service_healthy", name


def test_user_schemas_can_be_mounted() -> None:
    for name in CONTRACT:
        volumes = [str(v) for v in services()[name].get("volumes", [])]
        assert "./schemas:/app/schemas:ro" in volumes, name


# --- infrastructure ------------------------------------------------------------------------------


def test_kafka_is_the_official_image_at_the_native_version() -> None:
    image = services()["kafka"]["image"]
    repository, _, tag = str(image).partition(":")
    assert repository in ("apache/kafka", "docker.io/apache/kafka")
    assert tag == native_kafka_version(), "compose and scripts/lib.sh disagree on Kafka"


def test_kafka_is_a_single_kraft_node_with_internal_and_host_listeners() -> None:
    kafka = services()["kafka"]
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"], "the image formats storage only with a CLUSTER_ID"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key, value in env.items():
        if key.endswith(("_REPLICATION_FACTOR", "_MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert value == "1", key
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"

    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert "kafka:9092" in advertised.values(), "services bootstrap from kafka:9092"
    host_listener = next(name for name, addr in advertised.items() if addr == "127.0.0.1:9092")
    host_port = int(listeners[host_listener].rsplit(":", 1)[1])
    assert PortMapping("127.0.0.1", "9092", host_port) in port_mappings(kafka)
    assert "/opt/kafka/bin/" in healthcheck_text(kafka)
    assert any(str(v).endswith(":" + env["KAFKA_LOG_DIRS"]) for v in kafka["volumes"])


def test_clickhouse_is_a_current_image_with_ping_check_limits_and_a_volume() -> None:
    compose = load_compose()
    clickhouse = compose["services"]["clickhouse"]
    repository, _, tag = str(clickhouse["image"]).partition(":")
    assert repository in ("clickhouse/clickhouse-server", "docker.io/clickhouse/clickhouse-server")
    assert int(tag.split(".")[0]) >= 24, "compose runs a current ClickHouse"
    assert "/ping" in healthcheck_text(clickhouse)
    assert clickhouse["ulimits"]["nofile"]
    targets = {m.target for m in port_mappings(clickhouse)}
    assert targets == {8123, 9000}
    named = [str(v).split(":", 1)[0] for v in clickhouse["volumes"]]
    assert any(n in (compose.get("volumes") or {}) for n in named), "data needs a named volume"


# --- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_dockerfile_follows_the_contract(name: str) -> None:
    contract = CONTRACT[name]
    instructions = dockerfile_instructions(REPO / contract.dockerfile)
    for keyword, args in instructions:
        if keyword == "FROM":
            assert args.split()[0] == "python:3.11-slim", f"{name}: base image {args}"
    stage = final_stage(instructions)

    cmd = [args for keyword, args in stage if keyword == "CMD"]
    assert cmd, f"{name}: no CMD"
    assert json.loads(cmd[-1]) == contract.command, f"{name}: CMD should be exec form"

    users = [args.split(":")[0] for keyword, args in stage if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name}: must run as a non-root user"

    health = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert (health and "/health" in health[-1]) or "healthcheck" in services()[name], name

    exposed = [port for keyword, args in stage if keyword == "EXPOSE" for port in args.split()]
    assert str(contract.port) in exposed, name
    env_text = " ".join(args for keyword, args in stage if keyword == "ENV")
    assert f"{contract.port_env}={contract.port}" in env_text, name

    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for source in INSTALL_INPUTS:
        assert re.search(rf"(^|\s){re.escape(source)}/?(\s|$)", copied), f"{name}: copy {source}"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), f"{name}: pip install ."


def test_dockerignore_sends_the_install_inputs_and_nothing_else() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == "*", "start from an empty build context"
    reincluded = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert reincluded == set(INSTALL_INPUTS)
    assert "**/__pycache__" in lines


# --- Prometheus and Grafana ---------------------------------------------------------------------


def mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """{container path: host path} of the service's bind mounts of repository files."""
    result = {}
    for volume in service.get("volumes") or []:
        parts = str(volume).split(":")
        if parts[0].startswith("./"):
            result[parts[1]] = REPO / parts[0]
    return result


def prometheus_config() -> dict[str, Any]:
    config = mounts(services()["prometheus"])["/etc/prometheus/prometheus.yml"]
    return cast(dict[str, Any], yaml.safe_load(config.read_text()))


def grafana_file(container_path: str) -> Path:
    """The repository file Grafana sees at `container_path` through its bind mounts."""
    for target, source in mounts(services()["grafana"]).items():
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"{container_path} is not mounted into grafana")


@pytest.mark.parametrize(("name", "repository"), [("prometheus", "prom/prometheus"),
                                                  ("grafana", "grafana/grafana")])
def test_observability_images_are_pinned(name: str, repository: str) -> None:
    image = str(services()[name]["image"])
    assert image.partition(":")[0] in (repository, f"docker.io/{repository}"), image
    assert re.fullmatch(r"v?[0-9]+\.[0-9]+\.[0-9]+", image.partition(":")[2]), (
        f"{name}: pin an exact version, not {image!r}")


def test_prometheus_scrapes_every_service_and_each_worker_replica() -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    for name, contract in CONTRACT.items():
        assert name in jobs, f"no scrape job for {name} (job names are the service names)"
        job = jobs[name]
        if name == "sync-worker":
            # Scaled replicas share one DNS name: service discovery, never a fixed target.
            assert "static_configs" not in job
            [sd] = job["dns_sd_configs"]
            assert sd["type"] == "A" and sd["port"] == contract.port
            assert set(sd["names"]) <= {name, f"tasks.{name}"}, sd["names"]
        else:
            targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
            assert targets == [f"{name}:{contract.port}"], (name, targets)
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_keeps_its_data_in_a_named_volume() -> None:
    compose = load_compose()
    prometheus = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    data = next(a.split("=", 1)[1] for a in prometheus["command"]
                if a.startswith("--storage.tsdb.path="))
    named = {str(v).split(":")[0] for v in prometheus["volumes"] if str(v).endswith(":" + data)}
    assert named & set(compose["volumes"]), "time series need a named volume"
    assert [m.target for m in port_mappings(prometheus)] == [9090]


def test_native_and_compose_prometheus_use_the_same_job_names() -> None:
    import dev_runner  # scripts/ is on sys.path (tests/conftest.py)

    template = (REPO / "deploy" / "prometheus" / "prometheus.native.yml.tmpl").read_text()
    native = yaml.safe_load(dev_runner.render_prometheus_config(
        template, ["127.0.0.1:4200"], ["127.0.0.1:4000"], ["127.0.0.1:4101", "127.0.0.1:4102"],
        ["127.0.0.1:9090"], "5s"))
    assert ({job["job_name"] for job in native["scrape_configs"]}
            == {job["job_name"] for job in prometheus_config()["scrape_configs"]})
    sync = next(j for j in native["scrape_configs"] if j["job_name"] == "sync-worker")
    assert sync["static_configs"][0]["targets"] == ["127.0.0.1:4101", "127.0.0.1:4102"]


def test_grafana_provisions_the_prometheus_datasource_and_the_repository_dashboards() -> None:
    grafana = services()["grafana"]
    assert "/etc/grafana/provisioning" in mounts(grafana)
    datasources = grafana_file("/etc/grafana/provisioning/datasources/prometheus.yaml")
    [source] = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "chute-prometheus"
    assert source["url"] == "http://prometheus:9090", "the compose service and its port"
    scrape = prometheus_config()["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape, "$__rate_interval derives from it"

    providers = grafana_file("/etc/grafana/provisioning/dashboards/chute.yaml")
    [provider] = yaml.safe_load(providers.read_text())["providers"]
    folder = grafana_file(provider["options"]["path"] + "/")
    assert folder.resolve() == (REPO / "deploy" / "grafana" / "dashboards").resolve()
    assert sorted(p.name for p in folder.glob("*.json")), "no dashboards to provision"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana_file(home).is_file(), home
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
