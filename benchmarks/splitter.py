"""Sentence-boundary precision and recall of the splitter against given sentences.

SciFact's corpus gives every abstract as a list of sentences and WikiQA (train and dev)
every Wikipedia summary as its sentence list. Each text is those sentences joined by
one space; a gold boundary is the end of every sentence but the last. A found boundary
is the end of every sentence the splitter returns but the last. Printed for Punkt alone
(nupunkt, the splitter before `units.sentence_spans` cut again after missed full stops)
and for `units.sentence_spans`:

    python benchmarks/splitter.py [--data ../shared/data]

The given sentences are not perfect themselves (SciFact's miss boundaries after
capitalised gene names such as "p65/RelA.", and break at "+/-"; WikiQA's include
captions with no full stop), so neither figure can reach 1.0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agrame_vdb.units import punkt_spans, sentence_spans  # noqa: E402


def scifact(data: Path) -> Iterator[list[str]]:
    with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            sentences = [s.strip() for s in json.loads(line)["abstract"] if s.strip()]
            if len(sentences) > 1:
                yield sentences


def wikiqa(data: Path) -> Iterator[list[str]]:
    for name in ("WikiQA-train.tsv", "WikiQA-dev.tsv"):
        docs: dict[str, dict[int, str]] = defaultdict(dict)
        with open(data / "wikiqa" / name, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                docs[row["DocumentID"]][int(row["SentenceID"].rsplit("-", 1)[1])] = row["Sentence"].strip()
        for doc in docs.values():
            sentences = [s for _, s in sorted(doc.items()) if s]
            if len(sentences) > 1:
                yield sentences


def gold(sentences: list[str]) -> tuple[str, set[int]]:
    boundaries, pos = set(), 0
    for s in sentences[:-1]:
        pos += len(s)
        boundaries.add(pos)
        pos += 1
    return " ".join(sentences), boundaries


def score(split: Callable[[str], list[tuple[int, int]]], docs: list[list[str]]) -> tuple[float, float, float]:
    tp = fp = fn = 0
    for sentences in docs:
        text, want = gold(sentences)
        found = {end for _, end in split(text)[:-1]}
        tp += len(found & want)
        fp += len(found - want)
        fn += len(want - found)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), tp + fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("AGRAME_DATA", ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    sets = {"SciFact corpus": list(scifact(args.data)), "WikiQA train+dev": list(wikiqa(args.data))}
    print(f"{'data':18} {'splitter':16} {'texts':>6} {'boundaries':>10} {'precision':>9} {'recall':>7} {'F1':>6} {'s':>5}")
    for name, docs in sets.items():
        for label, split in (("Punkt (nupunkt)", punkt_spans), ("sentence_spans", sentence_spans)):
            t0 = time.perf_counter()
            p, r, n = score(split, docs)
            print(f"{name:18} {label:16} {len(docs):6d} {n:10d} {p:9.4f} {r:7.4f} {2 * p * r / (p + r):6.4f} {time.perf_counter() - t0:5.1f}")


if __name__ == "__main__":
    main()
