#!/usr/bin/env bash
# Quality of compressed token storage (development data): WikiQA-dev and SciFact held-out with
# the evaluation collections in float32, float16, int8 and binary: the plain base and
# sentence-level encoding beside the model's own configuration.
#   scripts/storage_eval.sh OUT [DATA]   (STORAGES="float32 binary" for some of them;
#   MODEL=plain-base for the base alone; default: the default model)
set -euo pipefail
out=${1:?output folder}; data=${2:-${AGRAME_DATA:-../shared/data}}
model=${MODEL:-minilm-qprime-query}
configs=(--configuration plain-base --configuration sentence-encoding)
[ "$model" = plain-base ] || configs+=(--configuration "passage-span-q'+alpha")
mkdir -p "$out"
for storage in ${STORAGES:-float32 float16 int8 binary}; do
  for set in wikiqa scifact; do
    if [ "$set" = scifact ]; then d=(--dataset scifact --path "$data/scifact" --split heldout)
    else d=(--dataset wikiqa --path "$data/wikiqa/WikiQA-dev.tsv"); fi
    [ -s "$out/$set-$storage.jsonl" ] && continue
    agrame-vdb eval "${d[@]}" --model "$model" "${configs[@]}" --storage "$storage" --recall-at none \
      --device cpu --json > "$out/$set-$storage.tmp" && mv "$out/$set-$storage.tmp" "$out/$set-$storage.jsonl"
  done
done
