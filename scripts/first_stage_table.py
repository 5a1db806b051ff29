"""The tables of docs/first-stage.md from scripts/first_stage_eval.sh's output:
``python scripts/first_stage_table.py runs/first-stage``.

One table of end-to-end figures (each first stage with its candidates, and the
exhaustive ceiling), one of first-stage recall (every stage the store offers, and
the exhaustive MaxSim ranking).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = ("pooled", "lexical", "hybrid", "exhaustive")
SETS = ("scifact", "wikiqa")


def main(folder: str) -> None:
    root = Path(folder)
    rows, recall = [], []
    for name in SETS:
        for run in RUNS:
            path = root / f"{name}-{run}.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                r = json.loads(line)
                stage = "every passage (exhaustive)" if run == "exhaustive" else f"{r['first_stage_used']}, {r['candidates']}"
                rows.append((r["dataset"], r["configuration"], stage, r["unit"], r["passage"], r["queries"], r["passages"],
                             r["seconds"]))
                if "first_stage" in r:
                    recall.append((r["dataset"], r["first_stage"]))
    print("| data set | configuration | first stage, candidates | unit P@1 | unit R@5 | passage P@1 | passage R@5 | queries | passages | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, config, stage, unit, passage, q, p, s in rows:
        print(f"| {dataset} | {config} | {stage} | {unit['P@1']:.3f} | {unit['R@5']:.3f} | {passage['P@1']:.3f} | "
              f"{passage['R@5']:.3f} | {q} | {p} | {s:.0f} |")
    print()
    seen = set()
    for dataset, rec in recall:
        key = (dataset, rec["encoding"])
        if key in seen:
            continue
        seen.add(key)
        stages = [k for k in rec if k not in ("encoding", "n")]
        names = [k for k in rec[stages[0]] if k.startswith("recall@")]
        if len(seen) == 1:
            print("| data set | first stage | " + " | ".join(names) + " | n |")
            print("|---|---|" + "---|" * (len(names) + 1))
        for st in stages:
            print(f"| {dataset} | {st} | " + " | ".join(f"{rec[st][k]:.3f}" for k in names) + f" | {rec['n']} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/first-stage")
