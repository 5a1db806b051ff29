"""Work done for one oversized input: ``python benchmarks/bounds.py [--cases query,chunk,cite]``.

Prints figures, asserts nothing. Each case runs in a fresh child process, so its
peak RSS (``resource.getrusage``) is its own; ``+rss`` is the peak less the RSS the
child had before the measured call (model and data loaded).

- ``query``: one query of ``--query-mb`` MB of SciFact text encoded as search does
  (``encoder.encode_queries``, ``[Q]`` and ``[Q']``);
- ``chunk``: one document of 1, 2, 5 and 10 MB (``--chunk-mb``) of SciFact
  abstracts cut by :class:`~agrame_vdb.chunking.Chunker` (tokenizer only);
- ``cite``: an answer of ``--cite-sentences`` SciFact sentences cited against 5
  abstracts (``agrame_vdb.cite.cite``, CPU).

The text comes from ``../shared/data/scifact/corpus.jsonl`` (or the bundled sample).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl", ROOT / "agrame_vdb" / "data" / "scifact_sample.jsonl"]


def abstracts() -> list[list[str]]:
    source = next(p for p in SOURCES if p.exists())
    with open(source, encoding="utf-8") as fh:
        return [[s.strip() for s in json.loads(line)["abstract"] if s.strip()] for line in fh]


def text_of(n_chars: int) -> str:
    """SciFact abstracts joined by spaces, cycled to ``n_chars`` characters."""
    parts, total = [], 0
    for sents in itertools.cycle(abstracts()):
        if not sents:
            continue
        s = " ".join(sents)
        parts.append(s)
        total += len(s) + 1
        if total >= n_chars:
            break
    return " ".join(parts)[:n_chars]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str, size: float) -> dict[str, float | str]:
    import torch

    torch.set_num_threads(1)
    if case == "query":
        from agrame_vdb.encoder import MultiVectorEncoder
        from agrame_vdb.encoder import encode_queries

        enc = MultiVectorEncoder.load(device="cpu")
        text = text_of(int(size * 2**20))
        encode_queries(enc, ["warm up"], both=True)
        base = rss_mb()
        t = time.perf_counter()
        q, _ = encode_queries(enc, [text], both=True)
        seconds = time.perf_counter() - t
        what = f"query of {size:g} MB ({len(text)} chars) -> {q.shape}"
    elif case == "chunk":
        from agrame_vdb.chunking import Chunker
        from agrame_vdb.documents import Document
        from agrame_vdb.indexer import load_tokenizer

        tokenizer, doc_maxlen = load_tokenizer()
        chunker = Chunker(tokenizer, doc_maxlen)
        doc = Document(id="big", text=text_of(int(size * 2**20)))
        base = rss_mb()
        t = time.perf_counter()
        chunks = chunker.chunk(doc)
        seconds = time.perf_counter() - t
        what = f"chunk a {size:g} MB document -> {len(chunks)} passages, {sum(len(c.units) for c in chunks)} units"
    elif case == "cite":
        from agrame_vdb.cite import cite
        from agrame_vdb.encoder import MultiVectorEncoder

        enc = MultiVectorEncoder.load(device="cpu")
        data = [a for a in abstracts() if len(a) >= 3]
        passages = [" ".join(a) for a in data[:5]]
        sentences = [s for a in data[:400] for s in a]
        answer = " ".join(itertools.islice(itertools.cycle(sentences), int(size)))
        base = rss_mb()
        t = time.perf_counter()
        try:
            result = cite(answer, passages, enc)
            what = f"cite {len(result.sentences)} answer sentences against {len(passages)} passages -> {len(result.citations)} cited"
        except ValueError as exc:  # past the documented limit: InvalidInputError
            what = f"cite {int(size)} answer sentences: refused ({type(exc).__name__}: {exc})"
        seconds = time.perf_counter() - t
    else:
        raise SystemExit(f"unknown case {case!r}")
    return {"case": what, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb()), "added_rss_mb": round(peak_mb() - base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="query,chunk,cite")
    ap.add_argument("--query-mb", type=float, default=10)
    ap.add_argument("--chunk-mb", default="1,2,5,10")
    ap.add_argument("--cite-sentences", type=int, default=2000)
    ap.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], float(args.child[1]))))
        return
    runs = []
    for case in args.cases.split(","):
        if case == "query":
            runs.append(("query", args.query_mb))
        elif case == "chunk":
            runs += [("chunk", float(mb)) for mb in args.chunk_mb.split(",")]
        elif case == "cite":
            runs.append(("cite", args.cite_sentences))
        else:
            raise SystemExit(f"unknown case {case!r}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for case, size in runs:
        out = subprocess.run([sys.executable, __file__, "--child", case, str(size)], capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{case} {size}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']}: {r['seconds']} s, peak RSS {r['peak_rss_mb']} MB (+{r['added_rss_mb']} MB)", flush=True)


if __name__ == "__main__":
    main()
