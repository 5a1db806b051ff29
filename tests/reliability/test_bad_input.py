"""Bad input at every public entry ends in a typed AgrameError with a message.

Never a raw engine exception, a panic, a NaN stored or a hang. Cases are
generated with hypothesis (seeded by hypothesis' own database-less derandomized
runs in CI: ``derandomize=True``) and checked by :func:`harness.typed_or_ok`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.cli import app
from agrame_vdb.errors import AgrameError
from agrame_vdb.repositories.memory import matches as filter_matches
from agrame_vdb.repository import CollectionSchema, Filter, StoredPassage
from agrame_vdb.units import Unit

from . import report
from .harness import typed_or_ok

DIM = 8
EXAMPLES = 400 if report.FULL else 40
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not report.FULL, database=None,
                    suppress_health_check=list(HealthCheck))

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                              max_size=3), max_leaves=8)
odd = st.sampled_from([b"bytes", {1, 2}, object(), float("nan"), -1, 2**64, "", "\ud800", None, True, 1.5, [], {}])


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    repo = connect(f"qdrant-edge://{tmp_path_factory.mktemp('bad') / 'store'}")
    repo.create_collection(CollectionSchema("c", dim=DIM, indexed_fields={"lang": "keyword", "year": "integer"}))
    yield repo
    repo.close()


def _no_nan_stored(repo) -> None:
    ids = list(repo.iter_ids("c"))
    for p in repo.fetch("c", ids).passages:
        assert np.isfinite(p.tokens).all() and np.isfinite(p.pooled).all(), f"NaN stored in {p.id}"


# ------------------------------------------------------------------ records and units

token_arrays = st.one_of(
    st.integers(0, 4).flatmap(lambda n: st.sampled_from([DIM, DIM - 1, DIM + 1, 0]).flatmap(
        lambda d: st.lists(st.lists(floats, min_size=d, max_size=d), min_size=n, max_size=n))),
    json_values,
    odd,
)
spans = st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 40)), max_size=3)
units = st.lists(
    st.one_of(
        st.builds(lambda k, i, c, t: (k, i, c, t), st.sampled_from(["sentence", "Bad Kind", "", "proposition"]),
                  st.integers(-2, 5), spans, spans),
        odd,
    ),
    max_size=3,
)


def _make_units(raw):
    out = []
    for u in raw:
        if isinstance(u, tuple) and len(u) == 4:
            out.append(Unit(u[0], u[1], tuple(u[2]), tuple(u[3])))
        else:
            out.append(u)
    return out


@SETTINGS
@given(doc_id=st.one_of(st.text(max_size=10), odd), index=st.one_of(st.integers(-2, 3), odd), tokens=token_arrays,
       raw_units=units, text=st.one_of(st.text(max_size=40), odd), metadata=st.one_of(
           st.dictionaries(st.text(max_size=8), json_values, max_size=3), odd))
def test_records_and_units(edge, doc_id, index, tokens, raw_units, text, metadata):
    def case():
        passage = StoredPassage.create(doc_id, index, tokens, units=_make_units(raw_units), text=text,
                                       metadata=metadata)
        edge.upsert("c", [passage])
        return passage

    out = typed_or_ok(case, f"upsert({doc_id!r}, {index!r}, tokens={tokens!r:.80}, units={raw_units!r:.80})")
    if out.error is None:
        [stored] = edge.fetch("c", [out.value.id]).passages
        assert np.isfinite(stored.tokens).all() and np.isfinite(stored.pooled).all()


def test_nan_never_stored_after_the_record_sweep(edge):
    _no_nan_stored(edge)


@SETTINGS
@given(ids=st.one_of(st.lists(st.one_of(st.text(max_size=40), odd), max_size=4), odd))
def test_ids_to_fetch_and_delete(edge, ids):
    typed_or_ok(lambda: edge.fetch("c", ids), f"fetch({ids!r})")
    typed_or_ok(lambda: edge.delete("c", ids), f"delete({ids!r})")


@SETTINGS
@given(schema=st.fixed_dictionaries({"name": st.one_of(st.text(max_size=12), odd),
                                     "dim": st.one_of(st.integers(-2, 5000), odd)},
                                    optional={"dtype": st.one_of(st.sampled_from(["float32", "int8", "f64"]), odd),
                                                  "indexed_fields": st.one_of(
                                                      st.dictionaries(st.text(max_size=6), st.text(max_size=8),
                                                                      max_size=2), odd)}))
def test_collection_schemas(edge, schema):
    typed_or_ok(lambda: CollectionSchema(**schema), f"CollectionSchema({schema!r})")
    typed_or_ok(lambda: CollectionSchema.from_json(schema), f"CollectionSchema.from_json({schema!r})")


# ------------------------------------------------------------------ filters

filter_json = st.recursive(
    st.dictionaries(st.sampled_from(["lang", "year", "doc_id", "passage_index", "x.y", "$and", "$or", "$not", "",
                                     "$in", "a b", "\x00"]),
                    json_values, max_size=3),
    lambda c: st.dictionaries(st.sampled_from(["$and", "$or", "$not", "year", "lang"]),
                              st.one_of(c, st.lists(c, max_size=3),
                                        st.dictionaries(st.sampled_from(["$gte", "$lt", "$in", "$eq", "$ne", "$x"]),
                                                        json_values, max_size=2)), max_size=2),
    max_leaves=6,
)


# filters that parse, over the fields the records have: so that the sweep below also
# reaches the engine (with only the garbage above, no case got past Filter.from_json)
valid_filter_json = st.recursive(
    st.one_of(
        st.fixed_dictionaries({"lang": st.sampled_from(["en", "fr", "x\n", ""])}),
        st.fixed_dictionaries({"lang": st.fixed_dictionaries({"$in": st.lists(st.text(max_size=3), min_size=1,
                                                                                max_size=3)})}),
        st.fixed_dictionaries({"year": st.fixed_dictionaries({"$gte": st.integers(1990, 2010)},
                                                             optional={"$lt": st.integers(-(2**53), 2**53)})}),
        st.fixed_dictionaries({"passage_index": st.fixed_dictionaries({"$ne": st.integers(-2, 5)})}),
        st.fixed_dictionaries({"doc_id": st.text(max_size=6)}),
    ),
    lambda c: st.one_of(st.fixed_dictionaries({"$and": st.lists(c, min_size=1, max_size=3)}),
                        st.fixed_dictionaries({"$or": st.lists(c, min_size=1, max_size=3)}),
                        st.fixed_dictionaries({"$not": c})),
    max_leaves=5,
)
#: filters that parsed and were run on the engine, checked at the end of the sweep
FILTERS_RUN = {"n": 0}


@SETTINGS
@given(obj=st.one_of(filter_json, st.text(max_size=30), odd, filter_json.map(json.dumps), valid_filter_json,
                     valid_filter_json.map(json.dumps)))
def _filter_sweep(edge, obj):
    out = typed_or_ok(lambda: Filter.from_json(obj), f"Filter.from_json({obj!r})")
    if out.error is not None or out.value is None:
        return
    flt = out.value
    counted = typed_or_ok(lambda: edge.count("c", flt), f"count(filter={obj!r})")
    listed = typed_or_ok(lambda: list(edge.iter_ids("c", filter=flt, page=3)), f"iter_ids(filter={obj!r})")
    found = typed_or_ok(lambda: edge.candidates("c", np.ones(DIM, np.float32), limit=1000, filter=flt),
                        f"candidates(filter={obj!r})")
    typed_or_ok(lambda: edge.delete_where("empty", flt), f"delete_where(filter={obj!r})")
    # a filter that parses is run by the engine as the reference semantics say
    expected = {p.id for p in edge.fetch("c", list(edge.iter_ids("c"))).passages if filter_matches(flt, p)}
    assert counted.error is listed.error is found.error is None, obj
    assert counted.value == len(listed.value) == len(expected) and set(listed.value) == expected, obj
    assert {c.id for c in found.value} == expected, obj
    FILTERS_RUN["n"] += 1


def test_filters(edge):
    """Bad filters are refused with a typed error; those that parse match what the reference matches."""
    rng = np.random.default_rng(3)
    edge.upsert("c", [StoredPassage.create(f"filter-{i}", i % 3, rng.standard_normal((2, DIM)).astype(np.float32),
                                           metadata={"lang": ["en", "fr", "x\n", ""][i % 4], "year": 1995 + 3 * i})
                      for i in range(6)])
    edge.create_collection(CollectionSchema("empty", dim=DIM))
    FILTERS_RUN["n"] = 0
    _filter_sweep(edge)
    assert FILTERS_RUN["n"] >= EXAMPLES // 4, f"only {FILTERS_RUN['n']} of {EXAMPLES} filters reached the engine"


# ------------------------------------------------------------------ queries

@pytest.fixture(scope="module")
def planner(edge):
    from agrame_vdb.planner import Planner

    rng = np.random.default_rng(0)
    good = []
    for i in range(5):
        t = rng.standard_normal((4, DIM)).astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        good.append(StoredPassage.create(f"good-{i}", 0, t, text="One. Two.",
                                         units=(Unit("sentence", 0, ((0, 4),), ((0, 2),)),
                                                Unit("sentence", 1, ((5, 9),), ((2, 4),))),
                                         metadata={"lang": "en", "year": 2000 + i}))
    edge.upsert("c", good)
    return Planner(edge, "c")


@SETTINGS
@given(q=token_arrays, sq=st.one_of(st.none(), token_arrays),
       granularity=st.one_of(st.sampled_from(["passage", "sentence", "proposition", "Bad", ""]), odd),
       k=st.one_of(st.integers(-2, 10**7), odd), candidates=st.one_of(st.none(), st.integers(-2, 10**7), odd),
       alpha=st.one_of(st.none(), floats, odd), first_stage=st.one_of(st.none(), st.sampled_from(
           ["pooled", "maxsim", "x"]), odd), filter=st.one_of(st.none(), filter_json, odd))
def test_queries(planner, q, sq, granularity, k, candidates, alpha, first_stage, filter):
    out = typed_or_ok(
        lambda: planner.search_vectors(q, sq, granularity=granularity, k=k, candidates=candidates, alpha=alpha,
                                       first_stage=first_stage, filter=filter),
        f"search_vectors(q={q!r:.60}, granularity={granularity!r}, k={k!r}, candidates={candidates!r}, "
        f"alpha={alpha!r}, first_stage={first_stage!r}, filter={filter!r:.80})",
    )
    if out.error is None:
        for r in out.value.results:
            assert math.isfinite(r.score), r


# ------------------------------------------------------------------ store URLs

@SETTINGS
@given(url=st.one_of(st.text(max_size=30), st.sampled_from(
    ["memory:/", "qdrant-edge://", "milvus-lite://", "qdrant-edge:///dev/null/x", "http://", "http://[::1",
     "milvus://:99999", "qdrant-local:///proc/nope", "memory://?token_copy=7", "qdrant-edge:///tmp/x?bad=1"]), odd))
def test_store_urls(url):
    def case():
        r = connect(url)
        r.close()

    typed_or_ok(case, f"connect({url!r})", timeout=30)


# ------------------------------------------------------------------ cite

@pytest.fixture(scope="module")
def real_encoder():
    from agrame_vdb.encoder import MultiVectorEncoder

    return MultiVectorEncoder.load(device="cpu")


CITE_CASES = [
    ("", ["A passage."]), ("   ", ["A passage."]), (None, ["x"]), (b"bytes", ["x"]), ("An answer.", []),
    ("An answer.", None), ("An answer.", [""]), ("An answer.", [None]), ("An answer.", [3]),
    ("An answer.", "not a list"), ("An answer.", ["ok", {"text": 1}]), ("\ud800 surrogate.", ["x"]),
    ("An answer. " * 200, ["A passage."]), ("An answer.", ["x " * 5000]),
]


@pytest.mark.parametrize("answer,passages", CITE_CASES, ids=range(len(CITE_CASES)))
def test_cite_input(real_encoder, answer, passages):
    from agrame_vdb.cite import cite

    typed_or_ok(lambda: cite(answer, passages, real_encoder), f"cite({answer!r:.40}, {passages!r:.60})", timeout=120)


@pytest.mark.parametrize("kw", [dict(granularity="Bad"), dict(granularity=None), dict(margin=float("nan")),
                                dict(margin="x"), dict(min_score=float("inf")), dict(alpha=float("nan")),
                                dict(marker=None), dict(marker="{m}"), dict(marker="{n"), dict(granularity="proposition")])
def test_cite_options(real_encoder, kw):
    from agrame_vdb.cite import cite

    typed_or_ok(lambda: cite("The tower is tall.", ["The tower is tall. It is old."], real_encoder, **kw),
                f"cite(**{kw!r})", timeout=120)


# ------------------------------------------------------------------ CLI arguments and config files

CLI_CASES = [
    ["index", "{input}", "-c", "docs", "--store", "nope://x"],
    ["index", "{input}", "-c", "Bad Name!", "--store", "memory://", "--dry-run"],
    ["index", "{missing}", "-c", "docs", "--store", "memory://"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--batch-size", "0"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--shard", "3/2"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--shard", "x"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--index-field", "lang"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--storage", "float64"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--format", "csv"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--retries", "0"],
    ["index", "{input}", "-c", "docs", "--store", "memory://", "--max-tokens", "-5", "--dry-run"],
    ["search", "q", "-c", "docs", "--store", "memory://"],
    ["search", "q", "-c", "docs", "--store", "memory://", "-k", "0"],
    ["search", "q", "-c", "docs", "--store", "memory://", "--filter", "{not json"],
    ["search", "q", "-c", "docs", "--store", "memory://", "--filter", '{"$bad": 1}'],
    ["search", "q", "-c", "docs", "--store", "memory://", "--granularity", "Bad"],
    ["search", "-c", "docs", "--store", "memory://", "--queries", "{garbage}"],
    ["search", "q", "-c", "docs", "--store", "qdrant-edge:///dev/null/x"],
    ["train", "--config", "{garbage}"],
    ["train", "--config", "{missing}"],
    ["train", "--config", "{badtoml}"],
    ["train", "--config", "{badjson}"],
    ["encode", "--model", "{missing}", "text"],
    ["info", "--model", "{garbage}"],
    ["eval", "--dataset", "nope", "--path", "{missing}"],
    ["eval", "--dataset", "wikiqa", "--path", "{garbage}", "--limit", "1"],
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "input.jsonl").write_text('{"id": "a", "text": "One sentence."}\n')
    (d / "garbage.jsonl").write_bytes(b"\xff\xfe\x00garbage{[\n")
    (d / "bad.toml").write_text("[train\nsteps = = 3\n")
    (d / "bad.json").write_text('{"steps": "many", "lr": null, "unknown_key": [1]}')
    return {"input": d / "input.jsonl", "garbage": d / "garbage.jsonl", "missing": d / "missing.jsonl",
            "badtoml": d / "bad.toml", "badjson": d / "bad.json"}


def _case_id(a):
    a = a.values[0] if hasattr(a, "values") else a
    return " ".join(a[:1] + a[-2:])


@pytest.mark.parametrize("args", CLI_CASES, ids=[_case_id(a) for a in CLI_CASES])
def test_cli_arguments_and_config_files(cli_files, args, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    names = {"{" + k + "}": str(v) for k, v in cli_files.items()}
    argv = [names.get(a, a) for a in args]
    result = CliRunner().invoke(app, argv)
    report.add(bad_inputs_tried=1)
    exc = result.exception
    assert result.exit_code != 0, f"{argv}: accepted ({result.output[-300:]})"
    assert exc is None or isinstance(exc, (SystemExit, AgrameError)), (
        f"{argv}: raw {type(exc).__module__}.{type(exc).__qualname__}: {exc!r}")
    assert "Traceback" not in result.output, f"{argv}: printed a traceback"
    message = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert len(message.strip()) >= 10, f"{argv}: no message"
