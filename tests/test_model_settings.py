"""Encoding settings are read from the model everywhere: markers, query augmentation, dim.

The plain base (all-MiniLM-L6-v2's own token states): no markers, no ``[MASK]``
padding, no projection; the default model shares its passages and ``[Q]`` queries. Every path that turns text into
vectors (encoder, planner, cite, eval, migrations, training) must lay text out as
the model says, checked here against the raw transformer run by hand.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agrame_vdb import Passage, connect
from agrame_vdb.checkpoints import DEFAULT_MODEL, PACKAGED_MODELS, EncoderConfig, load_checkpoint, load_tokenizer
from agrame_vdb.encoder import MultiVectorEncoder, encode_queries
from agrame_vdb.evaluation import EvalDataset, EvalQuery, evaluate, plain_base_encoder, read_propsegment, read_squad
from agrame_vdb.layout import document_tokens, query_tokens, special_tokens
from agrame_vdb.planner import Planner
from agrame_vdb.units import SENTENCE, split_sentences

from .conftest import data_file

TEXTS = ["The tower is tall. It was built in 1889 by Gustave Eiffel.", "Rivers flow to the sea. Some freeze in winter."]


def _raw_states(encoder: MultiVectorEncoder, text: str) -> np.ndarray:
    """The base transformer's own normalised token states of ``[CLS] text [SEP]``, run by hand."""
    batch = encoder.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.transformer(**batch).last_hidden_state[0]
    return F.normalize(hidden.float(), dim=-1).numpy()


def test_the_default_is_the_plain_base_with_its_own_q_prime_query(plain_encoder):
    """The default (minilm-qprime-query): the plain base's passages and [Q] queries, a
    trained [Q'] (marker row, its own top two layers, a projection of [Q'] queries only),
    coverage for propositions."""
    assert DEFAULT_MODEL == PACKAGED_MODELS["minilm-qprime-query"]
    default = MultiVectorEncoder.load(device="cpu")
    cfg = default.config
    assert (cfg.query_marker, cfg.doc_marker, cfg.subpassage_marker, cfg.query_augmentation) == (None, None, "[unused2]", False)
    assert (cfg.projection_scope, cfg.dim, cfg.unit_coverage) == ("subpassage_query", 384, {"proposition": 0.25})
    passages = [Passage.create(f"d{i}", 0, t) for i, t in enumerate(TEXTS)]
    for ours, base in zip(default.encode_passages(passages), plain_encoder.encode_passages(passages), strict=True):
        np.testing.assert_array_equal(ours.token_vectors, base.token_vectors)
    q, sq = encode_queries(default, ["when was the tower built?"], both=True)
    np.testing.assert_array_equal(q, plain_encoder.encode_queries(["when was the tower built?"]))
    assert np.abs(sq - q).max() > 0.1  # the [Q'] query is its own
    layers = default.subpassage_transformer.encoder.layer  # its own top two layers, the rest shared
    assert [layers[i] is default.transformer.encoder.layer[i] for i in range(6)] == [True] * 4 + [False] * 2
    assert default.subpassage_transformer.embeddings is default.transformer.embeddings
    assert not (default.tokenize_queries(["when was it built?"], "subpassage")["input_ids"]
                == default.tokenizer.mask_token_id).any()


def test_the_plain_base_is_the_base_used_plainly(plain_encoder):
    cfg = plain_encoder.config
    assert (cfg.query_marker, cfg.doc_marker, cfg.subpassage_marker, cfg.query_augmentation) == (None, None, None, False)
    assert plain_encoder.projection is None and plain_encoder.dim == plain_encoder.transformer.config.hidden_size == 384
    assert plain_encoder.marker_ids == {}


def test_plain_queries_are_never_padded_with_mask(plain_encoder):
    mask_id = plain_encoder.tokenizer.mask_token_id
    for marker in ("query", "subpassage"):
        batch = plain_encoder.tokenize_queries(["when was the tower built?", "a much longer question " * 20], marker)
        assert not (batch["input_ids"] == mask_id).any()
    q, sq = encode_queries(plain_encoder, ["when was the tower built?"], both=True)
    raw = _raw_states(plain_encoder, "when was the tower built?")
    n = raw.shape[0]
    np.testing.assert_allclose(q[0, :n], raw, atol=1e-5)
    assert not q[0, n:].any()  # padding rows are zero: they add nothing to a MaxSim sum
    np.testing.assert_array_equal(q, sq)  # no [Q'] marker: units are ranked with the [Q] query
    np.testing.assert_array_equal(plain_encoder.encode_queries(["when was the tower built?"], subpassage=True), q)


def test_a_marker_model_keeps_its_markers_and_mask_padding(encoder):
    batch = encoder.tokenize_queries(["when was it built?"], "subpassage")
    ids = batch["input_ids"][0].tolist()
    assert ids[1] == encoder.marker_ids["subpassage"] and ids[-1] == encoder.tokenizer.mask_token_id
    [doc] = document_tokens(encoder.tokenizer, encoder.config, ["It was built."])
    assert doc.ids[1] == encoder.marker_ids["document"] and special_tokens(encoder.config) == 3


def test_plain_documents_are_cls_text_sep_and_units_index_them(plain_encoder):
    passages = [Passage.create(f"d{i}", 0, t) for i, t in enumerate(TEXTS)]
    for p, e in zip(passages, plain_encoder.encode_passages(passages), strict=True):
        raw = _raw_states(plain_encoder, p.text)
        np.testing.assert_allclose(e.token_vectors, raw, atol=1e-5)
        assert e.token_ids[0] == plain_encoder.tokenizer.cls_token_id and e.token_offsets[0] is None
        assert e.token_offsets[1] is not None  # text starts at row 1: no [D] row
        for u in e.units:
            (start, end), = u.token_ranges
            decoded = plain_encoder.tokenizer.decode(list(e.token_ids[start:end]))
            assert decoded.replace(" ", "") == u.text_in(p.text).lower().replace(" ", "")


def test_planner_scores_plain_units_as_brute_force_span_maxsim(plain_encoder, tmp_path):
    repo = connect(f"qdrant-edge://{tmp_path / 'store'}")
    from agrame_vdb.indexer import IndexJob

    IndexJob([{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)], repo, "plain", encoder=plain_encoder).run()
    planner = Planner(repo, "plain", plain_encoder, device="cpu")
    query = "who built the tower?"
    got = planner.search(query, granularity=SENTENCE, k=10, alpha=0.5)
    q = _raw_states(plain_encoder, query)
    expected = {}
    for i, text in enumerate(TEXTS):
        d = _raw_states(plain_encoder, text)
        sim = q @ d.T
        passage = sim.max(axis=1).sum()
        [e] = plain_encoder.encode_passages([Passage.create(f"d{i}", 0, text)])
        for u in e.units:
            (a, b), = u.token_ranges
            expected[(f"d{i}", u.index)] = sim[:, a:b].max(axis=1).sum() + 0.5 * passage
    assert len(got.results) == len(expected)
    for r in got.results:
        assert r.score == pytest.approx(expected[(r.doc_id, r.unit_index)], abs=1e-3)
    assert [(r.doc_id, r.unit_index) for r in got.results] == sorted(expected, key=lambda k: -expected[k])
    repo.close()


def test_plain_base_configuration_is_the_plain_model_ranked_with_alpha(encoder, plain_encoder):
    passages = tuple(Passage.create(f"d{i}", 0, t) for i, t in enumerate(TEXTS))
    units = tuple(tuple(split_sentences(p.text)) for p in passages)
    queries = (
        EvalQuery("q1", "who built the tower?", {passages[0].id: 1}, {(passages[0].id, 1): 1}),
        EvalQuery("q2", "do rivers freeze?", {passages[1].id: 1}, {(passages[1].id, 1): 1}),
    )
    data = EvalDataset("tiny", passages, units, queries)
    [via_config] = evaluate(data, encoder, connect("memory://"), configurations=["plain-base"])
    [direct] = evaluate(data, plain_encoder, connect("memory://"), configurations=["passage-span-q'+alpha"])
    assert via_config.configuration == "plain-base"
    assert dict(via_config.unit) == dict(direct.unit) and dict(via_config.passage) == dict(direct.passage)
    plain = plain_base_encoder(encoder)
    assert plain.projection is None and plain.config.query_augmentation is False and plain.marker_ids == {}
    assert plain.config.unit_coverage == {}


def test_settings_round_trip_through_a_saved_checkpoint(tmp_path):
    checkpoint = load_checkpoint("plain-base")
    checkpoint.config = dataclasses.replace(checkpoint.config, query_maxlen=24, base=None)
    from agrame_vdb.checkpoints import save_checkpoint

    save_checkpoint(checkpoint, tmp_path / "m")
    tokenizer, cfg = load_tokenizer(tmp_path / "m")
    assert (cfg.query_marker, cfg.doc_marker, cfg.subpassage_marker, cfg.query_augmentation, cfg.query_maxlen) == (None, None, None, False, 24)
    assert not (tmp_path / "m" / "markers.safetensors").exists()
    ids = query_tokens(tokenizer, cfg, ["a question"])["input_ids"]
    assert ids.shape == (1, 24) and not (ids == tokenizer.mask_token_id).any()


def test_unit_coverage_round_trips_through_a_saved_checkpoint_and_old_configs_have_none(tmp_path):
    import json

    from agrame_vdb.checkpoints import save_checkpoint
    from agrame_vdb.errors import InvalidInputError, ModelLoadError
    from agrame_vdb.model_settings import read_settings

    checkpoint = load_checkpoint("plain-base")
    assert checkpoint.config.unit_coverage == {}  # its config file names none
    assert "unit_coverage" not in json.loads((PACKAGED_MODELS["plain-base"] / "agrame_config.json").read_text())
    checkpoint.config = dataclasses.replace(checkpoint.config, unit_coverage={"proposition": 0.25, "sentence": 0})
    directory = save_checkpoint(checkpoint, tmp_path / "m", include_transformer=False)
    written = json.loads((directory / "agrame_config.json").read_text())
    assert written["unit_coverage"] == {"proposition": 0.25, "sentence": 0.0}
    assert read_settings(directory).config.unit_coverage == {"proposition": 0.25, "sentence": 0.0}
    assert MultiVectorEncoder.load(directory, device="cpu").config.unit_coverage == {"proposition": 0.25, "sentence": 0.0}
    assert EncoderConfig.from_dict({"dim": 128}).unit_coverage == {}
    hash(EncoderConfig(unit_coverage={"proposition": 0.25}))  # still a frozen, hashable record
    for bad in ({"proposition": -1}, {"proposition": "high"}, {"Sentence": 1.0}, [["proposition", 0.25]], None):
        (directory / "agrame_config.json").write_text(json.dumps({**written, "unit_coverage": bad}))
        with pytest.raises(ModelLoadError, match="agrame_config.json.*unit_coverage"):
            read_settings(directory)
        with pytest.raises(InvalidInputError, match="unit_coverage"):
            EncoderConfig(unit_coverage=bad)  # type: ignore[arg-type]


def test_only_the_trained_plain_qprime_model_ranks_propositions_with_coverage():
    from agrame_vdb.model_settings import read_settings

    assert read_settings("minilm-plain-qprime").config.unit_coverage == {"proposition": 0.25}
    assert read_settings("plain-base").config.unit_coverage == {}  # the baseline: span MaxSim and alpha
    assert read_settings("minilm-frozen-128").config.unit_coverage == {}


def test_marker_settings_default_as_before_for_old_configs():
    cfg = EncoderConfig.from_dict({"dim": 128, "query_marker": "[unused0]"})
    assert cfg.query_augmentation is True and cfg.doc_marker == "[unused1]" and special_tokens(cfg) == 3


def test_propsegment_parts_share_no_cluster_and_make_up_the_whole():
    folder = data_file("propsegment", "propositions.dev.json").parent
    whole, train, held = (read_propsegment(folder, split=s) for s in ("all", "train", "heldout"))
    assert {p.id for p in train.passages}.isdisjoint({p.id for p in held.passages})
    assert {p.id for p in train.passages} | {p.id for p in held.passages} == {p.id for p in whole.passages}
    assert len(train.queries) + len(held.queries) == len(whole.queries) and train.queries and held.queries
    held_ids = {p.id for p in held.passages}
    for q in held.queries:
        assert set(q.passage_qrels) <= held_ids


def test_squad_reader_points_each_question_at_the_sentence_with_its_answer():
    path = data_file("squad-train", "train-v1.1-part.json")
    data = read_squad(path)
    assert len(data.queries) == 3807 and len(data.passages) == 583
    import json

    answers = {f"squad-{qa['id']}": qa["answers"][0]["text"] for a in json.loads(path.read_text())["data"]
               for p in a["paragraphs"] for qa in p["qas"]}
    by_id = {p.id: (p, u) for p, u in zip(data.passages, data.units, strict=True)}
    hits = 0
    for q in data.queries:
        [(pid, index)] = q.unit_qrels
        passage, units = by_id[pid]
        hits += answers[q.id] in units[index].text_in(passage.text)
    assert hits / len(data.queries) > 0.97  # an answer may cross a sentence boundary


def test_propsegment_training_never_takes_the_hypothesis_document_as_a_negative():
    from agrame_vdb.training.data import examples_from_dataset

    data = read_propsegment(data_file("propsegment", "propositions.dev.json").parent, split="train")
    assert all(q.excluded for q in data.queries)
    text_of = {p.id: p.text for p in data.passages}
    examples = examples_from_dataset(data, negatives=7, hard_negatives=3, seed=0)
    queries = [q for q in data.queries if any(g > 0 for g in q.passage_qrels.values())]  # one example each, in order
    assert len(examples) == len(queries)
    for q, e in zip(queries, examples, strict=True):
        assert e.query == q.text
        assert not {text_of[pid] for pid in q.excluded} & {p.text for p in e.passages}


@pytest.mark.parametrize("module", ["agrame_vdb.layout", "agrame_vdb.encoder", "agrame_vdb.model_settings"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_the_packaged_plain_qprime_model_is_used_as_it_was_trained():
    enc = MultiVectorEncoder.load("minilm-plain-qprime", device="cpu")
    cfg = enc.config
    assert (cfg.dim, cfg.query_marker, cfg.doc_marker, cfg.subpassage_marker, cfg.query_augmentation) == (
        384, None, None, "[unused2]", False)
    assert set(enc.marker_ids) == {"subpassage"} and enc.projection is not None
    q_ids = enc.tokenize_queries(["who built it?"])["input_ids"][0]
    sub_ids = enc.tokenize_queries(["who built it?"], "subpassage")["input_ids"][0]
    assert not (q_ids == enc.tokenizer.mask_token_id).any() and not (sub_ids == enc.tokenizer.mask_token_id).any()
    assert sub_ids[1] == enc.marker_ids["subpassage"] and q_ids[1] != enc.marker_ids["subpassage"]
    q, sq = encode_queries(enc, ["who built it?"], both=True)
    assert not np.array_equal(q, sq)  # [Q'] is its own query
    n = int(enc.tokenize_queries(["who built it?"])["attention_mask"].sum())
    assert not q[0, n:].any() and not sq[0, n + 1:].any()
