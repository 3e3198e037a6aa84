#!/bin/bash
# Issue 26 with issue 25's EMA default: the student's local steps L (both mode) on both
# development sets, seed 0, K=5 IID, cached centralized recipe teachers (so only the student's
# rounds differ), everything else the defaults. Rows behind BENCHMARKS.md "The student's L with
# the EMA default".
#
#   bash bench/student_steps_ema.sh OUT [L ...]      (default L: 1 2 5 10)
set -euo pipefail
OUT=${1:?OUT}; shift
LS=${*:-1 2 5 10}
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
HAR_TEACHERS=${HAR_TEACHERS:-/work/teacher-cache/har-dev-recipe}
HHAR_TEACHERS=${HHAR_TEACHERS:-/work/teacher-cache/hhar-recipe}
export PYTHONPATH=$PWD
for L in $LS; do
  nice -n 10 unikd bench federated --data "$HAR" --dataset HAR \
    --scenarios "$(tail -1 configs/har-dev-pairs.txt)" --seeds 0 --clients 5 --partition iid \
    --teachers "$HAR_TEACHERS" --out "$OUT/har-L$L" --jobs 1 --quiet --label "ema-L$L" \
    --set fed.local_steps="$L"
  nice -n 10 unikd bench federated --data "$HHAR" --dataset HHAR \
    --scenarios "$(tail -1 configs/hhar-sa-dev-pairs.txt)" --seeds 0 --clients 5 --partition iid \
    --teachers "$HHAR_TEACHERS" --out "$OUT/hhar-L$L" --jobs 1 --quiet --label "ema-L$L" \
    --set fed.local_steps="$L"
done
