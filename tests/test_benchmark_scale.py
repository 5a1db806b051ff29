"""benchmarks/scale.py in its smoke form: a tiny store built, measured and resumed; the
figures checked against the store itself (kept with --keep), never against a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agrame_vdb import connect

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"
N, DIM = 300, 32


def run(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), "--sizes", str(N), "--storage", "float16", "--dim", str(DIM), "--queries", "6",
           "--warmup", "2", "--floor-queries", "3", "--out", str(tmp / "results.jsonl"), "--workdir", str(tmp / "stores"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def allocated(path: Path) -> int:
    return sum(os.stat(Path(d) / f).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("scale")
    done = run(tmp, "--keep")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_row_matches_the_store(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, done = smoke
    [row] = [json.loads(line) for line in (tmp / "results.jsonl").read_text().splitlines()]
    assert (row["passages"], row["storage"], row["dim"], row["candidates"], row["k"]) == (N, "float16", DIM, 200, 10)
    store = tmp / "stores" / f"scale-{N}-float16-d{DIM}"
    repo = connect(f"qdrant-edge://{store}")
    try:
        schema = repo.open_collection("scale")
        assert (schema.dim, schema.dtype) == (DIM, "float16")
        ids = list(repo.iter_ids("scale"))
        batch = repo.fetch_tokens("scale", ids)
    finally:
        repo.close()
    # what was written, read back from the store: every passage, its tokens, its units
    assert row["written"] == row["count"] == len(ids) == N
    lengths = np.diff(batch.offsets)
    assert row["tokens"] == int(lengths.sum()) == len(batch.tokens)
    assert lengths.min() >= 100 and lengths.max() <= 160
    assert np.allclose(np.linalg.norm(batch.tokens, axis=1), 1.0, atol=2e-3)
    assert len(batch.units.token_ranges("sentence")) == 5 * N
    # bytes per token: the directory's allocated blocks over the tokens (the query process
    # opened the store after the figure was taken: its files may have moved a little)
    assert row["B/token"] == pytest.approx(allocated(store) / row["tokens"], rel=0.1)
    assert row["peak B/token"] >= row["B/token"] > 2 * DIM  # two float16 copies at least
    assert row["segments B/token"] > 0 and row["copy B/token"] >= 2 * DIM
    assert row["segments"] >= 1 and row["open s"] > 0


def test_figures_are_sane(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, done = smoke
    [row] = [json.loads(line) for line in (tmp / "results.jsonl").read_text().splitlines()]
    assert row["write p/s"] > 0 and row["write tokens/s"] == pytest.approx(row["write p/s"] * row["tokens"] / N)
    assert row["RSS open MB"] > row["RSS base MB"] > 0 and row["RSS queries MB"] > 0
    assert row["p95 ms"] >= row["p50 ms"] > 0
    assert row["fetch+rerank ms"] > 0 and row["floor ms"] >= row["matmul ms"] > 0
    assert row["vs floor"] == pytest.approx(row["fetch+rerank ms"] / row["floor ms"])
    assert row["floor err"] < 1e-3  # the floor computes the kernel's scores
    assert row["n fetched"] >= min(200, N)  # every candidate (the whole store here), and the winners
    # the printed table has the row
    line = next(x for x in done.stdout.splitlines() if x.startswith(f"| {N} "))
    assert "float16" in line and f"| {row['tokens']} " in line


def test_warm_reads_the_token_copy_before_the_queries(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, _ = smoke  # before the rerun below, which removes the kept store
    store = tmp / "stores" / f"scale-{N}-float16-d{DIM}"
    copy = sum(f.stat().st_size for f in (store / "scale").glob("tokens.sqlite*.bin"))
    cmd = [sys.executable, str(SCRIPT), "--probe", str(store), "--dim", str(DIM), "--queries", "3", "--warmup", "1",
           "--floor-queries", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    rows = [json.loads(subprocess.run(c, capture_output=True, text=True, env=env, timeout=300, check=True).stdout.splitlines()[-1])
            for c in (cmd, [*cmd, "--warm"])]
    assert copy > 0 and rows[0]["warm copy MB"] == 0
    assert rows[1]["warm copy MB"] * 2**20 == pytest.approx(copy) and rows[1]["count"] == N


def test_a_rerun_skips_what_is_done(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, _ = smoke
    again = run(tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already, skipped" in again.stdout
    assert len((tmp / "results.jsonl").read_text().splitlines()) == 1


def test_a_store_too_big_for_the_disk_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--sizes", str(10**9), "--storage", "int8", "--out", str(tmp_path / "r.jsonl"),
           "--workdir", str(tmp_path / "stores")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode != 0
    assert "REFUSED" in done.stdout and "GiB free" in done.stdout
    assert not (tmp_path / "r.jsonl").exists() and not any((tmp_path / "stores").iterdir())


def test_passage_ids_depend_on_the_number_only() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.storage import make_passages

    whole = make_passages(6, seed=[DIM, 0], dim=DIM)
    tail = make_passages(2, seed=[DIM, 4], dim=DIM, start=4)
    assert [p.id for p in tail] == [p.id for p in whole[4:]]  # written again in another batch: overwritten
    assert len({p.id for p in whole}) == 6 and whole[0].tokens.shape[1] == DIM

