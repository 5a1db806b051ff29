"""deploy/k8s: the Kubernetes Jobs of docs/cluster.md, checked structurally (PyYAML), and
their commands run through the real ``agrame-vdb index`` as each pod would run them
(``--dry-run``: no model weights, no store): the N pods of the Indexed Job take every
document once between them.

Also ``--shard env/N``, which reads the index a Kubernetes Indexed Job gives each pod.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agrame_vdb.shards import INDEX_VARIABLE, parse_shard, shard_of

from .indexing_helpers import make_docs, write_jsonl

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
VAR = re.compile(r"\$\((\w+)\)")  # Kubernetes expands $(NAME) in command and args from the container's env


def _job(name: str) -> dict:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1, f"{name}: one Job per file"
    job = docs[0]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job", name
    return job


def _container(job: dict) -> dict:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def _option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} in {argv}"
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def index_job() -> dict:
    return _job("index-job.yaml")


@pytest.fixture(scope="module")
def create_job() -> dict:
    return _job("create-collection-job.yaml")


def test_the_index_job_is_an_indexed_job_of_n_shards(index_job):
    spec = index_job["spec"]
    assert spec["completionMode"] == "Indexed"
    n = spec["completions"]
    assert isinstance(n, int) and n >= 2
    assert isinstance(spec["parallelism"], int) and 1 <= spec["parallelism"] <= n
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex requires it
    assert isinstance(spec["backoffLimitPerIndex"], int) and spec["backoffLimitPerIndex"] >= 1
    container = _container(index_job)
    argv = container["command"]
    assert argv[:2] == ["agrame-vdb", "index"]
    shard = _option(argv, "--shard")
    assert shard == f"$({INDEX_VARIABLE})/{n}", f"--shard {shard} must be $({INDEX_VARIABLE})/{n}: N is completions"
    # every $(NAME) is defined in the container's env, or is the index the Job sets
    defined = {e["name"] for e in container["env"]}
    for arg in argv:
        for name in VAR.findall(arg):
            assert name in defined | {INDEX_VARIABLE}, f"{arg}: {name} is not in the container's env"


def test_both_jobs_use_one_image_volume_store_and_collection(index_job, create_job):
    index, create = _container(index_job), _container(create_job)
    image = index["image"]
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert image == create["image"] and image.rpartition(":")[2] == version, "the image of this agrame-vdb, pinned"
    env = {e["name"]: e for e in index["env"]}
    assert {e["name"]: e for e in create["env"]} == env
    assert env["AGRAME_STORE"]["value"].startswith(("http://", "https://", "milvus://"))  # a server: many writers
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"], "the key comes from a Secret, not the manifest"
    for job in (index_job, create_job):
        [volume] = job["spec"]["template"]["spec"]["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == "agrame-index"
        assert _container(job)["volumeMounts"] == [{"name": volume["name"], "mountPath": "/data"}]
    assert index["workingDir"] == "/data"  # the checkpoints (.agrame-jobs/) outlive a pod
    # the collection is created with what the index pods open it with
    assert create["command"] == ["sh", "-c"]
    created = shlex.split(create["args"][0].replace('"$AGRAME_STORE"', "$(AGRAME_STORE)"))
    tail = created[created.index("agrame-vdb"):]
    argv = index["command"]
    assert tail[:2] == ["agrame-vdb", "index"] and "--shard" not in tail
    for flag in ("--collection", "--store", "--model", "--storage"):
        assert _option(tail, flag) == _option(argv, flag), flag
    assert not {"--index-field", "--no-lexical", "--on-disk"} & (set(argv) | set(tail))


def _pod_argv(job: dict, index: int, corpus: Path) -> list[str]:
    """The command of pod ``index`` as Kubernetes expands it, on a test corpus and store."""
    env = {"AGRAME_STORE": "memory://", INDEX_VARIABLE: str(index)}
    argv = [VAR.sub(lambda m: env[m.group(1)], a) for a in _container(job)["command"]]
    return [str(corpus) if a == "/data/corpus.jsonl" else a for a in argv]


def test_the_pods_commands_index_every_document_once(index_job, tmp_path, monkeypatch):
    from agrame_vdb.cli import app

    docs = make_docs(20)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    monkeypatch.chdir(tmp_path)
    n = index_job["spec"]["completions"]
    runner = CliRunner()
    taken = []
    for i in range(n):
        argv = _pod_argv(index_job, i, corpus)
        assert argv[0] == "agrame-vdb"
        result = runner.invoke(app, [*argv[1:], "--dry-run"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["rejected"] == 0
        taken.append(summary["documents"])
    expected = [sum(shard_of(d["id"], n) == i for d in docs) for i in range(n)]
    assert taken == expected and sum(taken) == len(docs)


# --------------------------------------------------------------------------- --shard env/N


def test_shard_env_reads_the_job_completion_index():
    assert parse_shard("env/4", {INDEX_VARIABLE: "3"}) == (3, 4)
    assert parse_shard("env/1", {INDEX_VARIABLE: "0"}) == (0, 1)
    with pytest.raises(ValueError, match=f"takes its index from {INDEX_VARIABLE}, which is not set"):
        parse_shard("env/4", {})
    for index, value in (("4", "env/4"), ("-1", "env/4"), ("x", "env/4"), ("1", "env/"), ("1", "env/two")):
        with pytest.raises(ValueError, match=f"with {INDEX_VARIABLE}={index!r} is no shard"):
            parse_shard(value, {INDEX_VARIABLE: index})


def test_cli_shard_env_equals_the_explicit_shard(tmp_path, monkeypatch):
    from agrame_vdb.cli import app

    corpus = write_jsonl(tmp_path / "corpus.jsonl", make_docs(12))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    common = ["index", str(corpus), "-c", "docs", "--store", "memory://", "--dry-run", "--json"]
    explicit = runner.invoke(app, [*common, "--shard", "1/3"])
    from_env = runner.invoke(app, [*common, "--shard", "env/3"], env={INDEX_VARIABLE: "1"})
    assert explicit.exit_code == from_env.exit_code == 0, (explicit.output, from_env.output)
    a, b = ({k: v for k, v in json.loads(r.stdout).items() if "second" not in k} for r in (explicit, from_env))
    assert a == b and a["shard"] == [1, 3] and 0 < a["documents"] < 12
    missing = runner.invoke(app, [*common, "--shard", "env/3"], env={INDEX_VARIABLE: None})
    assert missing.exit_code == 2 and f"{INDEX_VARIABLE}, which is not set" in missing.output
