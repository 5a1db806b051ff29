"""Print the Markdown results table of docs/results.md from `agrame-vdb eval --json` output.

    python scripts/results_table.py docs/results/wikiqa-dev.jsonl docs/results/scifact-heldout.jsonl

One row per data set, model and configuration: unit-level (sentence or proposition)
P@1 and R@5, then passage-level P@1 and R@5; the best unit-level figures of each
data set and model in bold.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

NAMES = {
    "plain-base": "plain-base (the baseline): base's own states, span MaxSim + α·S(q,p)",
    "sentence-encoding": "units encoded on their own",
    "passage-span-q": "passage encoding, span MaxSim, [Q]",
    "passage-span-q'": "passage encoding, span MaxSim, [Q']",
    "passage-span-q'+alpha": "passage encoding, [Q'] + α·S(q,p)",
}
MODELS = {
    "runs/untrained": "untrained",
    "minilm-frozen-128": "minilm-frozen-128",
    "runs/plain-qprime/model": "plain-qprime (lr 5e-5, no distillation)",
    "runs/plain-qprime-distill/model": "minilm-plain-qprime",
    "runs/plain-qprime-distill-props/model": "plain-qprime-distill-props (PropSegmEnt x8)",
    "runs/plain-qprime-distill-pca128/model": "plain-qprime-distill-pca128 (PCA init, dim 128)",
    "runs/qprime-query/beta-0.25": "qprime-query ([Q'] projection only, frozen)",
    "runs/qprime-query-gr2/model": "qprime-query-gr2 (+ graded contrastive loss)",
    "runs/qprime-query-top2/model": "qprime-query-top2 ([Q'] tower, top 2 layers)",
    "runs/qprime-query-full/model": "qprime-query-full ([Q'] tower, all 6 layers)",
}


def main(paths: list[str]) -> None:
    rows = [json.loads(line) for path in paths for line in open(path, encoding="utf-8") if line.strip()]
    best: dict[tuple[str, str, str], float] = defaultdict(float)
    for r in rows:
        for m in ("P@1", "R@5"):
            key = (r["dataset"], r["model"], m)
            best[key] = max(best[key], r["unit"][m])
    print("| data set | model | configuration | unit P@1 | unit R@5 | passage P@1 | passage R@5 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        config = NAMES.get(r["configuration"], r["configuration"])
        if r.get("alpha") is not None:
            config = config.replace("α", f"α={r['alpha']:g}")
        cells = []
        for m in ("P@1", "R@5"):
            value = f"{r['unit'][m]:.3f}"
            cells.append(f"**{value}**" if r["unit"][m] == best[(r["dataset"], r["model"], m)] else value)
        cells += [f"{r['passage'][m]:.3f}" for m in ("P@1", "R@5")]
        model = "—" if r["configuration"] == "plain-base" else MODELS.get(r["model"], r["model"])
        print(f"| {r['dataset']} (n={r['unit']['n']}) | {model} | {config} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
