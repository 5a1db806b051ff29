"""Multi-granular training: the loss on hand-computed cases, both regimes for a couple
of steps on a tiny batch, training files and configs, and the saved model round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agrame_vdb.checkpoints import MARKERS_FILE, Checkpoint, load_checkpoint, save_checkpoint
from agrame_vdb.encoder import MultiVectorEncoder
from agrame_vdb.errors import InvalidInputError
from agrame_vdb.training import (
    BM25,
    PassageCache,
    TrainConfig,
    TrainExample,
    TrainPassage,
    Trainer,
    TrainableModel,
    kl_to_target,
    load_config,
    multi_granular_loss,
    padded_passage_scores,
    padded_unit_scores,
    read_training_file,
    targets_from_labels,
    targets_from_scores,
    untrained_checkpoint,
)
from agrame_vdb.units import units_from_char_spans

from .conftest import data_file


# --------------------------------------------------------------------------- the loss by hand


def test_label_targets_follow_the_grades_with_smoothing():
    t = targets_from_labels(torch.tensor([[2.0, 1.0, 0.0, 0.0]]), smoothing=0.1)
    # 0.9 * [2/3, 1/3, 0, 0] + 0.1 / 4
    torch.testing.assert_close(t, torch.tensor([[0.625, 0.325, 0.025, 0.025]]))
    assert t[0, 0] > t[0, 1] > t[0, 2] == t[0, 3]
    # padding gets nothing and does not count in the smoothing
    t = targets_from_labels(torch.tensor([[1.0, 0.0, 5.0]]), smoothing=0.2, mask=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(t, torch.tensor([[0.9, 0.1, 0.0]]))
    with pytest.raises(InvalidInputError):
        targets_from_labels(torch.tensor([[-1.0, 1.0]]))


def test_teacher_targets_are_a_softmax_and_order_like_the_scores():
    t = targets_from_scores(torch.tensor([[3.0, 1.0, 2.0]]), temperature=0.5)
    e = np.exp(np.array([6.0, 2.0, 4.0]))
    np.testing.assert_allclose(t.numpy()[0], e / e.sum(), rtol=1e-6)
    assert t[0, 0] > t[0, 2] > t[0, 1]


def test_kl_by_hand_and_padding_never_enters_the_softmax():
    target = torch.tensor([[0.75, 0.25, 0.0]])
    scores = torch.tensor([[0.0, 2.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    p = np.exp([0.0, 2.0]) / np.exp([0.0, 2.0]).sum()
    expected = 0.75 * math.log(0.75 / p[0]) + 0.25 * math.log(0.25 / p[1])
    assert float(kl_to_target(target, scores, mask=mask)) == pytest.approx(expected, rel=1e-5)
    # a target of 0 adds 0, even where the model gives almost no mass
    assert float(kl_to_target(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -1e4]]))) == pytest.approx(0.0, abs=1e-6)


def test_sentence_term_is_weighted_by_the_passage_target_probability():
    passage_scores = torch.tensor([[0.0, 2.0]])
    passage_targets = torch.tensor([[0.75, 0.25]])
    unit_scores = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 2.0, -1.0]]])
    unit_targets = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]])
    unit_mask = torch.tensor([[[True, True, False], [True, True, True]]])
    parts = multi_granular_loss(passage_scores, passage_targets, unit_scores, unit_targets, unit_mask=unit_mask)

    def kl(t, s):
        p = np.exp(s) / np.exp(s).sum()
        return sum(ti * math.log(ti / pi) for ti, pi in zip(t, p) if ti > 0)

    psg = kl([0.75, 0.25], [0.0, 2.0])
    sent = 0.75 * kl([0.9, 0.1], [1.0, 0.0]) + 0.25 * kl([0.2, 0.8, 0.0], [0.5, 2.0, -1.0])
    assert float(parts.passage) == pytest.approx(psg, rel=1e-5)
    assert float(parts.sentence) == pytest.approx(sent, rel=1e-5)
    assert float(parts.total) == pytest.approx(psg + sent, rel=1e-5)
    # a passage without unit targets adds nothing; the weight is the target, not the model's probability
    only_first = multi_granular_loss(passage_scores, passage_targets, unit_scores, unit_targets, unit_mask=unit_mask,
                                     has_unit_targets=torch.tensor([[True, False]]), sentence_weight=2.0)
    assert float(only_first.sentence) == pytest.approx(0.75 * kl([0.9, 0.1], [1.0, 0.0]), rel=1e-5)
    assert float(only_first.total) == pytest.approx(psg + 2 * 0.75 * kl([0.9, 0.1], [1.0, 0.0]), rel=1e-5)


def test_multi_graded_targets_pull_the_scores_into_grade_order():
    scores = torch.zeros(1, 3, requires_grad=True)
    target = targets_from_labels(torch.tensor([[2.0, 1.0, 0.0]]), smoothing=0.1)
    multi_granular_loss(scores, target).total.backward()
    # gradient descent raises the grade-2 passage most and lowers the grade-0 one
    step = -scores.grad[0]
    assert step[0] > step[1] > 0 > step[2]


def test_padded_scores_match_a_brute_force_maxsim():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, generator=g)
    docs = torch.randn(2, 3, 5, 8, generator=g)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0, 1, 3:] = False
    got = padded_passage_scores(q, docs, mask)
    for b in range(2):
        for p in range(3):
            d = docs[b, p][mask[b, p]]
            assert float(got[b, p]) == pytest.approx(float((q[b] @ d.T).max(-1).values.sum()), rel=1e-5)
    units = torch.zeros(2, 2, 5, dtype=torch.bool)
    units[0, 0, [0, 2]] = True  # non-contiguous
    units[0, 1, [4]] = True
    units[1, 0, 1:3] = True  # units[1, 1] is padding: scores 0
    got = padded_unit_scores(q, docs[:, 0], units)
    for n, u in ((0, 0), (0, 1), (1, 0)):
        d = docs[n, 0][units[n, u]]
        assert float(got[n, u]) == pytest.approx(float((q[n] @ d.T).max(-1).values.sum()), rel=1e-5)
    assert float(got[1, 1]) == 0.0


# --------------------------------------------------------------------------- data


def test_training_file_reads_sentences_spans_grades_and_teacher_scores(tmp_path):
    rows = [
        {"query": "when was the tower built?", "passages": [
            {"sentences": ["The tower is tall.", "It was built in 1889."], "label": 2, "unit_labels": [0, 1]},
            {"text": "Paris is in France. It is big.", "label": 0},
            {"text": "Rome is old and large.", "units": [[0, 12], [[13, 16], [17, 22]]], "label": 1, "unit_labels": [1, 0]},
        ]},
        {"query": "teacher", "passages": [{"text": "a b.", "score": 2.0, "unit_scores": [1.0]}, {"text": "c d.", "score": 1.0}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    first, second = read_training_file(path)
    assert [p.label for p in first.passages] == [2.0, 0.0, 1.0]
    assert [u.text_in(first.passages[0].text) for u in first.passages[0].units] == ["The tower is tall.", "It was built in 1889."]
    assert len(first.passages[1].units) == 2  # the splitter's sentences
    assert first.passages[2].units[1].char_spans == ((13, 16), (17, 22))
    assert first.passages[0].has_unit_targets and not first.passages[1].has_unit_targets
    assert second.uses_teacher and second.passages[0].has_unit_targets
    path.write_text(json.dumps({"query": "q", "passages": [{"text": "x.", "label": 0}]}) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"train.jsonl:1: .*no positive"):
        read_training_file(path)
    path.write_text(json.dumps({"query": "q", "passages": [{"text": "x y.", "label": 1, "unit_labels": [1, 0]}]}) + "\n")
    with pytest.raises(InvalidInputError, match="unit_labels has 2 values but the passage has 1 units"):
        read_training_file(path)


def test_a_bad_training_file_line_is_a_typed_error_naming_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"query": "q", "passages": [{"text": "x y.", "label": 1}]})
    for bad, reason in ((b"{nope", "invalid JSON"), (b'"caf\xe9"', "invalid UTF-8"), (b"[1]", "an example is an object")):
        path.write_bytes(good.encode() + b"\n\n" + bad + b"\n")
        with pytest.raises(InvalidInputError, match=rf"train.jsonl:3: .*{reason}"):
            read_training_file(path)
    assert len(read_training_file(path, limit=1)) == 1
    with pytest.raises(InvalidInputError, match="cannot read training file"):
        read_training_file(tmp_path / "missing.jsonl")


def test_bm25_ranks_shared_rare_terms_first():
    bm25 = BM25(["the tower is tall", "bacteria resist drugs", "a tall tower in paris", "the the the"])
    ranked = [i for i, _ in bm25.top("bacteria drugs", 3)]
    assert ranked == [1]
    assert [i for i, _ in bm25.top("tall tower", 3, exclude=[0])] == [2]


def test_config_files_in_toml_json_and_yaml(tmp_path):
    body = {"seed": 3, "output": "out", "data": [{"dataset": "wikiqa", "path": "wikiqa/WikiQA-train.tsv"}], "steps": 5}
    (tmp_path / "c.json").write_text(json.dumps(body))
    (tmp_path / "c.toml").write_text('seed = 3\noutput = "out"\nsteps = 5\n[[data]]\ndataset = "wikiqa"\npath = "wikiqa/WikiQA-train.tsv"\n')
    (tmp_path / "c.yaml").write_text("seed: 3\noutput: out\nsteps: 5\ndata:\n  - dataset: wikiqa\n    path: wikiqa/WikiQA-train.tsv\n")
    for name in ("c.json", "c.toml", "c.yaml"):
        config, root = load_config(tmp_path / name, steps=7)
        assert config.seed == 3 and config.steps == 7 and config.data[0].dataset == "wikiqa" and root == tmp_path
    (tmp_path / "bad.toml").write_text('output = "o"\nstep = 5\ndata = []\n')
    with pytest.raises(InvalidInputError, match="step: Extra inputs are not permitted"):
        load_config(tmp_path / "bad.toml")


def test_config_names_stay_importable_from_the_trainer():
    import agrame_vdb.training as training
    from agrame_vdb.training import config, trainer

    for name in ("DataSource", "TrainConfig", "load_config"):
        assert getattr(trainer, name) is getattr(config, name) is getattr(training, name)


def test_resume_state_is_keyed_by_the_run_not_its_length_or_logging(tmp_path):
    from agrame_vdb.training.resume import ResumeState

    base = TrainConfig(output="out", data=[], steps=10)
    state = ResumeState(tmp_path / "resume.pt", base)
    assert state.load() is None
    state.save({"step": 4})
    assert not (tmp_path / "resume.tmp").exists()
    longer = ResumeState(tmp_path / "resume.pt", base.model_copy(update={"steps": 20, "log_every": 5}))
    assert longer.key == state.key and longer.load()["step"] == 4
    with pytest.raises(InvalidInputError, match="past this run's 3 steps"):
        ResumeState(tmp_path / "resume.pt", base.model_copy(update={"steps": 3})).load()
    with pytest.raises(InvalidInputError, match="another config"):
        ResumeState(tmp_path / "resume.pt", base.model_copy(update={"seed": 1})).load()
    state.clear()
    assert not (tmp_path / "resume.pt").exists()


# --------------------------------------------------------------------------- the model


def _tiny_examples() -> list[TrainExample]:
    def passage(sentences, label, unit_labels=None):
        text = " ".join(sentences)
        spans, pos = [], 0
        for s in sentences:
            spans.append((pos, pos + len(s)))
            pos += len(s) + 1
        units = tuple(units_from_char_spans(text, spans, kind="sentence"))
        return TrainPassage(text, units, label, tuple(unit_labels) if unit_labels else None)

    return [
        TrainExample("when was the eiffel tower built?", (
            passage(["The Eiffel Tower is in Paris.", "It was built in 1889.", "It is made of iron."], 1, [0, 1, 0]),
            passage(["Bacteria resist antibiotics.", "Efflux pumps remove drugs."], 0),
            passage(["The Colosseum is in Rome.", "It was built in 80 AD."], 0),
        )),
        TrainExample("how do bacteria resist antibiotics?", (
            passage(["Efflux pumps remove the drug from the cell.", "Bacteria share resistance genes.", "Rome is old."], 2, [1, 1, 0]),
            passage(["The tower is tall.", "It was built in 1889."], 0),
        )),
    ]


@pytest.fixture(scope="module")
def fresh_encoder():
    """A private encoder (training changes it), from the untrained default checkpoint."""
    return lambda: MultiVectorEncoder(untrained_checkpoint(), device="cpu")


def _trainer(encoder, regime, examples, **settings) -> Trainer:
    config = TrainConfig(output="unused", data=[], regime=regime, doc_maxlen=64, lr=3e-4, warmup=0.0, steps=10, **settings)
    model = TrainableModel(encoder, regime)
    cache = PassageCache(encoder, doc_maxlen=64, with_hidden=regime == "frozen", dtype=torch.float32)
    cache.encode([p.text for e in examples for p in e.passages])
    return Trainer(model, config, cache)


def test_frozen_regime_trains_only_the_projection_and_the_marker_rows(fresh_encoder):
    encoder = fresh_encoder()
    examples = _tiny_examples()
    trainer = _trainer(encoder, "frozen", examples)
    model = trainer.model
    embedding = encoder.transformer.get_input_embeddings().weight
    before = embedding.detach().clone()
    batch = trainer.collate(examples)
    assert batch.unit_pairs == [(0, 0), (1, 0)]  # only the passages with graded units
    parts = trainer.loss(batch)
    parts.total.backward()
    grad = model.marker_rows.grad
    assert grad is not None and grad.shape == (2, embedding.shape[1])
    assert float(grad[0].abs().sum()) > 0 and float(grad[1].abs().sum()) > 0  # [Q] and [Q'] rows
    assert all(p.grad is None for p in encoder.transformer.parameters())
    assert float(model.projection.linear.weight.grad.abs().sum()) > 0
    trainer.optimizer.zero_grad()
    # [Q'] only enters the sentence term: with sentence_weight 0 its row gets no gradient
    trainer.config = trainer.config.model_copy(update={"sentence_weight": 0.0})
    trainer.loss(trainer.collate(examples)).total.backward()
    assert float(model.marker_rows.grad[1].abs().sum()) == 0.0 and float(model.marker_rows.grad[0].abs().sum()) > 0
    trainer.optimizer.zero_grad()
    trainer.config = trainer.config.model_copy(update={"sentence_weight": 1.0})
    trainer.step(examples)
    assert torch.equal(embedding, before)  # the embedding matrix itself never changes
    assert not torch.equal(model.marker_rows.detach()[0], before[encoder.marker_ids["query"]])


@pytest.mark.parametrize("regime", ["frozen", "full"])
def test_two_steps_lower_the_loss_on_a_tiny_batch(fresh_encoder, regime):
    torch.manual_seed(0)
    encoder = fresh_encoder()
    examples = _tiny_examples()
    trainer = _trainer(encoder, regime, examples, **({"transformer_lr": 1e-4} if regime == "full" else {}))
    before = trainer.evaluate(examples)
    for _ in range(2):
        trainer.step(examples)
    after = trainer.evaluate(examples)
    assert after["loss"] < before["loss"], (before, after)
    if regime == "frozen":  # deterministic (no dropout): both terms go down
        assert after["loss_psg"] < before["loss_psg"] and after["loss_sent"] < before["loss_sent"]


def test_a_trained_model_saves_small_and_loads_back_with_its_marker_rows(fresh_encoder, tmp_path):
    encoder = fresh_encoder()
    examples = _tiny_examples()
    trainer = _trainer(encoder, "frozen", examples)
    for _ in range(2):
        trainer.step(examples)
    model = trainer.model
    out = model.save(tmp_path / "model")
    assert sorted(f.name for f in out.iterdir()) == ["agrame_config.json", MARKERS_FILE, "projection.safetensors"]
    loaded = MultiVectorEncoder.load(out, device="cpu")
    weight = loaded.transformer.get_input_embeddings().weight
    torch.testing.assert_close(weight[loaded.marker_ids["query"]], model.marker_rows[0].detach())
    torch.testing.assert_close(weight[loaded.marker_ids["subpassage"]], model.marker_rows[1].detach())
    model.eval()
    queries = [e.query for e in examples]
    with torch.no_grad():
        for marker, subpassage in (("query", False), ("subpassage", True)):
            expected, _ = model.query_vectors(queries, marker)
            np.testing.assert_allclose(loaded.encode_queries(queries, subpassage=subpassage), expected.numpy(), atol=2e-5)
    # passages use the frozen [D] row and the trained projection
    from agrame_vdb.units import Passage

    [e] = loaded.encode_passages([Passage.create("d", 0, examples[0].passages[0].text)])
    with torch.no_grad():
        hidden = encoder.transformer(input_ids=torch.tensor([list(e.token_ids)])).last_hidden_state
        np.testing.assert_allclose(e.token_vectors, model.project(hidden)[0].numpy(), atol=2e-5)


def test_marker_rows_round_trip_through_an_agrame_checkpoint(tmp_path):
    base = untrained_checkpoint()
    rows = {m: torch.randn(384, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(("[unused0]", "[unused2]"))}
    save_checkpoint(base, tmp_path / "m", include_transformer=False, markers=rows)
    loaded = load_checkpoint(tmp_path / "m")
    weight = loaded.transformer.get_input_embeddings().weight
    for token, row in rows.items():
        torch.testing.assert_close(weight[loaded.tokenizer.convert_tokens_to_ids(token)], row)
    # a saved model without trained rows writes the base rows: loading changes nothing
    save_checkpoint(base, tmp_path / "plain", include_transformer=False)
    plain = load_checkpoint(tmp_path / "plain")
    torch.testing.assert_close(plain.transformer.get_input_embeddings().weight, base.transformer.get_input_embeddings().weight)
    (tmp_path / "m" / MARKERS_FILE).write_bytes(b"garbage")
    from agrame_vdb.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="cannot read marker rows"):
        load_checkpoint(tmp_path / "m")


# --------------------------------------------------------------------------- the trainer end to end


@pytest.mark.slow
def test_train_command_writes_a_model_a_log_and_checkpoints(tmp_path):
    from typer.testing import CliRunner

    from agrame_vdb.cli import app

    wikiqa = data_file("wikiqa", "WikiQA-dev.tsv")
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'seed = 1\ndata_root = "{wikiqa.parent.parent}"\noutput = "model"\nrun_dir = "run"\n'
        "steps = 2\nbatch_size = 2\nnegatives = 1\nhard_negatives = 1\ndoc_maxlen = 64\nsave_every = 1\n"
        '[[data]]\ndataset = "wikiqa"\npath = "wikiqa/WikiQA-dev.tsv"\nlimit = 4\n'
    )
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["examples"] == 4
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and [x["step"] for x in lines[1:3]] == [1, 2] and lines[-1]["event"] == "end"
    assert all(math.isfinite(x["loss"]) for x in lines[1:3])
    assert (tmp_path / "run" / "checkpoints" / "step-1" / MARKERS_FILE).is_file()
    assert MultiVectorEncoder.load(tmp_path / "model", device="cpu").dim == 128
    bad = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "cannot read config" in bad.output


def test_full_regime_saves_the_whole_transformer_and_loads_back(fresh_encoder, tmp_path):
    encoder = fresh_encoder()
    examples = _tiny_examples()
    trainer = _trainer(encoder, "full", examples, transformer_lr=1e-4)
    trainer.step(examples)
    out = trainer.model.save(tmp_path / "full")
    assert (out / "model.safetensors").is_file() and not (out / MARKERS_FILE).exists()
    loaded = MultiVectorEncoder.load(out, device="cpu")
    trainer.model.eval()
    with torch.no_grad():
        expected, _ = trainer.model.query_vectors([examples[0].query], "subpassage")
    np.testing.assert_allclose(loaded.encode_queries([examples[0].query], subpassage=True), expected.numpy(), atol=2e-5)


def test_hard_negatives_from_a_repository_join_with_label_zero(encoder):
    from agrame_vdb import CollectionSchema, StoredPassage, connect
    from agrame_vdb.training import add_repository_negatives
    from agrame_vdb.units import Passage

    examples = _tiny_examples()
    texts = ["The Statue of Liberty was finished in 1886. It is in New York.", "Penicillin kills bacteria. It was found in 1928.",
             examples[0].passages[0].text]
    encoded = encoder.encode_passages([Passage.create(f"r{i}", 0, t) for i, t in enumerate(texts)])
    repo = connect("memory://")
    repo.create_collection(CollectionSchema("negs", dim=encoder.dim))
    repo.upsert("negs", [StoredPassage.create(e.passage.doc_id, 0, e.token_vectors, units=e.units, text=e.passage.text) for e in encoded])
    out = add_repository_negatives(examples, repo, "negs", encoder, hard_negatives=2, depth=3)
    first = out[0]
    assert first.passages[:3] == examples[0].passages
    added = first.passages[3:]
    assert len(added) == 2 and all(p.label == 0 for p in added)
    assert examples[0].passages[0].text not in {p.text for p in added}  # never the example's own passage
    assert all(p.units and p.unit_labels == tuple(0.0 for _ in p.units) and not p.has_unit_targets for p in added)
    assert all(u.token_ranges == () for p in added for u in p.units)  # re-aligned when cached


# --------------------------------------------------------------------------- plain layout, PCA, resume


def _tiny_config(tmp_path, run: str, **fields):
    from agrame_vdb.training.trainer import TrainConfig

    wikiqa = data_file("wikiqa", "WikiQA-dev.tsv")
    base = dict(seed=3, data_root=str(wikiqa.parent.parent), output=str(tmp_path / run / "model"),
                run_dir=str(tmp_path / run / "run"), steps=4, batch_size=2, negatives=1, hard_negatives=1,
                doc_maxlen=64, cache_dtype="float32", train_dtype="float32", threads=1,
                data=[{"dataset": "wikiqa", "path": "wikiqa/WikiQA-dev.tsv", "limit": 4}])
    base.update(fields)
    return TrainConfig.model_validate(base)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_model(tmp_path):
    from safetensors.torch import load_file

    from agrame_vdb.training.trainer import train

    fields = dict(layout="plain", projection_init="identity", dim=384, resume_every=2, lr=1e-2)
    whole = train(_tiny_config(tmp_path, "whole", **fields), quiet=True)

    def stop_at_3(record):
        if record["step"] == 3:
            raise KeyboardInterrupt  # the session ends here
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(tmp_path, "cut", **fields), quiet=True, on_step=stop_at_3)
    assert (tmp_path / "cut" / "run" / "resume.pt").is_file()
    again = train(_tiny_config(tmp_path, "cut", **fields), quiet=True)
    assert not (tmp_path / "cut" / "run" / "resume.pt").exists()
    for name in ("projection.safetensors", MARKERS_FILE):
        a, b = load_file(str(whole.output / name)), load_file(str(again.output / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.last_loss == whole.last_loss and again.first_loss == whole.first_loss
    events = [json.loads(x).get("event") for x in (tmp_path / "cut" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("resume") == 1
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(tmp_path, "other", **fields), quiet=True, on_step=stop_at_3)
    with pytest.raises(InvalidInputError, match="another config"):  # never resumed into a different run
        train(_tiny_config(tmp_path, "other", **{**fields, "lr": 5e-3}), quiet=True)
    (tmp_path / "other" / "run" / "resume.pt").write_bytes(b"torn")
    with pytest.raises(InvalidInputError, match="cannot read the resume state"):
        train(_tiny_config(tmp_path, "other", **fields), quiet=True)


@pytest.mark.slow
def test_plain_layout_trains_a_model_read_back_without_markers_or_augmentation(tmp_path):
    from agrame_vdb.training.trainer import train

    result = train(_tiny_config(tmp_path, "plain", layout="plain", projection_init="pca", dim=96), quiet=True)
    enc = MultiVectorEncoder.load(result.output, device="cpu")
    cfg = enc.config
    assert (cfg.query_marker, cfg.doc_marker, cfg.subpassage_marker, cfg.query_augmentation, cfg.dim) == (
        None, None, "[unused2]", False, 96)
    assert set(enc.marker_ids) == {"subpassage"}
    ids = enc.tokenize_queries(["who wrote it?"])["input_ids"][0]
    assert not (ids == enc.tokenizer.mask_token_id).any() and ids[1] != enc.marker_ids["subpassage"]
    assert enc.tokenize_queries(["who wrote it?"], "subpassage")["input_ids"][0][1] == enc.marker_ids["subpassage"]


def test_pca_projection_keeps_the_principal_directions():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    scales = torch.tensor([10.0, 5.0, 2.0] + [0.01] * 13)
    states = torch.randn(500, 16, generator=generator) * scales @ basis.T
    from agrame_vdb.training.trainer import pca_projection

    rows = pca_projection([states[:250], states[250:]], 3)
    assert rows.shape == (3, 16)
    overlap = (rows @ basis[:, :3]).abs()  # each row lies along one of the top three directions
    assert torch.allclose(overlap.max(dim=1).values, torch.ones(3), atol=1e-2)


@pytest.mark.slow
def test_self_distillation_starts_at_zero_from_the_plain_base_and_pulls_otherwise(tmp_path):
    from agrame_vdb.training.trainer import train

    def first(run, **fields):
        return train(_tiny_config(tmp_path, run, layout="plain", steps=1, resume_every=0, **fields), quiet=True).first_loss

    # identity projection: the model's [Q] passage scores are the plain base's own, so the KL term is 0
    same = dict(projection_init="identity", dim=384)
    assert first("a", distill_weight=2.0, **same) == pytest.approx(first("b", **same), abs=1e-4)
    # a 96-d PCA projection scores otherwise: the term is positive
    pca = dict(projection_init="pca", dim=96)
    assert first("c", distill_weight=2.0, **pca) > first("d", **pca) + 1e-3
    with pytest.raises(ValueError, match="distill_weight needs"):
        _tiny_config(tmp_path, "e", distill_weight=1.0)  # the colbert layout has no plain teacher here


@pytest.mark.slow
def test_a_repeated_source_enters_each_epoch_that_many_times(tmp_path):
    from agrame_vdb.training.trainer import train

    once = train(_tiny_config(tmp_path, "once", steps=1, resume_every=0), quiet=True)
    data = [{"dataset": "wikiqa", "path": "wikiqa/WikiQA-dev.tsv", "limit": 4, "repeat": 3}]
    thrice = train(_tiny_config(tmp_path, "thrice", steps=1, resume_every=0, data=data), quiet=True)
    assert (once.examples, thrice.examples) == (4, 12) and thrice.passages_cached == once.passages_cached
