#!/usr/bin/env bash
# Issue 25, item 5: the spread of the final student federated, with the HAR recipe passed
# explicitly, live (distill.ema_decay=0) against the EMA (DECAY): (1) HAR dev pairs (PAIRS), K=5
# IID, on the central bench's cached recipe teachers (--teachers: only students train);
# (2) the main job, `unikd federate` (synthetic data, 3 edges), whose second run loads the first
# run's teacher (checkpoints/teacher.pt: only the student differs).
# Results: bench/results/stable_federated_har.{json,md} and stable_main_job.json
# (python3 bench/stable_main_job.py RUN_DIR...).
# Usage (from the repo root): DECAY=0.955 bash bench/stable_federated.sh OUT HAR_TEACHERS_DIR
set -euo pipefail
OUT=${1:?OUT dir}; TEACHERS=${2:?central bench dir with teachers/}
DECAY=${DECAY:-0.955}
PAIRS=${PAIRS:-4->7,19->30}
DATA=${DATA:-../shared/data}
RECIPE="--set teacher.ensemble=3 --set distill.reference_compat=true --set distill.cross_kd=expected"
fed() {  # the HAR federation with EMA decay $1
  # shellcheck disable=SC2086
  nice -n 10 unikd bench federated --data "$DATA/HAR" --dataset HAR --scenarios "$PAIRS" \
    --seeds 0 --clients 5 --partition iid --teachers "$TEACHERS" --jobs 1 --quiet \
    --out "$OUT/har-fed" --label "recipe, ema_decay=$1" $RECIPE --set distill.ema_decay=$1 \
    > /dev/null
  echo "$(date +%T) har-fed ema $1 done"
}
main() {  # the main job with EMA decay $1 (and any further --set)
  # shellcheck disable=SC2086
  nice -n 10 unikd federate --quiet $RECIPE --set distill.ema_decay=$1 --set out="$OUT/main" \
    "${@:2}"
  echo "$(date +%T) main job ema $1 done"
}
# the EMA runs first, then the live ones (the main job's live run on the first run's teacher)
fed "$DECAY"
main "$DECAY"
fed 0
FIRST=$(ls -d "$OUT"/main/*/ | head -1)
main 0 --set teacher.checkpoint="${FIRST}checkpoints/teacher.pt"
echo DONE
