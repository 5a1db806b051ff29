"""Evaluation: the readers against the published counts, the metrics on hand-computed
rankings, and the side-by-side runs against a brute-force MaxSim."""

from __future__ import annotations

import csv
import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from agrame_vdb import connect
from agrame_vdb.encoder import encode_queries
from agrame_vdb.errors import InvalidInputError
from agrame_vdb.evaluation import (
    CONFIGURATIONS,
    EvalDataset,
    EvalQuery,
    evaluate,
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    plain_base_encoder,
    read_propsegment,
    read_scifact,
    read_wikiqa,
    recall_at_k,
    results_table,
    scifact_split,
)
from agrame_vdb.units import Passage, units_from_char_spans

from .conftest import data_file

# --------------------------------------------------------------------------- metrics by hand


def test_metrics_on_a_hand_computed_ranking():
    qrels = {"a": 2, "b": 1, "c": 0, "z": 1}  # z is never retrieved; c is judged but not relevant
    ranking = ["c", "a", "x", "b", "y", "w"]
    assert precision_at_k(ranking, qrels, 1) == 0.0
    assert precision_at_k(ranking, qrels, 2) == 0.5
    assert recall_at_k(ranking, qrels, 5) == pytest.approx(2 / 3)
    assert recall_at_k(ranking, qrels, 1) == 0.0
    assert mrr_at_k(ranking, qrels, 10) == 0.5
    assert mrr_at_k(ranking, qrels, 1) == 0.0
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, qrels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b", "z"], qrels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a", "z"], qrels, 10) < 1.0  # grades order matters
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))


def test_mean_metrics_skips_queries_without_a_relevant_item():
    runs = [(["a", "b"], {"a": 1}), (["b", "a"], {"a": 1}), (["a"], {"a": 0})]
    means = mean_metrics(runs)
    assert means["n"] == 2
    assert means["P@1"] == 0.5 and means["MRR@10"] == pytest.approx(0.75) and means["R@5"] == 1.0
    assert means["nDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


# --------------------------------------------------------------------------- metrics against trec_eval

_KS = (1, 2, 3, 5, 10)


def _trec_ranking(scores):
    """The order trec_eval ranks a run in: score descending, ties by document id descending."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def _trec_eval(runs, qrels):
    """trec_eval's P@k, R@k, nDCG@k and RR of every query (ir-measures' pytrec_eval provider:
    its RR@k comes from the MS MARCO script, which breaks ties in another order)."""
    ir_measures = pytest.importorskip("ir_measures")
    measures = [m @ k for m in (ir_measures.P, ir_measures.R, ir_measures.nDCG) for k in _KS] + [ir_measures.RR]
    trec_qrels = [ir_measures.Qrel(q, doc, grade) for q, judged in qrels.items() for doc, grade in judged.items()]
    trec_run = [ir_measures.ScoredDoc(q, doc, score) for q, scores in runs.items() for doc, score in scores.items()]
    return {(m.query_id, str(m.measure)): m.value for m in ir_measures.pytrec_eval.iter_calc(measures, trec_qrels, trec_run)}


def _against_trec_eval(runs, qrels):
    """Every metric of every query with a relevant item, ours against trec_eval's, and their means."""
    theirs = _trec_eval(runs, qrels)
    judged = [q for q in runs if any(g >= 1 for g in qrels.get(q, {}).values())]
    assert judged
    expected = defaultdict(list)
    for q in judged:
        ranking = _trec_ranking(runs[q])
        rr = theirs[(q, "RR")]
        for k in _KS:
            trec = {"P": theirs[(q, f"P@{k}")], "R": theirs[(q, f"R@{k}")], "nDCG": theirs[(q, f"nDCG@{k}")],
                    "RR": rr if rr > 0 and round(1 / rr) <= k else 0.0}
            ours = {"P": precision_at_k(ranking, qrels[q], k), "R": recall_at_k(ranking, qrels[q], k),
                    "nDCG": ndcg_at_k(ranking, qrels[q], k), "RR": mrr_at_k(ranking, qrels[q], k)}
            assert ours == pytest.approx(trec, abs=1e-6), (q, k)
            for name, value in trec.items():
                expected[f"{name}@{k}"].append(value)
    means = mean_metrics((_trec_ranking(runs[q]), qrels.get(q, {})) for q in runs)
    assert means["n"] == len(judged)
    for ours_name, trec in (("P@1", "P@1"), ("R@5", "R@5"), ("MRR@10", "RR@10"), ("nDCG@10", "nDCG@10")):
        assert means[ours_name] == pytest.approx(sum(expected[trec]) / len(judged), abs=1e-6), ours_name


def test_metrics_match_trec_eval_on_hand_made_runs_with_ties():
    runs = {
        "ties-at-the-top": {"a": 3.0, "b": 3.0, "c": 3.0, "d": 1.0},
        "graded": {"a": 0.9, "b": 0.8, "c": 0.8, "x": 0.5, "y": 0.1},
        "relevant-last": {"x": 5.0, "y": 4.0, "z": 4.0, "w": 3.0, "v": 2.0, "u": 1.0, "t": 1.0, "s": 0.5, "r": 0.2, "q": 0.1, "a": 0.0},
        "unretrieved-relevant": {"a": 1.0, "b": 1.0},
        "nothing-relevant": {"a": 1.0, "b": 0.5},
        "numeric-ids": {"a2": 1.0, "a10": 1.0, "a1": 0.5},
    }
    qrels = {
        "ties-at-the-top": {"b": 1, "d": 2},
        "graded": {"c": 3, "b": 1, "x": 0, "y": 2},
        "relevant-last": {"a": 1},
        "unretrieved-relevant": {"b": 2, "zz": 1, "yy": 3},
        "nothing-relevant": {"a": 0},
        "numeric-ids": {"a10": 1, "a1": 1},
    }
    _against_trec_eval(runs, qrels)


def test_metrics_match_trec_eval_on_random_runs():
    rng = random.Random(7)
    runs, qrels = {}, {}
    for i in range(60):
        pool = [f"p{j}#{u}" for j in range(8) for u in range(4)]  # unit-like keys
        retrieved = rng.sample(pool, rng.randint(1, 20))
        runs[f"q{i}"] = {doc: float(rng.randint(0, 6)) for doc in retrieved}  # few distinct scores: many ties
        judged = rng.sample(pool, rng.randint(0, 8))
        qrels[f"q{i}"] = {doc: rng.choice([0, 1, 1, 2, 3]) for doc in judged}
    _against_trec_eval(runs, qrels)


def test_metrics_doctests():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("agrame_vdb.evaluation.metrics"))
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- readers


def test_wikiqa_reader_matches_the_published_counts():
    for split, counts in (("dev", (296, 2733, 140)), ("train", (2118, 20360, 1040))):
        ds = read_wikiqa(data_file("wikiqa", f"WikiQA-{split}.tsv"))
        assert (ds.stats["questions"], ds.stats["rows"], ds.stats["positive_rows"]) == counts
        assert len(ds.queries) == ds.stats["answered_questions"]  # questions with an answer sentence
        assert sum(len(q.unit_qrels) for q in ds.queries) == counts[2]
    dev = read_wikiqa(data_file("wikiqa", "WikiQA-dev.tsv"))
    assert (len(dev.queries), len(dev.passages)) == (126, 293)
    # the answer unit is the Label-1 sentence, and units follow SentenceID order
    with open(data_file("wikiqa", "WikiQA-dev.tsv"), encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    answers = {(r["QuestionID"], r["Sentence"].strip()) for r in rows if r["Label"] == "1"}
    index = dev.passage_by_id()
    found = set()
    for q in dev.queries:
        for (pid, u), grade in q.unit_qrels.items():
            p = dev.passages[index[pid]]
            found.add((q.id.removeprefix("wikiqa-"), dev.units[index[pid]][u].text_in(p.text)))
            assert grade == 1 and q.passage_qrels[pid] == 1
    assert found == answers
    first = next(r for r in rows if r["DocumentID"] == dev.passages[0].doc_id and r["SentenceID"].endswith("-0"))
    assert dev.units[0][0].text_in(dev.passages[0].text) == first["Sentence"].strip()


def test_scifact_reader_matches_the_published_counts_and_rationales():
    folder = data_file("scifact", "corpus.jsonl").parent
    full = read_scifact(folder, split="all", corpus="full", require_evidence=False)
    assert (full.stats["abstracts"], full.stats["claims"]) == (5183, 809)
    assert len(full.passages) == 5183 and len(full.queries) == 809
    train = read_scifact(folder, split="train", distractors=0)
    held = read_scifact(folder, split="heldout", distractors=300)
    everything = read_scifact(folder, split="all", distractors=0)
    assert {q.id for q in train.queries} | {q.id for q in held.queries} == {q.id for q in everything.queries}
    assert not {q.id for q in train.queries} & {q.id for q in held.queries}
    assert 0.1 < len(held.queries) / len(everything.queries) < 0.3
    assert all(scifact_split(q.id.removeprefix("scifact-")) == "heldout" for q in held.queries)
    cited = {pid for q in held.queries for pid in q.passage_qrels}
    assert len(held.passages) == len(cited) + 300
    # a rationale unit is the corpus sentence with that index
    corpus = {str(r["doc_id"]): r for r in map(json.loads, open(folder / "corpus.jsonl", encoding="utf-8"))}
    claims = {f"scifact-{c['id']}": c for c in map(json.loads, open(folder / "claims_train.jsonl", encoding="utf-8"))}
    index = held.passage_by_id()
    checked = 0
    for q in held.queries:
        for doc, sets in claims[q.id]["evidence"].items():
            p = held.passages[index[next(pid for pid in q.passage_qrels if held.passages[index[pid]].doc_id == doc)]]
            assert q.passage_qrels[p.id] == 2
            for s in {i for e in sets for i in e["sentences"]}:
                assert q.unit_qrels[(p.id, s)] == 1
                assert held.units[index[p.id]][s].text_in(p.text) == corpus[doc]["abstract"][s].strip()
                checked += 1
    assert checked == sum(len(q.unit_qrels) for q in held.queries) > 0


def test_propsegment_reader_matches_the_published_counts():
    ds = read_propsegment(data_file("propsegment", "propositions.dev.json").parent)
    assert (ds.stats["segmented_sentences"], ds.stats["reference_propositions"]) == (811, 2941)
    assert ds.stats["sentences_with_text"] == 387  # the Wikipedia clusters; NewSHead text is not distributed
    assert ds.unit_kind == "proposition" and len(ds.passages) == 45
    index = ds.passage_by_id()
    assert any(len(u.char_spans) > 1 for units in ds.units for u in units)  # non-contiguous propositions
    for q in ds.queries:
        own = q.filter.filter.value  # Not(Eq("doc_id", hypothesis document))
        assert all(ds.passages[index[pid]].doc_id != own for pid in q.passage_qrels)
        assert all(g >= 2 for g in q.passage_qrels.values())  # at least two raters say "entails"
        for (pid, u), g in q.unit_qrels.items():
            assert pid in q.passage_qrels and 0 <= u < len(ds.units[index[pid]]) and g >= 1


# --------------------------------------------------------------------------- side-by-side runs


def _tiny_dataset() -> EvalDataset:
    texts = [
        ["The Eiffel Tower is in Paris.", "It was finished in 1889.", "It is made of wrought iron."],
        ["Bacteria resist antibiotics.", "Efflux pumps remove the drug from the cell."],
        ["The Colosseum is in Rome.", "It was built in 80 AD.", "Gladiators fought there."],
    ]
    passages, units = [], []
    for i, sentences in enumerate(texts):
        text = " ".join(sentences)
        spans, pos = [], 0
        for s in sentences:
            spans.append((pos, pos + len(s)))
            pos += len(s) + 1
        passages.append(Passage.create(f"doc{i}", 0, text))
        units.append(tuple(units_from_char_spans(text, spans, kind="sentence")))
    p = [x.id for x in passages]
    queries = (
        EvalQuery("q1", "when was the eiffel tower finished?", {p[0]: 1}, {(p[0], 1): 1}),
        EvalQuery("q2", "how do bacteria remove drugs?", {p[1]: 2}, {(p[1], 1): 1}),
        EvalQuery("q3", "where did gladiators fight?", {p[2]: 1}, {(p[2], 2): 1}),
    )
    return EvalDataset("tiny", tuple(passages), tuple(units), queries)


def test_evaluate_runs_every_configuration_through_the_planner_like_a_brute_force_maxsim(encoder):
    ds = _tiny_dataset()
    repo = connect("memory://")
    results = evaluate(ds, encoder, repo, model_name="untrained", alpha=0.5, candidates=0)
    assert [r.configuration for r in results] == list(CONFIGURATIONS)
    assert repo.list_collections() == []  # dropped afterwards
    # the reference: encode here and score by hand with numpy
    encoded = encoder.encode_passages(list(ds.passages), [list(u) for u in ds.units], sentences=False)
    q = encoder.encode_queries([x.text for x in ds.queries])
    sq = encoder.encode_queries([x.text for x in ds.queries], subpassage=True)

    def maxsim(query, rows):
        return float((query @ rows.T).max(axis=1).sum())

    alone = [encoder.encode_passages([Passage.create("s", 0, u.text_in(p.text))])[0].token_vectors
             for p, units in zip(ds.passages, ds.units) for u in units]
    keys = [(p.id, u.index) for p, units in zip(ds.passages, ds.units) for u in units]
    expected: dict[str, list] = {c: [] for c in CONFIGURATIONS}
    passage_runs = []
    for i, query in enumerate(ds.queries):
        p_scores = [maxsim(q[i], e.token_vectors) for e in encoded]
        passage_runs.append(([ds.passages[j].id for j in np.argsort(-np.array(p_scores), kind="stable")], query.passage_qrels))
        for config, (sub, a) in {"passage-span-q": (q, 0.0), "passage-span-q'": (sq, 0.0), "passage-span-q'+alpha": (sq, 0.5)}.items():
            scored = [
                (maxsim(sub[i], e.token_vectors[u.token_positions]) + a * p_scores[j], (e.passage.id, u.index))
                for j, e in enumerate(encoded) for u in e.units
            ]
            expected[config].append(([k for _, k in sorted(scored, key=lambda x: -x[0])][:10], query.unit_qrels))
        scored = sorted(((maxsim(q[i], t), k) for t, k in zip(alone, keys)), key=lambda x: -x[0])
        expected["sentence-encoding"].append(([k for _, k in scored][:10], query.unit_qrels))
    # plain-base: the base's own token states, scored the same way with [Q] for units and alpha
    plain = plain_base_encoder(encoder)
    pe = plain.encode_passages(list(ds.passages), [list(u) for u in ds.units], sentences=False)
    pq = plain.encode_queries([x.text for x in ds.queries])
    plain_passages = []
    for i, query in enumerate(ds.queries):
        p_scores = [maxsim(pq[i], e.token_vectors) for e in pe]
        plain_passages.append(([ds.passages[j].id for j in np.argsort(-np.array(p_scores), kind="stable")], query.passage_qrels))
        scored = [(maxsim(pq[i], e.token_vectors[u.token_positions]) + 0.5 * p_scores[j], (e.passage.id, u.index))
                  for j, e in enumerate(pe) for u in e.units]
        expected["plain-base"].append(([k for _, k in sorted(scored, key=lambda x: -x[0])][:10], query.unit_qrels))
    by_name = {r.configuration: r for r in results}
    assert by_name["plain-base"].passage == pytest.approx(mean_metrics(plain_passages), abs=1e-9)
    for config in CONFIGURATIONS:
        assert by_name[config].unit == pytest.approx(mean_metrics(expected[config]), abs=1e-9), config
    for config in ("passage-span-q", "passage-span-q'", "passage-span-q'+alpha"):
        assert by_name[config].passage == pytest.approx(mean_metrics(passage_runs), abs=1e-9)
    assert by_name["passage-span-q'+alpha"].alpha == 0.5 and by_name["passage-span-q"].alpha is None
    table = results_table(results)
    assert table.count("\n") == 1 + len(CONFIGURATIONS) and "passage-span-q'+alpha (α=0.5)" in table


def test_the_models_unit_coverage_ranks_its_configurations_and_never_the_plain_base(encoder, monkeypatch):
    """A model with a coverage weight for the unit kind: its span configurations add
    beta * W * C(u,q') (a brute force says which units win), the plain-base baseline does
    not, even when the plain encoder given is that very model."""
    import dataclasses

    ds = _tiny_dataset()
    configs = ["plain-base", "passage-span-q'", "passage-span-q'+alpha"]
    [plain_before, *_] = evaluate(ds, encoder, connect("memory://"), configurations=["plain-base"], alpha=0.5, candidates=0,
                                  plain_encoder=encoder, recall_at=())
    monkeypatch.setattr(encoder, "config", dataclasses.replace(encoder.config, unit_coverage={"sentence": 2.0}))
    results = evaluate(ds, encoder, connect("memory://"), configurations=configs, alpha=0.5, candidates=0,
                       plain_encoder=encoder, recall_at=())
    by_name = {r.configuration: r for r in results}
    assert dict(by_name["plain-base"].unit) == dict(plain_before.unit)
    assert dict(by_name["passage-span-q'+alpha"].unit) != dict(plain_before.unit)  # the term reorders units here
    encoded = encoder.encode_passages(list(ds.passages), [list(u) for u in ds.units], sentences=False)
    q, sq = encode_queries(encoder, [x.text for x in ds.queries], both=True)
    for config, a in (("passage-span-q'", 0.0), ("passage-span-q'+alpha", 0.5)):
        runs = []
        for i, query in enumerate(ds.queries):
            real = np.any(sq[i] != 0, axis=1)
            scored = []
            for e in encoded:
                d = e.token_vectors.astype(np.float64).T
                sim, s_p = sq[i].astype(np.float64) @ d, (q[i].astype(np.float64) @ d).max(axis=1).sum()
                for u in e.units:
                    pos = u.token_positions
                    total = sim[:, pos].max(axis=1).sum() + a * s_p + 2.0 * real.sum() * sim[real][:, pos].max(axis=0).mean()
                    scored.append((total, (e.passage.id, u.index)))
            runs.append(([k for _, k in sorted(scored, key=lambda x: -x[0])][:10], query.unit_qrels))
        assert by_name[config].unit == pytest.approx(mean_metrics(runs), abs=1e-9), config
    assert "no coverage term" in CONFIGURATIONS["plain-base"] and "unit_coverage" in CONFIGURATIONS["passage-span-q'+alpha"]


def test_eval_command_prints_one_json_object_per_configuration(tmp_path):
    from agrame_vdb.cli import app

    rows = [
        ("Q1", "when was the tower finished?", "D1", "Tower", "D1-0", "The tower is in Paris.", "0"),
        ("Q1", "when was the tower finished?", "D1", "Tower", "D1-1", "It was finished in 1889.", "1"),
        ("Q2", "what do efflux pumps do?", "D2", "Bacteria", "D2-0", "Bacteria resist antibiotics.", "0"),
        ("Q2", "what do efflux pumps do?", "D2", "Bacteria", "D2-1", "Efflux pumps remove the drug.", "1"),
        ("Q3", "who painted it?", "D3", "Art", "D3-0", "The museum is large.", "0"),
    ]
    path = tmp_path / "WikiQA-tiny.tsv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\n")
        for r in rows:
            fh.write("\t".join(r) + "\n")
    result = CliRunner().invoke(app, ["eval", "--dataset", "wikiqa", "--path", str(path), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [o["configuration"] for o in objects] == list(CONFIGURATIONS)
    for o in objects:
        assert o["dataset"] == "wikiqa-tiny" and o["queries"] == 2 and o["unit"]["n"] == 2 and o["passage"]["n"] == 2
        assert set(o["unit"]) == {"P@1", "R@5", "MRR@10", "nDCG@10", "n"}
        assert o["first_stage_used"] == "hybrid"  # the default (auto) on a collection with lexical vectors
        if o["configuration"] != "sentence-encoding":  # qdrant-edge: every first stage, and the ceiling
            recall = o["first_stage"]
            assert recall["n"] == 2 and set(recall) == {"encoding", "n", "pooled", "lexical", "hybrid", "maxsim", "exhaustive"}
            assert list(recall["exhaustive"]) == [f"{k}@{n}" for k in ("recall", "fraction") for n in (50, 200, 1000)]
            assert recall["exhaustive"]["recall@50"] == 1.0  # 3 passages: every one is among 50
    table = CliRunner().invoke(app, ["eval", "--dataset", "wikiqa", "--path", str(path), "--device", "cpu",
                                     "--configuration", "passage-span-q", "--recall-at", "1,2", "--first-stage", "maxsim"])
    assert table.exit_code == 0, table.output
    assert "First-stage recall" in table.output and "| recall@1 | recall@2 | fraction@1 | fraction@2 | n |" in table.output
    assert table.output.count("| wikiqa-tiny | default | passage encoding |") == 5
    for bad_option in (["--recall-at", "fifty"], ["--recall-at", "0"], ["--first-stage", "bm25"]):
        bad = CliRunner().invoke(app, ["eval", "--dataset", "wikiqa", "--path", str(path), "--device", "cpu", *bad_option])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
    bad = CliRunner().invoke(app, ["eval", "--dataset", "msmarco", "--path", str(path)])
    assert bad.exit_code == 2 and "unknown data set" in bad.output


# --------------------------------------------------------------------------- first-stage recall


def _random_collection(n_passages=60, n_queries=9, dim=8, seed=3):
    """A memory collection of random token vectors and queries with random relevant
    passages (the last query's filter leaves out the first ten documents)."""
    from agrame_vdb import CollectionSchema, StoredPassage
    from agrame_vdb.repository import Eq, Not, Or

    rng = np.random.default_rng(seed)
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("fs", dim=dim))
    tokens = [rng.standard_normal((int(rng.integers(2, 7)), dim)).astype(np.float32) for _ in range(n_passages)]
    stored = [StoredPassage.create(f"d{i:02d}", 0, t) for i, t in enumerate(tokens)]
    repo.upsert("fs", stored)
    q_all = rng.standard_normal((n_queries, 4, dim)).astype(np.float32)
    out = Not(Or(*[Eq("doc_id", f"d{i:02d}") for i in range(10)]))
    queries = []
    for i in range(n_queries):
        last = i == n_queries - 1
        relevant = rng.choice(np.arange(10 if last else 0, n_passages), size=int(rng.integers(1, 4)), replace=False)
        qrels = {stored[j].id: int(rng.integers(1, 3)) for j in relevant}
        queries.append(EvalQuery(f"q{i}", "", qrels, {}, out if last else None))
    queries.append(EvalQuery("none", "", {stored[0].id: 0}, {}))  # no relevant passage: not counted
    return repo, stored, tokens, np.concatenate([q_all, q_all[:1]]), queries


def _reference_recall(rankings, queries, at):
    """recall@N (any relevant in the top N) and fraction@N, written out plainly."""
    out = {}
    counted = [(r, q) for r, q in zip(rankings, queries) if any(g >= 1 for g in q.passage_qrels.values())]
    for n in at:
        out[f"recall@{n}"] = np.mean([any(p in r[:n] and q.passage_qrels[p] >= 1 for p in q.passage_qrels) for r, q in counted])
    for n in at:
        out[f"fraction@{n}"] = np.mean([
            sum(1 for p, g in q.passage_qrels.items() if g >= 1 and p in r[:n]) / sum(1 for g in q.passage_qrels.values() if g >= 1)
            for r, q in counted
        ])
    return out


def test_first_stage_recall_equals_numpy_pooled_cosine_and_brute_force_maxsim():
    from agrame_vdb.evaluation import RECALL_AT, first_stage_recall, recall_table

    repo, stored, tokens, q_all, queries = _random_collection()
    at = (1, 5, 20, 100)  # 100 > 60 passages: every passage the filter allows
    found = first_stage_recall(repo, "fs", q_all, queries, len(stored), at)
    assert found.n == len(queries) - 1 and list(found.stages) == ["pooled", "maxsim", "exhaustive"]

    def allowed(query):
        return [j for j in range(len(stored)) if query.filter is None or j >= 10]

    pooled = np.stack([t.mean(axis=0) / np.linalg.norm(t.mean(axis=0)) for t in tokens])
    maxsim = np.array([[(q @ t.T).max(axis=1).sum() for t in tokens] for q in q_all])
    cosine = []
    for i, q in enumerate(q_all):
        pq = q.mean(axis=0) / np.linalg.norm(q.mean(axis=0))
        keep = allowed(queries[i])
        cosine.append([stored[keep[j]].id for j in np.argsort(-(pooled[keep] @ pq), kind="stable")])
    exhaustive = [[stored[allowed(queries[i])[j]].id for j in np.argsort(-maxsim[i, allowed(queries[i])], kind="stable")]
                  for i in range(len(q_all))]
    assert found.stages["pooled"] == pytest.approx(_reference_recall(cosine, queries, at), abs=1e-12)
    assert found.stages["exhaustive"] == pytest.approx(_reference_recall(exhaustive, queries, at), abs=1e-12)
    # the engine's MaxSim over a pooled prefetch (max(4N, 400) >= 60: every passage here) is the exhaustive ranking
    assert found.stages["maxsim"] == pytest.approx(found.stages["exhaustive"], abs=1e-12)
    for stage in found.stages.values():  # monotone in N; every relevant passage is found at N >= the collection
        for kind in ("recall", "fraction"):
            values = [stage[f"{kind}@{n}"] for n in at]
            assert values == sorted(values) and values[-1] == 1.0
    table = recall_table([type("R", (), {"dataset": "rand", "model": "m", "recall": found})()])
    assert table.count("\n") == 1 + 3 and "| rand | m | passage encoding | exhaustive |" in table
    assert RECALL_AT == (50, 200, 1000)
    with pytest.raises(InvalidInputError, match="recall@N"):
        first_stage_recall(repo, "fs", q_all, queries, len(stored), (0,))


def test_evaluate_reports_first_stage_recall_once_per_collection_and_keeps_its_figures(plain_encoder):
    from agrame_vdb.encoder import encode_queries
    from agrame_vdb.evaluation import first_stage_recall, recall_table

    ds = _tiny_dataset()
    repo = connect("memory://")
    configs = ["plain-base", "sentence-encoding", "passage-span-q"]
    kw = {"configurations": configs, "candidates": 2, "plain_encoder": plain_encoder}
    results = evaluate(ds, plain_encoder, repo, recall_at=(1, 2, 3), keep=True, **kw)
    by_name = {r.configuration: r for r in results}
    assert by_name["sentence-encoding"].recall is None
    assert by_name["plain-base"].recall.encoding == "plain base" and by_name["passage-span-q"].recall.encoding == "passage encoding"
    q, _ = encode_queries(plain_encoder, [x.text for x in ds.queries], both=False)
    again = first_stage_recall(repo, "agrame_eval_passages", q, ds.queries, len(ds.passages), (1, 2, 3))
    assert by_name["passage-span-q"].recall == again
    # the indexer gave the collections lexical vectors: the planner's default (auto) is then hybrid
    assert {r.first_stage for r in results} == {"hybrid"}
    as_json = by_name["passage-span-q"].to_json()
    assert as_json["first_stage_used"] == "hybrid"
    assert set(as_json["first_stage"]) == {"encoding", "n", "pooled", "lexical", "hybrid", "maxsim", "exhaustive"}
    assert "first_stage" not in by_name["sentence-encoding"].to_json()
    assert recall_table(results).count("\n") == 1 + 2 * 5  # two collections, five stages each
    # the end-to-end figures do not depend on measuring the first stage, nor on which one
    # when the engine's MaxSim prefetch already holds every passage
    plain = evaluate(ds, plain_encoder, repo, recall_at=(), **kw)
    maxsim = evaluate(ds, plain_encoder, repo, recall_at=(), first_stage="maxsim", **kw)
    assert [r.recall for r in plain] == [None] * 3 and {r.first_stage for r in maxsim} == {"maxsim"}
    for a, b in zip(results, plain):
        assert (a.passage, a.unit) == (b.passage, b.unit)
    assert by_name["passage-span-q"].candidates == 2 and [r.candidates for r in maxsim] == [2, 2, 2]


def test_evaluate_stores_token_vectors_as_asked(plain_encoder):
    """--storage: the evaluation collections hold float16 (or int8) token vectors; a bad value is refused first."""
    ds = _tiny_dataset()
    repo = connect("memory://")
    kw = {"configurations": ["passage-span-q"], "candidates": 2, "recall_at": (), "keep": True}
    evaluate(ds, plain_encoder, repo, storage="float16", **kw)
    assert repo.open_collection("agrame_eval_passages").dtype == "float16"
    dim = int(plain_encoder.dim)
    # every storage, binary too: the bytes a row takes in the token copy's form
    for storage, row in (("float32", 4 * dim), ("float16", 2 * dim), ("int8", dim + 4), ("binary", dim // 8 + dim + 4)):
        store = connect("memory://")
        [result] = evaluate(ds, plain_encoder, store, storage=storage, **kw)
        assert result.row_bytes == row and store.open_collection("agrame_eval_passages").dtype == storage
    store = connect("memory://")
    [default] = evaluate(ds, plain_encoder, store, **kw)
    assert store.open_collection("agrame_eval_passages").dtype == "float16"  # the index job's default
    assert default.row_bytes == 2 * dim
    with pytest.raises(InvalidInputError, match="storage"):
        evaluate(ds, plain_encoder, repo, storage="int4", **kw)
