"""The multi-graded constrained contrastive loss (after GR2) against a per-item loop
written from its definition, and in training beside the KL terms."""

from __future__ import annotations

import math

import pytest
import torch

from agrame_vdb.errors import InvalidInputError
from agrame_vdb.training import TrainConfig, graded_contrastive_loss

from .test_training import _tiny_examples, _trainer


def _reference(scores, grades, valid, tau=1.0, order_weight=1.0) -> float:
    """One row, item by item: levels are the row's distinct positive grades, highest first."""
    items = [(s / tau, g) for s, g, v in zip(scores, grades, valid, strict=True) if v]
    levels = sorted({g for _, g in items if g > 0}, reverse=True)
    loss = 0.0
    for rank, grade in enumerate(levels, start=1):
        anchors = [s for s, g in items if g == grade]
        lower = [s for s, g in items if g < grade]
        if not lower:
            continue
        per = [math.log(math.exp(a) + sum(math.exp(x) for x in lower)) - a for a in anchors]
        loss += (sum(per) / len(per)) / rank**2
    every = sorted({g for _, g in items}, reverse=True)
    mean = {g: sum(s for s, h in items if h == g) / sum(1 for _, h in items if h == g) for g in every}
    for high, low in zip(every, every[1:], strict=False):
        loss += order_weight * math.log1p(math.exp(mean[low] - mean[high]))
    return loss


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_item_by_item_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(5, 7, generator=generator) * 3
    grades = torch.randint(0, 4, (5, 7), generator=generator).float()
    grades[0] = 1.0  # one grade only: the contrast has nothing lower, the ordering no pair
    grades[1, :] = torch.tensor([3.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # grades 3 and 1 with 2 absent: levels 1 and 2
    mask = torch.rand(5, 7, generator=generator) > 0.2
    mask[:, 0] = True
    for tau, order in ((1.0, 1.0), (0.5, 0.3), (2.0, 0.0)):
        got = graded_contrastive_loss(scores, grades, mask=mask, temperature=tau, order_weight=order)
        for r in range(5):
            want = _reference(scores[r].tolist(), grades[r].tolist(), mask[r].tolist(), tau, order)
            assert float(got[r]) == pytest.approx(want, rel=1e-5, abs=1e-6), (r, tau, order)
    assert float(graded_contrastive_loss(scores[:1], grades[:1])[0]) == 0.0


def test_padding_never_enters_and_bad_grades_are_typed_errors():
    scores = torch.tensor([[1.0, 0.0, 50.0]])
    grades = torch.tensor([[1.0, 0.0, 0.0]])
    masked = graded_contrastive_loss(scores, grades, mask=torch.tensor([[True, True, False]]))
    assert float(masked[0]) == pytest.approx(float(graded_contrastive_loss(scores[:, :2], grades[:, :2])[0]))
    with pytest.raises(InvalidInputError, match=">= 0"):
        graded_contrastive_loss(scores, torch.tensor([[1.0, -1.0, 0.0]]))
    with pytest.raises(InvalidInputError, match=r"\[R, n\]"):
        graded_contrastive_loss(scores, grades[:, :2])


def test_its_gradient_pulls_the_scores_into_grade_order():
    scores = torch.tensor([[0.0, 0.5, 1.0, 0.2]], requires_grad=True)
    grades = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    optimizer = torch.optim.SGD([scores], lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        graded_contrastive_loss(scores, grades).sum().backward()
        optimizer.step()
    s = scores.detach()[0]
    assert s[0] > s[1] > max(s[2], s[3])


def test_training_adds_it_and_lowers_it():
    torch.manual_seed(0)
    from agrame_vdb.encoder import MultiVectorEncoder
    from agrame_vdb.training import untrained_checkpoint

    examples = _tiny_examples()
    plain = _trainer(MultiVectorEncoder(untrained_checkpoint(), device="cpu"), "frozen", examples)
    graded = _trainer(MultiVectorEncoder(untrained_checkpoint(), device="cpu"), "frozen", examples, graded_weight=0.5)
    batch = graded.collate(examples)
    assert batch.passage_graded.tolist() == [True, True] and batch.unit_graded.tolist() == [True, True]
    assert batch.passage_grades[1, 0] == 2.0 and batch.unit_grades[1].tolist()[:3] == [1.0, 1.0, 0.0]
    base, with_graded = plain.loss(plain.collate(examples)).floats(), graded.loss(batch).floats()
    assert with_graded["loss"] > base["loss"]  # the term is there, and positive
    before = graded.evaluate(examples)
    for _ in range(3):
        graded.step(examples)
    assert graded.evaluate(examples)["loss"] < before["loss"]
    assert TrainConfig(output="x", data=[], graded_weight=1.0).graded_order_weight == 1.0
