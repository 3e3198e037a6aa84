#!/bin/bash
# Issue 26: the student's L=2 against L=1 over 3 seeds on both development sets, and which
# server step carries L=2 (`repeat` = 2 Adam steps at the rate, `sqrt-lr` = 2 at rate/sqrt 2).
# K=5 IID, cached centralized recipe teachers for seeds 0-2 (so only the student's rounds
# differ), every other setting the default. One (set, variant, seed) per call, so that a queue
# can run two at a time on 2 cores. Rows behind BENCHMARKS.md "The student's L=2 over three seeds".
#
#   bash bench/student_steps_seeds.sh OUT har|hhar L1|L2sqrt|L2rep SEED
#   python3 bench/summarize_seeds.py OUT L1 L2sqrt L2rep
# HAR_TEACHERS / HHAR_TEACHERS: `bench central --out DIR` folders whose teachers/ hold the
# default recipe's teachers for the seeds asked (`unikd bench central ... --seeds 0,1,2` makes them).
set -euo pipefail
OUT=${1:?OUT}; SET=${2:?har|hhar}; V=${3:?variant}; SEED=${4:?seed}
HAR=${HAR:-../shared/data/HAR}; HHAR=${HHAR:-../shared/data/HHAR_SA}
HAR_TEACHERS=${HAR_TEACHERS:-/work/teacher-cache/har-recipe-3seeds}
HHAR_TEACHERS=${HHAR_TEACHERS:-/work/teacher-cache/hhar-recipe}
case $V in
  L1) X=(--set fed.local_steps=1) ;;
  L2sqrt) X=(--set fed.local_steps=2 --set fed.server_step=sqrt-lr) ;;
  L2rep) X=(--set fed.local_steps=2 --set fed.server_step=repeat) ;;
  *) echo "unknown variant $V" >&2; exit 2 ;;
esac
case $SET in
  har) DATA=$HAR; DS=HAR; PAIRS=configs/har-dev-pairs.txt; T=$HAR_TEACHERS ;;
  hhar) DATA=$HHAR; DS=HHAR; PAIRS=configs/hhar-sa-dev-pairs.txt; T=$HHAR_TEACHERS ;;
  *) echo "unknown development set $SET (har, hhar)" >&2; exit 2 ;;
esac
unikd bench federated --data "$DATA" --dataset "$DS" --scenarios "$(tail -1 $PAIRS)" \
  --seeds "$SEED" --clients 5 --partition iid --teachers "$T" --out "$OUT/$SET-$V-s$SEED" \
  --jobs 1 --quiet --label "$V" "${X[@]}" --set fed.workers=1
