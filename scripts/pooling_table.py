"""The table of docs/pooling.md from scripts/pooling_eval.sh's output:
``python scripts/pooling_table.py runs/pooling``.

One row per data set and pooling factor: the rows stored per token encoded, the raw
vector bytes per token (row bytes x rows / tokens), unit and passage P@1 and R@5, and
the change in P@1 against the same data set without pooling (factor 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETS = ("wikiqa", "scifact")


def main(folder: str) -> None:
    root = Path(folder)
    print("| data set | pooling | rows/token | bytes/token | unit P@1 | unit R@5 | passage P@1 | passage R@5 | "
          "Δ unit P@1 | Δ passage P@1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in SETS:
        base = None
        for path in sorted(root.glob(f"{name}-pool*.jsonl"), key=lambda p: int(p.stem.rsplit("pool", 1)[1])):
            for line in path.read_text().splitlines():
                r = json.loads(line)
                unit, passage = r["unit"], r["passage"]
                if r["token_pooling"] == 1:
                    base = r
                delta = ("—", "—") if base is None or base is r else (
                    f"{unit['P@1'] - base['unit']['P@1']:+.3f}", f"{passage['P@1'] - base['passage']['P@1']:+.3f}")
                print(f"| {r['dataset']} | {r['token_pooling']} | {r['rows'] / r['tokens']:.3f} | {r['bytes_per_token']:.0f} | "
                      f"{unit['P@1']:.3f} | {unit['R@5']:.3f} | {passage['P@1']:.3f} | {passage['R@5']:.3f} | "
                      f"{delta[0]} | {delta[1]} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pooling")
