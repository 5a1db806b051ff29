"""An indexing job's tokens/s against a bare forward pass of the same model and batches.

    python benchmarks/index_throughput.py [--device cuda] [--passages 2000] [--dtype auto]

The bare forward is the transformer (and projection) alone over the job's encoding
batches: the same passages, sorted longest first and cut by the same token budget,
already tokenized, with nothing read, aligned, checkpointed or written. The job is an
``IndexJob`` over the same passages (SciFact abstracts from ../shared/data, or the
bundled sample, repeated to ``--passages``) into a temporary Qdrant Edge store, with
``overlap`` on and off. Prints tokens/s of each and the job's share of the bare
forward's (the target on a GPU: at least 0.8). The CPU model is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agrame_vdb.encoder import MultiVectorEncoder  # noqa: E402
from agrame_vdb.hardware import cpu_model  # noqa: E402
from agrame_vdb.index_batch import GPU_TOKEN_BUDGET, _batches  # noqa: E402
from agrame_vdb.indexer import index_documents  # noqa: E402
from agrame_vdb.repositories import connect  # noqa: E402

SOURCES = [ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl", ROOT / "agrame_vdb" / "data" / "scifact_sample.jsonl"]


def documents(n: int) -> list[dict]:
    source = next(p for p in SOURCES if p.exists())
    rows = [json.loads(line) for line in source.open(encoding="utf-8")]
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        out.append({"id": f"{row['doc_id']}-{i}", "text": " ".join(s.strip() for s in row["abstract"])})
    return out


def bare_forward(enc: MultiVectorEncoder, texts: list[str], batch_size: int, budget: int | None) -> tuple[int, float]:
    """Tokens and seconds of the model alone over the job's batches."""
    docs = enc._tokenize_documents(texts)
    lengths = [len(d.ids) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: lengths[i], reverse=True)
    batches = []
    for picked in _batches(lengths, order, batch_size, budget):
        batches.append(enc.padded([docs[i].ids for i in picked]))
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            enc.embed(ids, mask).cpu()
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(lengths), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=256, help="passages written (and checkpointed) at a time")
    ap.add_argument("--encode-batch-size", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=None, help=f"default: {GPU_TOKEN_BUDGET} on a GPU, none on a CPU")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    enc = MultiVectorEncoder.load(device=args.device, dtype=args.dtype)
    budget = args.token_budget if args.token_budget is not None else (GPU_TOKEN_BUDGET if enc.device.type == "cuda" else None)
    docs = documents(args.passages)
    device = torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else cpu_model()
    print(f"{device}; torch {torch.__version__}, {args.threads} threads, {enc.dtype}, {len(docs)} passages, "
          f"token budget {budget}, encode batch {args.encode_batch_size}")
    bare_forward(enc, [d["text"] for d in docs[:64]], args.encode_batch_size, budget)  # warm-up
    tokens, seconds = bare_forward(enc, [d["text"] for d in docs], args.encode_batch_size, budget)
    floor = tokens / seconds
    print(f"bare forward      {floor:9.0f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        for overlap in (False, True):
            with connect(f"qdrant-edge://{tmp}/store-{overlap}") as repo:
                start = time.perf_counter()
                summary = index_documents(src, repo, "docs", encoder=enc, batch_size=args.batch_size,
                                          encode_batch_size=args.encode_batch_size, encode_token_budget=budget,
                                          overlap=overlap, optimize=False)
                took = time.perf_counter() - start
            rate = summary.tokens / took
            print(f"index job{' (overlap)' if overlap else '          '} {rate:9.0f} tokens/s  "
                  f"{rate / floor:5.2f}x the bare forward  (encode {summary.seconds_encode:.1f} s, "
                  f"write {summary.seconds_write:.1f} s, {took:.1f} s in all)")


if __name__ == "__main__":
    main()
