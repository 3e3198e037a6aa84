#!/bin/bash
# Issue 26: the federated teacher's own L (fed.teacher_local_steps) on both development sets,
# whole federated runs (teacher + student), seed 0, K=5 IID, every other setting the default.
# L=2 halves the teacher's exchanges (the main job: 600 -> 300). Rows behind BENCHMARKS.md
# "The federated teacher's L on both development sets".
#
#   bash bench/teacher_steps_dev.sh OUT L [...]        e.g. bash bench/teacher_steps_dev.sh OUT 1 2
#   RULE=repeat SETS=har bash bench/teacher_steps_dev.sh OUT 2   (the teacher's server step; one set)
# Each L is one process (run two at once on 2 cores); fed.workers=1 keeps each run in one
# process (bit-identical to any other count, tests/test_worker_grid.py).
set -euo pipefail
OUT=${1:?OUT}; shift
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
RULE=${RULE:-same}; SETS=${SETS:-har hhar}
TAG=$([ "$RULE" = same ] && echo "" || echo "-$RULE")
for L in "$@"; do
  if [[ " $SETS " == *" har "* ]]; then unikd bench federated --data "$HAR" --dataset HAR --scenarios "$(tail -1 configs/har-dev-pairs.txt)" \
    --seeds 0 --clients 5 --partition iid --out "$OUT/har-tL$L$TAG" --jobs 1 --quiet \
    --label "teacher-L$L$TAG" --set fed.teacher_local_steps="$L" --set fed.workers=1 \
    --set fed.teacher_server_step="$RULE"; fi
  if [[ " $SETS " == *" hhar "* ]]; then unikd bench federated --data "$HHAR" --dataset HHAR \
    --scenarios "$(tail -1 configs/hhar-sa-dev-pairs.txt)" --seeds 0 --clients 5 --partition iid \
    --out "$OUT/hhar-tL$L$TAG" --jobs 1 --quiet --label "teacher-L$L$TAG" \
    --set fed.teacher_local_steps="$L" --set fed.workers=1 --set fed.teacher_server_step="$RULE"; fi
done
echo DONE
