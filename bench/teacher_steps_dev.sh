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
  for SET in $SETS; do
    case $SET in
      har) DATA=$HAR; DS=HAR; PAIRS=configs/har-dev-pairs.txt ;;
      hhar) DATA=$HHAR; DS=HHAR; PAIRS=configs/hhar-sa-dev-pairs.txt ;;
      *) echo "SETS: unknown development set '$SET' (har, hhar)" >&2; exit 2 ;;
    esac
    unikd bench federated --data "$DATA" --dataset "$DS" --scenarios "$(tail -1 $PAIRS)" \
      --seeds 0 --clients 5 --partition iid --out "$OUT/$SET-tL$L$TAG" --jobs 1 --quiet \
      --label "teacher-L$L$TAG" --set fed.teacher_local_steps="$L" --set fed.workers=1 \
      --set fed.teacher_server_step="$RULE"
  done
done
echo DONE
