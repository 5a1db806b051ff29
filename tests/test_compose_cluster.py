"""docker-compose.cluster.yml: a structural check that runs everywhere, as
tests/test_compose.py does for docker-compose.yml.

``docker compose config`` is run where the compose plugin is installed (here the
docker CLI has none, nor a daemon); the file is also checked against what the compose
spec and this project require (pinned images, the same ones docker-compose.yml pins,
healthchecks, named volumes, mounted configs that exist, dependencies on healthy
services) and against the topology it claims: three Qdrant nodes in one cluster,
Milvus's distributed components on one etcd and one object storage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_compose import check_compose_config, check_service, check_volumes

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.cluster.yml")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docker-compose.cluster.yml"
QDRANT_NODES = ("qdrant-0", "qdrant-1", "qdrant-2")
MILVUS_ROLES = {"mixcoord", "proxy", "querynode", "datanode", "streamingnode"}  # Milvus 2.6


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())  # YAML merge keys (<<) resolved



def test_docker_compose_config_when_available():
    check_compose_config(CLUSTER)


def test_services_are_pinned_healthchecked_and_the_images_of_docker_compose_yml(cluster):
    assert "version" not in cluster
    assert {k for k in cluster if not k.startswith("x-")} <= {"name", "services", "volumes", "networks"}
    standalone = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    pins = {svc["image"].rpartition(":")[0]: svc["image"] for svc in standalone.values()}
    for name, svc in cluster["services"].items():
        image = check_service(name, svc)
        repo = image.rpartition(":")[0]
        assert pins.get(repo) == image, f"{name}: {image}, but docker-compose.yml pins {pins.get(repo)}"
        assert isinstance(svc.get("command", []), (list, str))
    host_ports = [p.split(":")[0] for svc in cluster["services"].values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"


def test_volumes_and_configs_exist(cluster):
    declared, used = check_volumes(cluster)
    assert used == declared, f"declared but unused: {declared - used}"


def test_dependencies_wait_for_healthy_services(cluster):
    services = cluster["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        for dep, cond in deps.items():
            assert dep in services and cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
            assert "healthcheck" in services[dep]
    # no cycles: every service starts after its dependencies
    started: set[str] = set()
    todo = dict(services)
    while todo:
        ready = [n for n, s in todo.items() if set(s.get("depends_on", {})) <= started]
        assert ready, f"a dependency cycle among {sorted(todo)}"
        started.update(ready)
        for n in ready:
            del todo[n]


def _flags(command: list[str]) -> dict[str, str]:
    assert command[0] == "./qdrant", command
    args = command[1:]
    assert len(args) % 2 == 0, command
    return dict(zip(args[::2], args[1::2]))


def test_the_three_qdrant_nodes_form_one_cluster(cluster):
    services = cluster["services"]
    nodes = {n: s for n, s in services.items() if s["image"].startswith("qdrant/qdrant:")}
    assert sorted(nodes) == list(QDRANT_NODES)
    flags = {n: _flags(s["command"]) for n, s in nodes.items()}
    first = [n for n, f in flags.items() if "--bootstrap" not in f]
    assert first == ["qdrant-0"], f"one node starts the cluster, got {first}"
    p2p = "6335"
    for name, svc in nodes.items():
        env = svc["environment"]
        assert env["QDRANT__CLUSTER__ENABLED"] == "true" and env["QDRANT__CLUSTER__P2P__PORT"] == p2p, name
        assert flags[name]["--uri"] == f"http://{name}:{p2p}", name  # how its peers reach it
        assert not any(p.endswith(f":{p2p}") for p in svc.get("ports", [])), f"{name} publishes the p2p port"
        storage = [v for v in svc["volumes"] if v.endswith(":/qdrant/storage")]
        assert len(storage) == 1, name
        assert "./backends/qdrant/config.yaml:/qdrant/config/production.yaml:ro" in svc["volumes"], name
        if name != "qdrant-0":
            assert flags[name]["--bootstrap"] == f"http://qdrant-0:{p2p}", name
            assert svc["depends_on"] == {"qdrant-0": {"condition": "service_healthy"}}, name
    storages = {v.split(":")[0] for s in nodes.values() for v in s["volumes"] if v.endswith(":/qdrant/storage")}
    assert len(storages) == 3, "each node keeps its own storage"
    assert nodes["qdrant-0"]["ports"] == ["6333:6333", "6334:6334"]


def test_milvus_runs_its_distributed_components_on_one_etcd_and_object_storage(cluster):
    services = cluster["services"]
    milvus = {n: s for n, s in services.items() if s["image"].startswith("milvusdb/milvus:")}
    roles = {n: s["command"] for n, s in milvus.items()}
    for name, command in roles.items():
        assert command[:2] == ["milvus", "run"] and command[2] in MILVUS_ROLES, f"{name}: {command}"
    by_role: dict[str, list[str]] = {}
    for name, command in roles.items():
        by_role.setdefault(command[2], []).append(name)
    assert set(by_role) == MILVUS_ROLES and len(by_role["mixcoord"]) == 1 and len(by_role["proxy"]) == 1
    assert len(by_role["querynode"]) >= 2  # replica_number=2 needs two query nodes
    coord, proxy = by_role["mixcoord"][0], by_role["proxy"][0]
    for name, svc in milvus.items():
        env = svc["environment"]
        assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000", name
        assert "./backends/milvus/cluster.yaml:/milvus/configs/user.yaml:ro" in svc["volumes"], name
        expected = {"etcd", "minio"} if name == coord else {coord}
        assert expected <= set(svc["depends_on"]), name
        if name not in (coord, proxy):
            assert "ports" not in svc, f"{name}: only the proxy is published"
    assert set(services[proxy]["depends_on"]) == set(milvus) - {proxy}  # `up milvus-proxy` starts them all
    assert services[proxy]["ports"][0] == "19530:19530"


def test_the_milvus_cluster_config_holds_the_standalone_settings_and_a_write_ahead_log():
    def contains(big: dict, small: dict, path: str = "") -> None:
        for key, value in small.items():
            assert key in big, f"backends/milvus/cluster.yaml lacks {path}{key} of milvus.yaml"
            if isinstance(value, dict):
                contains(big[key], value, f"{path}{key}.")
            else:
                assert big[key] == value, f"{path}{key}: {big[key]!r} in cluster.yaml, {value!r} in milvus.yaml"

    standalone = yaml.safe_load((ROOT / "backends/milvus/milvus.yaml").read_text())
    cluster_config = yaml.safe_load((ROOT / "backends/milvus/cluster.yaml").read_text())
    contains(cluster_config, standalone)
    # Woodpecker on the object storage: no Pulsar or Kafka service, and none in the file
    assert cluster_config["mq"]["type"] == "woodpecker"
    assert cluster_config["woodpecker"]["storage"]["type"] == "minio"
    minio_env = yaml.safe_load(CLUSTER.read_text())["services"]["minio"]["environment"]
    assert cluster_config["minio"]["accessKeyID"] == minio_env["MINIO_ACCESS_KEY"]
    assert cluster_config["minio"]["secretAccessKey"] == minio_env["MINIO_SECRET_KEY"]
