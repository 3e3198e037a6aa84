#!/usr/bin/env bash
# Issue 25, items 4 and 5, on top of the HAR recipe (3-member teacher, reference loss, expected
# cross KD), centralized, on BOTH development sets: the live student against EMAs of it (one
# training run measures every decay: `--ema-probes`), and the label-free target terms (SHOT-IM,
# confident pseudo-labels on a strong view). Every run evaluates each epoch, so results.json
# holds each run's last-5 std and the probes' MF1 and teacher agreement per epoch.
# The DANN teachers come from OUT/{har,hhar}/teachers (copy a cache there first: only students
# train). Results: bench/results/dev_sets_stable_{har,hhar_sa}.{json,md};
# tables: python3 bench/summarize_stable.py.
# Usage (from the repo root): SEEDS=0 SETS="har hhar" DATA=../shared/data bash bench/dev_sets_stable.sh OUT [LEVER...]
set -euo pipefail
OUT=${1:?OUT dir}; shift
SEEDS=${SEEDS:-0}
DATA=${DATA:-../shared/data}
LEVERS=${*:-recipe recipe+im1 recipe+pl1-t095 recipe+im1+pl1-t095}
PROBES=0.9,0.955,0.98,0.99,0.995
RECIPE="--set teacher.ensemble=3 --set distill.reference_compat=true --set distill.cross_kd=expected"
flags() {
  case $1 in
    recipe) echo "";;
    recipe+im1) echo "--set distill.im_weight=1.0";;
    recipe+pl1-t095) echo "--set distill.pl_weight=1.0 --set distill.pl_threshold=0.95";;
    recipe+im1+pl1-t095) echo "--set distill.im_weight=1.0 --set distill.pl_weight=1.0 --set distill.pl_threshold=0.95";;
    *) echo "unknown lever $1" >&2; exit 2;;
  esac
}
for lever in $LEVERS; do
  for set in ${SETS:-har hhar}; do
    if [ $set = har ]; then D=HAR; DS=HAR; PAIRS=configs/har-dev-pairs.txt
    else D=HHAR_SA; DS=HHAR; PAIRS=configs/hhar-sa-dev-pairs.txt; fi
    # shellcheck disable=SC2046
    nice -n 10 unikd bench central --data "$DATA/$D" --dataset $DS --scenarios "$(tail -1 $PAIRS)" \
      --seeds "$SEEDS" --methods unikd --jobs 1 --quiet --out "$OUT/$set" --label "$lever" \
      --ema-probes $PROBES $RECIPE $(flags "$lever") > /dev/null
    echo "$(date +%T) $lever $set done"
  done
done
echo DONE
