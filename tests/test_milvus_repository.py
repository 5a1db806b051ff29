"""What is particular to the Milvus repository: ids, write order and recovery, limits,
chunking, the struct layout, the token first stage, and filters against the reference.

The conformance suite (tests/conformance) checks the protocol itself on Milvus Lite
and on the embedded Milvus 2.3.5 server; these tests check the Milvus design.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus repository needs pymilvus")
pytest.importorskip("milvus_lite", reason="Milvus Lite needs the milvus-lite package")

from agrame_vdb import connect  # noqa: E402
from agrame_vdb.errors import (  # noqa: E402
    CollectionNotFoundError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSchemaError,
    InvalidVectorError,
    RepositoryError,
    UnsupportedOperationError,
)
from agrame_vdb.repositories import memory  # noqa: E402
from agrame_vdb.repositories import milvus as mv  # noqa: E402
from agrame_vdb.repository import And, CollectionSchema, Eq, Filter, In, Not, Or, Range, StoredPassage  # noqa: E402

from . import milvus_servers  # noqa: E402
from .conformance._data import DIM, make_passages, maxsim, unit_vectors  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_milvus() -> Iterator[None]:
    yield
    milvus_servers.stop_embedded()


class Injected(Exception):
    """The failure a test injects between two writes."""


@pytest.fixture(
    params=[
        pytest.param("lite", id="lite"),
        pytest.param("embedded", id="embedded-2.3.5", marks=pytest.mark.server),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "lite":
        return f"milvus-lite://{tmp_path}/m.db"
    found, reason = milvus_servers.embedded()
    if found is None:
        pytest.skip(reason)
    return found


@pytest.fixture
def lite_url(tmp_path) -> str:
    return f"milvus-lite://{tmp_path}/m.db"


@pytest.fixture
def store(url: str) -> Iterator[tuple[mv.MilvusRepository, str]]:
    """A fresh collection on Milvus Lite and on the embedded server."""
    yield from _store(url)


@pytest.fixture
def lite_store(lite_url: str) -> Iterator[tuple[mv.MilvusRepository, str]]:
    """A fresh collection on Milvus Lite only (for what is the same code on a server)."""
    yield from _store(lite_url)


def _store(url: str) -> Iterator[tuple[mv.MilvusRepository, str]]:
    repo = connect(url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"lang": "keyword"}))
    try:
        yield repo, name  # type: ignore[misc]
    finally:
        repo._checkpoint = None  # type: ignore[attr-defined]
        try:
            repo.drop_collection(name)
        finally:
            repo.close()


def token_rows(repo: mv.MilvusRepository, name: str) -> list[int]:
    """Every token-row key of a collection, read with Strong consistency."""
    kwargs = {} if repo._lite else {"consistency_level": "Strong"}
    rows = repo._client.query(name + mv.TOKENS_SUFFIX, filter="pk >= 0", output_fields=["pk"], limit=16384, **kwargs)
    return sorted(int(r["pk"]) for r in rows)


def stored_rows(repo: mv.MilvusRepository, name: str, ids: list[str]) -> dict[str, dict]:
    kwargs = {} if repo._lite else {"consistency_level": "Strong"}
    expr = "id in [" + ", ".join(f'"{i}"' for i in ids) + "]"
    rows = repo._client.query(name, filter=expr, output_fields=["id", "pnum", "tok_base", "n_tokens"], **kwargs)
    return {r["id"]: r for r in rows}


def fail_at(step: str):
    def checkpoint(name: str) -> None:
        if name == step:
            raise Injected(step)

    return checkpoint


def fresh(p: StoredPassage) -> StoredPassage:
    """``p`` under a new random id (make_passages ids repeat across seeds)."""
    return replace(p, id=str(uuid.uuid4()))


def longer(p: StoredPassage, n: int, seed: int, text: str) -> StoredPassage:
    rng = np.random.default_rng(seed)
    return replace(p, tokens=unit_vectors(rng, n), pooled=unit_vectors(rng, 1)[0], units=(), text=text)


# ----------------------------------------------------------------------------- ids


def test_passage_numbers_are_deterministic_and_fit_the_key_layout():
    pid = "0c55945e-fd5e-51d8-9597-c4dcf1e223d1"
    first = list(mv.pnum_candidates(pid))[:3]
    assert first == list(mv.pnum_candidates(pid))[:3] and len(set(first)) == 3
    assert all(0 <= n < 2**mv.PNUM_BITS for n in first)
    top = mv.token_pk(2**mv.PNUM_BITS - 1, 1, mv.MAX_TOKENS - 1)
    assert top == 2**63 - 1  # the last key of the last block still fits in int64
    assert mv.token_pk(5, 0, 0) >> (mv.TOKEN_BITS + 1) == 5


def test_colliding_passage_numbers_are_resolved(lite_store, monkeypatch):
    repo, name = lite_store
    real = mv.pnum_candidates

    def colliding(pid: str):  # every id wants number 42 first
        yield 42
        yield from real(pid)

    monkeypatch.setattr(mv.write, "pnum_candidates", colliding)  # where new numbers are allocated
    passages = make_passages(6, seed=5)
    repo.upsert(name, passages[:3])
    repo.upsert(name, passages[3:])
    rows = stored_rows(repo, name, [p.id for p in passages])
    numbers = [rows[p.id]["pnum"] for p in passages]
    assert len(set(numbers)) == 6 and numbers.count(42) == 1
    got = repo.fetch(name, [p.id for p in passages], strict=True)
    for want, have in zip(passages, got):
        np.testing.assert_array_equal(have.tokens, want.tokens)
    # a rewrite keeps its number; the owner of 42 leaving frees it for the next new id
    owner = next(p for p in passages if rows[p.id]["pnum"] == 42)
    repo.upsert(name, [longer(owner, 5, 1, "again")])
    assert stored_rows(repo, name, [owner.id])[owner.id]["pnum"] == 42
    repo.delete(name, [owner.id])
    newcomer = fresh(make_passages(1, seed=77)[0])
    repo.upsert(name, [newcomer])
    assert stored_rows(repo, name, [newcomer.id])[newcomer.id]["pnum"] == 42
    assert repo.count(name) == 6


# ----------------------------------------------------------------------------- write order and recovery


def test_failure_between_token_and_passage_writes_keeps_the_old_version(store):
    repo, name = store
    passages = make_passages(4, seed=1)
    repo.upsert(name, passages)
    before = token_rows(repo, name)
    rewrite = longer(passages[0], 12, 2, "version two")
    newcomer = fresh(make_passages(1, seed=9)[0])
    repo._checkpoint = fail_at("tokens-written")
    with pytest.raises(RepositoryError, match="tokens-written"):
        repo.upsert(name, [rewrite, newcomer])
    repo._checkpoint = None
    # the old version is whole and visible; the new passage is not there at all
    assert repo.count(name) == 4
    got = repo.fetch(name, [passages[0].id, newcomer.id])
    assert got.missing == (newcomer.id,)
    np.testing.assert_array_equal(got.passages[0].tokens, passages[0].tokens)
    assert got.passages[0].text == passages[0].text
    q = passages[0].tokens
    best = repo.candidates(name, passages[0].pooled, tokens=q, limit=1, prefetch=4)[0]
    assert best.id == passages[0].id and best.score == pytest.approx(maxsim(q, passages[0].tokens), rel=1e-6)
    # the unreachable rows of the failed write are garbage: collected, and nothing else
    assert len(token_rows(repo, name)) == len(before) + 12 + newcomer.n_tokens
    assert repo.collect_garbage(name) == 12 + newcomer.n_tokens
    assert token_rows(repo, name) == before
    # the retry writes both completely
    repo.upsert(name, [rewrite, newcomer])
    got = repo.fetch(name, [rewrite.id, newcomer.id], strict=True)
    np.testing.assert_array_equal(got.passages[0].tokens, rewrite.tokens)
    assert got.passages[0].text == "version two"
    assert len(token_rows(repo, name)) == len(before) - passages[0].n_tokens + 12 + newcomer.n_tokens
    assert repo.collect_garbage(name) == 0


def test_failure_after_the_commit_leaves_the_new_version_complete(store):
    repo, name = store
    passages = make_passages(3, seed=3)
    repo.upsert(name, passages)
    rewrite = longer(passages[1], 4, 5, "short now")
    repo._checkpoint = fail_at("passages-written")
    with pytest.raises(RepositoryError):
        repo.upsert(name, [rewrite])
    repo._checkpoint = None
    got = repo.fetch(name, [rewrite.id], strict=True).passages[0]
    np.testing.assert_array_equal(got.tokens, rewrite.tokens)  # exactly the 4 new rows
    assert got.text == "short now"
    # the old generation is still stored, unreachable, until collected
    assert repo.collect_garbage(name) == passages[1].n_tokens
    assert len(token_rows(repo, name)) == passages[0].n_tokens + 4 + passages[2].n_tokens


def test_a_shorter_rewrite_removes_the_stale_tail(store):
    repo, name = store
    p = longer(make_passages(1, seed=4)[0], 12, 6, "twelve")
    repo.upsert(name, [p])
    for n, seed in ((4, 7), (9, 8), (2, 9)):  # both generations, longer and shorter
        q = longer(p, n, seed, f"n={n}")
        repo.upsert(name, [q])
        keys = token_rows(repo, name)
        row = stored_rows(repo, name, [p.id])[p.id]
        assert keys == list(range(row["tok_base"], row["tok_base"] + n))
        np.testing.assert_array_equal(repo.fetch(name, [p.id], strict=True).passages[0].tokens, q.tokens)


def test_failure_between_row_and_token_deletes(lite_store):
    repo, name = lite_store
    passages = make_passages(3, seed=11)
    repo.upsert(name, passages)
    repo._checkpoint = fail_at("passages-deleted")
    with pytest.raises(RepositoryError):
        repo.delete(name, [passages[0].id])
    repo._checkpoint = None
    assert repo.count(name) == 2 and repo.fetch(name, [passages[0].id]).missing == (passages[0].id,)
    assert repo.collect_garbage(name) == passages[0].n_tokens
    assert len(token_rows(repo, name)) == passages[1].n_tokens + passages[2].n_tokens


def test_aliases_are_milvus_aliases(store):
    repo, name = store
    other = name + "_b"
    repo.create_collection(CollectionSchema(other, DIM))
    try:
        repo.upsert(name, make_passages(3, seed=80))
        repo.upsert(other, make_passages(2, seed=81))
        alias = f"live_{uuid.uuid4().hex[:8]}"
        repo.create_alias(alias, name)
        assert repo.resolve(alias) == name and repo.count(alias) == 3
        assert repo.switch_alias(alias, other) == name
        assert repo.count(alias) == 2 and repo.list_aliases()[alias] == other
        assert alias not in repo.list_collections()
        assert repo._client.describe_alias(alias)["collection_name"] == other  # a real Milvus alias
        assert repo.delete_alias(alias) is True
        with pytest.raises(CollectionNotFoundError):
            repo.count(alias)
    finally:
        repo.drop_collection(other)


def test_only_aliases_of_agrame_collections_are_listed(lite_store):
    """Names ending in ``__tokens`` are reserved; an alias made with pymilvus on a token
    collection (or under a reserved name) stands for no agrame collection."""
    repo, name = lite_store
    alias = f"live_{uuid.uuid4().hex[:8]}"
    repo.create_alias(alias, name)
    with pytest.raises(InvalidSchemaError, match="reserved"):
        repo.create_alias(alias + mv.TOKENS_SUFFIX, name)
    with pytest.raises(InvalidSchemaError, match="reserved"):
        repo.switch_alias(alias + mv.TOKENS_SUFFIX, name)
    raw = f"raw_{uuid.uuid4().hex[:8]}"
    repo._client.create_alias(name + mv.TOKENS_SUFFIX, raw)  # on the token collection
    repo._client.create_alias(name, raw + mv.TOKENS_SUFFIX)  # under a reserved name
    try:
        assert repo.list_aliases() == {alias: name}
        assert repo.resolve(alias) == name
    finally:
        repo._client.drop_alias(raw)
        repo._client.drop_alias(raw + mv.TOKENS_SUFFIX)
        repo.delete_alias(alias)
    assert repo.list_aliases() == {}


# ----------------------------------------------------------------------------- server calls


class _Flaky:
    """Fails with a transient pymilvus error ``failures`` times, then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        from pymilvus.exceptions import MilvusUnavailableException

        self.failures, self.calls = failures, 0
        self.error = error or MilvusUnavailableException(message="server unavailable")

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return args, kwargs


def test_server_calls_are_retried_on_transient_errors_only(monkeypatch):
    from tenacity import RetryCallState, wait_none

    from agrame_vdb.errors import TransientRepositoryError

    waits = []
    for attempt in range(1, 7):
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        waits.append(mv.calls.RETRY_WAIT(state))
    assert waits == [min(0.2 * 2**n, 5.0) for n in range(1, 7)]  # 0.4, 0.8, 1.6, 3.2, 5, 5

    monkeypatch.setattr(mv.calls, "RETRY_WAIT", wait_none())
    flaky = _Flaky(2)
    assert mv.calls.call_with_retries(flaky, (1,), {"timeout": 2}, retries=3, where="h") == ((1,), {"timeout": 2})
    assert flaky.calls == 3
    dead = _Flaky(100)
    with pytest.raises(TransientRepositoryError, match="Milvus at h still failing after 3 attempts") as err:
        mv.calls.call_with_retries(dead, (), {}, retries=3, where="h")
    assert dead.calls == 3 and mv.is_transient(err.value.__cause__)
    wrong = _Flaky(100, ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):  # not transient: raised at once, as it is
        mv.calls.call_with_retries(wrong, (), {}, retries=3, where="h")
    assert wrong.calls == 1


def test_milvus_lite_calls_are_not_retried_and_server_calls_are(lite_store, monkeypatch):
    from pymilvus.exceptions import MilvusUnavailableException
    from tenacity import wait_none

    repo, _ = lite_store
    monkeypatch.setattr(mv.calls, "RETRY_WAIT", wait_none())
    flaky = _Flaky(1)
    with pytest.raises(MilvusUnavailableException):
        repo._call(flaky)
    assert flaky.calls == 1
    monkeypatch.setattr(repo, "_lite", False)  # the server path of the same repository
    flaky = _Flaky(2)
    repo._call(flaky)
    assert flaky.calls == 3 == repo._retries


# ----------------------------------------------------------------------------- limits and chunking


def _grown_after_build(p):
    bad = replace(p, metadata={"blob": ["x"]})
    bad.metadata["blob"][0] = "x" * 70000  # a nested value changed in place after the checks
    return bad


def test_server_limits_are_enforced_before_any_write(lite_store):
    repo, name = lite_store
    good = make_passages(1, seed=20)[0]
    rng = np.random.default_rng(0)
    cases = [
        (replace(good, text="é" * 40000, units=()), InvalidInputError, "UTF-8 bytes"),
        (replace(good, tokens=unit_vectors(rng, mv.MAX_TOKENS + 1), units=()), InvalidVectorError, "at most 8192"),
        (_grown_after_build(good), InvalidMetadataError, "65536"),  # built small: refused at the write
        (replace(good, metadata={"many": list(np.arange(400) * 0.5)}), InvalidMetadataError, "filter index"),
    ]
    for bad, error, words in cases:
        other = fresh(make_passages(1, seed=21)[0])
        with pytest.raises(error, match=words):
            repo.upsert(name, [other, bad])
        assert repo.count(name) == 0 and not token_rows(repo, name)
    with pytest.raises(InvalidSchemaError, match="32768"):
        repo.create_collection(CollectionSchema(name + "_wide", 40000))
    with pytest.raises(InvalidSchemaError, match="reserved"):
        repo.create_collection(CollectionSchema("x" + mv.TOKENS_SUFFIX, DIM))
    repo.upsert(name, [good])
    with pytest.raises(InvalidInputError, match="16384"):
        repo.candidates(name, good.pooled, limit=20000)
    with pytest.raises(InvalidInputError, match="16384"):
        repo.candidates(name, good.pooled, tokens=good.tokens, limit=10, prefetch=20000)


def test_long_lists_and_large_requests_are_chunked(lite_store, monkeypatch):
    repo, name = lite_store
    monkeypatch.setattr(mv.MilvusRepository, "_IN_CHUNK", 3)
    monkeypatch.setattr(mv.MilvusRepository, "_PK_CHUNK", 7)
    monkeypatch.setattr(mv.MilvusRepository, "_QUERY_CAP", 5)
    monkeypatch.setattr(mv.MilvusRepository, "_REQUEST_BYTES", 40 * (DIM * 4 + 16))  # 40 token rows per request
    passages = make_passages(30, seed=30)
    repo.upsert(name, passages, batch_size=13)
    ids = sorted(p.id for p in passages)
    got = repo.fetch(name, ids, strict=True)
    by_id = {p.id: p for p in passages}
    for p in got:
        np.testing.assert_array_equal(p.tokens, by_id[p.id].tokens)
    assert list(repo.iter_ids(name, page=4)) == ids  # windows narrowed below the 5-row cap
    en = sorted(p.id for p in passages if p.metadata["lang"] == "en")
    assert list(repo.iter_ids(name, filter=Eq("lang", "en"), page=2)) == en
    assert repo.delete_where(name, Eq("lang", "en")) == len(en)
    assert repo.count(name) == 30 - len(en)
    assert repo.collect_garbage(name) == 0


# ----------------------------------------------------------------------------- layouts and first stages


def test_struct_layout_is_refused_clearly_where_the_schema_drops_it(url):
    repo = connect(url, layout="struct")
    name = f"s_{uuid.uuid4().hex[:10]}"
    try:
        caps = repo.capabilities()
        assert caps.layout == "struct" and caps.struct_maxsim is False
        with pytest.raises(UnsupportedOperationError, match=r"2\.6\.4") as err:
            repo.create_collection(CollectionSchema(name, DIM))
        assert "read back" in str(err.value)
        assert name not in repo.list_collections()
    finally:
        repo.drop_collection(name)
        repo.close()


def test_struct_layout_on_a_new_server():
    found, reason = milvus_servers.external_struct()
    if found is None:
        pytest.skip(reason)
    repo = connect(found)
    name = f"s_{uuid.uuid4().hex[:10]}"
    try:
        assert repo.capabilities().struct_maxsim and repo.capabilities().layout == "struct"
        repo.create_collection(CollectionSchema(name, DIM))
        assert repo.collection_layout(name) == "struct"
        assert mv._has_struct_field(repo._client.describe_collection(name))
        passages = make_passages(12, seed=40)
        repo.upsert(name, passages)
        qt = unit_vectors(np.random.default_rng(41), 4)
        got = repo.candidates(name, qt.mean(axis=0), tokens=qt, limit=12, prefetch=12)
        by_id = {p.id: p for p in passages}
        for c in got:  # the engine's MAX_SIM_IP is the MaxSim
            assert c.score == pytest.approx(maxsim(qt, by_id[c.id].tokens), rel=1e-4, abs=1e-4)
    finally:
        repo.drop_collection(name)
        repo.close()


def test_token_first_stage_finds_the_planted_passage(url):
    repo = connect(url, first_stage="tokens", token_k=16)
    name = f"c_{uuid.uuid4().hex[:10]}"
    try:
        assert repo.capabilities().first_stage == "tokens"
        repo.create_collection(CollectionSchema(name, DIM))
        passages = make_passages(40, seed=50)
        repo.upsert(name, passages)
        rng = np.random.default_rng(51)
        for target in (passages[3], passages[27]):
            qt = target.tokens[:4] + 0.05 * unit_vectors(rng, 4)
            far = -target.pooled  # the pooled vector points away: only the token stage finds it
            got = repo.candidates(name, far, tokens=qt, limit=5, prefetch=10)
            assert got[0].id == target.id and got[0].stage == "maxsim"
            by_id = {p.id: p for p in passages}
            for c in got:
                assert c.score == pytest.approx(maxsim(qt, by_id[c.id].tokens), rel=1e-6)
        fr = {p.id for p in passages if p.metadata["lang"] == "fr"}
        got = repo.candidates(name, passages[0].pooled, tokens=passages[0].tokens, limit=40, prefetch=40, filter=Eq("lang", "fr"))
        assert {c.id for c in got} <= fr and got
    finally:
        repo.drop_collection(name)
        repo.close()


# ----------------------------------------------------------------------------- filters against the reference


def _random_metadata(rng: np.random.Generator, i: int) -> dict:
    words = ["en", "fr", 'qu"ote', "back\\slash", "ünï", "a b", "x" * 80, ""]
    m: dict = {}
    if rng.random() < 0.8:
        m["w"] = words[int(rng.integers(len(words)))]
    choice = int(rng.integers(6))
    m["v"] = [3, 3.0, True, "3", [1.5, 3, 7], [True, 3][: int(rng.integers(3))]][choice]
    if rng.random() < 0.7:
        m["nums"] = [float(x) for x in rng.integers(-5, 6, size=int(rng.integers(0, 4)))] + [int(rng.integers(-3, 4))]
    if rng.random() < 0.5:
        m["nested"] = {"k": int(rng.integers(3)), "tags": ["a", "b"][: int(rng.integers(3))], "bad.key": 1}
    if rng.random() < 0.3:
        m["neg"] = -0.0 if i % 2 else -1e-300
    return m


FILTERS = [
    Eq("w", 'qu"ote'),
    Eq("w", "back\\slash"),
    Eq("w", "ünï"),
    Eq("w", "x" * 80),
    Eq("w", ""),
    In("w", ("en", "a b", "ünï")),
    Eq("v", 3),
    Eq("v", True),
    Eq("v", "3"),
    In("v", (3, 7)),
    Range("v", gte=3, lte=3),
    Range("v", gt=3),
    Range("v", gt=1.4, lt=1.6),
    Range("nums", gte=4.5),
    Range("nums", gt=-1, lt=1),
    Range("nums", lte=-5),
    Not(Range("nums", gte=0)),
    Eq("nums", 2),
    Eq("nested.k", 1),
    Eq("nested.tags", "b"),
    Eq("nested.bad.key", 1),
    Range("neg", gte=0),
    Range("neg", lt=0),
    Eq("doc_id", "doc-1"),
    In("doc_id", ("doc-0", 'd"oc')),
    Eq("doc_id", 1),
    Range("doc_id", gte=0),
    Eq("passage_index", True),
    In("passage_index", (0, 2)),
    Range("passage_index", gt=0.5, lte=2),
    Or(Not(Eq("w", "en")), And(Range("nums", gte=0), Not(Eq("v", True)))),
    Filter.from_json({"$not": {"nested.tags": {"$in": ["a", "z"]}}}),
]


def test_filters_match_the_reference_on_awkward_metadata(lite_url):
    rng = np.random.default_rng(60)
    passages = [
        replace(p, metadata=_random_metadata(rng, i)) for i, p in enumerate(make_passages(60, seed=61, docs=5))
    ]
    passages.append(replace(fresh(make_passages(1, seed=62)[0]), doc_id='d"oc'))
    repo = connect(lite_url)
    try:
        repo.create_collection(CollectionSchema("f", DIM))
        repo.upsert("f", passages)
        for flt in FILTERS:
            want = {p.id for p in passages if memory.matches(flt, p)}
            got = set(repo.iter_ids("f", filter=flt, page=25))
            assert got == want, flt
            assert repo.count("f", flt) == len(want), flt
    finally:
        repo.close()


# ----------------------------------------------------------------------------- URLs, persistence


def test_urls_and_options(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown options"):
        connect(f"milvus-lite://{tmp_path}/x.db?nope=1")
    with pytest.raises(InvalidInputError, match="layout"):
        connect(f"milvus-lite://{tmp_path}/x.db?layout=columns")
    with pytest.raises(InvalidInputError, match="server options"):
        connect(f"milvus-lite://{tmp_path}/x.db?token=abc")
    repo = connect(f"milvus-lite://{tmp_path}/x.db?first_stage=tokens&pooled_index=HNSW&token_k=8")
    caps = repo.capabilities()
    assert (caps.engine, caps.exclusive, caps.persistent, caps.approximate_first_stage) == ("milvus-lite", True, True, True)
    assert caps.server_version.startswith("milvus_lite")
    repo.close()
    assert milvus_servers._store_url("http://10.0.0.5:19531") == "milvus://10.0.0.5:19531"
    assert milvus_servers._store_url("https://h") == "milvus://h:19530?secure=1"
    assert mv._parse_version("v2.3.5-lite") == (2, 3, 5) and mv._parse_version("milvus_lite-3.2.2") == (0, 0, 0)


def test_data_survives_a_new_process(tmp_path):
    url = f"milvus-lite://{tmp_path}/p.db"
    repo = connect(url)
    repo.create_collection(CollectionSchema("keep", DIM, indexed_fields={"lang": "keyword"}))
    passages = make_passages(5, seed=70)
    repo.upsert("keep", passages)
    repo.close()
    script = textwrap.dedent(
        f"""
        from agrame_vdb import connect
        r = connect({url!r})
        s = r.open_collection("keep")
        p = r.fetch("keep", [{passages[2].id!r}], strict=True).passages[0]
        print(s.dim, dict(s.indexed_fields), r.count("keep"), p.tokens.shape[0], r.collection_layout("keep"))
        r.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [str(DIM), "{'lang':", "'keyword'}", "5", str(passages[2].n_tokens), "tokens"], out.stderr


@pytest.mark.parametrize(
    "url",
    [
        "milvus://localhost:19530\n",
        "milvus://localhost\n",
        "milvus://local host:19530",
        "milvus://h:19530/db\n",
        "milvus://h:19530\n?token=s3cret",
        "milvus://user:s3cret@h:19530\n",
    ],
)
def test_server_urls_with_trailing_newlines_or_spaces_are_refused(monkeypatch, url):
    opened = []
    monkeypatch.setattr(mv, "MilvusRepository", lambda **kw: opened.append(kw))  # never connects
    with pytest.raises(InvalidInputError, match="looks like milvus://host") as err:
        connect(url)
    assert "s3cret" not in str(err.value)
    assert opened == []
    connect("milvus://localhost:19530/db")  # the same URL without the tail is taken
    assert opened == [{"uri": "http://localhost:19530/db"}]


# ----------------------------------------------------------------------------- lexical first stage


def _lexical_store(lite_url: str, monkeypatch=None, placeholder: int | None = None):
    from agrame_vdb.repositories.milvus import lexical as mlex
    from agrame_vdb.testing.lexical import SPEC, lexical_passages

    if placeholder is not None:
        monkeypatch.setattr(mlex, "NO_TERM", placeholder)
    repo = connect(lite_url)
    name = f"x_{uuid.uuid4().hex[:10]}"
    repo.create_collection(CollectionSchema(name, DIM, indexed_fields={"lang": "keyword"}, lexical=SPEC))
    passages = lexical_passages()
    repo.upsert(name, passages)
    return repo, name, passages


def test_lexical_fields_are_written_with_the_passage_row(lite_url):
    from agrame_vdb.lexical import document_vector, term_id, words
    from agrame_vdb.repositories.milvus import lexical as mlex
    from agrame_vdb.testing.lexical import SPEC

    repo, name, passages = _lexical_store(lite_url)
    try:
        rows = repo._client.query(
            name, filter='id != ""', output_fields=["id", "lexical", "lex_terms", "lex_n"], limit=100
        )
        assert len(rows) == len(passages)
        by_id = {r["id"]: r for r in rows}
        for p in passages:
            r = by_id[p.id]
            terms = sorted({term_id(w) for w in words(p.text)})
            assert list(r["lex_terms"]) == terms and r["lex_n"] == len(terms)
            if terms:
                want = document_vector(p.text, SPEC).as_dict()
                assert set(r["lexical"]) == set(want)
                for t, w in want.items():
                    assert r["lexical"][t] == pytest.approx(w, rel=1e-6)  # float32
            else:  # the wordless passage: the placeholder, counted nowhere
                assert dict(r["lexical"]) == {mlex.NO_TERM: 1.0}
        schema = repo._schema(name)
        w1 = term_id("w1")
        n, (df,) = repo._lexical_statistics(schema, (w1,))
        with_words = [p for p in passages if words(p.text)]
        assert n == len(with_words) == len(passages) - 1
        assert df == sum(1 for p in with_words if w1 in {term_id(w) for w in words(p.text)})
    finally:
        repo.drop_collection(name)
        repo.close()


def test_a_query_term_equal_to_the_placeholder_never_finds_wordless_passages(lite_url, monkeypatch):
    """The placeholder index is a possible term id: a query holding it must still score
    exactly (the wordless passage carries it in its sparse vector, not in its terms)."""
    from agrame_vdb.lexical import term_id
    from agrame_vdb.testing.lexical import assert_ranking, bm25_reference

    repo, name, passages = _lexical_store(lite_url, monkeypatch, placeholder=term_id("w1"))
    try:
        wordless = passages[-1].id
        for query in ("w1", "w1 w2", "brca1 w1"):
            got = repo.lexical_candidates(name, query, limit=100)
            assert wordless not in {c.id for c in got}
            assert_ranking(got, bm25_reference(query, passages), 100)
    finally:
        repo.drop_collection(name)
        repo.close()


def test_a_lexical_query_makes_d_plus_3_requests(lite_url, monkeypatch):
    """N (all passages, less the wordless), one count per distinct query term, one search."""
    repo, name, _ = _lexical_store(lite_url)
    try:
        calls: list[str] = []
        for what in ("query", "search"):
            orig = getattr(repo._client, what)
            monkeypatch.setattr(repo._client, what, lambda *a, _o=orig, _w=what, **k: calls.append(_w) or _o(*a, **k))
        repo.lexical_candidates(name, "w3 w3 w7 zürich", limit=10, filter=Eq("lang", "en"))  # 3 distinct terms
        assert calls == ["query"] * 5 + ["search"]
        calls.clear()
        assert repo.lexical_candidates(name, "nowhere nothing", limit=10) == []  # no term in any passage
        assert calls == ["query"] * 4
    finally:
        repo.drop_collection(name)
        repo.close()


def test_passages_with_too_many_distinct_words_are_refused_before_any_write(lite_url):
    from agrame_vdb.repositories.milvus.lexical import MAX_TERMS

    repo, name, passages = _lexical_store(lite_url)
    try:
        wide = replace(fresh(passages[0]), text=" ".join(f"v{i}" for i in range(MAX_TERMS + 1)), units=())
        with pytest.raises(InvalidInputError, match=f"at most {MAX_TERMS}"):
            repo.upsert(name, [fresh(passages[1]), wide])
        assert repo.count(name) == len(passages)
        repo.upsert(name, [replace(wide, text=" ".join(f"v{i}" for i in range(MAX_TERMS)))])
        assert [c.id for c in repo.lexical_candidates(name, "v7", limit=5)] == [wide.id]
    finally:
        repo.drop_collection(name)
        repo.close()


def test_lexical_search_only_where_the_server_has_sparse_vectors(url):
    """Milvus Lite has sparse vectors; the embedded Milvus 2.3.5 has none, and says so."""
    from agrame_vdb.testing.lexical import SPEC

    repo = connect(url)
    name = f"l_{uuid.uuid4().hex[:10]}"
    try:
        caps = repo.capabilities()
        assert caps.hybrid_in_engine is False  # Lite's RRF answers float32 scores: the library fuses
        if repo._lite:
            assert caps.lexical is True
            return
        assert repo._version < (2, 4, 0) and caps.lexical is False
        with pytest.raises(UnsupportedOperationError, match="sparse"):
            repo.create_collection(CollectionSchema(name, DIM, lexical=SPEC))
        assert name not in repo.list_collections()
    finally:
        repo.drop_collection(name)
        repo.close()
