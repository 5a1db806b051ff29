#!/usr/bin/env bash
# The development table of docs/results.md: `agrame-vdb eval` on WikiQA-dev, the SciFact
# held-out claims and the held-out half of PropSegmEnt dev, each over a temporary Qdrant
# Edge store with the default first stage (200 pooled candidates), one JSON line per
# configuration into OUT/<data set>.jsonl.
#
#   scripts/eval_dev.sh minilm-frozen-128 docs/results            # every configuration, plain-base included
#   CONFIGS="--configuration passage-span-q'+alpha" scripts/eval_dev.sh runs/plain-qprime/model runs/eval-qprime
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?a model name or directory}
OUT=${2:?an output folder}
D=${AGRAME_DATA:-../shared/data}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
for ds in wikiqa scifact propsegment; do
  case $ds in
    wikiqa) args=(--dataset wikiqa --path "$D/wikiqa/WikiQA-dev.tsv") ;;
    scifact) args=(--dataset scifact --path "$D/scifact" --split heldout --distractors 300) ;;
    propsegment) args=(--dataset propsegment --path "$D/propsegment" --split heldout) ;;
  esac
  start=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/agrame-vdb eval "${args[@]}" --model "$MODEL" ${CONFIGS:-} --json > "$OUT/$ds.jsonl" 2> "$OUT/$ds.err"
  echo "$ds: $(( $(date +%s) - start )) s"
done
