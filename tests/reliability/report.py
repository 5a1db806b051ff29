"""The reliability suite's figures, gathered by the tests and printed at the end."""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

FULL = os.environ.get("AGRAME_RELIABILITY", "").lower() == "full"

_lock = threading.Lock()
FIGURES: Counter[str] = Counter()
LATENCIES_MS: list[float] = []
DETAILS: dict[str, Any] = {}


def add(**counts: int) -> None:
    with _lock:
        FIGURES.update(counts)


def add_latencies(values: list[float]) -> None:
    with _lock:
        LATENCIES_MS.extend(values)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 3)


def summary() -> dict[str, Any]:
    keys = ["runs_with_faults", "faults_injected", "resumes_after_failure", "migration_runs_with_faults",
            "kills", "bad_inputs_tried", "passages_lost", "passages_duplicated", "passages_half_written",
            "queries_served", "query_errors", "incomplete_results"]
    out: dict[str, Any] = {"mode": "full" if FULL else "ci"}
    out.update({k: FIGURES.get(k, 0) for k in keys})
    out.update({k: v for k, v in FIGURES.items() if k not in out})
    out["query_p50_ms"] = percentile(LATENCIES_MS, 50)
    out["query_p99_ms"] = percentile(LATENCIES_MS, 99)
    out.update(DETAILS)
    return out
