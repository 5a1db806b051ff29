"""Granular MaxSim speed and memory: ``python benchmarks/maxsim.py [--threads 2] [--repeats 40]``.

Prints figures, asserts nothing. The shape is the query path's: a 32-token ``[Q]``
and ``[Q']`` query against 200 candidates of 100-160 tokens (128-d), ~5 sentence
units each. Compared with (a) a per-unit Python loop, (b) a passage-only padded
einsum as PyLate's ``colbert_scores`` does it, (c) the bare matmul ``[Q;Q'] @ D^T``
over the same tokens (the compute floor).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from agrame_vdb.maxsim import granular_maxsim, pack, pack_concatenated


def measure(fns: list[tuple[str, Callable[[], object]]], repeats: int) -> list[tuple[str, float, float]]:
    """(name, median ms, min ms) of each function, run in turn so that load spikes hit all alike."""
    for _, fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for (_, fn), bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [(name, statistics.median(t) * 1e3, min(t) * 1e3) for (name, _), t in zip(fns, times)]


def normed(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def make_case(n_passages: int, low: int, high: int, n_units: int, dim: int, seed: int = 0):
    """Passages laid out as the encoder does: [CLS] [D] text [SEP]; sentences partition the text."""
    rng = np.random.default_rng(seed)
    docs, units = [], []
    for _ in range(n_passages):
        n = int(rng.integers(low, high + 1))
        docs.append(normed(torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))))
        cuts = np.sort(rng.choice(np.arange(3, n - 1), size=n_units - 1, replace=False))
        bounds = [2, *cuts.tolist(), n - 1]
        units.append([[(bounds[i], bounds[i + 1])] for i in range(n_units)])
    return docs, units


def unit_loop(q: torch.Tensor, sq: torch.Tensor, docs: list[torch.Tensor], units) -> tuple[list, list]:
    """(a) one passage and one unit at a time."""
    passage, unit = [], []
    for d, units_p in zip(docs, units):
        passage.append((q @ d.T).max(1).values.sum())
        for ranges in units_p:
            idx = torch.tensor([t for s, e in ranges for t in range(s, e)])
            unit.append((sq @ d[idx].T).max(1).values.sum())
    return passage, unit


def padded_einsum(q: torch.Tensor, padded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b) PyLate's colbert_scores shape: [P, Lmax, dim] docs, einsum, mask, max, sum (passages only)."""
    scores = torch.einsum("sh,bth->bst", q, padded)
    return scores.masked_fill(~mask[:, None, :], float("-inf")).max(-1).values.sum(-1)


def largest_allocation(fn: Callable[[], object]) -> int:
    """Bytes of the largest single tensor allocated while ``fn`` runs (CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.self_cpu_memory_usage for e in prof.events()), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dim, lq = 128, 32

    docs, units = make_case(200, 100, 160, 5, dim)
    g = torch.Generator().manual_seed(1)
    q = normed(torch.randn(lq, dim, generator=g))
    sq = normed(torch.randn(lq, dim, generator=g))
    packed = pack(docs, units)
    tokens = packed.tokens
    n_tokens = tokens.shape[0]
    both = torch.cat([q, sq])
    lengths = torch.tensor([d.shape[0] for d in docs])
    padded = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]

    r = granular_maxsim(q, packed, sq)
    p_loop, u_loop = unit_loop(q, sq, docs, units)
    assert torch.allclose(r.passage[0], torch.stack(p_loop), atol=1e-4)
    assert torch.allclose(r.unit[0], torch.stack(u_loop), atol=1e-4)
    assert torch.allclose(r.passage[0], padded_einsum(q, padded, mask), atol=1e-4)

    concatenated = torch.cat(docs)
    lengths_np = np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])])
    rows = measure(
        [
            ("maxsim: passage + unit scores", lambda: granular_maxsim(q, packed, sq)),
            ("maxsim: + argmax positions", lambda: granular_maxsim(q, packed, sq, return_argmax=True)),
            ("pack(list of [n_i, dim], units)", lambda: pack(docs, units)),
            ("pack_concatenated([T, dim], offsets, units)", lambda: pack_concatenated(concatenated, lengths_np, units)),
            ("(b) padded einsum, passages only", lambda: padded_einsum(q, padded, mask)),
            ("(b) padding the docs for it", lambda: torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)),
            ("(c) matmul D @ [Q;Q']^T (floor)", lambda: tokens @ both.T),
            ("(c) matmul [Q;Q'] @ D^T (floor)", lambda: both @ tokens.T),
        ],
        args.repeats,
    )
    # the loop alone: interleaved, its ~10x longer runs would shift the others' cache and load state
    loop = [("(a) per-unit Python loop", lambda: unit_loop(q, sq, docs, units))]
    rows[4:4] = measure(loop, max(5, args.repeats // 4))
    by_name = {name: (med, low) for name, med, low in rows}

    def ratio(a: str, b: str, at: int) -> float:
        return by_name[a][at] / by_name[b][at]

    ours = by_name["maxsim: passage + unit scores"][0]
    matmuls = [v for k, v in by_name.items() if k.startswith("(c)")]
    by_name["floor"] = (min(v[0] for v in matmuls), min(v[1] for v in matmuls))

    print(f"threads={torch.get_num_threads()}  {len(docs)} passages, {n_tokens} tokens, {packed.n_units} units, "
          f"dim {dim}, [Q] and [Q'] of {lq} tokens; {args.repeats} interleaved repeats")
    print(f"{'':46s}{'median ms':>10s}{'min ms':>8s}{'Mtok/s':>8s}{'x maxsim':>9s}")
    for name, med, low in rows:
        print(f"{name:46s}{med:10.2f}{low:8.2f}{n_tokens / med / 1e3:8.2f}{med / ours:9.2f}")
    for label, at in (("medians", 0), ("mins", 1)):
        m = "maxsim: passage + unit scores"
        print(f"{label:8s}: maxsim / matmul floor {ratio(m, 'floor', at):.2f}x;  "
              f"per-unit loop / maxsim {ratio('(a) per-unit Python loop', m, at):.1f}x;  "
              f"padded einsum (passages only) / maxsim {ratio('(b) padded einsum, passages only', m, at):.2f}x")

    print("\nchunk size (tokens) vs median time, same case:")
    chunks = (1024, 4096, 16384, 65536, None)
    for (name, med, low) in measure(
        [(f"max_chunk_tokens={c}", lambda c=c: granular_maxsim(q, packed, sq, max_chunk_tokens=c)) for c in chunks],
        args.repeats,
    ):
        print(f"  {name:24s} {med:7.2f} ms (min {low:.2f})")

    print("\nlargest single allocation on big cases (CPU profiler, [Q] and [Q'] of 32 tokens):")
    for name, case in (("2000 candidates x 100-160 tokens", (2000, 100, 160, 5)),
                       ("16 passages x 8k tokens, 64 units", (16, 8000, 8192, 64))):
        big_docs, big_units = make_case(*case, dim)
        big = pack(big_docs, big_units)
        del big_docs
        unchunked = big.tokens.shape[0] * both.shape[0] * 4
        print(f"  {name}: {big.tokens.shape[0]} tokens ({big.tokens.numel() * 4 / 2**20:.0f} MiB of token vectors); "
              f"an unchunked [T, 64] fp32 sim would be {unchunked / 2**20:.1f} MiB")
        for chunk in (None, 4096, 10**9):
            for argmax in (False, True):
                peak = largest_allocation(
                    lambda: granular_maxsim(q, big, sq, max_chunk_tokens=chunk, return_argmax=argmax)
                )
                print(f"    max_chunk_tokens={str(chunk):10s} argmax={str(argmax):5s}: largest allocation "
                      f"{peak / 2**20:6.2f} MiB")


if __name__ == "__main__":
    main()
