#!/bin/bash
# Run from the repo root. Issue 25, item 4: the label-free target terms on the HHAR_SA dev pairs, centralized, 3 seeds,
# with the DANN teachers of the defaults run (copied into OUT/teachers first, so none is retrained).
# "defaults" here are the dataclass defaults until 2026-12-06 (every spec §8 fix on, 1-member
# teacher), pinned by the --set values in FIXES.
# Results: bench/results/hhar_sa_target_terms.{json,md}.
set -e
OUT=${OUT:-/tmp/tt/OUT}
SC="$(tail -1 configs/hhar-sa-dev-pairs.txt)"
FIXES="--set teacher.ensemble=1 --set distill.target_kd=true --set distill.cross_kd=paired --set distill.beta_natural_log=true --set distill.grl_ramp=true --set distill.double_target_forward=false"
run() {
  label=$1; shift
  PYTHONPATH=$PWD nice -n 5 unikd bench central --data ../shared/data/HHAR_SA --dataset HHAR \
    --scenarios "$SC" --seeds 0,1,2 --methods unikd --jobs 1 --quiet --out "$OUT" \
    --label "$label" $FIXES "$@"
}
run defaults
run im1 --set distill.im_weight=1.0
run pl1-t095 --set distill.pl_weight=1.0 --set distill.pl_threshold=0.95
run im1+pl1-t095 --set distill.im_weight=1.0 --set distill.pl_weight=1.0 \
  --set distill.pl_threshold=0.95
