"""AGRaME's multi-granular loss: ``L = L_psg + λ·L_sent``.

For a query with ``P = k+1`` passages (positives and negatives):

- ``L_psg = KL(t || softmax(s / τ))``, ``t`` the target distribution over the
  passages and ``s`` the model's passage scores with the ``[Q]`` query.
- ``L_sent = Σ_p t_p · KL(u_p || softmax(s'_p / τ))``, ``u_p`` the target
  distribution over passage ``p``'s units and ``s'_p`` their scores with the
  ``[Q']`` query. A passage without unit targets (no graded unit and no teacher
  unit scores) adds nothing.

Both are averaged over the queries of a batch. Targets come from a teacher's
scores (``softmax(teacher / τ_teacher)``) when given, else from graded labels:
``t ∝ label`` plus label smoothing ``ε`` (``t = (1-ε)·label/Σlabel + ε/n``), so a
grade-2 passage gets twice the mass of a grade-1 one and every grade-0 passage the
same ``ε/n``.

A hand-computed case: two passages with targets ``[0.75, 0.25]``; the model
scores them equally, so ``L_psg = 0.75·ln(0.75/0.5) + 0.25·ln(0.25/0.5)``.

>>> import torch
>>> t = targets_from_labels(torch.tensor([[1.0, 0.0]]), smoothing=0.5)
>>> t.tolist()
[[0.75, 0.25]]
>>> round(float(kl_to_target(t, torch.zeros(1, 2))), 6)
0.130812
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

__all__ = [
    "LossParts",
    "targets_from_labels",
    "targets_from_scores",
    "kl_to_target",
    "multi_granular_loss",
]


@dataclass(frozen=True)
class LossParts:
    """The loss and its two terms (tensors; ``total`` carries the gradient)."""

    total: torch.Tensor
    passage: torch.Tensor
    sentence: torch.Tensor

    def floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "loss_psg": float(self.passage.detach()), "loss_sent": float(self.sentence.detach())}


def _valid(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.bool) if mask is None else mask.to(torch.bool)


def targets_from_labels(
    labels: torch.Tensor, *, smoothing: float = 0.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Target distributions ``[..., n]`` from graded labels (``>= 0``, any scale).

    ``t = (1-ε)·label/Σlabel + ε/n`` over the valid entries (``mask``); a row with
    no positive label is uniform. Invalid entries get 0.
    """
    if not 0.0 <= smoothing < 1.0:
        raise InvalidInputError(f"label smoothing must be in [0, 1), got {smoothing}")
    labels = labels.float()
    valid = _valid(mask, labels)
    if (labels[valid] < 0).any() or not torch.isfinite(labels[valid]).all():
        raise InvalidInputError("graded labels must be finite and >= 0")
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    n = valid.sum(-1, keepdim=True).clamp(min=1).float()
    total = labels.sum(-1, keepdim=True)
    uniform = valid.float() / n
    graded = torch.where(total > 0, labels / total.clamp(min=1e-12), uniform)
    return (1.0 - smoothing) * graded + smoothing * uniform


def targets_from_scores(
    scores: torch.Tensor, *, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Target distributions ``softmax(scores / temperature)`` over the valid entries."""
    if temperature <= 0:
        raise InvalidInputError(f"teacher temperature must be > 0, got {temperature}")
    scores = scores.float()
    valid = _valid(mask, scores)
    logits = torch.where(valid, scores / temperature, torch.full_like(scores, float("-inf")))
    out = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(out, nan=0.0)  # a row with no valid entry


def kl_to_target(
    target: torch.Tensor,
    scores: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``KL(target || softmax(scores / τ))`` per row ``[...]``, over the valid entries.

    Invalid entries (padding) never enter the softmax; entries with target 0 add 0.
    """
    valid = _valid(mask, scores)
    logits = torch.where(valid, scores.float() / temperature, torch.full_like(scores, float("-inf"), dtype=torch.float32))
    log_p = torch.log_softmax(logits, dim=-1)
    t = torch.where(valid, target.float(), torch.zeros_like(target, dtype=torch.float32))
    positive = t > 0
    terms = torch.where(positive, t * (torch.log(t.clamp(min=1e-30)) - log_p), torch.zeros_like(t))
    return terms.sum(-1)


def multi_granular_loss(
    passage_scores: torch.Tensor,
    passage_targets: torch.Tensor,
    unit_scores: torch.Tensor | None = None,
    unit_targets: torch.Tensor | None = None,
    *,
    passage_mask: torch.Tensor | None = None,
    unit_mask: torch.Tensor | None = None,
    has_unit_targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    sentence_weight: float = 1.0,
) -> LossParts:
    """``L_psg + sentence_weight·L_sent`` averaged over the ``B`` queries.

    Shapes: ``passage_scores``/``passage_targets``/``passage_mask`` ``[B, P]``;
    ``unit_scores``/``unit_targets``/``unit_mask`` ``[B, P, U]`` (``U`` the most units
    of any passage; padding masked out); ``has_unit_targets`` ``[B, P]`` says which
    passages have unit targets (default: those with a valid unit). Each passage's
    unit KL is weighted by its target probability ``passage_targets[b, p]``.
    """
    if passage_scores.shape != passage_targets.shape or passage_scores.dim() != 2:
        raise InvalidInputError(
            f"passage scores and targets must both be [B, P], got {tuple(passage_scores.shape)} and {tuple(passage_targets.shape)}"
        )
    batch = passage_scores.shape[0]
    l_psg = kl_to_target(passage_targets, passage_scores, mask=passage_mask, temperature=temperature).sum() / batch
    l_sent = passage_scores.new_zeros(())
    if unit_scores is not None:
        if unit_targets is None or unit_scores.shape != unit_targets.shape or unit_scores.shape[:2] != passage_scores.shape:
            raise InvalidInputError("unit scores and targets must both be [B, P, U] with the passages' B and P")
        valid_units = _valid(unit_mask, unit_scores)
        per_passage = kl_to_target(unit_targets, unit_scores, mask=valid_units, temperature=temperature)  # [B, P]
        use = valid_units.any(-1) if has_unit_targets is None else has_unit_targets.to(torch.bool) & valid_units.any(-1)
        if passage_mask is not None:
            use = use & passage_mask.to(torch.bool)
        weights = torch.where(use, passage_targets.float(), torch.zeros_like(per_passage))
        l_sent = (weights * torch.where(use, per_passage, torch.zeros_like(per_passage))).sum() / batch
    return LossParts(l_psg + sentence_weight * l_sent, l_psg, l_sent)
