"""compose.yaml and the Dockerfile, checked without a Docker engine.

The file must be valid Compose (the spec's JSON schema, vendored under tests/vendor), and the
services must be configured the same way as the native runner (`scripts/dev`) configures them:
each CHUTE_* variable a service reads is set by both or by neither, with the same value except
for the documented differences (container addresses, JSON logs, worker ids from hostnames).
The rest checks what would break a `docker compose up`: ports a service listens on that nothing
probes or scrapes, listeners nobody can reach, files the build cannot see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from chute.settings import is_secret
from control_plane.settings import ControlPlaneSettings
from dev_runner.configs import render_prometheus_config
from dev_runner.services import service_spec
from dev_runner.settings import Settings
from ingest_api.settings import IngestSettings
from pydantic_settings import BaseSettings
from sync_worker.settings import SyncSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
SCHEMA_FILE = REPO / "tests" / "vendor" / "compose-spec" / "compose-spec.json"

# compose service -> (native runner's service, the settings class the service reads)
PYTHON_SERVICES: dict[str, tuple[str, type[BaseSettings]]] = {
    "control-plane": ("control-plane", ControlPlaneSettings),
    "ingest-api": ("ingest-api", IngestSettings),
    "sync-worker": ("sync-worker-1", SyncSettings),
}

# Where compose and the native runner differ on purpose, and why.
DIFFERENT_ON_PURPOSE = {
    "CHUTE_KAFKA_BOOTSTRAP": "the broker's address inside the compose network",
    "CHUTE_CLICKHOUSE_HOST": "the server's address inside the compose network",
    "CHUTE_LOG_FORMAT": "JSON in containers, readable console lines natively",
    "CHUTE_SYNC_PORT": "one port per worker natively (base + N); every replica on the same",
}
# Set natively, left unset in compose on purpose.
NATIVE_ONLY = {
    "CHUTE_SYNC_WORKER_ID": "replicas take their hostname, so `--scale` gives distinct ids",
}


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
    return {str(k): "" if v is None else with_empty_environment(str(v)) for k, v in env.items()}


def variables_read_by(settings_type: type[BaseSettings]) -> set[str]:
    """Each setting's variable, and <VARIABLE>_FILE for secrets (chute.secret_files)."""
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    names = {f"{prefix}{name}".upper() for name in settings_type.model_fields}
    secrets = {f"{prefix}{name}_FILE".upper() for name in settings_type.model_fields
               if is_secret(settings_type, (name,))}
    return names | secrets


def native_environment(name: str) -> dict[str, str]:
    """The CHUTE_* variables the native runner gives a service beyond the caller's own."""
    spec = service_spec(name, Settings.from_env({}))
    env = {**dict(spec.env_defaults), **dict(spec.env_forced)}
    return {k: v for k, v in env.items() if k.startswith("CHUTE_")}


def listen_port(name: str) -> int:
    """The port a compose service listens on: its settings' port variable as compose sets it."""
    _native, settings_type = PYTHON_SERVICES[name]
    [port_var] = [v for v in variables_read_by(settings_type)
                  if v.endswith("_PORT") and not v.startswith("CHUTE_CLICKHOUSE")]
    return int(environment(services()[name])[port_var])


def published(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(host ip, host port, container port) of the short "[ip:][host:]container" syntax."""
    result = []
    for entry in service.get("ports") or []:
        parts = str(entry).split("/", 1)[0].split(":")
        host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
        result.append((host_ip, parts[-2] if len(parts) >= 2 else "", int(parts[-1])))
    return result


def healthcheck_text(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


# --- the file as a whole -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_every_published_port_binds_localhost_only() -> None:
    for name, service in services().items():
        for host_ip, host_port, target in published(service):
            assert host_ip == "127.0.0.1", f"{name}: port {target} is open beyond 127.0.0.1"
            assert host_port, f"{name}: port {target} has no fixed host port"


def test_what_a_service_waits_for_has_a_healthcheck() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs the long syntax"
        for dependency, spec in depends.items():
            assert spec.get("condition") == "service_healthy", (name, dependency)
            assert all_services[dependency].get("healthcheck", {}).get("test"), dependency
    waits = {name: set(s.get("depends_on") or {}) for name, s in all_services.items()}
    # control-plane applies topics and tables; the data path starts once they exist.
    assert waits["control-plane"] == {"kafka", "clickhouse"}
    assert "control-plane" in waits["ingest-api"] and "control-plane" in waits["sync-worker"]


# --- the environment contract with the native runner -------------------------------------------


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_compose_sets_only_variables_the_service_reads(name: str) -> None:
    _native, settings_type = PYTHON_SERVICES[name]
    chute_env = {k for k in environment(services()[name]) if k.startswith("CHUTE_")}
    unread = chute_env - variables_read_by(settings_type)
    assert not unread, f"{name}: compose sets {sorted(unread)}, which the service never reads"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_native_runner_sets_only_variables_the_service_reads(name: str) -> None:
    native, settings_type = PYTHON_SERVICES[name]
    unread = set(native_environment(native)) - variables_read_by(settings_type)
    assert not unread, f"{native}: the runner sets {sorted(unread)}, which it never reads"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_compose_and_native_runner_set_the_same_variables_alike(name: str) -> None:
    native_name, _settings = PYTHON_SERVICES[name]
    compose = {k: v for k, v in environment(services()[name]).items() if k.startswith("CHUTE_")}
    native = native_environment(native_name)
    missing = set(native) - set(compose) - set(NATIVE_ONLY)
    assert not missing, f"{name}: set natively, not in compose: {sorted(missing)}"
    for key in NATIVE_ONLY:
        assert key not in compose, f"{name}: {key}: {NATIVE_ONLY[key]}"
    for key in set(native) & set(compose):
        if key not in DIFFERENT_ON_PURPOSE:
            assert compose[key] == native[key], f"{name}: {key}"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_services_listen_beyond_their_container_on_a_port_that_is_probed(name: str) -> None:
    _native, settings_type = PYTHON_SERVICES[name]
    env = environment(services()[name])
    [host_var] = [v for v in variables_read_by(settings_type)
                  if v.endswith("_HOST") and not v.startswith("CHUTE_CLICKHOUSE")]
    assert env[host_var] == "0.0.0.0", f"{name}: on 127.0.0.1 nothing outside reaches it"
    port = listen_port(name)
    text = healthcheck_text(services()[name])
    assert "/health" in text and str(port) in text, f"{name}: the healthcheck probes {port}"
    for _ip, _host_port, target in published(services()[name]):
        assert target == port, f"{name}: publishes {target}, listens on {port}"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_compose_runs_the_module_the_native_runner_runs(name: str) -> None:
    native_name, _settings = PYTHON_SERVICES[name]
    argv = service_spec(native_name, Settings.from_env({})).argv
    assert services()[name]["command"] == ["python", *argv[1:]]


def test_services_reach_the_servers_at_addresses_they_serve() -> None:
    all_services = services()
    kafka = environment(all_services["kafka"])
    advertised = {a.split("://", 1)[1] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    clickhouse_password = environment(all_services["clickhouse"])["CLICKHOUSE_PASSWORD"]
    assert clickhouse_password, "the image denies network access to a password-less user"
    for name in PYTHON_SERVICES:
        env = environment(all_services[name])
        assert env["CHUTE_KAFKA_BOOTSTRAP"] in advertised, name
        assert env["CHUTE_CLICKHOUSE_HOST"] == "clickhouse", name
        assert env["CHUTE_CLICKHOUSE_PORT"] == "9000", f"{name}: ClickHouse's native port"
        assert env["CHUTE_CLICKHOUSE_PASSWORD"] == clickhouse_password, name
    # Host tools use the native broker's default address with either runtime.
    native = Settings.from_env({})
    assert f"127.0.0.1:{native.kafka_port}" in advertised
    assert ("127.0.0.1", str(native.kafka_port)) in {
        (ip, port) for ip, port, _target in published(all_services["kafka"])}


def test_one_broker_replicates_everything_once() -> None:
    env = environment(services()["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key, value in env.items():
        if key.endswith(("_REPLICATION_FACTOR", "_MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert value == "1", f"{key}: a single broker cannot hold more replicas"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "control-plane creates topics"


def test_kafka_is_the_official_image_at_the_native_version() -> None:
    repository, _, tag = str(services()["kafka"]["image"]).partition(":")
    assert repository in ("apache/kafka", "docker.io/apache/kafka")
    lib_sh = (REPO / "scripts" / "lib.sh").read_text()
    assert f'KAFKA_VERSION="${{KAFKA_VERSION:-{tag}}}"' in lib_sh, "compose and scripts differ"


def test_sync_worker_can_be_scaled() -> None:
    worker = services()["sync-worker"]
    assert "container_name" not in worker and "hostname" not in worker
    assert not worker.get("ports"), "a fixed host port prevents --scale"
    assert str(listen_port("sync-worker")) in [str(p) for p in worker.get("expose", [])]


# --- the image ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_every_python_service_builds_the_one_image_from_the_repository_root() -> None:
    for name in PYTHON_SERVICES:
        build = services()[name]["build"]
        assert (REPO / build["context"]).resolve() == REPO, name
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert "image" not in services()[name], f"{name}: an image name makes compose pull"


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.strip().startswith("#")]
    assert ignore[0] == "*", "start from an empty build context"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source.rstrip("/") in included, f"COPY {source}: excluded by .dockerignore"
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), "installs the project"


def test_the_image_builds_and_runs_the_c_extension_as_the_native_install_does() -> None:
    """The build stage installs what scripts/install-python installs for the ingest API's
    batch producer (a C compiler, librdkafka's headers); the image it runs in has librdkafka."""
    instructions = dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(stages) == 2
    build_runs = " ".join(args for keyword, args in instructions[stages[0]:stages[1]]
                          if keyword == "RUN")
    final_runs = " ".join(args for keyword, args in instructions[stages[1]:] if keyword == "RUN")
    installed = re.search(r"^apt_install (.+)$",
                          (REPO / "scripts" / "install-python").read_text(), re.M)
    assert installed is not None
    for package in installed.group(1).split():
        assert re.search(rf"apt-get install .*\b{re.escape(package)}\b", build_runs), package
    assert re.search(r"apt-get install .*\blibrdkafka1\b", final_runs)
    # one Debian release for both stages: the extension links the librdkafka it runs with
    assert instructions[stages[0]][1].split()[0] == instructions[stages[1]][1].split()[0]


def test_the_image_runs_as_an_unprivileged_user_and_exposes_every_service_port() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    exposed = {p for keyword, args in final if keyword == "EXPOSE" for p in args.split()}
    assert {str(listen_port(name)) for name in PYTHON_SERVICES} <= exposed


# --- Prometheus and Grafana --------------------------------------------------------------------


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


def test_prometheus_scrapes_every_service_where_it_listens() -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    for name in PYTHON_SERVICES:
        job = jobs[name]  # job names are the service names (the dashboards use them)
        port = listen_port(name)
        if name == "sync-worker":
            # Scaled replicas share one DNS name: service discovery, never a fixed target.
            [sd] = job["dns_sd_configs"]
            assert sd["type"] == "A" and sd["port"] == port and name in sd["names"]
        else:
            targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
            assert targets == [f"{name}:{port}"], (name, targets)


def test_native_and_compose_prometheus_use_the_same_job_names() -> None:
    template = (REPO / "deploy" / "prometheus" / "prometheus.native.yml.tmpl").read_text()
    native = yaml.safe_load(render_prometheus_config(
        template, ["127.0.0.1:4200"], ["127.0.0.1:4000"], ["127.0.0.1:4101", "127.0.0.1:4102"],
        ["127.0.0.1:9090"], "5s"))
    assert ({job["job_name"] for job in native["scrape_configs"]}
            == {job["job_name"] for job in prometheus_config()["scrape_configs"]})
    sync = next(j for j in native["scrape_configs"] if j["job_name"] == "sync-worker")
    assert sync["static_configs"][0]["targets"] == ["127.0.0.1:4101", "127.0.0.1:4102"]


def test_grafana_provisions_the_prometheus_datasource_and_the_repository_dashboards() -> None:
    grafana = services()["grafana"]
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
    assert list(folder.glob("*.json")), "no dashboards to provision"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana_file(home).is_file(), home
