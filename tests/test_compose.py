"""docker-compose.yml and backends/: a structural check that runs everywhere.

``docker compose config`` is run where the compose plugin is installed; the
docker CLI here has none (and no daemon), so the file is also checked against
what the compose spec and this project require: pinned images, healthchecks,
named volumes, mounted configs that exist, dependencies on healthy services.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SERVICE_KEYS = {
    "image", "restart", "ports", "volumes", "environment", "healthcheck", "command", "depends_on",
    "security_opt", "container_name", "networks", "profiles", "deploy", "ulimits", "entrypoint",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def check_compose_config(path: Path) -> None:
    """``docker compose -f PATH config`` accepts the file (a skip, with why, where it cannot run)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker CLI has no compose plugin here ({(probe.stderr or probe.stdout).strip()[:120]})")
    out = subprocess.run([docker, "compose", "-f", str(path), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_docker_compose_config_when_available():
    check_compose_config(COMPOSE)


def check_service(name: str, svc: dict) -> str:
    """A compose service's known keys, pinned image, healthcheck and port forms; its image."""
    assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
    image = svc["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"
    hc = svc["healthcheck"]
    assert isinstance(hc["test"], list) and hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) > 1
    for key in ("interval", "timeout", "start_period"):
        if key in hc:
            assert DURATION.match(hc[key]), f"{name}: healthcheck {key}={hc[key]!r}"
    assert isinstance(hc["retries"], int) and hc["retries"] > 0
    for port in svc.get("ports", []):
        assert re.fullmatch(r"\d+:\d+", port), f"{name}: port {port!r}"
    return image


def test_services_are_pinned_and_healthchecked(compose):
    assert "version" not in compose  # obsolete in the compose spec
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    services = compose["services"]
    assert {"qdrant", "milvus", "etcd", "minio"} <= set(services)
    for name, svc in services.items():
        check_service(name, svc)
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v1.16.")
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.6.")


IMAGE_NAMES = re.compile(r"\b(qdrant/qdrant|milvusdb/milvus|quay\.io/coreos/etcd|minio/minio):[\w.\-]+")


def test_image_pins_are_written_once(compose):
    """docker-compose.yml is the one place an image version is written: the test servers
    start its images (tests/containers.py reads them), and no code or doc names another."""
    from .containers import compose_image

    pins = {svc["image"] for svc in compose["services"].values()}
    for service in ("qdrant", "milvus"):
        assert compose_image(service) == compose["services"][service]["image"]
    places = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "agrame_vdb").rglob("*.py"), *(ROOT / "backends").rglob("*"),
              *(ROOT / "docs").rglob("*.md"), ROOT / "README.md", ROOT / "DESIGN.md"]
    seen = 0
    for path in places:
        if path == Path(__file__) or not path.is_file():
            continue
        for m in IMAGE_NAMES.finditer(path.read_text(errors="replace")):
            seen += 1
            assert m.group(0) in pins, f"{path.relative_to(ROOT)} names {m.group(0)}, not the image docker-compose.yml pins"
    assert seen >= 1  # backends/milvus/README.md names the Milvus image


def check_volumes(compose: dict) -> tuple[set[str], set[str]]:
    """Mounted files exist and named volumes are declared; (declared, used) named volumes."""
    declared, used = set(compose.get("volumes") or {}), set()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared, f"{name} uses volume {source!r}, not declared at the top level"
                used.add(source)
    return declared, used


def test_volumes_and_configs_exist(compose):
    check_volumes(compose)


def test_dependencies_wait_for_healthy_services(compose):
    services = compose["services"]
    deps = services["milvus"]["depends_on"]
    assert set(deps) == {"etcd", "minio"}
    for dep, cond in deps.items():
        assert cond == {"condition": "service_healthy"} and "healthcheck" in services[dep]
    env = services["milvus"]["environment"]
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"


def test_backend_configs_hold_the_settings_that_matter():
    qdrant = yaml.safe_load((ROOT / "backends/qdrant/config.yaml").read_text())
    assert qdrant["storage"]["on_disk_payload"] is True
    assert qdrant["service"]["http_port"] == 6333 and qdrant["service"]["grpc_port"] == 6334
    milvus = yaml.safe_load((ROOT / "backends/milvus/milvus.yaml").read_text())
    assert milvus["queryNode"]["mmap"]["vectorField"] is True
    compose = yaml.safe_load(COMPOSE.read_text())
    minio_env = compose["services"]["minio"]["environment"]
    assert milvus["minio"]["accessKeyID"] == minio_env["MINIO_ACCESS_KEY"]
    assert milvus["minio"]["secretAccessKey"] == minio_env["MINIO_SECRET_KEY"]
    for engine in ("qdrant", "milvus"):
        text = (ROOT / "backends" / engine / "README.md").read_text()
        assert "docker compose up -d" in text and "connect(" in text
