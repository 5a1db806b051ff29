"""Indexing jobs: idempotent, resumable after kill -9, shardable, bad records rejected, retries.

End-to-end tests use the real default encoder; tests of the job's bookkeeping
(shards, rejects, stale passages, retries, checkpoints) use a fake encoder whose
tokens, units and counts are the real ones (only the vectors are not).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.chunking import ChunkingOptions
from agrame_vdb.errors import CheckpointMismatchError, CollectionNotFoundError, JobInterruptedError
from agrame_vdb.indexer import IndexJob, RetryPolicy, index_documents, parse_shard, shard_of
from agrame_vdb.repository import Eq
from agrame_vdb.units import Passage, Unit, passage_id

from .conftest import data_file
from .indexing_helpers import (
    FakeEncoder,
    FlakyRepository,
    assert_same_collection,
    make_docs,
    snapshot,
    write_jsonl,
)

FAST_RETRY = RetryPolicy(attempts=3, initial=0.0, maximum=0.0)


@pytest.fixture(scope="module")
def fake():
    return FakeEncoder()


def edge(path: Path):
    return connect(f"qdrant-edge://{path}")


# --------------------------------------------------------------------------- real encoder


def test_real_encoder_job_is_idempotent_on_qdrant_edge(tmp_path, encoder):
    docs = make_docs(10)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    options = dict(encoder=encoder, chunking=ChunkingOptions(max_tokens=24), batch_size=6, encode_batch_size=4)
    with edge(tmp_path / "store") as repo:
        first = index_documents(src, repo, "docs", checkpoint=tmp_path / "ck.json", **options)
        before = snapshot(repo, "docs")
        again = index_documents(src, repo, "docs", checkpoint=tmp_path / "ck.json", restart=True, **options)
        after = snapshot(repo, "docs")
        assert repo.count("docs") == first.passages == again.passages == len(before)
        repo_dtype = repo.open_collection("docs").dtype
    assert first.documents == 10 and first.rejected == 0 and first.passages > 10  # some documents were cut
    assert again.stale_deleted == 0 and again.run_passages == first.passages
    assert_same_collection(before, after)  # same ids, same count, the very same vectors
    # what was written is what the encoder makes of each passage: check one against it
    some = next(p for p in before.values() if p.index == 1)
    [enc] = encoder.encode_passages(
        [Passage.create(some.doc_id, 1, some.text)], [[Unit(k, i, spans) for k, i, spans, _ in some.units]],
        sentences=False,
    )
    # (stored as float16, the default storage: the encoder's values rounded to float16)
    assert repo_dtype == "float16"
    np.testing.assert_allclose(enc.token_vectors.astype(np.float16).astype(np.float32), some.tokens, atol=1e-5)
    # sentence units keep the document's numbering across passages
    doc = next(d for d in docs if d["id"] == some.doc_id)
    for kind, index, spans, _ in some.units:
        assert kind == "sentence"
        text = " ".join(some.text[s:e] for s, e in spans)
        assert text in doc["text"]
        assert index > 0  # passage 1 starts past sentence 0


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("agrame-vdb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.slow
def test_kill_9_mid_job_then_resume_equals_a_clean_run(tmp_path, encoder):
    docs = make_docs(30)
    records: list = list(docs)
    records.insert(6, "{not json")  # a reject before the kill and one after it
    records.insert(28, {"id": "late-bad", "text": ""})
    src = write_jsonl(tmp_path / "docs.jsonl", records)
    common = ["index", str(src), "-c", "docs", "--device", "cpu", "--batch-size", "2", "--encode-batch-size", "2",
              "--max-tokens", "24", "--no-progress", "--json", "--model", "minilm-frozen-128",
              "--dtype", "float32"]  # bit-identical vectors across a resume (bfloat16 rounds by batch shape)
    killed_store, clean_store = tmp_path / "killed", tmp_path / "clean"
    ck = tmp_path / "killed.ck.json"
    args = [*common, "--store", f"qdrant-edge://{killed_store}", "--checkpoint", str(ck),
            "--rejects", str(tmp_path / "killed.rejects.jsonl")]
    proc = _run_cli(args)
    deadline = time.monotonic() + 240
    line = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.exists():
            state = json.loads(ck.read_text())
            line = state["line"]
            if line >= 10:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(ck.read_text())
    assert not state["done"] and 10 <= state["line"] < len(records)

    resumed = _run_cli(args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed_after"] >= 10 and summary["run_documents"] < len(docs)

    # the clean run, in process with the same settings (the command builds the same job)
    with edge(clean_store) as repo:
        clean_summary = index_documents(
            src, repo, "docs", encoder=encoder, batch_size=2, encode_batch_size=2,
            chunking=ChunkingOptions(max_tokens=24), rejects=tmp_path / "clean.rejects.jsonl",
        ).to_json()
    for key in ("records", "documents", "passages", "rejected", "skipped", "stale_deleted", "tokens"):
        assert summary[key] == clean_summary[key], key
    assert summary["documents"] == len(docs) and summary["rejected"] == 2
    assert (tmp_path / "killed.rejects.jsonl").read_text() == (tmp_path / "clean.rejects.jsonl").read_text()
    with edge(killed_store) as a, edge(clean_store) as b:
        assert_same_collection(snapshot(a, "docs"), snapshot(b, "docs"))


# --------------------------------------------------------------------------- bookkeeping (fake encoder)


def test_two_shards_equal_one_job(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", [*make_docs(30), "oops", {"id": "x", "text": 3}])
    opts = dict(encoder=fake, chunking=ChunkingOptions(max_tokens=16), batch_size=8)
    with edge(tmp_path / "sharded") as repo:
        parts = [
            index_documents(src, repo, "docs", shard=f"{i}/2", checkpoint=tmp_path / f"s{i}.json",
                            rejects=tmp_path / f"s{i}.rejects.jsonl", **opts)
            for i in range(2)
        ]
        sharded = snapshot(repo, "docs")
    with edge(tmp_path / "single") as repo:
        whole = index_documents(src, repo, "docs", rejects=tmp_path / "all.rejects.jsonl", **opts)
        single = snapshot(repo, "docs")
    assert_same_collection(sharded, single)
    assert all(p.documents > 0 for p in parts)
    assert sum(p.documents for p in parts) == whole.documents == 30
    assert sum(p.rejected for p in parts) == whole.rejected == 2
    assert all(p.records == whole.records and p.skipped + p.documents + p.rejected == p.records for p in parts)
    for p in sharded.values():
        assert shard_of(p.doc_id, 2) in (0, 1)
    rejected = sorted(
        line for i in range(2) for line in (tmp_path / f"s{i}.rejects.jsonl").read_text().splitlines()
    )
    assert rejected == sorted((tmp_path / "all.rejects.jsonl").read_text().splitlines())


def test_bad_records_go_to_the_rejects_file_with_their_reasons(tmp_path, fake):
    good = make_docs(3)
    lines = [
        good[0],
        "{this is not json",
        {"text": "A record without an id."},
        {"id": "empty", "text": "   "},
        {"id": "wrong-type", "text": ["a", "list"]},
        {"id": "outside", "text": "Short text.", "units": [{"kind": "claim", "spans": [[0, 5], [6, 40]]}]},
        {"id": "typo", "txt": "A misspelled field."},
        {"id": "meta", "text": "Fine text.", "metadata": {"doc_id": "reserved"}},
        {"id": "nan", "text": "Fine text.", "metadata": {"x": float("nan")}},
        {"id": "both", "text": "x", "passages": ["y"]},
        {"id": "words", "text": "One sentence here.", "propositions": [{"sentence": 0, "words": [0, 99]}]},
        {"id": "surrogate", "text": "bad \ud800 text"},
        good[1],
    ]
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, lines[:1])
    with path.open("ab") as f:
        for item in lines[1:]:
            f.write((item if isinstance(item, str) else json.dumps(item)).encode() + b"\n")
        f.write(b'{"id": "latin1", "text": "caf\xe9"}\n')  # invalid UTF-8
        f.write(b"\n")  # blank lines are skipped, not rejected
        f.write(json.dumps(good[2]).encode() + b"\n")
    repo = connect("memory://")
    summary = index_documents(path, repo, "docs", encoder=fake, rejects=tmp_path / "rejects.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r for r in rows}
    expected = {
        2: (None, "invalid JSON"),
        3: (None, "missing 'id'"),
        4: ("empty", "'text' is empty"),
        5: ("wrong-type", "'text' must be a string"),
        6: ("outside", "outside the text's 11 chars"),
        7: ("typo", "unknown field 'txt'"),
        8: ("meta", "reserved"),
        9: (None, "NaN is not valid JSON"),
        10: ("both", "not both"),
        11: ("words", "word index 99"),
        12: ("surrogate", "lone surrogate"),
        13: ("doc-1", None),
        14: (None, "invalid UTF-8"),
    }
    for line, (doc_id, reason) in expected.items():
        if reason is None:
            assert line not in by_line
            continue
        assert by_line[line]["id"] == doc_id, (line, by_line[line])
        assert reason in by_line[line]["reason"], (line, by_line[line])
    assert summary.rejected == len(rows) == 12
    assert summary.documents == 3 and summary.records == 15
    assert sorted({p.doc_id for p in snapshot(repo, "docs").values()}) == ["doc-0", "doc-1", "doc-2"]
    assert summary.rejects_sample[0]["line"] == 2


def test_a_changed_and_shrunk_document_loses_its_stale_passages(tmp_path, fake):
    long_text = " ".join(f"Sentence {i} of the long document says something new." for i in range(12))
    others = make_docs(3)
    repo = connect("memory://")
    opts = dict(encoder=fake, chunking=ChunkingOptions(max_tokens=24))
    first = index_documents(write_jsonl(tmp_path / "v1.jsonl", [{"id": "long", "text": long_text}, *others]),
                            repo, "docs", **opts)
    n_before = repo.count("docs", filter=Eq("doc_id", "long"))
    assert n_before >= 4
    short_text = "Sentence 0 was rewritten. Sentence 1 is all that is left of it now."
    second = index_documents(write_jsonl(tmp_path / "v2.jsonl", [{"id": "long", "text": short_text}]),
                             repo, "docs", **opts)
    now = snapshot(repo, "docs")
    long_passages = sorted((p.index, p.text) for p in now.values() if p.doc_id == "long")
    assert [i for i, _ in long_passages] == list(range(len(long_passages))) and len(long_passages) < n_before
    assert " ".join(t for _, t in long_passages) == short_text
    assert second.stale_deleted == n_before - len(long_passages)
    assert passage_id("long", n_before - 1) not in now
    # the other documents are untouched
    assert sum(1 for p in now.values() if p.doc_id != "long") == first.passages - n_before


def test_the_same_id_twice_in_one_input_ends_as_its_last_record(tmp_path, fake):
    records = [{"id": "d", "text": "Old one. Old two. Old three."}, *make_docs(2), {"id": "d", "text": "New text."}]
    repo = connect("memory://")
    index_documents(write_jsonl(tmp_path / "d.jsonl", records), repo, "docs", encoder=fake,
                    chunking=ChunkingOptions(max_tokens=8))
    texts = [p.text for p in snapshot(repo, "docs").values() if p.doc_id == "d"]
    assert texts == ["New text."]


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, monkeypatch):
    from agrame_vdb import encoder as encoder_module

    def no_model(*args, **kwargs):
        raise AssertionError("a dry run must not load the model")

    monkeypatch.setattr(encoder_module.MultiVectorEncoder, "load", no_model)
    src = write_jsonl(tmp_path / "docs.jsonl", [*make_docs(5), {"id": "bad"}])
    repo = connect("memory://")
    summary = IndexJob(src, repo, "docs", dry_run=True, checkpoint=tmp_path / "ck.json").run()
    assert summary.dry_run and summary.documents == 5 and summary.rejected == 1 and summary.passages >= 5
    assert summary.rejects_sample[0]["id"] == "bad"
    assert repo.list_collections() == [] and not (tmp_path / "ck.json").exists()
    with pytest.raises(CollectionNotFoundError):
        repo.count("docs")


def test_a_transient_failure_is_retried(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(12))
    flaky = FlakyRepository(connect("memory://"), fail_first=2)
    summary = index_documents(src, flaky, "docs", encoder=fake, batch_size=4, retry=FAST_RETRY)
    assert summary.documents == 12 and flaky.attempts == flaky.upserts + 2
    clean = connect("memory://")
    index_documents(src, clean, "docs", encoder=fake, batch_size=4)
    assert_same_collection(snapshot(flaky.inner, "docs"), snapshot(clean, "docs"))


def test_a_store_that_stays_down_stops_the_job_with_a_resumable_checkpoint(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(20))
    inner = connect("memory://")
    ck = tmp_path / "ck.json"
    opts = dict(encoder=fake, batch_size=4, checkpoint=ck, retry=FAST_RETRY, chunking=ChunkingOptions(max_tokens=16))
    with pytest.raises(JobInterruptedError) as info:
        index_documents(src, FlakyRepository(inner, down_after=2), "docs", **opts)
    message = str(info.value)
    assert "stayed unavailable" in message and "run the same command again to resume" in message and str(ck) in message
    assert info.value.checkpoint == ck
    state = json.loads(ck.read_text())
    assert not state["done"] and state["line"] > 0 and state["counts"]["documents"] > 0
    assert f"records the first {state['line']:,} records as done" in message
    done_before = state["counts"]["documents"]
    resumed = index_documents(src, inner, "docs", **opts)
    assert resumed.resumed_after == state["line"] and resumed.run_documents == 20 - done_before
    assert resumed.documents == 20
    clean = connect("memory://")
    index_documents(src, clean, "docs", **{**opts, "checkpoint": tmp_path / "clean.json"})
    assert_same_collection(snapshot(inner, "docs"), snapshot(clean, "docs"))


def test_a_checkpoint_of_another_job_is_refused_unless_restarted(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(12))
    inner = connect("memory://")
    ck = tmp_path / "ck.json"
    opts = dict(encoder=fake, batch_size=4, checkpoint=ck, retry=FAST_RETRY)
    with pytest.raises(JobInterruptedError):
        index_documents(src, FlakyRepository(inner, down_after=1), "docs", **opts)
    with pytest.raises(CheckpointMismatchError, match=r"chunking\.max_tokens: None -> 16"):
        index_documents(src, inner, "docs", chunking=ChunkingOptions(max_tokens=16), **opts)
    write_jsonl(src, make_docs(13))  # the input changed
    with pytest.raises(CheckpointMismatchError, match=r"input\.s"):
        index_documents(src, inner, "docs", **opts)
    summary = index_documents(src, inner, "docs", restart=True, **opts)
    assert summary.resumed_after == 0 and summary.documents == 13


def test_a_finished_job_is_not_redone_unless_the_store_lost_it(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(6))
    repo = connect("memory://")
    opts = dict(encoder=fake, checkpoint=tmp_path / "ck.json")
    first = index_documents(src, repo, "docs", **opts)
    again = index_documents(src, repo, "docs", **opts)
    assert again.already_done and again.run_passages == 0 and again.passages == first.passages
    assert "nothing to do" in again.format()
    repo.drop_collection("docs")
    third = index_documents(src, repo, "docs", **opts)
    assert not third.already_done and third.run_passages == first.passages == repo.count("docs")


def test_parquet_input_gives_the_same_collection_as_jsonl(tmp_path, fake):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = make_docs(9)
    docs[4] = {**docs[4], "units": [{"kind": "claim", "spans": [[0, 8]]}]}
    # metadata as a struct column; a column missing from a row is null there
    table = pa.Table.from_pylist([{"units": None, **d} for d in docs])
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=4)
    a, b = connect("memory://"), connect("memory://")
    sa = index_documents(tmp_path / "docs.parquet", a, "docs", encoder=fake, batch_size=3,
                         checkpoint=tmp_path / "ck.json")
    index_documents(write_jsonl(tmp_path / "docs.jsonl", docs), b, "docs", encoder=fake, batch_size=3)
    assert sa.documents == 9 and sa.rejected == 0
    assert_same_collection(snapshot(a, "docs"), snapshot(b, "docs"))


def test_scifact_records_keep_their_sentence_numbers(tmp_path, fake):
    corpus = data_file("scifact", "corpus.jsonl")
    with corpus.open() as f:
        lines = [next(f) for _ in range(8)]
    src = tmp_path / "scifact.jsonl"
    src.write_text("".join(lines))
    repo = connect("memory://")
    summary = index_documents(src, repo, "scifact", encoder=fake, format="scifact")
    assert summary.documents == 8 and summary.rejected == 0
    stored = snapshot(repo, "scifact")
    for line in lines:
        rec = json.loads(line)
        passages = [p for p in stored.values() if p.doc_id == str(rec["doc_id"])]
        assert passages and passages[0].metadata["title"] == rec["title"]
        for p in passages:
            for kind, index, spans, _ in p.units:
                assert kind == "sentence"
                assert " ".join(p.text[s:e] for s, e in spans) == rec["abstract"][index].strip()


def test_iterables_of_documents_are_indexed_too(fake):
    from agrame_vdb.documents import Document

    repo = connect("memory://")
    items = [Document("a", "Alpha text. Second sentence."), {"id": "b", "text": "Beta text."}, {"id": ""}]
    summary = index_documents(items, repo, "docs", encoder=fake)
    assert (summary.documents, summary.rejected, repo.count("docs")) == (2, 1, 2)


def test_shards_split_documents_deterministically():
    ids = [f"doc-{i}" for i in range(400)]
    counts = [sum(shard_of(d, 4) == s for d in ids) for s in range(4)]
    assert sum(counts) == 400 and min(counts) > 60
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_the_job_pieces_stay_importable_from_the_indexer():
    from agrame_vdb import index_report, indexer, shards

    for module, names in ((shards, ("shard_of", "parse_shard", "default_job_paths")),
                          (index_report, ("IndexProgress", "IndexSummary"))):
        for name in names:
            assert getattr(indexer, name) is getattr(module, name) and name in indexer.__all__


def test_a_refused_passage_fails_only_its_document():
    from agrame_vdb.chunking import Chunk
    from agrame_vdb.errors import InvalidInputError
    from agrame_vdb.index_batch import build_records, encode_chunks

    class Encoded:
        def __init__(self, p):
            self.n_tokens, self.token_vectors, self.pooled = len(p.text), np.ones((len(p.text), 2), np.float32), None
            self.units, self.truncated = (), ()

    class Picky:
        def __init__(self):
            self.batches = []

        def encode_passages(self, passages, units, *, sentences, batch_size):
            self.batches.append([p.text for p in passages])
            if any(p.text == "bad" for p in passages):
                raise InvalidInputError("refused")
            return [Encoded(p) for p in passages]

    texts = [("a", 0, "aaaa"), ("a", 1, "a"), ("b", 0, "bad"), ("b", 1, "bb"), ("c", 0, "c")]
    chunks = [Chunk(doc_id, index, text, (), n_tokens=len(text)) for doc_id, index, text in texts]
    seen = []
    encoder = Picky()
    encoded, failed = encode_chunks(encoder, chunks, 2, lambda n, tokens: seen.append((n, tokens)))
    assert encoder.batches[:2] == [["aaaa", "bad"], ["aaaa"]]  # longest first; a refused batch one by one
    assert seen == [(2, 4), (2, 3), (1, 1)] and failed == {"b": "passage 0: refused"}
    assert [e is None for e in encoded] == [False, False, True, False, False]
    batch = build_records([("a", chunks[:2]), ("b", chunks[2:4]), ("c", chunks[4:])], encoded, failed)
    assert batch.counts == {"a": 2, "c": 1} and batch.tokens == 6 and batch.truncated == 0
    assert [(r.doc_id, r.index) for r in batch.stored] == [("a", 0), ("a", 1), ("c", 0)]


# --------------------------------------------------------------------------- the command


def test_cli_dry_run_and_errors(tmp_path):
    from agrame_vdb.cli import app

    src = write_jsonl(tmp_path / "docs.jsonl", [*make_docs(3), "nope"])
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(src), "-c", "docs", "--store", f"qdrant-edge://{tmp_path / 's'}",
                                 "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dry_run"] and summary["documents"] == 3 and summary["rejected"] == 1
    assert not (tmp_path / "s").exists()
    bad = runner.invoke(app, ["index", str(src), "-c", "docs", "--shard", "2/2", "--dry-run"])
    assert bad.exit_code == 2 and "0 <= i < N" in bad.output
    missing = runner.invoke(app, ["index", str(tmp_path / "none.jsonl"), "-c", "docs", "--dry-run"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_progress_tracks_what_is_written_not_what_is_read(tmp_path, fake):
    """The share done is the input whose passages are written (plus the encoded part of
    the batch in flight), checked against the byte offsets of the documents written."""
    docs = make_docs(40)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    ends, pos = [], 0
    for line in src.read_bytes().splitlines(keepends=True):
        pos += len(line)
        ends.append(pos)  # byte offset after each document
    total = ends[-1]
    seen = []
    with edge(tmp_path / "store") as repo:
        index_documents(src, repo, "docs", encoder=fake, batch_size=8, encode_batch_size=2,
                        chunking=ChunkingOptions(max_tokens=256), on_progress=seen.append)
    assert seen and seen[-1].fraction == pytest.approx(1.0) and seen[-1].documents == 40
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)  # never runs back
    for p in seen:
        written = ends[p.documents - 1] / total if p.documents else 0.0
        in_flight = ends[min(p.documents + 8, 40) - 1] / total  # at most one batch of 8 beyond
        assert written - 1e-9 <= p.fraction <= in_flight + 1e-9, (p.documents, p.fraction)
    # a batch in flight counts only its encoded part (reading has already reached its end)
    flight = [p for p in seen if p.encoded > p.passages and p.encoded - p.passages < 8]
    assert flight and all(
        ends[p.documents - 1 if p.documents else 0] / total * (p.documents > 0) < p.fraction
        < ends[min(p.documents + 8, 40) - 1] / total for p in flight
    )


def test_encode_batches_by_token_budget():
    from agrame_vdb.index_batch import _batches

    lengths = [5, 300, 40, 40, 41, 7, 120, 1, 1, 1]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches = list(_batches(lengths, order, batch_size=4, token_budget=130))
    assert [i for b in batches for i in b] == order  # every chunk once, longest first
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 130  # a long one goes alone
    assert batches[0] == [1]  # 300 tokens: over the budget, alone
    assert list(_batches(lengths, order, batch_size=3, token_budget=None)) == [order[:3], order[3:6], order[6:9], order[9:]]


class _SlowWrites:
    """A repository whose upserts take a while and note when and on which thread they ran."""

    def __init__(self, inner, seconds=0.05):
        self.inner, self.seconds, self.spans = inner, seconds, []

    def upsert(self, collection, passages, **kwargs):
        import threading

        start = time.monotonic()
        time.sleep(self.seconds)
        out = self.inner.upsert(collection, passages, **kwargs)
        self.spans.append((start, time.monotonic(), threading.current_thread().name))
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _NotedEncoder:
    """The fake encoder, noting when each batch's encoding started."""

    def __init__(self, inner):
        self.inner, self.starts = inner, []

    def encode_passages(self, *args, **kwargs):
        self.starts.append(time.monotonic())
        return self.inner.encode_passages(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("budget", [None, 40])
def test_overlapped_writes_give_the_same_collection_and_checkpoint(tmp_path, fake, budget):
    src = write_jsonl(tmp_path / "docs.jsonl", [*make_docs(24), "{oops"])
    opts = dict(batch_size=4, encode_batch_size=2, encode_token_budget=budget, chunking=ChunkingOptions(max_tokens=16))
    results = {}
    for overlap in (False, True):
        slow = _SlowWrites(connect("memory://"))
        encoder = _NotedEncoder(fake)
        seen = []
        summary = index_documents(src, slow, "docs", encoder=encoder, overlap=overlap, on_progress=seen.append,
                                  checkpoint=tmp_path / f"ck-{overlap}.json", rejects=tmp_path / f"rj-{overlap}.jsonl", **opts)
        ck = json.loads((tmp_path / f"ck-{overlap}.json").read_text())
        results[overlap] = (snapshot(slow.inner, "docs"), summary, ck, slow, encoder, seen)
    (a, sa, ca, _, _, _), (b, sb, cb, slow, encoder, seen) = results[False], results[True]
    assert_same_collection(a, b)
    assert (sa.documents, sa.passages, sa.rejected, sa.tokens) == (sb.documents, sb.passages, sb.rejected, sb.tokens)
    assert {k: ca[k] for k in ("position", "line", "counts", "rejects_bytes", "done")} == \
        {k: cb[k] for k in ("position", "line", "counts", "rejects_bytes", "done")}
    assert (tmp_path / "rj-False.jsonl").read_text() == (tmp_path / "rj-True.jsonl").read_text()
    assert all(name.startswith("agrame-index-writer") for _, _, name in slow.spans)
    # a batch was encoded while the one before it was being written
    assert any(s < t < e for s, e, _ in slow.spans for t in encoder.starts)
    assert all(p.passages <= p.encoded for p in seen) and seen[-1].passages == sb.passages


def test_an_overlapped_job_stopped_by_its_store_resumes_to_a_clean_runs_collection(tmp_path, fake):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(20))
    inner = connect("memory://")
    ck = tmp_path / "ck.json"
    opts = dict(encoder=fake, batch_size=4, checkpoint=ck, retry=FAST_RETRY, chunking=ChunkingOptions(max_tokens=16),
                overlap=True)
    with pytest.raises(JobInterruptedError):
        index_documents(src, FlakyRepository(inner, down_after=2), "docs", **opts)
    state = json.loads(ck.read_text())
    written = {p.doc_id for p in snapshot(inner, "docs").values()}
    # the checkpoint counts only what was written: every document before its line is in the store
    assert state["counts"]["documents"] == len(written) == state["line"]
    resumed = index_documents(src, inner, "docs", **opts)
    assert resumed.documents == 20 and resumed.resumed_after == state["line"]
    clean = connect("memory://")
    index_documents(src, clean, "docs", **{**opts, "checkpoint": tmp_path / "clean.json"})
    assert_same_collection(snapshot(inner, "docs"), snapshot(clean, "docs"))


def test_a_new_collection_gets_float16_and_an_existing_one_keeps_its_storage(tmp_path, fake):
    """Unless told, a job creates its collection as DEFAULT_STORAGE (float16); a job that
    adds to an existing collection keeps that one's storage instead of being refused;
    a storage asked for that differs from the existing one's is refused before a write."""
    from agrame_vdb import CollectionSchema
    from agrame_vdb.errors import SchemaMismatchError
    from agrame_vdb.schema import DEFAULT_STORAGE

    assert DEFAULT_STORAGE == "float16"
    docs = make_docs(4)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    opts = dict(encoder=fake, chunking=ChunkingOptions(max_tokens=16), batch_size=8)
    with edge(tmp_path / "store") as repo:
        index_documents(src, repo, "fresh", **opts)
        assert repo.open_collection("fresh").dtype == "float16"
        repo.create_collection(CollectionSchema("old", fake.dim, dtype="float32"))
        summary = index_documents(src, repo, "old", **opts)
        assert summary.documents == 4 and repo.open_collection("old").dtype == "float32"
        assert repo.count("old") == repo.count("fresh") > 0
        index_documents(src, repo, "asked", storage_dtype="int8", **opts)
        assert repo.open_collection("asked").dtype == "int8"
        with pytest.raises(SchemaMismatchError):
            index_documents(src, repo, "old", storage_dtype="int8", restart=True, **opts)
        assert repo.open_collection("old").dtype == "float32" and repo.count("old") == repo.count("fresh")
