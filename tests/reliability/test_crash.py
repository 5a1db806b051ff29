"""kill -9 of ``agrame-vdb index`` at random points, then resume: equal to a clean run.

The CLI runs in a subprocess with the real default encoder; it is killed (SIGKILL)
at a random moment after a random number of checkpoints, run again with the same
arguments (killed again, ``kills`` times in all) and finally left to finish. The
collection must then equal a clean in-process run's: same ids and count, same text,
units, metadata and token vectors; and the same summary counts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agrame_vdb import connect
from agrame_vdb.chunking import ChunkingOptions
from agrame_vdb.indexer import index_documents

from .. import engines
from ..indexing_helpers import make_docs, snapshot, write_jsonl
from . import report

ENGINES = {case.id: case.url for case in engines.pick("qdrant-edge", "milvus-lite")}
# (engine, seed, kills, documents): CI kills once on Edge; full: 12 kills over both engines
# The kill comes within a few checkpoints of the start, so the corpus is large enough that a
# fast, quiet machine cannot finish the job inside that window.
CASES = [pytest.param("qdrant-edge", 0, 1, 48, id="edge-ci")] + [
    pytest.param(e, s, 3, 60, id=f"{e}-full-{s}", marks=pytest.mark.reliability_full)
    for e in ENGINES for s in (1, 2)
]
# float32: a resumed job's vectors equal a clean run's bit for bit (bfloat16 rounds by batch shape)
COMMON = ["--device", "cpu", "--dtype", "float32", "--batch-size", "2", "--encode-batch-size", "2", "--max-tokens", "24",
          "--no-progress", "--json", "--no-optimize"]


def _cli(args: list[str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("agrame-vdb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("engine,seed,kills,n_docs", CASES)
def test_kill_9_then_resume_equals_a_clean_run(tmp_path, plain_encoder, engine, seed, kills, n_docs):
    if engine == "milvus-lite":
        pytest.importorskip("milvus_lite")
    rng = random.Random(seed)
    records: list = make_docs(n_docs)
    records.insert(3, "{not json")
    src = write_jsonl(tmp_path / "docs.jsonl", records)
    killed = tmp_path / "killed"
    killed.mkdir()
    store = ENGINES[engine](killed)
    ck = tmp_path / "ck.json"
    args = ["index", str(src), "-c", "docs", "--store", store, "--checkpoint", str(ck),
            "--rejects", str(tmp_path / "killed.rejects.jsonl"), *COMMON]

    done_kills = 0
    last_line = -1
    while done_kills < kills:
        target = rng.randint(last_line + 1, last_line + 3)  # kill after this many records are checkpointed
        proc = _cli(args)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if ck.exists():
                try:
                    line = json.loads(ck.read_text())["line"]
                except (ValueError, KeyError):
                    line = -1  # being replaced: atomic, so only a race on our read
                if line >= target:
                    time.sleep(rng.uniform(0, 0.3))  # a random point after it, mid-batch or mid-write
                    break
            time.sleep(0.01)
        if proc.poll() is not None:
            break  # finished before the kill point: nothing left to kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_kills += 1
        report.add(kills=1)
        state = json.loads(ck.read_text())
        assert not state["done"]
        last_line = state["line"]
    else:
        proc = _cli(args)
    out, err = proc.communicate(timeout=600)
    if proc.returncode is None or out == "":
        proc = _cli(args)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out)
    assert done_kills >= 1, "the job ended before it could be killed: make the corpus larger"

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    with connect(ENGINES[engine](clean_dir)) as repo:
        clean = index_documents(src, repo, "docs", encoder=plain_encoder, batch_size=2, encode_batch_size=2,
                                chunking=ChunkingOptions(max_tokens=24), optimize=False,
                                rejects=tmp_path / "clean.rejects.jsonl").to_json()
        expected = snapshot(repo, "docs")
    for key in ("records", "documents", "passages", "rejected", "stale_deleted", "tokens"):
        assert summary[key] == clean[key], key
    assert (tmp_path / "killed.rejects.jsonl").read_text() == (tmp_path / "clean.rejects.jsonl").read_text()
    with connect(store) as repo:
        got = snapshot(repo, "docs")
        ids = list(repo.iter_ids("docs"))
        count = repo.count("docs")
    lost = len(set(expected) - set(got))
    duplicated = len(ids) - len(set(ids)) + len(set(got) - set(expected)) + max(count - len(expected), 0)
    differing = {pid: fields for pid in sorted(set(got) & set(expected)) if (fields := _differences(got[pid], expected[pid]))}
    half = len(differing)
    report.add(passages_lost=lost, passages_duplicated=duplicated, passages_half_written=half)
    assert (lost, duplicated, half) == (0, 0, 0), f"first differing passages and fields: {dict(list(differing.items())[:5])}"


def _differences(got, expected) -> list[str]:
    """The fields of a passage that differ from the clean run's (tokens at atol 1e-4)."""
    fields = [f for f in ("text", "units", "metadata") if getattr(got, f) != getattr(expected, f)]
    if got.tokens.shape != expected.tokens.shape:
        fields.append(f"tokens shape {got.tokens.shape} != {expected.tokens.shape}")
    elif not np.allclose(got.tokens, expected.tokens, atol=1e-4, rtol=0):
        fields.append(f"tokens (max abs diff {float(np.abs(got.tokens - expected.tokens).max()):.2g})")
    return fields
