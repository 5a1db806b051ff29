#!/usr/bin/env bash
# The first-stage table of docs/first-stage.md: end-to-end P@1/R@5 of the default model
# (plain-base) with 200 candidates from each first stage, the exhaustive ceiling
# (--candidates 0), and the first-stage recall@50/200/1000 of every stage, on the
# SciFact held-out claims over all 5,183 abstracts and on WikiQA-dev (development data).
#   scripts/first_stage_eval.sh OUT [DATA]     (DATA: the shared data folder)
set -euo pipefail
out=${1:?output folder}; data=${2:-${AGRAME_DATA:-../shared/data}}
mkdir -p "$out"
run() {  # name, then eval arguments
  local name=$1; shift
  for set in scifact wikiqa; do
    if [ "$set" = scifact ]; then d=(--dataset scifact --path "$data/scifact" --split heldout --distractors 6000)
    else d=(--dataset wikiqa --path "$data/wikiqa/WikiQA-dev.tsv"); fi
    [ -s "$out/$set-$name.jsonl" ] && continue   # done by an earlier run: resumable
    /usr/bin/time -f "$set $name %e s" agrame-vdb eval "${d[@]}" --model plain-base --device cpu --json "$@" \
      > "$out/$set-$name.tmp" && mv "$out/$set-$name.tmp" "$out/$set-$name.jsonl"
  done
}
run pooled --configuration plain-base --first-stage pooled --recall-at none
run lexical --configuration plain-base --first-stage lexical --recall-at none
run hybrid --configuration plain-base --configuration sentence-encoding --first-stage hybrid --recall-at 50,200,1000
run exhaustive --configuration plain-base --candidates 0 --recall-at none
