"""Granular MaxSim against an independent brute-force reference (a Python loop over numpy)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agrame_vdb.errors import InvalidInputError
from agrame_vdb.maxsim import MaxSimScores, granular_maxsim, pack, pack_concatenated, passage_scores, unit_scores
from agrame_vdb.units import Unit

from . import datasets
from .conftest import data_file

Ranges = list[tuple[int, int]]


# ----------------------------------------------------------------------------- reference


def reference(
    query: np.ndarray,
    subquery: np.ndarray,
    docs: list[np.ndarray],
    units: list[list[Ranges]],
    weights: np.ndarray | None = None,
    subweights: np.ndarray | None = None,
):
    """Scores [B, P], [B, U], a sim matrix per (b, p) and the positions of each unit, in float64."""
    batch, lq = query.shape[:2]
    lsq = subquery.shape[1]
    weights = np.ones((batch, lq)) if weights is None else weights
    subweights = np.ones((batch, lsq)) if subweights is None else subweights
    passage = np.zeros((batch, len(docs)))
    unit_list, positions, sims, subsims = [], [], {}, {}
    for p, units_p in enumerate(units):
        for ranges in units_p:
            unit_list.append(p)
            positions.append(sorted({t for s, e in ranges for t in range(s, e)}))
    unit = np.zeros((batch, len(unit_list)))
    for b in range(batch):
        for p, d in enumerate(docs):
            d64 = d.astype(np.float64)
            sim = query[b].astype(np.float64) @ d64.T  # [Lq, n]
            sims[b, p] = sim
            subsims[b, p] = subquery[b].astype(np.float64) @ d64.T
            total = 0.0
            for i in range(lq):
                total += weights[b, i] * max(sim[i, r] for r in range(d.shape[0]))
            passage[b, p] = total
        for u, (p, pos) in enumerate(zip(unit_list, positions)):
            sim = subsims[b, p]
            total = 0.0
            for i in range(lsq):
                total += subweights[b, i] * max(sim[i, r] for r in pos)
            unit[b, u] = total
    return passage, unit, unit_list, positions, sims, subsims


def random_case(rng: np.random.Generator, n_passages: int, dim: int, max_len: int = 40):
    """Random passages with sentence-like partitions plus overlapping, non-contiguous propositions."""
    docs, units = [], []
    for _ in range(n_passages):
        n = int(rng.integers(1, max_len + 1))
        docs.append(rng.standard_normal((n, dim)).astype(np.float32))
        cuts = sorted(set(rng.integers(1, n, size=min(n - 1, 3)).tolist())) if n > 1 else []
        bounds = [0, *cuts, n]
        unit_p: list[Ranges] = [[(bounds[i], bounds[i + 1])] for i in range(len(bounds) - 1)]
        for _ in range(int(rng.integers(0, 3))):  # propositions: random token subsets
            picked = sorted(set(rng.integers(0, n, size=int(rng.integers(1, 6))).tolist()))
            unit_p.append([(t, t + 1) for t in picked])
        units.append(unit_p)
    return docs, units


def check_argmax(arg: np.ndarray, sims: dict, positions_of, lq: int, tol: float) -> int:
    """Every argmax reaches the reference max; where the max is clear, it is the reference argmax."""
    clear = 0
    for (b, k), (sim, pos) in positions_of(sims).items():
        for i in range(lq):
            values = sim[i, pos]
            best = values.max()
            assert sim[i, arg[b, k, i]] >= best - tol
            assert arg[b, k, i] in pos
            second = np.partition(values, -2)[-2] if len(values) > 1 else -np.inf
            if best - second > 1e-3:
                assert arg[b, k, i] == pos[int(values.argmax())]
                clear += 1
    return clear


def assert_matches(result: MaxSimScores, q, sq, docs, units, weights=None, subweights=None, tol=1e-5):
    passage, unit, unit_list, positions, sims, subsims = reference(q, sq, docs, units, weights, subweights)
    np.testing.assert_allclose(result.passage.numpy(), passage, rtol=0, atol=tol)
    np.testing.assert_allclose(result.unit.numpy(), unit, rtol=0, atol=tol)
    assert result.unit_passage.tolist() == unit_list
    assert result.passage.dtype == result.unit.dtype == torch.float32
    if result.passage_argmax is not None:
        assert result.unit_argmax is not None
        parg, uarg = result.passage_argmax.numpy(), result.unit_argmax.numpy()
        assert parg.shape == (q.shape[0], len(docs), q.shape[1])
        assert uarg.shape == (q.shape[0], len(unit_list), sq.shape[1])
        clear = check_argmax(
            parg, sims, lambda s: {k: (v, np.arange(v.shape[1])) for k, v in s.items()}, q.shape[1], tol
        )
        clear += check_argmax(
            uarg,
            subsims,
            lambda s: {
                (b, u): (s[b, p], np.asarray(positions[u])) for b in range(q.shape[0]) for u, p in enumerate(unit_list)
            },
            sq.shape[1],
            tol,
        )
        assert clear > 0


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", range(4))
def test_batched_queries_overlapping_and_noncontiguous_units(seed):
    rng = np.random.default_rng(seed)
    docs, units = random_case(rng, n_passages=12, dim=16)
    q = rng.standard_normal((3, 7, 16)).astype(np.float32)
    sq = rng.standard_normal((3, 5, 16)).astype(np.float32)
    result = granular_maxsim(q, pack(docs, units), sq, return_argmax=True)
    assert_matches(result, q, sq, docs, units)


def test_unbatched_query_is_a_batch_of_one_and_subquery_defaults_to_query():
    rng = np.random.default_rng(7)
    docs, units = random_case(rng, n_passages=5, dim=8)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    result = granular_maxsim(q, pack(docs, units), return_argmax=True)
    assert result.passage.shape == (1, 5)
    assert_matches(result, q[None], q[None], docs, units)
    same = granular_maxsim(q, pack(docs, units), q)
    assert torch.equal(same.unit, result.unit)


def test_ties_from_duplicate_tokens():
    rng = np.random.default_rng(1)
    docs, units = random_case(rng, n_passages=8, dim=8)
    for d in docs:  # every token vector appears twice or more
        half = max(1, d.shape[0] // 2)
        d[half:] = d[: d.shape[0] - half]
    docs.append(np.repeat(docs[0][:1], 4, axis=0))  # one passage of a single repeated vector
    units.append([[(1, 3)], [(0, 1), (3, 4)]])
    q = rng.standard_normal((2, 5, 8)).astype(np.float32)
    assert_matches(granular_maxsim(q, pack(docs, units), return_argmax=True), q, q, docs, units)


def test_all_scores_negative():
    rng = np.random.default_rng(2)
    docs, units = random_case(rng, n_passages=10, dim=8)
    docs = [np.abs(d) + 0.1 for d in docs]
    q = -np.abs(rng.standard_normal((2, 6, 8))).astype(np.float32) - 0.1
    result = granular_maxsim(q, pack(docs, units), return_argmax=True)
    assert (result.passage < 0).all() and (result.unit < 0).all()
    assert_matches(result, q, q, docs, units)
    # a unit's score is never above its passage's: same query, fewer tokens
    assert (result.unit <= result.passage[:, result.unit_passage] + 1e-6).all()


def test_single_token_passages():
    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(6)]
    units = [[[(0, 1)]] for _ in docs]
    q = rng.standard_normal((2, 4, 8)).astype(np.float32)
    result = granular_maxsim(q, pack(docs, units), return_argmax=True)
    assert_matches(result, q, q, docs, units)
    assert (result.passage_argmax == 0).all() and (result.unit_argmax == 0).all()


def test_units_given_as_unit_records_and_bare_pairs():
    rng = np.random.default_rng(4)
    doc = rng.standard_normal((9, 8)).astype(np.float32)
    records = [
        Unit("sentence", 0, ((0, 10),), token_ranges=((0, 4),)),
        Unit("proposition", 0, ((0, 3), (6, 9)), token_ranges=((1, 2), (5, 9))),
    ]
    q = rng.standard_normal((5, 8)).astype(np.float32)
    by_records = granular_maxsim(q, pack([doc], [records]))
    by_lists = granular_maxsim(q, pack([doc], [[(0, 4), [(5, 9), (1, 2)]]]))
    assert torch.equal(by_records.unit, by_lists.unit)
    assert_matches(by_records, q[None], q[None], [doc], [[[(0, 4)], [(1, 2), (5, 9)]]])


def test_chunk_size_does_not_change_anything():
    rng = np.random.default_rng(5)
    docs, units = random_case(rng, n_passages=60, dim=16, max_len=50)
    q = rng.standard_normal((2, 8, 16)).astype(np.float32)
    sq = rng.standard_normal((2, 6, 16)).astype(np.float32)
    packed = pack(docs, units)
    assert packed.tokens.shape[0] > 600
    chunks = (None, 1, 64, 100, 128, 320, 10**6)
    results = [granular_maxsim(q, packed, sq, return_argmax=True, max_chunk_tokens=c) for c in chunks]
    for r in results[1:]:
        for a, b in zip(
            (r.passage, r.unit, r.passage_argmax, r.unit_argmax),
            (results[0].passage, results[0].unit, results[0].passage_argmax, results[0].unit_argmax),
        ):
            assert torch.equal(a, b)
    plain = granular_maxsim(q, packed, sq, max_chunk_tokens=64)
    assert torch.equal(plain.passage, results[0].passage) and torch.equal(plain.unit, results[0].unit)
    assert plain.passage_argmax is None and plain.unit_argmax is None
    assert_matches(results[0], q, sq, docs, units)


def test_query_mask_and_weights():
    rng = np.random.default_rng(6)
    docs, units = random_case(rng, n_passages=7, dim=8)
    q = rng.standard_normal((2, 6, 8)).astype(np.float32)
    sq = rng.standard_normal((2, 4, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=bool)
    weights = rng.uniform(0.0, 2.0, size=(4,)).astype(np.float32)
    result = granular_maxsim(q, pack(docs, units), sq, query_mask=mask, subquery_mask=weights)
    assert_matches(result, q, sq, docs, units, mask.astype(np.float64), np.tile(weights, (2, 1)))
    # masked query tokens are as good as absent
    short = granular_maxsim(q[:1, :3], pack(docs, units))
    np.testing.assert_allclose(result.passage[0].numpy(), short.passage[0].numpy(), atol=1e-6)
    # with a shared query, the query mask applies to the units too
    shared = granular_maxsim(q, pack(docs, units), query_mask=mask)
    assert_matches(shared, q, q, docs, units, mask.astype(np.float64), mask.astype(np.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    rng = np.random.default_rng(8)
    docs, units = random_case(rng, n_passages=10, dim=32)
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
    q = rng.standard_normal((2, 8, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    result = granular_maxsim(torch.from_numpy(q).to(dtype), pack(docs, units, dtype=dtype))
    assert result.passage.dtype == torch.float32
    assert_matches(result, q, q, docs, units, tol=0.05)  # 8 terms, each off by a few 1e-3


def test_query_dtype_follows_the_candidates():
    rng = np.random.default_rng(9)
    docs, units = random_case(rng, n_passages=4, dim=8)
    q = rng.standard_normal((3, 8))
    result = granular_maxsim(q, pack(docs, units))  # float64 query, float32 candidates
    assert_matches(result, q[None], q[None], docs, units)
    torch_docs = [torch.from_numpy(d) for d in docs]
    assert torch.equal(granular_maxsim(q, pack(torch_docs, units)).passage, result.passage)


def test_pack_concatenated_matches_pack_and_no_units():
    rng = np.random.default_rng(10)
    docs, units = random_case(rng, n_passages=6, dim=8)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])])
    a = granular_maxsim(q, pack_concatenated(np.concatenate(docs), offsets, units))
    b = granular_maxsim(q, pack(docs, units))
    assert torch.equal(a.passage, b.passage) and torch.equal(a.unit, b.unit)
    packed = pack(docs)
    assert packed.n_units == 0 and packed.n_passages == 6
    result = granular_maxsim(q, packed, q * 2, return_argmax=True)
    assert result.unit.shape == (1, 0) and result.unit_argmax is not None and result.unit_argmax.shape == (1, 0, 4)
    assert torch.equal(result.passage, b.passage)


def test_no_candidates():
    result = granular_maxsim(np.ones((2, 3, 4), np.float32), pack_concatenated(np.zeros((0, 4), np.float32), [0]))
    assert result.passage.shape == (2, 0) and result.unit.shape == (2, 0)


def test_device_argument_and_to():
    rng = np.random.default_rng(11)
    docs, units = random_case(rng, n_passages=4, dim=8)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    packed = pack(docs, units, device="cpu")
    assert packed.to("cpu") is packed
    assert torch.equal(granular_maxsim(q, packed, device="cpu").unit, granular_maxsim(q, packed).unit)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(12)
    docs, units = random_case(rng, n_passages=50, dim=32)
    q = rng.standard_normal((2, 8, 32)).astype(np.float32)
    sq = rng.standard_normal((2, 6, 32)).astype(np.float32)
    packed = pack(docs, units)
    cpu = granular_maxsim(q, packed, sq, return_argmax=True)
    gpu = granular_maxsim(torch.from_numpy(q).cuda(), packed.to("cuda"), sq, return_argmax=True, max_chunk_tokens=64)
    assert gpu.passage.is_cuda and gpu.unit_argmax is not None and gpu.unit_argmax.is_cuda
    torch.testing.assert_close(gpu.passage.cpu(), cpu.passage, rtol=0, atol=1e-4)
    torch.testing.assert_close(gpu.unit.cpu(), cpu.unit, rtol=0, atol=1e-4)
    assert_matches(
        MaxSimScores(*(t.cpu() if t is not None else None for t in (gpu.passage, gpu.unit, gpu.unit_passage,
                                                                   gpu.passage_argmax, gpu.unit_argmax))),
        q, sq, docs, units, tol=1e-4,
    )
    cover = granular_maxsim(torch.from_numpy(q).cuda(), packed.to("cuda"), sq, coverage=True, max_chunk_tokens=64)
    assert cover.unit_coverage.is_cuda and torch.equal(cover.unit.cpu(), gpu.unit.cpu())
    np.testing.assert_allclose(cover.unit_coverage.cpu().numpy(), coverage_reference(sq, docs, units), rtol=0, atol=1e-4)
    bf16 = granular_maxsim(q, pack(docs, units, device="cuda", dtype=torch.bfloat16), sq)
    assert_matches(MaxSimScores(bf16.passage.cpu(), bf16.unit.cpu(), bf16.unit_passage.cpu()), q, sq, docs, units,
                   tol=0.5)


# ----------------------------------------------------------------------------- coverage


def coverage_reference(subquery: np.ndarray, docs: list[np.ndarray], units: list[list[Ranges]], subweights=None):
    """[B, U] in float64: each unit's mean over its distinct token positions of the max over
    the sub-query rows with weight > 0 of row . token (0 for a sub-query without such a row)."""
    batch, lsq = subquery.shape[:2]
    subweights = np.ones((batch, lsq)) if subweights is None else np.asarray(subweights, dtype=np.float64)
    out = []
    for b in range(batch):
        rows = [i for i in range(lsq) if subweights[b, i] > 0]
        values = []
        for p, units_p in enumerate(units):
            d = docs[p].astype(np.float64)
            for ranges in units_p:
                positions = sorted({t for s, e in ranges for t in range(s, e)})
                if not rows:
                    values.append(0.0)
                    continue
                best = [max(float(subquery[b, i].astype(np.float64) @ d[t]) for i in rows) for t in positions]
                values.append(sum(best) / len(best))
        out.append(values)
    return np.array(out).reshape(batch, -1)


@pytest.mark.parametrize("seed", range(3))
def test_coverage_equals_a_brute_force_for_every_chunk_size(seed):
    rng = np.random.default_rng(100 + seed)
    docs, units = random_case(rng, n_passages=40, dim=16, max_len=50)
    q = rng.standard_normal((3, 7, 16)).astype(np.float32)
    sq = rng.standard_normal((3, 5, 16)).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, size=(3, 5)).astype(np.float32)
    weights[0, [1, 3]] = 0.0  # padding rows: they never take part in a token's max
    weights[2] = [1, 0, 0, 0, 0]
    packed = pack(docs, units)
    assert packed.tokens.shape[0] > 400
    want = coverage_reference(sq, docs, units, weights)
    plain = granular_maxsim(q, packed, sq, subquery_mask=weights, return_argmax=True)
    assert plain.unit_coverage is None
    first = None
    for chunk in (None, 1, 64, 100, 320, 10**6):
        got = granular_maxsim(q, packed, sq, subquery_mask=weights, coverage=True, return_argmax=True, max_chunk_tokens=chunk)
        assert got.unit_coverage is not None and got.unit_coverage.dtype == torch.float32
        assert got.unit_coverage.shape == (3, packed.n_units)
        np.testing.assert_allclose(got.unit_coverage.numpy(), want, rtol=0, atol=1e-5)
        for a, b in zip((got.passage, got.unit, got.passage_argmax, got.unit_argmax),
                        (plain.passage, plain.unit, plain.passage_argmax, plain.unit_argmax)):
            assert torch.equal(a, b)  # the rest is what it was without coverage
        if first is None:
            first = got.unit_coverage
        assert torch.equal(got.unit_coverage, first)  # bit-identical whatever the chunks
    without_argmax = granular_maxsim(q, packed, sq, subquery_mask=weights, coverage=True, max_chunk_tokens=64)
    assert torch.equal(without_argmax.unit_coverage, first) and torch.equal(without_argmax.unit, plain.unit)


def test_coverage_with_a_shared_query_a_bool_mask_and_a_query_without_rows():
    rng = np.random.default_rng(110)
    docs, units = random_case(rng, n_passages=8, dim=8)
    q = rng.standard_normal((3, 6, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=bool)
    got = granular_maxsim(q, pack(docs, units), query_mask=mask, coverage=True)
    np.testing.assert_allclose(got.unit_coverage.numpy(), coverage_reference(q, docs, units, mask), rtol=0, atol=1e-5)
    assert not got.unit_coverage[1].any()  # no row of weight > 0: 0
    unbatched = granular_maxsim(q[0], pack(docs, units), coverage=True)
    np.testing.assert_allclose(unbatched.unit_coverage.numpy(), coverage_reference(q[:1], docs, units), rtol=0, atol=1e-5)


def test_coverage_counts_each_token_of_a_unit_once():
    """Units with several pieces, ranges that overlap or repeat (pack_token_ranges keeps them
    as given): every token of the unit enters its mean once."""
    from agrame_vdb.maxsim import pack_token_ranges

    rng = np.random.default_rng(111)
    docs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (9, 5, 12)]
    ranges_of = [[[(0, 4), (2, 6)], [(1, 2), (1, 2), (7, 9)]], [[(0, 5)], [(3, 4), (0, 2), (1, 3)]], [[(4, 11), (0, 1)]]]
    flat = [(p, u, r) for p, us in enumerate(ranges_of) for u, rs in enumerate(us) for r in rs]
    unit_keys = sorted({(p, u) for p, u, _ in flat})
    offsets = np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])])
    packed = pack_token_ranges(
        np.concatenate(docs), offsets, [p for p, _ in unit_keys], [unit_keys.index((p, u)) for p, u, _ in flat],
        [r for _, _, r in flat],
    )
    sq = rng.standard_normal((2, 4, 8)).astype(np.float32)
    for chunk in (None, 1):
        got = granular_maxsim(sq, packed, coverage=True, max_chunk_tokens=chunk)
        np.testing.assert_allclose(got.unit_coverage.numpy(), coverage_reference(sq, docs, ranges_of), rtol=0, atol=1e-5)
        merged = granular_maxsim(sq, pack(docs, ranges_of), coverage=True, max_chunk_tokens=chunk)
        assert torch.equal(got.unit_coverage, merged.unit_coverage) and torch.equal(got.unit, merged.unit)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_coverage_in_half_precision(dtype):
    rng = np.random.default_rng(112)
    docs, units = random_case(rng, n_passages=10, dim=32)
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
    q = rng.standard_normal((2, 8, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    got = granular_maxsim(torch.from_numpy(q).to(dtype), pack(docs, units, dtype=dtype), coverage=True)
    assert got.unit_coverage.dtype == torch.float32
    np.testing.assert_allclose(got.unit_coverage.numpy(), coverage_reference(q, docs, units), rtol=0, atol=0.01)


def test_coverage_without_units():
    rng = np.random.default_rng(113)
    docs, _ = random_case(rng, n_passages=3, dim=8)
    got = granular_maxsim(rng.standard_normal((2, 3, 8)).astype(np.float32), pack(docs), coverage=True)
    assert got.unit_coverage is not None and got.unit_coverage.shape == (2, 0)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
    lq=st.integers(1, 4),
    chunk=st.sampled_from([None, 1, 64]),
    data=st.data(),
)
def test_property_any_units(lengths, seed, lq, chunk, data):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(-2, 3, size=(n, 3)).astype(np.float32) for n in lengths]  # small ints: many exact ties
    units = [
        data.draw(
            st.lists(
                st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, n)).filter(lambda r: r[0] < r[1]), min_size=1,
                         max_size=3),
                max_size=4,
            )
        )
        for n in lengths
    ]
    q = rng.integers(-2, 3, size=(2, lq, 3)).astype(np.float32)
    result = granular_maxsim(q, pack(docs, units), return_argmax=True, coverage=True, max_chunk_tokens=chunk)
    passage, unit, *_ = reference(q, q, docs, units)
    np.testing.assert_array_equal(result.passage.numpy(), passage)  # small ints: exact
    np.testing.assert_array_equal(result.unit.numpy(), unit)
    np.testing.assert_allclose(result.unit_coverage.numpy(), coverage_reference(q, docs, units), rtol=1e-6, atol=1e-6)


def test_convenience_functions():
    rng = np.random.default_rng(13)
    docs, units = random_case(rng, n_passages=5, dim=8)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    passage, unit, unit_list, *_ = reference(q[None], q[None], docs, units)
    got = passage_scores(q, docs)
    assert isinstance(got, np.ndarray) and got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, passage[0], atol=1e-5)
    assert passage_scores(q[None].repeat(2, 0), docs).shape == (2, 5)
    per_passage = unit_scores(q, docs, units)
    assert [len(u) for u in per_passage] == [len(u) for u in units]
    np.testing.assert_allclose(np.concatenate(per_passage), unit[0], atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_error_empty_unit():
    doc = np.ones((4, 2), np.float32)
    with pytest.raises(InvalidInputError, match="unit 1 of passage 0 is empty"):
        pack([doc], [[[(0, 1)], []]])
    with pytest.raises(InvalidInputError, match="empty or outside"):
        pack([doc], [[[(2, 2)]]])
    with pytest.raises(InvalidInputError, match="align it with align_units"):
        pack([doc], [[Unit("sentence", 0, ((0, 5),))]])


def test_error_unit_out_of_passage():
    docs = [np.ones((4, 2), np.float32), np.ones((2, 2), np.float32)]
    with pytest.raises(InvalidInputError, match=r"unit 0 of passage 1 has token range \[1, 3\).*2 tokens"):
        pack(docs, [[[(0, 4)]], [[(1, 3)]]])
    with pytest.raises(InvalidInputError, match="outside"):
        pack(docs, [[[(-1, 2)]], []])
    with pytest.raises(InvalidInputError, match="one list per passage"):
        pack(docs, [[[(0, 1)]]])
    with pytest.raises(InvalidInputError, match="list of \\(start, end\\)"):
        pack(docs, [[["a"]], []])


def test_error_dim_mismatch():
    docs = [np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)]
    with pytest.raises(InvalidInputError, match="query has dim 2 but the candidates' token vectors have dim 3"):
        granular_maxsim(np.ones((5, 2), np.float32), pack(docs))
    with pytest.raises(InvalidInputError, match="subquery has dim 4"):
        granular_maxsim(np.ones((5, 3), np.float32), pack(docs), np.ones((5, 4), np.float32))
    with pytest.raises(InvalidInputError, match="docs\\[1\\] has dim 2"):
        pack([np.ones((4, 3), np.float32), np.ones((2, 2), np.float32)])
    with pytest.raises(InvalidInputError, match="batch size 2 but subquery has 3"):
        granular_maxsim(np.ones((2, 5, 3), np.float32), pack(docs), np.ones((3, 5, 3), np.float32))
    with pytest.raises(InvalidInputError, match=r"\[Lq, dim\] or \[B, Lq, dim\]"):
        granular_maxsim(np.ones(3, np.float32), pack(docs))
    with pytest.raises(InvalidInputError, match="query_mask must be"):
        granular_maxsim(np.ones((5, 3), np.float32), pack(docs), query_mask=np.ones(4, bool))
    with pytest.raises(InvalidInputError, match="floating-point"):
        pack([np.ones((2, 3), np.int64)])
    with pytest.raises(InvalidInputError, match="non-empty \\[n, dim\\]"):
        pack([np.ones((0, 3), np.float32)])


def test_error_bad_offsets():
    tokens = np.ones((6, 2), np.float32)
    with pytest.raises(InvalidInputError, match="start at 0 and end at the token count 6"):
        pack_concatenated(tokens, [0, 3, 5])
    with pytest.raises(InvalidInputError, match="start at 0"):
        pack_concatenated(tokens, [1, 3, 6])
    with pytest.raises(InvalidInputError, match="passage 1 spans \\[3, 3\\)"):
        pack_concatenated(tokens, [0, 3, 3, 6])
    with pytest.raises(InvalidInputError, match="increase strictly"):
        pack_concatenated(tokens, [0, 4, 2, 6])
    with pytest.raises(InvalidInputError, match="1-d array of ints"):
        pack_concatenated(tokens, [0.0, 6.0])
    with pytest.raises(InvalidInputError, match="\\[T, dim\\] matrix"):
        pack_concatenated(np.ones(6, np.float32), [0, 6])


def test_error_non_finite_vectors():
    doc = np.ones((3, 2), np.float32)
    doc[1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="not finite"):
        granular_maxsim(np.ones((2, 2), np.float32), pack([doc]))


def test_error_bad_chunk_size():
    with pytest.raises(InvalidInputError, match="max_chunk_tokens"):
        granular_maxsim(np.ones((2, 2), np.float32), pack([np.ones((3, 2), np.float32)]), max_chunk_tokens=0)


# ----------------------------------------------------------------------------- real encoder outputs

@pytest.mark.slow
def test_real_encoder_outputs(encoder):
    items = list(datasets.scifact(data_file("scifact", "corpus.jsonl"), limit=6))
    with open(data_file("scifact", "claims_train.jsonl"), encoding="utf-8") as fh:
        texts = [json.loads(line)["claim"] for line in itertools.islice(fh, 3)]

    enc = encoder
    encoded = enc.encode_passages([p for p, _ in items], [u for _, u in items])
    q = enc.encode_queries(texts)
    sq = enc.encode_queries(texts, subpassage=True)
    docs = [e.token_vectors for e in encoded]
    aligned = [[list(u.token_ranges) for u in e.units] for e in encoded]
    assert sum(map(len, aligned)) >= len(items)
    result = granular_maxsim(q, pack(docs, [e.units for e in encoded]), sq, return_argmax=True)
    assert_matches(result, q, sq, docs, aligned, tol=1e-4)
    np.testing.assert_allclose(passage_scores(q[0], docs), result.passage[0].numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- packing

def test_packing_is_importable_from_maxsim():
    import agrame_vdb.maxsim as maxsim
    import agrame_vdb.packing as packing

    for name in ("PackedPassages", "pack", "pack_concatenated", "pack_token_ranges"):
        assert getattr(maxsim, name) is getattr(packing, name)
