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

Beside the KL, ``graded_contrastive_loss`` (after GR2, arXiv 2409.18409) uses the
grades themselves: each item of a row's ``l``-th highest positive grade must beat
every item graded lower (not those graded higher: an InfoNCE per level, weighted
``λ_l = 1/l²``), and an ordering constraint keeps the mean scores of adjacent grade
levels in order (``softplus((mean_{l+1} - mean_l) / τ)``, grade 0 the lowest level).

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
    "graded_contrastive_loss",
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


def graded_contrastive_loss(
    scores: torch.Tensor,
    grades: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    order_weight: float = 1.0,
) -> torch.Tensor:
    """The multi-graded constrained contrastive loss per row ``[R]`` of ``[R, n]``
    ``scores`` and ``grades`` (``>= 0``; padding masked out): see the module text.

    Row ``r``'s positive grades, highest first, are its levels ``l = 1, 2, ...``. An
    item ``i`` of level ``l`` adds ``λ_l · (log Σ_{j ∈ {i} ∪ lower(i)} e^{s_j/τ} - s_i/τ)``
    (``lower(i)``: the items graded below ``g_i``), averaged over the level's items; the
    ordering term adds ``order_weight · softplus((m_{l+1} - m_l)/τ)`` for each pair of
    adjacent levels (grade 0 included) with ``m`` a level's mean score. A row with one
    grade adds 0.

    >>> s, g = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    >>> contrast = (torch.logsumexp(s[0], 0) - 2.0) + (torch.logsumexp(s[0, 1:], 0) - 1.0) / 4
    >>> order = 2 * torch.nn.functional.softplus(torch.tensor(-1.0))
    >>> bool(torch.isclose(graded_contrastive_loss(s, g)[0], contrast + order))
    True
    """
    if scores.shape != grades.shape or scores.dim() != 2:
        raise InvalidInputError(f"scores and grades must both be [R, n], got {tuple(scores.shape)} and {tuple(grades.shape)}")
    valid = _valid(mask, scores)
    grades = grades.float()
    if bool(((grades < 0) & valid).any()) or not bool(torch.isfinite(grades[valid]).all()):
        raise InvalidInputError("grades must be finite and >= 0")
    s = scores.float() / temperature
    neg_inf = torch.full_like(s, float("-inf"))
    values = sorted({float(v) for v in grades[valid].unique().tolist()}, reverse=True)
    present = {v: ((grades == v) & valid).any(-1) for v in values}  # [R] each
    total = s.new_zeros(s.shape[0])
    for v in values:
        if v <= 0:
            continue
        level = 1 + sum((present[w].float() for w in values if w > v), torch.zeros_like(total))  # [R]
        anchors = (grades == v) & valid
        lower = torch.where((grades < v) & valid, s, neg_inf)  # [R, n]
        lower_lse = torch.logsumexp(lower, dim=-1, keepdim=True)  # -inf where nothing is lower
        per_item = torch.logaddexp(s, lower_lse) - s  # log(e^{s_i} + Σ_lower e^{s_j}) - s_i
        n_anchors = anchors.sum(-1)
        term = torch.where(anchors, per_item, torch.zeros_like(per_item)).sum(-1) / n_anchors.clamp(min=1)
        has = (n_anchors > 0) & torch.isfinite(lower_lse.squeeze(-1))
        total = total + torch.where(has, term / level**2, torch.zeros_like(term))
    if order_weight and len(values) > 1:
        means = {}
        for v in values:
            members = (grades == v) & valid
            means[v] = torch.where(members, s, torch.zeros_like(s)).sum(-1) / members.sum(-1).clamp(min=1)
        for i, high in enumerate(values):
            for j in range(i + 1, len(values)):
                low = values[j]
                adjacent = present[high] & present[low]  # no grade between them in the row
                for middle in values[i + 1 : j]:
                    adjacent = adjacent & ~present[middle]
                pair = torch.nn.functional.softplus(means[low] - means[high])
                total = total + order_weight * torch.where(adjacent, pair, torch.zeros_like(pair))
    return total
