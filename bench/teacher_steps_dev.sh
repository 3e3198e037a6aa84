#!/bin/bash
# Issue 26: the federated teacher's own L (fed.teacher_local_steps) on both development sets,
# whole federated runs (teacher + student), seed 0, K=5 IID, every other setting the default.
# L=2 halves the teacher's exchanges (the main job: 600 -> 300). Rows behind BENCHMARKS.md
# "The federated teacher's L on both development sets".
#
#   bash bench/teacher_steps_dev.sh OUT L [...]        e.g. bash bench/teacher_steps_dev.sh OUT 1 2
# Each L is one process (run two at once on 2 cores); fed.workers=1 keeps each run in one
# process (bit-identical to any other count, tests/test_worker_grid.py).
set -euo pipefail
OUT=${1:?OUT}; shift
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
for L in "$@"; do
  unikd bench federated --data "$HAR" --dataset HAR --scenarios "$(tail -1 configs/har-dev-pairs.txt)" \
    --seeds 0 --clients 5 --partition iid --out "$OUT/har-tL$L" --jobs 1 --quiet \
    --label "teacher-L$L" --set fed.teacher_local_steps="$L" --set fed.workers=1
  unikd bench federated --data "$HHAR" --dataset HHAR \
    --scenarios "$(tail -1 configs/hhar-sa-dev-pairs.txt)" --seeds 0 --clients 5 --partition iid \
    --out "$OUT/hhar-tL$L" --jobs 1 --quiet --label "teacher-L$L" \
    --set fed.teacher_local_steps="$L" --set fed.workers=1
done
echo DONE
