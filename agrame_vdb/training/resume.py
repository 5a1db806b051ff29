"""A training run's resume state: ``run_dir/resume.pt``, replaced atomically, tied to its config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_open
from ..errors import InvalidInputError
from .config import TrainConfig

__all__ = ["ResumeState"]


class ResumeState:
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
