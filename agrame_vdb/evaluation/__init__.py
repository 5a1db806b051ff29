"""Evaluation: data set readers, ranking metrics, and side-by-side runs.

- :mod:`~agrame_vdb.evaluation.datasets`: WikiQA, SciFact, PropSegmEnt and SQuAD
  as an :class:`EvalDataset` (passages, their units, queries with graded relevance
  at passage and unit level), and the deterministic train/heldout splits.
- :mod:`~agrame_vdb.evaluation.metrics`: P@k, R@k, MRR@k, nDCG@k of a ranked list
  against ``key → grade`` relevance, and their means (:data:`METRICS`).
- :mod:`~agrame_vdb.evaluation.run`: :func:`evaluate` ranks a data set's queries
  through the planner in each of :data:`CONFIGURATIONS`, the plain base model
  (``plain-base``) as the baseline; :func:`results_table` prints them side by side.
- :mod:`~agrame_vdb.evaluation.recall`: first-stage recall@N of each first stage and
  of the exhaustive MaxSim ranking (:func:`first_stage_recall`, :func:`recall_table`).
"""

from __future__ import annotations

from .datasets import (
    DATASETS,
    EvalDataset,
    EvalQuery,
    UnitKey,
    propsegment_split,
    read_dataset,
    read_propsegment,
    read_scifact,
    read_squad,
    read_wikiqa,
    scifact_split,
)
from .metrics import METRICS, mean_metrics, mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k
from .recall import RECALL_AT, FirstStageRecall, first_stage_recall, recall_table
from .run import CONFIGURATIONS, ConfigurationResult, evaluate, plain_base_encoder, results_table

__all__ = [
    "EvalQuery",
    "EvalDataset",
    "UnitKey",
    "DATASETS",
    "read_dataset",
    "read_scifact",
    "read_wikiqa",
    "read_propsegment",
    "scifact_split",
    "propsegment_split",
    "read_squad",
    "precision_at_k",
    "recall_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "mean_metrics",
    "METRICS",
    "CONFIGURATIONS",
    "plain_base_encoder",
    "ConfigurationResult",
    "evaluate",
    "results_table",
    "RECALL_AT",
    "FirstStageRecall",
    "first_stage_recall",
    "recall_table",
]
