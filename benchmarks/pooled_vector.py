"""Which pooled vector makes the better first stage: ``python benchmarks/pooled_vector.py``.

Prints figures, asserts nothing. Encodes a development set's passages and queries once
with the default model (plain-base: all-MiniLM-L6-v2's own token states) and compares
the first stage's recall@N (any relevant passage among the N nearest, exact cosine) of
two pooled vectors built from the same states:

- ``mean of unit tokens`` (what the library stores): the normalised mean of the
  L2-normalised token vectors;
- ``sentence embedding``: the normalised mean of the raw token states, which is
  all-MiniLM-L6-v2's own sentence-transformers embedding (mean pooling, normalise),
  what the model was trained to compare.

Development data only (SciFact held-out claims over all abstracts, WikiQA-dev).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from agrame_vdb.encoder import MultiVectorEncoder, encode_queries
from agrame_vdb.evaluation import read_dataset
from agrame_vdb.hardware import cpu_model

AT = (10, 50, 200)


def raw(encoder: MultiVectorEncoder) -> MultiVectorEncoder:
    """``encoder`` giving its raw token states (no per-token normalisation; plain-base has no projection)."""
    assert encoder.projection is None, "the comparison needs a model without a projection"

    def embed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encoder.transformer(input_ids=input_ids.to(encoder.device), attention_mask=attention_mask.to(encoder.device)).last_hidden_state.float()

    encoder.embed = embed  # type: ignore[method-assign]
    return encoder


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall(scores: np.ndarray, relevant: list[set[int]]) -> dict[int, float]:
    order = np.argsort(-scores, axis=1)
    return {n: float(np.mean([bool(rel & set(order[i, :n].tolist())) for i, rel in enumerate(relevant)])) for n in AT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("AGRAME_DATA", "../shared/data")))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}")
    sets = {
        "scifact-heldout (all abstracts)": read_dataset("scifact", args.data / "scifact", split="heldout", distractors=10**6),
        "wikiqa-dev": read_dataset("wikiqa", args.data / "wikiqa" / "WikiQA-dev.tsv"),
    }
    encoder = raw(MultiVectorEncoder.load(device="cpu", dtype="auto"))  # bfloat16 where the CPU does it fast
    print(f"encoder dtype {encoder.dtype}\n")
    print("| data set | pooled vector | " + " | ".join(f"recall@{n}" for n in AT) + " | queries | passages |")
    print("|---|---|" + "---|" * (len(AT) + 2))
    for name, data in sets.items():
        start = time.perf_counter()
        encoded = encoder.encode_passages(list(data.passages))
        states = [e.token_vectors for e in encoded]
        ours = unit(np.stack([unit(s).mean(axis=0) for s in states]))
        sentence = unit(np.stack([s.mean(axis=0) for s in states]))
        q_raw, _ = encode_queries(encoder, [q.text for q in data.queries], both=False)
        q_raw = np.asarray(q_raw, dtype=np.float32)
        real = np.abs(q_raw).sum(axis=-1) > 0  # the query's own rows (padding rows are zero)
        q_ours = unit(np.stack([unit(q[m]).mean(axis=0) for q, m in zip(q_raw, real)]))
        q_sentence = unit(np.stack([q[m].mean(axis=0) for q, m in zip(q_raw, real)]))
        index = {p.id: i for i, p in enumerate(data.passages)}
        relevant = [{index[p] for p, g in q.passage_qrels.items() if g >= 1 and p in index} for q in data.queries]
        keep = [i for i, r in enumerate(relevant) if r]
        for label, P, Q in (("mean of unit tokens (stored now)", ours, q_ours), ("sentence embedding", sentence, q_sentence)):
            r = recall(Q[keep] @ P.T, [relevant[i] for i in keep])
            print(f"| {name} | {label} | " + " | ".join(f"{r[n]:.3f}" for n in AT) + f" | {len(keep)} | {len(P)} |")
        print(f"<!-- {name}: {time.perf_counter() - start:.0f} s -->")


if __name__ == "__main__":
    main()
