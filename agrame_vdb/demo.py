"""The main job, end to end on the bundled sample: index it, then ask at every granularity.

``agrame-vdb demo`` indexes the 200 SciFact abstracts shipped in ``agrame_vdb/data``
with the shipped model into a store (the embedded Qdrant Edge by default), then
answers a few questions at passage and sentence level. Indexing is an ordinary
resumable job: a second run finds its checkpoint finished and only searches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).parent / "data" / "scifact_sample.jsonl"
COLLECTION = "scifact_sample"
QUESTIONS: tuple[str, ...] = (
    "Which gene variant is associated with a higher risk of hypospadias?",
    "Is fine particulate air pollution linked to anxiety?",
    "What role does TNFAIP3 play in glioblastoma?",
)
GRANULARITIES: tuple[str, ...] = ("passage", "sentence")


@dataclass(frozen=True)
class DemoRun:
    summary: Any  # IndexSummary
    responses: list[Any]  # SearchResponse per (question, granularity)


def run_demo(
    store: str,
    *,
    sample: Path = SAMPLE,
    collection: str = COLLECTION,
    questions: Sequence[str] = QUESTIONS,
    k: int = 3,
    device: str = "auto",
    dtype: str = "auto",
    on_progress: Callable[[Any], None] | None = None,
) -> DemoRun:
    """Index ``sample`` (SciFact-form JSON Lines) into ``store`` and search it; returns what was done."""
    from .encoder import MultiVectorEncoder
    from .indexer import IndexJob, default_job_paths
    from .planner import Planner
    from .repositories import connect

    encoder = MultiVectorEncoder.load(device=device, dtype=dtype)
    repository = connect(store)
    try:
        checkpoint, rejects = default_job_paths(store, collection, sample, (0, 1))
        job = IndexJob(
            sample, repository, collection, encoder=encoder, format="scifact", checkpoint=checkpoint,
            rejects=rejects, store=store, on_progress=on_progress,
        )
        summary = job.run()
        planner = Planner(repository, collection, encoder)
        responses = [planner.search(q, granularity=g, k=k) for q in questions for g in GRANULARITIES]
    finally:
        repository.close()
    return DemoRun(summary, responses)
