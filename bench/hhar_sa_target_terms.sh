#!/bin/bash
# Run from the repo root. Issue 25, item 4: the label-free target terms on the HHAR_SA dev pairs, centralized, 3 seeds,
# with the DANN teachers of the defaults run (copied into OUT/teachers first, so none is retrained).
# Results: bench/results/hhar_sa_target_terms.{json,md}.
set -e
OUT=${OUT:-/tmp/tt/OUT}
SC="$(tail -1 configs/hhar-sa-dev-pairs.txt)"
run() {
  label=$1; shift
  PYTHONPATH=$PWD nice -n 5 unikd bench central --data ../shared/data/HHAR_SA --dataset HHAR \
    --scenarios "$SC" --seeds 0,1,2 --methods unikd --jobs 1 --quiet --out "$OUT" \
    --label "$label" "$@"
}
run defaults
run im1 --set distill.im_weight=1.0
run pl1-t095 --set distill.pl_weight=1.0 --set distill.pl_threshold=0.95
run im1+pl1-t095 --set distill.im_weight=1.0 --set distill.pl_weight=1.0 \
  --set distill.pl_threshold=0.95
