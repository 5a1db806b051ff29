"""Differentiable MaxSim on padded batches, for training.

:mod:`agrame_vdb.maxsim` scores packed candidates at query time (no gradients, no
padding); training needs gradients through the query and passage vectors, so it
scores padded ``[B, P, L, dim]`` tensors here. Masked positions never enter a max.

>>> import torch
>>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # [B=1, Lq=2, dim=2]
>>> d = torch.tensor([[[[0.5, -1.0], [-2.0, 0.25], [9.0, 9.0]]]])  # [B, P=1, L=3, dim]
>>> mask = torch.tensor([[[True, True, False]]])            # the third token is padding
>>> padded_passage_scores(q, d, mask).tolist()              # 0.5 + 0.25
[[0.75]]
>>> units = torch.tensor([[[True, False, False], [False, True, False]]])  # [N=1, U=2, L]
>>> padded_unit_scores(q, d[:, 0], units).tolist()          # 0.5 - 1, -2 + 0.25
[[-0.5, -1.75]]
"""

from __future__ import annotations

import torch

__all__ = ["padded_passage_scores", "padded_unit_scores"]


def _weighted(maxima: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    maxima = torch.where(torch.isfinite(maxima), maxima, torch.zeros_like(maxima))
    if weights is None:
        return maxima.sum(-1)
    return (maxima * weights.to(maxima.dtype)).sum(-1)


def padded_passage_scores(
    queries: torch.Tensor,
    docs: torch.Tensor,
    doc_mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``S(q, p) = Σ_i max_{r∈p} q_i·d_r``: queries ``[B, Lq, d]``, docs ``[B, P, L, d]``,
    ``doc_mask`` ``[B, P, L]`` (True on real tokens), ``query_weights`` ``[B, Lq]`` → ``[B, P]``."""
    sim = torch.einsum("bqd,bpld->bpql", queries, docs)
    sim = sim.masked_fill(~doc_mask.to(torch.bool)[:, :, None, :], float("-inf"))
    weights = None if query_weights is None else query_weights[:, None, :]
    return _weighted(sim.max(-1).values, weights)


def padded_unit_scores(
    queries: torch.Tensor,
    docs: torch.Tensor,
    unit_mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unit scores of ``N`` (query, passage) pairs: queries ``[N, Lq, d]``, docs ``[N, L, d]``,
    ``unit_mask`` ``[N, U, L]`` (True on the unit's tokens) → ``[N, U]``; a unit with no
    token (padding) scores 0."""
    sim = torch.einsum("nqd,nld->nql", queries, docs)
    masked = sim[:, None, :, :].masked_fill(~unit_mask.to(torch.bool)[:, :, None, :], float("-inf"))
    weights = None if query_weights is None else query_weights[:, None, :]
    return _weighted(masked.max(-1).values, weights)
