"""Multi-granular training (AGRaME): the loss, the data, the two regimes and the trainer.

``L = L_psg + λ·L_sent`` (:mod:`.loss`); examples from training files or data sets
with mined hard negatives (:mod:`.data`); a frozen-transformer CPU regime and a full
fine-tuning regime (:mod:`.model`); ``agrame-vdb train`` runs :func:`train`.
"""

from __future__ import annotations

from .data import BM25, TrainExample, TrainPassage, add_repository_negatives, examples_from_dataset, read_training_file
from .loss import LossParts, graded_contrastive_loss, kl_to_target, multi_granular_loss, targets_from_labels, targets_from_scores
from .model import PassageCache, TrainableModel
from .scoring import padded_passage_scores, padded_unit_scores
from .config import DataSource, TrainConfig, load_config
from .trainer import Trainer, TrainResult, train, untrained_checkpoint

__all__ = [
    "BM25",
    "DataSource",
    "LossParts",
    "PassageCache",
    "TrainConfig",
    "TrainExample",
    "TrainPassage",
    "TrainResult",
    "TrainableModel",
    "Trainer",
    "add_repository_negatives",
    "examples_from_dataset",
    "kl_to_target",
    "load_config",
    "multi_granular_loss",
    "graded_contrastive_loss",
    "padded_passage_scores",
    "padded_unit_scores",
    "read_training_file",
    "targets_from_labels",
    "targets_from_scores",
    "train",
    "untrained_checkpoint",
]
