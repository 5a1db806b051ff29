"""Query encoding latency of what a search encodes (``[Q]`` and ``[Q']``), per model, side by side.

    python benchmarks/query_encoder.py [--models plain-base,minilm-qprime-query] [--queries 200] [--threads 1]

One query at a time (a service's request), through ``encode_queries(both=True)``: the
plain base runs the transformer once; a model with its own ``[Q']`` layers runs the base
for ``[Q]`` and its copy for ``[Q']``. Prints p50/p95 ms per model and dtype, and the ratio
to the first model; nothing is asserted. Queries: WikiQA-dev questions from ../shared/data
(or fixed sentences when it is absent).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from agrame_vdb.encoder import MultiVectorEncoder, encode_queries  # noqa: E402
from agrame_vdb.hardware import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIKIQA = ROOT.parent / "shared" / "data" / "wikiqa" / "WikiQA-dev.tsv"


def load_queries(n: int) -> list[str]:
    if WIKIQA.is_file():
        with WIKIQA.open(encoding="utf-8") as fh:
            questions = list(dict.fromkeys(row["Question"] for row in csv.DictReader(fh, delimiter="\t")))
    else:
        questions = ["when was the eiffel tower built", "how do bacteria resist antibiotics", "who wrote hamlet"]
    return [questions[i % len(questions)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="plain-base,minilm-qprime-query")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    queries = load_queries(args.queries)
    print(f"CPU: {cpu_model()}, {args.threads} torch thread(s), {len(queries)} queries one at a time")
    for dtype in args.dtypes.split(","):
        first = None
        for name in args.models.split(","):
            enc = MultiVectorEncoder.load(name, device="cpu", dtype=dtype)
            for q in queries[:10]:  # warm-up
                encode_queries(enc, [q], both=True)
            times = []
            for q in queries:
                start = time.perf_counter()
                encode_queries(enc, [q], both=True)
                times.append((time.perf_counter() - start) * 1e3)
            p50 = statistics.median(times)
            p95 = statistics.quantiles(times, n=20)[-1]
            first = first or p50
            print(f"{dtype:<9} {name:<22} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  x{p50 / first:.2f}", flush=True)


if __name__ == "__main__":
    main()
