"""Compressed token storage end to end: int8 and binary token copies on every engine
that offers them, MaxSim over encoded rows a chunk at a time, and the binary
collections' two-pass ranking, each against an independent numpy reference."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

from agrame_vdb import CollectionSchema, StoredPassage, connect
from agrame_vdb.errors import InvalidInputError, UnsupportedOperationError
from agrame_vdb.maxsim import granular_maxsim, pack, pack_concatenated, select_passages
from agrame_vdb.planner import Planner, TokenCache
from agrame_vdb.records import TokenBatch
from agrame_vdb.repositories import _qdrant_common as qc
from agrame_vdb.repositories.qdrant import QdrantRepository
from agrame_vdb.token_rows import I8_ATOL, EncodedTokens, RowFormat
from agrame_vdb.units import Unit

from . import engines

DIM = 20  # not a multiple of 8: the last sign byte is padded


# --------------------------------------------------------------------------- references


def int8_reference(x: np.ndarray) -> np.ndarray:
    """Symmetric int8 per row, in float64: s = max |x|, q = round(x / s * 127), q * s / 127."""
    x = x.astype(np.float64)
    s = np.abs(x).max(axis=1, keepdims=True)
    q = np.round(np.divide(x, s, out=np.zeros_like(x), where=s > 0) * 127)
    return q * s / 127


def sign_reference(x: np.ndarray) -> np.ndarray:
    """The sign vectors a binary first pass scores: +-1 / sqrt(dim), + where x > 0."""
    return np.where(x > 0, 1.0, -1.0) / math.sqrt(x.shape[1])


def maxsim_reference(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.T.astype(np.float64)).max(axis=1).sum())


def unit_reference(q: np.ndarray, d: np.ndarray, ranges) -> float:
    rows = np.concatenate([np.arange(s, e) for s, e in ranges])
    return maxsim_reference(q, d[rows])


def random_passages(rng, n: int, dim: int = DIM, lo: int = 4, hi: int = 40) -> list[np.ndarray]:
    out = []
    for length in rng.integers(lo, hi, size=n):
        x = rng.standard_normal((int(length), dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def three_units(n: int) -> list[list[tuple[int, int]]]:
    """A passage's sentence units: three token ranges, the last one non-contiguous."""
    a, b = max(1, n // 3), max(2, 2 * n // 3)
    return [[(0, a)], [(a, b)], [(0, 1), (b, n)]] if b < n else [[(0, a)], [(a, n)]]


def encoded(code: str, passages: list[np.ndarray], dim: int = DIM) -> EncodedTokens:
    fmt = RowFormat(code, dim)
    return fmt.encoded([np.frombuffer(fmt.encode(p), dtype=np.uint8) for p in passages])


# --------------------------------------------------------------------------- the b1 rows


@pytest.mark.parametrize("dim", [8, 13, 128])
def test_binary_rows_hold_the_sign_bits_then_the_int8_copy(dim):
    rng = np.random.default_rng(0)
    x = np.vstack([random_passages(rng, 1, dim, 30, 31)[0], np.zeros((1, dim), np.float32)])
    fmt = RowFormat("b1", dim)
    raw = np.frombuffer(fmt.encode(x), dtype=np.uint8)
    n_sign = (dim + 7) // 8
    assert fmt.row_bytes == n_sign + dim + 4 and len(raw) == len(x) * fmt.row_bytes
    bits = raw[: len(x) * n_sign].reshape(len(x), n_sign)
    want = np.zeros((len(x), n_sign * 8), np.uint8)  # first value in the high bit, padded with 0
    want[:, :dim] = x > 0
    assert np.array_equal(bits, (want.reshape(len(x), n_sign, 8) * (1 << np.arange(7, -1, -1))).sum(-1))
    # the rerank copy: the i8 rows; read back, a b1 row gives their values
    np.testing.assert_array_equal(raw[len(x) * n_sign :], np.frombuffer(RowFormat("i8", dim).encode(x), np.uint8))
    got = fmt.expand([raw])
    assert np.all(np.abs(got - int8_reference(x)) <= 2.4e-7)
    enc = fmt.encoded([raw])
    np.testing.assert_array_equal(enc.signs(), sign_reference(x).astype(np.float32))
    np.testing.assert_array_equal(enc.expand(), got)
    assert enc.nbytes == len(raw)


@pytest.mark.parametrize("code", ["f2", "i8", "b1"])
def test_a_chunk_decodes_as_the_reference_and_selecting_and_joining_keep_the_rows(code):
    rng = np.random.default_rng(1)
    passages = random_passages(rng, 6)
    enc = encoded(code, passages)
    flat = np.concatenate(passages)
    if code == "f2":
        want = flat.astype(np.float16).astype(np.float32)
    elif code == "i8":
        want = int8_reference(flat)
    else:
        want = sign_reference(flat)
    dev = enc.to("cpu")
    for c0, c1 in [(0, 7), (7, 64), (64, len(enc))]:
        got = dev.chunk(c0, c1).numpy()
        assert got.dtype == np.float32 and got.shape == (c1 - c0, DIM)
        np.testing.assert_allclose(got, want[c0:c1], atol=2.4e-7, rtol=0)
        np.testing.assert_array_equal(got, enc.chunk(c0, c1).numpy())  # numpy rows decode alike
    assert dev.chunk(0, 5, torch.bfloat16).dtype == torch.bfloat16
    part = enc.select([4, 1])
    np.testing.assert_array_equal(part.offsets, [0, len(passages[4]), len(passages[4]) + len(passages[1])])
    np.testing.assert_array_equal(part.expand(), np.concatenate([encoded(code, [passages[i]]).expand() for i in (4, 1)]))
    joined = EncodedTokens.concat([enc.select([0]), dev.select([1, 2])])
    np.testing.assert_array_equal(joined.expand(), enc.select([0, 1, 2]).expand())
    if code == "b1":
        np.testing.assert_array_equal(joined.signs(), enc.select([0, 1, 2]).signs())
        floats = enc.floats()
        assert floats.code == "i8" and floats.rerank is None
        np.testing.assert_array_equal(floats.expand(), enc.expand())


def test_inconsistent_encoded_rows_are_refused():
    enc = encoded("i8", random_passages(np.random.default_rng(2), 2))
    with pytest.raises(ValueError, match="inconsistent"):
        EncodedTokens("i8", DIM + 1, enc.rows, enc.offsets)
    with pytest.raises(ValueError, match="rerank"):
        EncodedTokens("b1", DIM, np.zeros((len(enc), 3), np.uint8), enc.offsets)
    with pytest.raises(ValueError, match="unknown"):
        EncodedTokens("f4", DIM, enc.rows, enc.offsets)


# --------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("code", ["f2", "i8", "b1"])
@pytest.mark.parametrize("chunk", [64, 192, None])
def test_maxsim_over_encoded_rows_equals_the_expanded_path_and_the_reference(code, chunk):
    """Tolerance: none against the float32-expanded path (the chunk is decoded to the
    same float32 values, and the CPU kernel is bit-stable across chunks); 1e-5 against
    a float64 numpy MaxSim of the same values."""
    rng = np.random.default_rng(3)
    passages = random_passages(rng, 25)
    units = [three_units(len(p)) for p in passages]
    enc = encoded(code, passages)
    values = enc.signs() if code == "b1" else enc.expand()
    q = random_passages(rng, 1, DIM, 9, 10)[0]
    got = granular_maxsim(
        q, pack_concatenated(enc, enc.offsets, units), max_chunk_tokens=chunk, return_argmax=True, coverage=True
    )
    ref = granular_maxsim(
        q, pack_concatenated(values, enc.offsets, units), max_chunk_tokens=chunk, return_argmax=True, coverage=True
    )
    for a, b in [(got.passage, ref.passage), (got.unit, ref.unit), (got.unit_coverage, ref.unit_coverage),
                 (got.passage_argmax, ref.passage_argmax), (got.unit_argmax, ref.unit_argmax)]:
        assert torch.equal(a, b)
    per_passage = np.split(values, enc.offsets[1:-1])
    np.testing.assert_allclose(got.passage[0].numpy(), [maxsim_reference(q, d) for d in per_passage], atol=1e-5)
    want_units = [unit_reference(q, d, r) for d, us in zip(per_passage, units) for r in us]
    np.testing.assert_allclose(got.unit[0].numpy(), want_units, atol=1e-5)


@pytest.mark.parametrize("code", ["f2", "i8", "b1"])
def test_the_kernel_never_expands_more_than_one_chunk(code, monkeypatch):
    rng = np.random.default_rng(4)
    passages = random_passages(rng, 200, DIM, 20, 60)  # ~8,000 tokens
    enc = encoded(code, passages)
    decoded: list[int] = []
    real_chunk = EncodedTokens.chunk

    def chunk(self, c0, c1, dtype=None):
        out = real_chunk(self, c0, c1, dtype)
        decoded.append(out.shape[0])
        return out

    def refuse(self, *args):
        raise AssertionError("the whole batch was expanded")

    monkeypatch.setattr(EncodedTokens, "chunk", chunk)
    monkeypatch.setattr(EncodedTokens, "expand", refuse)
    monkeypatch.setattr(EncodedTokens, "_expand_numpy", refuse)
    q = random_passages(rng, 1, DIM, 8, 9)[0]
    granular_maxsim(q, pack_concatenated(enc, enc.offsets, [three_units(len(p)) for p in passages]), max_chunk_tokens=256,
                    coverage=True)
    assert max(decoded) == 256 and sum(decoded) == len(enc) > 30 * 256  # every row once, 256 at a time


def test_selecting_passages_packs_as_packing_them_alone():
    rng = np.random.default_rng(5)
    passages = random_passages(rng, 9)
    units = [three_units(len(p)) for p in passages]
    units[3] = []  # a passage without units
    packed = pack(passages, units)
    keep = [0, 3, 4, 8]
    got, kept_units = select_passages(packed, keep)
    want = pack([passages[k] for k in keep], [units[k] for k in keep])
    for field in ("offsets", "unit_offsets", "piece_bounds"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    for field in ("tokens", "unit_passage", "token_piece", "piece_passage", "pair_unit", "pair_piece"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    starts = np.cumsum([0] + [len(u) for u in units])
    np.testing.assert_array_equal(kept_units, np.concatenate([np.arange(starts[k], starts[k + 1]) for k in keep]))
    enc = encoded("b1", passages)
    sub, _ = select_passages(pack_concatenated(enc, enc.offsets, units), keep, enc.select(keep).floats())
    assert torch.equal(granular_maxsim(passages[0][:3], sub).unit,
                       granular_maxsim(passages[0][:3], pack_concatenated(enc.select(keep).expand(), sub.offsets,
                                                                          [units[k] for k in keep])).unit)
    for bad in ([], [4, 3], [0, 9], [-1]):
        with pytest.raises(InvalidInputError, match="keep"):
            select_passages(packed, bad)


# --------------------------------------------------------------------------- engines


def _corpus(rng, n: int = 60) -> list[StoredPassage]:
    out = []
    for i, t in enumerate(random_passages(rng, n, DIM, 6, 30)):
        units = tuple(
            Unit("sentence", k, ((k, k + 1),), tuple(r)) for k, r in enumerate(three_units(len(t)))
        )
        out.append(StoredPassage.create(f"d{i}", 0, t, units=units, text="x" * 10))
    return out


COMPRESSED = ["memory", "qdrant-local-memory", "qdrant-edge"]


@pytest.fixture(params=engines.params(*COMPRESSED))
def binary_repo(request, tmp_path):
    repo = connect(request.param.url(tmp_path))
    corpus = _corpus(np.random.default_rng(6))
    repo.create_collection(CollectionSchema("c", DIM, dtype="binary"))
    repo.upsert("c", corpus)
    yield repo, corpus
    repo.close()


def test_a_binary_collection_reads_back_its_int8_copy_and_scores_from_its_rows(binary_repo):
    repo, corpus = binary_repo
    ids = [p.id for p in corpus]
    fetched = repo.fetch("c", ids, strict=True)
    batch = repo.fetch_tokens("c", ids)
    enc = batch.encoded
    assert enc is not None and enc.code == "b1" and batch.ids == tuple(ids)
    for i, (p, got) in enumerate(zip(corpus, fetched)):
        assert np.all(np.abs(got.tokens - int8_reference(p.tokens)) <= 2.4e-7)  # the int8 copy's values
        np.testing.assert_array_equal(batch.tokens_of(i), got.tokens)  # what fetch reads, bit for bit
    np.testing.assert_array_equal(enc.signs(), sign_reference(np.concatenate([p.tokens for p in corpus])).astype(np.float32))
    np.testing.assert_array_equal(batch.tokens, np.concatenate([g.tokens for g in fetched]))


@pytest.mark.parametrize("engine", engines.params("memory", "qdrant-local-memory", "qdrant-edge", "qdrant-edge-nocopy"))
@pytest.mark.parametrize("dtype, code", [("int8", "i8"), ("float16", "f2")])
def test_int8_and_float16_batches_reach_the_planner_unexpanded(engine, tmp_path, dtype, code):
    repo = connect(engine.url(tmp_path))
    try:
        corpus = _corpus(np.random.default_rng(7), 12)
        repo.create_collection(CollectionSchema("c", DIM, dtype=dtype))
        repo.upsert("c", corpus)
        batch = repo.fetch_tokens("c", [p.id for p in corpus])
        fetched = repo.fetch("c", [p.id for p in corpus], strict=True)
        copied = engine.id in ("qdrant-local-memory", "qdrant-edge")  # memory keeps float32; no copy: the engine's
        assert (batch.encoded is not None and batch.encoded.code == code) == copied
        for i, got in enumerate(fetched):
            np.testing.assert_array_equal(batch.tokens_of(i), got.tokens)
            np.testing.assert_allclose(got.tokens, corpus[i].tokens, atol=repo.capabilities().fetch_atol[dtype], rtol=0)
    finally:
        repo.close()


def _payload_copy(repo: QdrantRepository, pid: str) -> tuple[str, bytes]:
    record = repo._client.retrieve("c", [pid], with_payload=[qc.P_TOK, qc.P_TOKDT])[0]
    return record.payload[qc.P_TOKDT], base64.b64decode(record.payload[qc.P_TOK])


@pytest.mark.parametrize("dtype, code, per_token", [("int8", "i8", DIM + 4), ("binary", "b1", 3 + DIM + 4)])
def test_qdrant_local_mode_keeps_an_int8_payload_copy(tmp_path, dtype, code, per_token):
    repo = connect(f"qdrant-local://{tmp_path}/q")
    try:
        corpus = _corpus(np.random.default_rng(8), 10)
        repo.create_collection(CollectionSchema("c", DIM, dtype=dtype))
        repo.upsert("c", corpus)
        for p in corpus:
            got_code, raw = _payload_copy(repo, p.id)
            assert got_code == code and len(raw) == p.n_tokens * per_token
            assert raw == RowFormat(code, DIM).encode(p.tokens)
        for p, got in zip(corpus, repo.fetch("c", [p.id for p in corpus], strict=True)):
            assert np.all(np.abs(got.tokens - int8_reference(p.tokens)) <= 2.4e-7)
            assert np.abs(got.tokens - p.tokens).max() <= I8_ATOL
    finally:
        repo.close()


def test_an_int8_point_written_with_a_float32_copy_is_still_read_exactly(tmp_path, monkeypatch):
    from agrame_vdb import token_rows

    repo = connect(f"qdrant-local://{tmp_path}/q")
    try:
        corpus = _corpus(np.random.default_rng(9), 6)
        repo.create_collection(CollectionSchema("c", DIM, dtype="int8"))
        with monkeypatch.context() as m:  # as written before the int8 copy
            m.setitem(token_rows.STORAGE_CODES, "int8", "f4")
            repo.upsert("c", corpus[:3])
        repo.upsert("c", corpus[3:])
        assert _payload_copy(repo, corpus[0].id)[0] == "f4" and _payload_copy(repo, corpus[3].id)[0] == "i8"
        batch = repo.fetch_tokens("c", [p.id for p in corpus])
        assert batch.encoded is None  # a mix: expanded to float32
        for i, p in enumerate(corpus):
            want = p.tokens if i < 3 else int8_reference(p.tokens)
            np.testing.assert_allclose(batch.tokens_of(i), want, atol=2.4e-7, rtol=0)
    finally:
        repo.close()


@pytest.mark.parametrize("dtype", ["int8", "binary"])
def test_qdrant_keeps_quantized_codes_in_ram_and_float32_originals_on_disk(dtype):
    from qdrant_client import models

    params = QdrantRepository._vector_params(CollectionSchema("c", DIM, dtype=dtype))[qc.TOKENS]
    assert params.on_disk is True and params.datatype is None  # float32 originals, memory-mapped
    if dtype == "int8":
        assert isinstance(params.quantization_config, models.ScalarQuantization)
        assert params.quantization_config.scalar.type == models.ScalarType.INT8
        assert params.quantization_config.scalar.always_ram is True
    else:
        assert isinstance(params.quantization_config, models.BinaryQuantization)
        assert params.quantization_config.binary.always_ram is True
    plain = QdrantRepository._vector_params(CollectionSchema("c", DIM))[qc.TOKENS]
    assert plain.on_disk is None and plain.quantization_config is None


def test_qdrant_edge_keeps_binary_rows_in_its_token_copy_and_turbo8_in_the_engine(tmp_path):
    import qdrant_edge as qe

    from agrame_vdb.repositories import qdrant_edge

    assert qdrant_edge._TOKEN_DATATYPES["binary"] == qe.VectorStorageDatatype.Turbo8
    repo = connect(f"qdrant-edge://{tmp_path}/e")
    try:
        corpus = _corpus(np.random.default_rng(10), 20)
        repo.create_collection(CollectionSchema("c", DIM, dtype="binary"))
        repo.upsert("c", corpus)
        store = repo._token_stores["c"]
        n_tokens = sum(p.n_tokens for p in corpus)
        assert store.code == "b1" and store.stats()["live_bytes"] == n_tokens * (3 + DIM + 4)
        # a stale row gives way to the engine's Turbo8 vectors: that batch is float32
        store.put([(corpus[0].id, 1, corpus[0].tokens, corpus[0].units)])
        batch = repo.fetch_tokens("c", [p.id for p in corpus])
        assert batch.encoded is None
        atol = repo.capabilities().fetch_atol["binary"]
        np.testing.assert_allclose(batch.tokens_of(0), corpus[0].tokens, atol=atol, rtol=0)
        for i, p in enumerate(corpus[1:], 1):
            assert np.all(np.abs(batch.tokens_of(i) - int8_reference(p.tokens)) <= 2.4e-7)
    finally:
        repo.close()


def test_milvus_lite_refuses_binary_before_the_engine_is_asked(tmp_path):
    pytest.importorskip("milvus_lite")
    repo = connect(f"milvus-lite://{tmp_path}/m.db")
    try:
        with pytest.raises(UnsupportedOperationError, match="binary"):
            repo.create_collection(CollectionSchema("c", DIM, dtype="binary"))
        assert repo.list_collections() == []
    finally:
        repo.close()


# --------------------------------------------------------------------------- two-pass ranking


def two_pass_reference(q, corpus, granularity, rerank, k, alpha=1.0):
    """Sign vectors for every passage, the best ``rerank`` passages (by their best unit,
    for units) scored again on their int8 values; the top ``k`` of those, as (id, unit
    index, score), ties by id then unit index."""
    ids = sorted(p.id for p in corpus)
    by_id = {p.id: p for p in corpus}

    def scored(values):
        rows = []
        for pid in ids:
            d = values(by_id[pid].tokens)
            p_score = maxsim_reference(q, d)
            if granularity == "passage":
                rows.append((pid, None, p_score))
            else:
                for u in by_id[pid].units:
                    rows.append((pid, u.index, unit_reference(q, d, u.token_ranges) + alpha * p_score))
        return rows

    first = scored(sign_reference)
    best = {}
    for pid, _, s in first:
        best[pid] = max(best.get(pid, -np.inf), s)
    order = sorted(ids, key=lambda pid: (-best[pid], ids.index(pid)))
    kept = set(order[:rerank])
    second = [r for r in scored(int8_reference) if r[0] in kept]
    second.sort(key=lambda r: (-r[2], r[0], -1 if r[1] is None else r[1]))
    return second[:k]


def _got(response):
    return [(r.passage_id, r.unit_index, r.score) for r in response.results]


@pytest.mark.parametrize("granularity", ["passage", "sentence"])
@pytest.mark.parametrize("rerank", [5, 20, 100])
def test_binary_collections_rank_in_two_passes_as_the_reference(binary_repo, granularity, rerank):
    repo, corpus = binary_repo
    planner = Planner(repo, "c", candidates=len(corpus), rerank=rerank, device="cpu")
    rng = np.random.default_rng(11)
    for _ in range(3):
        q = random_passages(rng, 1, DIM, 6, 7)[0]
        got = _got(planner.search_vectors(q, granularity=granularity, k=8))
        want = two_pass_reference(q, corpus, granularity, rerank, 8)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], atol=1e-4)


def test_a_binary_search_never_expands_every_candidate(binary_repo, monkeypatch):
    repo, corpus = binary_repo
    expanded: list[int] = []
    real_expand = EncodedTokens.expand

    def expand(self):
        out = real_expand(self)
        expanded.append(out.shape[0])
        return out

    def refuse(self):
        raise AssertionError("the whole batch was expanded")

    monkeypatch.setattr(EncodedTokens, "expand", expand)
    monkeypatch.setattr(TokenBatch, "tokens", property(refuse))
    planner = Planner(repo, "c", candidates=len(corpus), rerank=5, device="cpu")
    q = random_passages(np.random.default_rng(12), 1, DIM, 6, 7)[0]
    response = planner.search_vectors(q, granularity="sentence", k=3)
    assert len(response.results) == 3
    assert expanded and max(expanded) <= max(p.n_tokens for p in corpus)  # one passage at a time: the winners' check


@pytest.mark.parametrize("granularity", ["passage", "sentence"])
def test_a_cache_holds_binary_rows_and_ranks_as_without_it(binary_repo, granularity):
    repo, corpus = binary_repo
    plain = Planner(repo, "c", candidates=len(corpus), rerank=10, device="cpu")
    cache = TokenCache()
    cached = Planner(repo, "c", candidates=len(corpus), rerank=10, device="cpu", cache=cache)
    rng = np.random.default_rng(13)
    for _ in range(2):
        q = random_passages(rng, 1, DIM, 6, 7)[0]
        want = _got(plain.search_vectors(q, granularity=granularity, k=5))
        assert _got(cached.search_vectors(q, granularity=granularity, k=5)) == want
        assert _got(cached.search_vectors(q, granularity=granularity, k=5)) == want  # now from the cache
    assert cache.hits > 0
    n_tokens = sum(p.n_tokens for p in corpus)
    assert cache.nbytes == n_tokens * (3 + DIM + 4)  # held as stored, not as float32


def test_fewer_candidates_than_the_rerank_are_scored_on_the_int8_copy_alone(binary_repo):
    repo, corpus = binary_repo
    planner = Planner(repo, "c", candidates=len(corpus), device="cpu")
    q = random_passages(np.random.default_rng(14), 1, DIM, 6, 7)[0]
    got = _got(planner.search_vectors(q, k=20))  # the default rerank, max(50, 4 * 20) = 80 >= 60 candidates: one pass
    want = two_pass_reference(q, corpus, "passage", len(corpus), 20)
    assert [g[0] for g in got] == [w[0] for w in want]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "50", True])
def test_a_bad_rerank_is_refused(binary_repo, bad):
    repo, _ = binary_repo
    with pytest.raises(InvalidInputError, match="rerank"):
        Planner(repo, "c", rerank=bad)
