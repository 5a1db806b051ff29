"""Credentials never leave the process, job files are private, hand-edited checkpoints
are refused field by field, and a failing Milvus call prints nothing of pymilvus's.

The reference for "no secret leaked" is the secret string itself: it must not occur
in anything the command prints or in any byte (or name) of any file it leaves.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.cli import app
from agrame_vdb.errors import CheckpointMismatchError, InvalidInputError
from agrame_vdb.indexer import index_documents
from agrame_vdb.migrations import default_state_dir
from agrame_vdb.redact import redact_url
from agrame_vdb.repositories import parse_url

from .indexing_helpers import FakeEncoder, make_docs, write_jsonl

SECRET = "Zq7SecretValue42"
ENV_SECRET = "Zq7EnvSecret99"


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _closed_port()

#: every position a credential can take in a store URL this library reads
URLS = {
    "milvus-token": f"milvus://127.0.0.1:{PORT}?token=root:{SECRET}&timeout=2&retries=1",
    "qdrant-api_key": f"http://127.0.0.1:{PORT}?api_key={SECRET}&retries=1&retry_wait_max=0",
    "qdrant-password-option": f"http://127.0.0.1:{PORT}?password={SECRET}",
    "qdrant-userinfo": f"http://user:{SECRET}@127.0.0.1:{PORT}?retries=1&retry_wait_max=0",
    "qdrant-token-userinfo": f"https://{SECRET}@127.0.0.1:{PORT}?retries=1&retry_wait_max=0",
    "https-api-key": f"https://127.0.0.1:{PORT}?api-key={SECRET}",
    "milvus-userinfo": f"milvus://root:{SECRET}@127.0.0.1:{PORT}",
    "memory-api_key": f"memory://?api_key={SECRET}",
    "edge-userinfo": f"qdrant-edge://user:{SECRET}@data",
}


def _leaks(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose name or bytes hold ``secret``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if secret in name:
                found.append(os.path.join(dirpath, name))
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory (./.agrame-jobs goes there) with env credentials set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QDRANT_API_KEY", ENV_SECRET)
    monkeypatch.setenv("MILVUS_TOKEN", f"root:{ENV_SECRET}")
    write_jsonl(tmp_path / "docs.jsonl", [*make_docs(2), {"id": "bad", "text": ""}])
    return tmp_path


# --------------------------------------------------------------------------- the redaction itself


def test_redacted_urls_keep_what_identifies_the_store():
    # hand-written expectations: the credential goes, host/port/path/db/options stay
    assert redact_url(f"milvus://h:19530/db?token=root:{SECRET}&layout=tokens") == \
        "milvus://h:19530/db?token=***&layout=tokens"
    assert redact_url(f"http://user:{SECRET}@qdrant:6333") == "http://user:***@qdrant:6333"
    assert redact_url(f"https://{SECRET}@qdrant?API-Key={SECRET}") == "https://***@qdrant?API-Key=***"
    assert redact_url(f"http://u:{SECRET}/x@h?password={SECRET}&token_copy=0&token_k=3") == \
        "http://u:***@h?password=***&token_copy=0&token_k=3"
    assert redact_url("qdrant-edge:///data/a@b?token_copy=0") == "qdrant-edge:///data/a@b?token_copy=0"
    for kind, url in URLS.items():
        assert SECRET not in redact_url(url), kind
        if kind != "edge-userinfo":  # refused by parse_url (see the last test)
            assert SECRET not in repr(parse_url(url)), kind


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("kind", sorted(set(URLS) - {"edge-userinfo"}))
def test_index_summary_never_shows_credentials(workdir, capfd, kind, as_json):
    url = URLS[kind]
    args = ["index", "docs.jsonl", "-c", "docs", "--store", url, "--dry-run", "--no-progress"]
    result = CliRunner().invoke(app, args + (["--json"] if as_json else []))
    out, err = capfd.readouterr()
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output + out + err
    if as_json:
        store = json.loads(result.stdout)["store"]
        assert SECRET not in store and ("127.0.0.1" in store or kind == "memory-api_key") and "***" in store
    assert not _leaks(workdir, SECRET)


@pytest.mark.parametrize("kind", sorted(URLS))
def test_index_errors_never_show_credentials(workdir, capfd, kind):
    """A store that cannot be reached, refuses the URL or its options: exit 2 with a
    message, and no credential (from the URL or the environment) printed or stored."""
    args = ["index", "docs.jsonl", "-c", "docs", "--store", URLS[kind], "--device", "cpu", "--retries", "1",
            "--no-progress", "--json"]
    result = CliRunner().invoke(app, args)
    out, err = capfd.readouterr()
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    printed = result.output + out + err
    assert SECRET not in printed and ENV_SECRET not in printed
    assert not _leaks(workdir, SECRET) and not _leaks(workdir, ENV_SECRET)


def test_cli_job_files_are_private(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "docs.jsonl", [*make_docs(2), {"id": "bad", "text": ""}])
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["index", "docs.jsonl", "-c", "docs", "--store", f"qdrant-edge://{store}",
                                      "--device", "cpu", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rejected"] == 1 and summary["documents"] == 2
    for path in (summary["checkpoint"], summary["rejects"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# --------------------------------------------------------------------------- the job (library)


def test_checkpoint_keeps_the_store_without_its_credentials(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [*make_docs(4), {"id": "bad", "text": ""}])
    ck, rj = tmp_path / "job" / "ck.json", tmp_path / "job" / "rejects.jsonl"
    url = f"http://admin:{SECRET}@qdrant.internal:6333/?api_key={SECRET}"
    repo = connect("memory://")
    opts = dict(encoder=FakeEncoder(), checkpoint=ck, rejects=rj, batch_size=2)
    summary = index_documents(src, repo, "docs", store=url, **opts)
    assert summary.documents == 4 and summary.rejected == 1
    assert SECRET not in json.dumps(summary.to_json()) + summary.format()
    assert not _leaks(tmp_path, SECRET)
    for path in (ck, rj):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert json.loads(ck.read_text())["job"]["store"] == "http://admin:***@qdrant.internal:6333/?api_key=***"

    # an unfinished job: the same store (even with a rotated credential) resumes it ...
    state = json.loads(ck.read_text())
    state.update(done=False)
    ck.write_text(json.dumps(state))
    resumed = index_documents(src, repo, "docs", store=url.replace(SECRET, "Rotated123"), **opts)
    assert resumed.resumed_after == state["line"] and resumed.documents == 4
    # ... another host, database or path is refused
    ck.write_text(json.dumps(state))
    for other in (url.replace("qdrant.internal", "qdrant.other"), url.replace(":6333/", ":6333/db2"),
                  f"milvus://qdrant.internal:6333?token={SECRET}"):
        with pytest.raises(CheckpointMismatchError, match="store") as err:
            index_documents(src, repo, "docs", store=other, **opts)
        assert SECRET not in str(err.value)


def test_a_checkpoint_written_with_credentials_is_redacted_on_resume(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(3))
    ck = tmp_path / "ck.json"
    url = f"milvus://h:19530?token=root:{SECRET}"
    repo = connect("memory://")
    index_documents(src, repo, "docs", encoder=FakeEncoder(), checkpoint=ck, store=url)
    state = json.loads(ck.read_text())
    state["job"]["store"] = url  # as an earlier version wrote it
    ck.write_text(json.dumps(state))
    again = index_documents(src, repo, "docs", encoder=FakeEncoder(), checkpoint=ck, store=url)
    assert again.already_done
    assert SECRET not in ck.read_text()


def test_migration_state_directory_does_not_depend_on_the_secret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = connect(f"http://user:{SECRET}@127.0.0.1:{PORT}")
    b = connect(f"http://user:Other{SECRET}@127.0.0.1:{PORT}")
    c = connect(f"http://user:{SECRET}@127.0.0.2:{PORT}")
    try:
        assert default_state_dir(a) == default_state_dir(b) != default_state_dir(c)
        assert SECRET not in a._where and "127.0.0.1" in a._where
    finally:
        for r in (a, b, c):
            r.close()


# --------------------------------------------------------------------------- hand-edited checkpoints


def _edit(ck: Path, how):
    state = json.loads(ck.read_text())
    how(state)
    ck.write_text(json.dumps(state))


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda s: s.update(position=-100, done=False), "position"),
        (lambda s: s.update(position=10**9, done=False), "position"),
        (lambda s: s["counts"].update(passages="12"), "counts.passages"),
        (lambda s: s.pop("line"), "line"),
        (lambda s: s.update(rejects_bytes=[1]), "rejects_bytes"),
        (lambda s: s.update(done="yes"), "done"),
        (lambda s: s.update(line=s["position"] + 1), "line"),
    ],
    ids=["negative-position", "position-past-end", "count-as-string", "missing-key", "list", "done-string",
         "line-past-position"],
)
def test_hand_edited_checkpoint_is_refused_naming_file_and_field(tmp_path, edit, field):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(4))
    ck = tmp_path / "ck.json"
    repo = connect("memory://")
    index_documents(src, repo, "docs", encoder=FakeEncoder(), checkpoint=ck, batch_size=2)
    before = repo.count("docs")
    _edit(ck, edit)
    with pytest.raises(CheckpointMismatchError) as err:
        index_documents(src, repo, "docs", encoder=FakeEncoder(), checkpoint=ck, batch_size=2)
    assert str(ck) in str(err.value) and f"'{field}'" in str(err.value), str(err.value)
    assert repo.count("docs") == before  # nothing written is lost


def test_a_checkpoint_that_is_not_json_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(2))
    ck = tmp_path / "ck.json"
    ck.write_text('{"job": {"input": ')
    with pytest.raises(CheckpointMismatchError, match="not JSON") as err:
        index_documents(src, connect("memory://"), "docs", encoder=FakeEncoder(), checkpoint=ck)
    assert str(ck) in str(err.value)


# --------------------------------------------------------------------------- pymilvus's own logging


def test_a_failing_milvus_lite_call_prints_nothing_and_raises_typed(tmp_path, capfd):
    pytest.importorskip("pymilvus", reason="the Milvus repository needs pymilvus")
    pytest.importorskip("milvus_lite", reason="Milvus Lite needs the milvus-lite package")
    from agrame_vdb.errors import RepositoryError
    from agrame_vdb.repository import CollectionSchema

    from .conformance._data import DIM, make_passages

    class Kept(logging.Handler):  # what pymilvus logs, whatever stream its own handler writes to
        def __init__(self):
            super().__init__(logging.ERROR)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    kept = Kept()
    logging.getLogger("pymilvus").addHandler(kept)
    repo = connect(f"milvus-lite://{tmp_path}/m.db")
    try:
        name = f"t_{uuid.uuid4().hex[:8]}"
        repo.create_collection(CollectionSchema(name, DIM))
        passages = make_passages(2, seed=3)
        repo.upsert(name, passages)
        repo._client.drop_collection(name + "__tokens")  # the engine call below now fails inside pymilvus
        capfd.readouterr()
        kept.records.clear()
        with pytest.raises(RepositoryError):
            repo.fetch_tokens(name, [passages[0].id])
        out, err = capfd.readouterr()
        assert out == "" and err == "", err
        assert kept.records == []  # the library's own failing call: a typed error, no log record
        # pymilvus's logging is not switched off: a caller's own failing call still reports
        with pytest.raises(Exception):
            repo._client.describe_collection("no_such_collection")
        assert any("RPC error" in r.getMessage() for r in kept.records)
    finally:
        logging.getLogger("pymilvus").removeHandler(kept)
        repo.close()


def test_embedded_store_urls_with_credentials_are_refused():
    for url in (f"qdrant-edge://user:{SECRET}@data", f"milvus-lite://u:{SECRET}@x.db", f"qdrant-local://u:{SECRET}@x"):
        with pytest.raises(InvalidInputError, match="not credentials") as err:
            connect(url)
        assert SECRET not in str(err.value)
