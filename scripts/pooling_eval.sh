#!/usr/bin/env bash
# Token pooling's cost and saving (development data): the default model (plain-base) over a
# temporary Qdrant Edge store with its token rows pooled by 1 (none), 2 and 3 within their
# units, on WikiQA-dev and the SciFact held-out claims; then the table of docs/pooling.md.
#   scripts/pooling_eval.sh OUT [DATA]     (DATA: the shared data folder)
set -euo pipefail
out=${1:?output folder}; data=${2:-${AGRAME_DATA:-../shared/data}}
mkdir -p "$out"
for factor in 1 2 3; do
  for set in wikiqa scifact; do
    if [ "$set" = scifact ]; then d=(--dataset scifact --path "$data/scifact" --split heldout)
    else d=(--dataset wikiqa --path "$data/wikiqa/WikiQA-dev.tsv"); fi
    [ -s "$out/$set-pool$factor.jsonl" ] && continue   # done by an earlier run: resumable
    /usr/bin/time -f "$set pool $factor %e s" agrame-vdb eval "${d[@]}" --model plain-base --configuration plain-base \
      --token-pooling "$factor" --storage float32 --recall-at none --device cpu --json \
      > "$out/$set-pool$factor.tmp" && mv "$out/$set-pool$factor.tmp" "$out/$set-pool$factor.jsonl"
  done
done
python "$(dirname "$0")/pooling_table.py" "$out"
