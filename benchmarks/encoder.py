"""Encoder throughput: passages/s and tokens/s for ~180-token passages, fp32 and bf16.

    python benchmarks/encoder.py [--passages 256] [--batch-size 32] [--threads 2]

Passages are SciFact abstracts from ../shared/data (or the bundled sample), cut to
180 tokens by doc_maxlen. Prints one line per dtype; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from agrame_vdb.encoder import MultiVectorEncoder  # noqa: E402
from agrame_vdb.units import Passage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl", ROOT / "agrame_vdb" / "data" / "scifact_sample.jsonl"]


def load_passages(n: int) -> list[Passage]:
    source = next(p for p in SOURCES if p.exists())
    out = []
    with open(source, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            text = " ".join(s.strip() for s in row["abstract"])
            if text:
                out.append(Passage.create(str(row["doc_id"]), 0, text))
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    passages = load_passages(args.passages)
    print(f"torch {torch.__version__}, {args.threads} threads, {len(passages)} passages, batch {args.batch_size}, doc_maxlen 180")
    for dtype in ("float32", "bfloat16"):
        enc = MultiVectorEncoder.load(device="cpu", dtype=dtype)
        enc.config = replace(enc.config, doc_maxlen=180)
        enc.encode_passages(passages[: args.batch_size], sentences=False)  # warm-up
        times, tokens = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoded = enc.encode_passages(passages, sentences=False, batch_size=args.batch_size)
            times.append(time.perf_counter() - start)
            tokens = sum(e.n_tokens for e in encoded)
        t = statistics.median(times)
        print(f"{dtype:9s} {len(passages) / t:7.1f} passages/s  {tokens / t:8.0f} tokens/s  "
              f"(mean {tokens / len(passages):.0f} tokens/passage, median of {args.repeats}: {t:.2f} s)")
        q_start = time.perf_counter()
        enc.encode_queries(["what do bacteria do to resist antibiotics?"] * 64)
        print(f"{'':9s} {64 / (time.perf_counter() - q_start):7.1f} queries/s (batch of 64, 32 tokens)")


if __name__ == "__main__":
    main()
