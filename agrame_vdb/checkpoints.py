"""Model checkpoints: the torch modules a multi-vector encoder is loaded from and saved to.

Which files make each format, and the settings they give, are read without torch in
:mod:`agrame_vdb.model_settings` (re-exported here); this module builds the
transformer, tokenizer and projection from them, and writes the agrame format.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError, ModelLoadError
from .model_settings import (  # noqa: F401  (re-exported: the names this module has always offered)
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    DTYPE_NAMES,
    FORMATS,
    MARKERS_FILE,
    PACKAGED_MODELS,
    SUBPASSAGE_LAYERS_FILE,
    EncoderConfig,
    ModelFiles,
    check_activation,
    compute_dtype_name,
    locate,
    model_directory,
    read_settings,
    require_transformer,
    resolve_base,
    with_dim,
)

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
    "SUBPASSAGE_LAYERS_FILE",
    "subpassage_copy",
    "own_layers",
    "marker_rows",
    "apply_marker_rows",
]

log = logging.getLogger(__name__)

_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}


class Projection(nn.Module):
    """Linear map from hidden size to ``dim``, with an optional activation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None):
        super().__init__()
        name = check_activation(activation)
        out_features, in_features = weight.shape
        self.linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)
        self.activation_name = name
        self.activation = _ACTIVATIONS[name]()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(hidden))


@dataclass
class Checkpoint:
    """A loaded model: transformer, tokenizer, projection and settings.

    ``subpassage_transformer``: the transformer ``[Q']`` queries run through when the
    model has its own layers for them (:data:`SUBPASSAGE_LAYERS_FILE`); None: the
    transformer itself."""

    transformer: Any
    tokenizer: Any
    projection: Projection | None
    config: EncoderConfig
    format: str
    path: Path
    subpassage_transformer: Any = None


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


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {directory}: {exc}") from exc


def _load_transformer(directory: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModel

    require_transformer(directory)
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


def _checkpoint(files: ModelFiles, model: Any, tokenizer: Any, projection: Projection | None) -> Checkpoint:
    """The loaded parts, with the dim the projection (or the hidden size) gives."""
    shape = None if projection is None else tuple(projection.linear.weight.shape)
    config = with_dim(files.config, shape, model.config.hidden_size)
    return Checkpoint(model, tokenizer, projection, config, files.format, files.path)


def _load_agrame(files: ModelFiles, dtype: torch.dtype) -> Checkpoint:
    model = _load_transformer(files.transformer, dtype)
    tokenizer = _load_tokenizer(files.tokenizer)
    projection = _load_projection_file(files.projection, files.activation) if files.projection is not None else None
    if (files.path / MARKERS_FILE).is_file():
        apply_marker_rows(model, tokenizer, _read_marker_rows(files.path / MARKERS_FILE))
    checkpoint = _checkpoint(files, model, tokenizer, projection)
    layers = files.path / SUBPASSAGE_LAYERS_FILE
    if layers.is_file():
        checkpoint = replace(checkpoint, subpassage_transformer=subpassage_copy(model, _load_state_dict(layers), layers))
    return checkpoint


def subpassage_copy(transformer: Any, tensors: dict[str, torch.Tensor], where: Path | str = "the layers") -> Any:
    """A copy of ``transformer`` with ``tensors`` (state-dict names) in place: the
    transformer of ``[Q']`` queries. Every tensor must name one of its weights, in its shape."""
    state = transformer.state_dict()
    unknown = sorted(k for k in tensors if k not in state)
    if unknown:
        raise ModelLoadError(f"{where} names weights the transformer does not have: {unknown[:4]}")
    wrong = sorted(k for k, v in tensors.items() if tuple(v.shape) != tuple(state[k].shape))
    if wrong:
        raise ModelLoadError(f"{where}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, "
                             f"the transformer's is {tuple(state[wrong[0]].shape)}")
    # only the modules ``tensors`` reach are copied: the deep copy finds every other one in
    # its memo and keeps the original (the embeddings and lower layers, held once)
    memo: dict[int, Any] = {id(m): m for m in _untouched(transformer, "", tuple(tensors))}
    sub = copy.deepcopy(transformer, memo)
    sub.load_state_dict({k: v.to(dtype=state[k].dtype, device=state[k].device) for k, v in tensors.items()}, strict=False)
    return sub.eval()


def own_layers(transformer: Any, sub: Any) -> dict[str, torch.Tensor]:
    """The tensors of ``[Q']``'s transformer ``sub`` that are its own (not shared with
    ``transformer``), by state-dict name; empty without one."""
    if sub is None:
        return {}
    shared = {v.data_ptr() for v in transformer.state_dict().values()}
    return {k: v for k, v in sub.state_dict().items() if v.data_ptr() not in shared}


def _untouched(module: nn.Module, prefix: str, keys: tuple[str, ...]) -> list[nn.Module]:
    """The largest submodules of ``module`` that hold none of the state-dict names ``keys``."""
    found = []
    for name, child in module.named_children():
        inside = f"{prefix}{name}."
        if not any(k.startswith(inside) for k in keys):
            found.append(child)
        else:
            found.extend(_untouched(child, inside, keys))
    return found


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


def _load_sentence_transformers(files: ModelFiles, dtype: torch.dtype) -> Checkpoint:
    assert files.projection is not None  # the Dense module's weights: locate() found them
    state = _load_state_dict(files.projection)
    if "linear.weight" not in state:
        raise ModelLoadError(f"{files.projection} has no 'linear.weight' (keys: {sorted(state)[:8]})")
    projection = Projection(state["linear.weight"].float(), _opt_float(state.get("linear.bias")), files.activation)
    model = _load_transformer(files.transformer, dtype)
    return _checkpoint(files, model, _load_tokenizer(files.tokenizer), projection)


def _load_stanford(files: ModelFiles, dtype: torch.dtype) -> Checkpoint:
    from transformers import AutoConfig, AutoModel

    assert files.projection is not None  # the one state dict: transformer and linear.weight
    weights, path = files.projection, files.path
    state = _load_state_dict(weights)
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
    model.eval()
    return _checkpoint(files, model, _load_tokenizer(files.tokenizer), projection)


def _load_plain(files: ModelFiles, dtype: torch.dtype) -> Checkpoint:
    model = _load_transformer(files.transformer, dtype)
    projection = _load_projection_file(files.projection) if files.projection is not None else None
    return _checkpoint(files, model, _load_tokenizer(files.tokenizer), projection)


_LOADERS = {
    "agrame": _load_agrame,
    "sentence-transformers": _load_sentence_transformers,
    "stanford-colbert": _load_stanford,
    "transformer": _load_plain,
}


def load_checkpoint(
    path: str | Path | None = None,
    *,
    projection: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Checkpoint:
    """Load a model directory in any accepted format (the shipped default when None;
    the formats: :mod:`agrame_vdb.model_settings`)."""
    files = locate(path, projection=projection)
    checkpoint = _LOADERS[files.format](files, dtype)
    checkpoint.transformer.eval()
    log.info("loaded %s model from %s (dim %d)", checkpoint.format, files.path, checkpoint.config.dim)
    return checkpoint


def load_tokenizer(model: str | Path | None = None) -> tuple[Any, EncoderConfig]:
    """A model's tokenizer and settings (as the encoder has them: ``doc_maxlen`` capped
    at the transformer's positions), without loading its weights."""
    settings = read_settings(model)
    return _load_tokenizer(settings.files.tokenizer), settings.config


#: the compute dtypes a model is loaded in, by the names they are given
_DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_NAMES.items()}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """``float32``/``fp32``, ``bfloat16``/``bf16`` or ``float16``/``fp16``; ``auto`` is
    bfloat16 where ``device`` (default: the CPU) does it fast (``hardware.fast_bfloat16``:
    AMX or AVX-512 BF16, a GPU with bfloat16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InvalidInputError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    return getattr(torch, compute_dtype_name(str(dtype), str(device) if device is not None else "cpu"))


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
    A ``subpassage_transformer`` is written as the tensors it does not share with the
    transformer (:func:`own_layers`), in :data:`SUBPASSAGE_LAYERS_FILE`.
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
    layers = directory / SUBPASSAGE_LAYERS_FILE
    own = own_layers(checkpoint.transformer, checkpoint.subpassage_transformer)
    if own:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in own.items()}, str(layers))
    elif layers.is_file():  # never a stale file from another model
        layers.unlink()
    (directory / "agrame_config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return directory
